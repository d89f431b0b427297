"""Real local services for tests and the demo (an S3 endpoint on 127.0.0.1)."""

from skymorph.testing.s3 import LocalS3

__all__ = ["LocalS3"]
