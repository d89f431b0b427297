"""Local paths and ``s3://`` URLs through one small interface (fsspec underneath).

S3 endpoints and credentials come the standard way (AWS environment variables or profile,
``AWS_ENDPOINT_URL``), or from explicit ``storage_options`` (s3fs keyword arguments, e.g.
``{"endpoint_url": "http://127.0.0.1:9000", "anon": false}``).

Writes never leave half a file where a reader will find it: locally the bytes go to a temporary file
in the same directory, are flushed to disk and renamed over the target; on S3 an object is one PUT,
which is atomic by construction.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from skymorph.errors import InputError

__all__ = [
    "filesystem",
    "join",
    "is_remote",
    "exists",
    "read_bytes",
    "read_text",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_output",
    "write_parquet",
    "read_parquet",
    "parse_storage_options",
    "strip_protocol",
]


def is_remote(url: str) -> bool:
    return "://" in str(url) and not str(url).startswith("file://")


def _s3_options_from_env(storage_options: dict | None) -> dict:
    options = dict(storage_options or {})
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint and "endpoint_url" not in options and "endpoint_url" not in options.get("client_kwargs", {}):
        options["endpoint_url"] = endpoint
    return options


def storage_options_for(url: str, storage_options: dict | None = None) -> dict:
    """The fsspec options to open ``url`` with: ``storage_options`` plus, for S3, the endpoint from
    ``AWS_ENDPOINT_URL`` (which botocore honours but s3fs does not pass on by itself)."""
    if str(url).startswith("s3://"):
        return _s3_options_from_env(storage_options)
    return dict(storage_options or {})


def filesystem(url: str, storage_options: dict | None = None):
    """``(fs, path)`` for ``url``: an fsspec filesystem and the path within it."""
    import fsspec

    url = str(url)
    protocol = url.split("://", 1)[0] if "://" in url else "file"
    try:
        fs = fsspec.filesystem(protocol, **storage_options_for(url, storage_options))
    except (ImportError, ValueError) as err:
        raise InputError(f"cannot open {url!r}: {err}") from err
    return fs, fs._strip_protocol(url)


def strip_protocol(url: str) -> str:
    return str(url).split("://", 1)[1] if "://" in str(url) else str(url)


def join(url: str, *parts: str) -> str:
    """Join path parts onto a local path or URL with ``/``."""
    url = str(url)
    if is_remote(url):
        return posixpath.join(url.rstrip("/"), *parts)
    return os.path.join(url, *parts)


def exists(url: str, storage_options: dict | None = None) -> bool:
    fs, path = filesystem(url, storage_options)
    return fs.exists(path)


def read_bytes(url: str, storage_options: dict | None = None) -> bytes:
    fs, path = filesystem(url, storage_options)
    try:
        return fs.cat_file(path)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{url!r} does not exist") from err


def read_text(url: str, storage_options: dict | None = None) -> str:
    return read_bytes(url, storage_options).decode()


def atomic_write_bytes(url: str, data: bytes, storage_options: dict | None = None) -> None:
    """Write ``data`` to ``url`` so that readers see either nothing or the whole file."""
    if is_remote(url):
        fs, path = filesystem(url, storage_options)
        fs.pipe_file(path, data)
        return
    with atomic_output(url, storage_options) as tmp, open(tmp, "wb") as fh:
        fh.write(data)


def atomic_write_text(url: str, text: str, storage_options: dict | None = None) -> None:
    atomic_write_bytes(url, text.encode(), storage_options)


@contextmanager
def atomic_output(url: str, storage_options: dict | None = None) -> Iterator[str]:
    """A local path to write a large output to, which becomes ``url`` only when the block succeeds.

    Local: a hidden temporary file beside the target, flushed and renamed over it. S3: a temporary
    file uploaded at the end (s3fs switches to a multipart upload for large files, which S3 makes
    visible only when it completes). On an error nothing appears at ``url`` and the temporary file
    is removed.
    """
    if is_remote(url):
        with tempfile.TemporaryDirectory(prefix="skymorph-") as directory:
            tmp = os.path.join(directory, "output")
            yield tmp
            fs, path = filesystem(url, storage_options)
            fs.put_file(tmp, path)
        return
    path = strip_protocol(url) if str(url).startswith("file://") else str(url)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_parquet(table, url: str, storage_options: dict | None = None, **kwargs: Any) -> None:
    """Write a pyarrow Table as one Parquet file, atomically (see :func:`atomic_write_bytes`)."""
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(table, buffer, **kwargs)
    atomic_write_bytes(url, buffer.getvalue(), storage_options)


def read_parquet(url: str, storage_options: dict | None = None, columns: list[str] | None = None):
    """Read one Parquet file (local or remote) into a pyarrow Table."""
    import pyarrow.parquet as pq

    fs, path = filesystem(url, storage_options)
    if not fs.exists(path):
        raise FileNotFoundError(f"{url!r} does not exist")
    with fs.open(path, "rb") as fh:
        # use_threads=False: Arrow's threads reading a Python file object can outlive the call and
        # abort the interpreter at exit (apache/arrow#33975, #50482; seen here with pyarrow 26)
        return pq.read_table(fh, columns=columns, use_threads=False)


def parse_storage_options(text: str | None) -> dict:
    """Parse ``--storage-options JSON`` into a dict (one-line error on bad JSON)."""
    if not text:
        return {}
    try:
        options = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"--storage-options is not valid JSON ({err.msg}); give e.g. '{{\"anon\": false}}'") from err
    if not isinstance(options, dict):
        raise InputError(f"--storage-options must be a JSON object, got {type(options).__name__}")
    return options
