"""A real S3 endpoint on 127.0.0.1: moto's ThreadedMotoServer on a free port.

Used by the tests and by ``make demo``; s3fs, zarr and boto3 talk to it over HTTP exactly as they would
to AWS. Needs the ``dev`` extra (``moto[server]``).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field

from skymorph.errors import MissingDependencyError

__all__ = ["LocalS3"]

DUMMY_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "skymorph-local",
    "AWS_SECRET_ACCESS_KEY": "skymorph-local",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass
class LocalS3:
    """Start with :meth:`start` (or ``with LocalS3() as s3:``); ``s3.endpoint_url`` is ``http://127.0.0.1:PORT``.

    ``s3.env`` holds the environment (dummy credentials, ``AWS_ENDPOINT_URL``) that makes any process,
    Dask workers included, reach this endpoint the standard way; :meth:`apply_env` sets it in this
    process. ``s3.storage_options`` gives the same as explicit s3fs options.
    """

    host: str = "127.0.0.1"
    _server: object = field(default=None, repr=False)
    endpoint_url: str = ""

    def start(self) -> LocalS3:
        try:
            from moto.server import ThreadedMotoServer
        except ImportError as err:
            raise MissingDependencyError("the local S3 endpoint needs moto: pip install 'moto[server]>=5.0.20' (skymorph's dev extra)") from err
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        server = ThreadedMotoServer(ip_address=self.host, port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        self._server = server
        self.endpoint_url = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> LocalS3:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def env(self) -> dict[str, str]:
        return {**DUMMY_CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint_url}

    @property
    def storage_options(self) -> dict:
        return {
            "endpoint_url": self.endpoint_url,
            "key": DUMMY_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            "secret": DUMMY_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        }

    def apply_env(self) -> None:
        os.environ.update(self.env)

    def client(self):
        """A boto3 S3 client of this endpoint."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=DUMMY_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=DUMMY_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name=DUMMY_CREDENTIALS["AWS_DEFAULT_REGION"],
        )

    def create_bucket(self, name: str) -> str:
        """Create bucket ``name`` (at least 3 characters) and return ``s3://name``."""
        self.client().create_bucket(Bucket=name)
        return f"s3://{name}"

    def deny_deletes(self, url: str) -> None:
        """A bucket policy that refuses to delete the objects under ``url`` (``s3://bucket/prefix``), as AWS
        answers one: DeleteObjects replies 200, with an ``AccessDenied`` error for each such key."""
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        statement = {"Effect": "Deny", "Principal": "*", "Action": "s3:DeleteObject", "Resource": f"arn:aws:s3:::{bucket}/{prefix}*"}
        self.client().put_bucket_policy(Bucket=bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [statement]}))
