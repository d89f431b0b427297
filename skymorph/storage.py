"""Local paths and ``s3://`` URLs through one small interface (fsspec underneath).

S3 endpoints and credentials come the standard way (AWS environment variables or profile,
``AWS_ENDPOINT_URL``), or from explicit ``storage_options`` (s3fs keyword arguments, e.g.
``{"endpoint_url": "http://127.0.0.1:9000", "anon": false}``).

Writes never leave half a file where a reader will find it: locally the bytes go to a temporary file
in the same directory, are flushed to disk and renamed over the target; on S3 an object is one PUT,
which is atomic by construction.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import io
import json
import os
import posixpath
import re
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from skymorph.errors import InputError, did_you_mean, first_line

__all__ = [
    "FITS_SUFFIXES",
    "filesystem",
    "join",
    "is_remote",
    "is_s3",
    "exists",
    "list_dir",
    "remove_file",
    "read_bytes",
    "read_text",
    "read_versioned",
    "replace_if_version",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_output",
    "create_exclusive_bytes",
    "write_parquet",
    "read_parquet",
    "parse_storage_options",
    "strip_protocol",
    "listed_url",
    "check_writable",
    "check_url",
    "check_bucket",
    "check_new",
    "remote_error_message",
    "remote_key",
    "remove_empty_directories",
    "same_location",
    "within",
    "storage_options_for",
    "arrow_filesystem",
]

FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz")
"""The names of FITS files, cutouts and tables alike."""


def is_remote(url: str) -> bool:
    return "://" in str(url) and not str(url).startswith("file://")


def is_s3(url) -> bool:
    """Whether ``url`` is on S3: ``s3://`` or ``s3a://``, which s3fs opens alike."""
    return str(url).startswith(("s3://", "s3a://"))


def _check_endpoint(endpoint, source: str) -> None:
    """Raise :class:`InputError` unless ``endpoint`` is an http(s) URL with a host (botocore would raise
    ``ValueError: Invalid endpoint`` only at the first request, as a traceback)."""
    from urllib.parse import urlsplit

    valid = isinstance(endpoint, str)
    if valid:
        try:
            parts = urlsplit(endpoint)
            parts.port  # noqa: B018 -- raises ValueError on a port that is not a number
        except ValueError:
            valid = False
        else:
            valid = parts.scheme in ("http", "https") and bool(parts.hostname)
    if not valid:
        raise InputError(
            f"{source} must be an http:// or https:// URL with a host, e.g. 'http://127.0.0.1:9000', got {endpoint!r}"
        )


def _check_option_endpoints(options: dict, source: str) -> bool:
    """Check the ``endpoint_url`` storage options give, top level or in ``client_kwargs`` (named in errors
    as ``source``); whether any was given."""
    given = False
    if "endpoint_url" in options:
        _check_endpoint(options["endpoint_url"], f"{source} endpoint_url")
        given = True
    client_kwargs = options.get("client_kwargs")
    if isinstance(client_kwargs, dict) and "endpoint_url" in client_kwargs:
        _check_endpoint(client_kwargs["endpoint_url"], f"{source} client_kwargs.endpoint_url")
        given = True
    return given


# fsspec's own options, which every filesystem takes besides its own
_FSSPEC_OPTIONS = frozenset({"skip_instance_cache", "use_listings_cache", "listings_expiry_time", "max_paths"})


@functools.lru_cache(maxsize=1)
def _s3_option_names() -> tuple[frozenset, frozenset | None]:
    """``(top-level names, client_kwargs names or None)`` that s3fs passes on: its own parameters,
    fsspec's, and aiobotocore's session and client parameters."""
    import inspect

    from aiobotocore.session import AioSession
    from s3fs import S3FileSystem

    def parameters(function) -> frozenset:
        return frozenset(inspect.signature(function).parameters) - {"self", "args", "kwargs", "service_name"}

    # create_client(*args, **kwargs) passes client_kwargs on to the private _create_client, whose
    # signature names them; should a release rename it, client_kwargs go unchecked rather than refused
    create_client = getattr(AioSession, "_create_client", None)
    client = parameters(create_client) if create_client is not None else None
    return parameters(S3FileSystem.__init__) | parameters(AioSession.__init__) | _FSSPEC_OPTIONS, client


def _check_s3_option_names(options: dict) -> None:
    """A name s3fs does not know reaches botocore only at the first request, as a TypeError traceback
    (``AioSession.__init__() got an unexpected keyword argument``): refuse it now, by name."""
    known, client_known = _s3_option_names()
    client_kwargs = options.get("client_kwargs")
    checked = [("", options, known)]
    if isinstance(client_kwargs, dict) and client_known is not None:
        checked.append(("client_kwargs.", client_kwargs, client_known))
    for prefix, names, choices in checked:
        for name in names:
            if name not in choices:
                raise InputError(f"unknown S3 storage option {prefix + name!r} (see s3fs.S3FileSystem).{did_you_mean(name, choices)}")


def _s3_options_from_env(storage_options: dict | None) -> dict:
    options = dict(storage_options or {})
    _check_s3_option_names(options)
    if not _check_option_endpoints(options, "storage option"):
        for variable in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
            endpoint = os.environ.get(variable)
            if endpoint:
                _check_endpoint(endpoint, variable)
                options["endpoint_url"] = endpoint
                break
    return options


def storage_options_for(url: str, storage_options: dict | None = None) -> dict:
    """The fsspec options to open ``url`` with: ``storage_options`` plus, for S3, the endpoint from
    ``AWS_ENDPOINT_URL`` (which botocore honours but s3fs does not pass on by itself)."""
    if is_s3(url):
        return _s3_options_from_env(storage_options)
    return dict(storage_options or {})


# s3fs option -> pyarrow.fs.S3FileSystem argument, where the two mean the same
_ARROW_S3_ARGUMENTS = {"key": "access_key", "secret": "secret_key", "token": "session_token", "anon": "anonymous"}


def arrow_s3_arguments(options: dict) -> dict | None:
    """The ``pyarrow.fs.S3FileSystem`` arguments that mean what s3fs ``options`` (as
    :func:`storage_options_for` resolves them) mean, or None where an option has no such equivalent
    (``profile``, ``config_kwargs``, ...). The region is left out unless given: see :func:`arrow_filesystem`."""
    from urllib.parse import urlsplit

    arguments: dict = {}
    client_kwargs = dict(options.get("client_kwargs") or {})
    endpoint = options.get("endpoint_url") or client_kwargs.get("endpoint_url")  # s3fs's precedence
    client_kwargs.pop("endpoint_url", None)
    if "region_name" in client_kwargs:
        arguments["region"] = client_kwargs.pop("region_name")
    if client_kwargs:
        return None
    for name, value in options.items():
        if name in _ARROW_S3_ARGUMENTS:
            arguments[_ARROW_S3_ARGUMENTS[name]] = value
        elif name not in _FSSPEC_OPTIONS | {"endpoint_url", "client_kwargs"}:  # fsspec's only cache listings
            return None
    if endpoint:
        parts = urlsplit(endpoint)
        if parts.path.strip("/") or parts.query:
            return None
        arguments["scheme"], arguments["endpoint_override"] = parts.scheme, parts.netloc
    return arguments


def arrow_filesystem(url: str, storage_options: dict | None = None):
    """``(pyarrow.fs.S3FileSystem, path)`` for an ``s3://`` (or ``s3a://``) ``url``, configured as :func:`filesystem`'s
    s3fs would be, or None where it cannot be: another protocol, an option without an Arrow equivalent,
    options Arrow refuses, an endpoint set only in the AWS config file (which Arrow does not read), a
    bucket whose region cannot be found.

    Arrow's own S3 client does its I/O in C++ threads that never need the GIL, so Arrow datasets over it
    can be scanned from DuckDB (projection and filters pushed down to the reads) without the deadlock of
    a dataset over a Python filesystem. The region and CA bundle are botocore's (``AWS_DEFAULT_REGION``,
    ``AWS_CA_BUNDLE``, the profile's config), so both clients sign and verify alike. Without an endpoint
    (AWS itself), the bucket's own region is looked up, as botocore follows a redirect to it; Arrow
    would assume ``us-east-1``.
    """
    if not is_s3(url):
        return None
    arguments = arrow_s3_arguments(storage_options_for(url, storage_options))
    if arguments is None:
        return None
    import botocore.session
    import pyarrow.fs

    session = botocore.session.Session()  # the environment and config files, as s3fs's session reads them
    path = strip_protocol(url)
    if "endpoint_override" not in arguments:
        config = session.get_scoped_config()
        if "endpoint_url" in config or "services" in config:
            return None
    region, ca_bundle = session.get_config_variable("region"), session.get_config_variable("ca_bundle")
    if "region" not in arguments:
        if "endpoint_override" in arguments:
            if region:
                arguments["region"] = region
        else:
            try:
                arguments["region"] = _bucket_region(path.split("/", 1)[0])
            except OSError:
                return None
    if ca_bundle:
        arguments["tls_ca_file_path"] = ca_bundle
    try:
        return pyarrow.fs.S3FileSystem(**arguments), path
    except ValueError:  # a key without its secret: s3fs's reads give the error the user knows
        return None


@functools.lru_cache(maxsize=64)
def _bucket_region(bucket: str) -> str:
    """The AWS region of ``bucket``, asked once per process (an OSError, not cached, if it cannot be): each
    lookup is a request to us-east-1, 6 s where that is unreachable (a VPC with a regional endpoint only)."""
    import pyarrow.fs

    return pyarrow.fs.resolve_s3_region(bucket)


_MISSPELT_SCHEME = re.compile(r"(s3|gs|gcs|az|abfs|https?):/?(?!/)", re.IGNORECASE)


def check_url(url: str) -> None:
    """Raise :class:`InputError` for ``s3:/bucket/key`` (one slash: a local path that would quietly
    create a directory named ``s3:``), for ``s3://`` with no bucket, and for an empty segment in an
    S3 URL (``s3://bucket//key``, an unset shell variable's mark): S3 keeps ``//`` in the key, where a
    tile list's entries, resolved as paths, lose it."""
    url = str(url)
    misspelt = _MISSPELT_SCHEME.match(url)
    rest = url[misspelt.end():].lstrip("/") if misspelt else url.split("://", 1)[-1].strip("/")
    if not rest and (misspelt or "://" in url):
        raise InputError(f"{url!r} names no bucket or path; give e.g. s3://bucket/prefix")
    if misspelt:
        raise InputError(f"{url!r} is not a URL: write {misspelt.group(1).lower()}://{rest}")
    if is_s3(url) and "" in url.split("://", 1)[1].split("?", 1)[0].rstrip("/").split("/"):
        scheme, path = url.split("://", 1)
        fixed = "/".join(segment for segment in path.split("/") if segment)
        raise InputError(f"{url!r} has an empty path segment ('//'); write {scheme}://{fixed}")


def filesystem(url: str, storage_options: dict | None = None):
    """``(fs, path)`` for ``url``: an fsspec filesystem and the path within it."""
    import fsspec

    url = str(url)
    check_url(url)
    protocol = url.split("://", 1)[0] if "://" in url else "file"
    options = storage_options_for(url, storage_options)
    try:
        fs = fsspec.filesystem(protocol, **options)
    except (ImportError, ValueError) as err:
        raise InputError(f"cannot open {url!r}: {err}") from err
    return fs, fs._strip_protocol(url)


def strip_protocol(url: str) -> str:
    return str(url).split("://", 1)[1] if "://" in str(url) else str(url)


def listed_url(path: str, under: str) -> str:
    """``path`` as fsspec lists it (``bucket/cat/part.parquet``) as a URL again, like ``under`` (the
    URL that was listed): with its protocol where that is remote, bare where local (``file://`` too)."""
    if not is_remote(under) or "://" in path:
        return path
    return f"{str(under).split('://', 1)[0]}://{path}"


def remote_key(url: str) -> str:
    """``url`` under its filesystem's first protocol name (``s3a://`` as ``s3://``: s3fs opens one object
    under both), without a trailing ``/``. ``ValueError`` (or ``ImportError``) for a scheme fsspec does not
    know, or whose package is missing."""
    import fsspec

    scheme, rest = str(url).split("://", 1)
    protocol = fsspec.get_filesystem_class(scheme).protocol
    return f"{protocol if isinstance(protocol, str) else protocol[0]}://{rest.rstrip('/')}"


def same_location(a, b) -> bool:
    """Whether URLs or paths ``a`` and ``b`` name the same file: local paths after resolving ``~``, ``..``
    and symbolic links (relative to the working directory); remote URLs as :func:`remote_key` writes them
    (``s3a://b/x`` is ``s3://b/x``), or as written where fsspec does not know the scheme."""
    a, b = _comparable(a, b)
    return a == b


def within(path, directory) -> bool:
    """Whether ``path`` is ``directory`` or lies under it, resolved as :func:`same_location` resolves."""
    path, directory = _comparable(path, directory)
    sep = "/" if "://" in directory else os.sep
    return path == directory or path.startswith(directory.rstrip(sep) + sep)


def _comparable(a, b) -> tuple[str, str]:
    """``a`` and ``b`` as :func:`same_location` compares them: remote URLs by :func:`remote_key`, local
    paths (``file://`` too) with ``~``, ``..`` and symbolic links resolved."""
    a, b = str(a), str(b)
    if is_remote(a) or is_remote(b):
        return tuple(_remote_or_local_key(url) for url in (a, b))
    return tuple(os.path.realpath(os.path.expanduser(strip_protocol(path))) for path in (a, b))


def _remote_or_local_key(url: str) -> str:
    """A remote URL's :func:`remote_key` (as written, less a trailing ``/``, where fsspec cannot say), a
    local path as written: it cannot be the remote location it is compared with."""
    if not is_remote(url):
        return url
    try:
        return remote_key(url)
    except (ImportError, ValueError):
        return url.rstrip("/")


def join(url: str, *parts: str) -> str:
    """Join path parts onto a local path or URL with ``/``."""
    url = str(url)
    if is_remote(url):
        return posixpath.join(url.rstrip("/"), *parts)
    return os.path.join(url, *parts)


def exists(url: str, storage_options: dict | None = None) -> bool:
    """Whether anything is at ``url`` now: s3fs answers from a listing it cached, which never expires, so an
    object another process wrote or removed since was reported as it was."""
    fs, path = filesystem(url, storage_options)
    if is_remote(url):
        fs.invalidate_cache(path)
    return fs.exists(path)


def list_dir(fs, path: str) -> dict[str, str]:
    """``{name: path}`` of what lies directly under ``path`` on ``fs`` (empty when it is no directory),
    paths without a trailing ``/``. S3 lists a "folder" marker object (key ``prefix/``, left by consoles
    and tools) as the directory itself: skipped."""
    if not fs.isdir(path):
        return {}
    entries = (entry.rstrip("/") for entry in fs.ls(path, detail=False))
    return {posixpath.basename(entry): entry for entry in entries if entry != path.rstrip("/")}


_ERRNO_OF = {PermissionError: errno.EACCES, FileNotFoundError: errno.ENOENT, FileExistsError: errno.EEXIST,
             TimeoutError: errno.ETIMEDOUT}


@contextmanager
def _naming(url: str) -> Iterator[None]:
    """Give an ``OSError`` that names no file ``url`` as its ``filename``: s3fs's say only "Access Denied"
    or "Service Unavailable", and the one line the user saw named every S3 URL of the command instead of
    the object S3 refused. One without an errno (s3fs raises ``PermissionError(message)``) is raised
    again as ``[Errno 13] Access Denied: 'url'``, from the same botocore error."""
    try:
        yield
    except OSError as err:
        # The path whole, not a prefix: an error about s3://b/k2 does not name s3://b/k.
        if err.filename is not None or re.search(re.escape(strip_protocol(url)) + r"(?![^\s'\"])", str(err)):
            raise
        if err.errno is not None:
            err.filename = url
            raise
        try:
            named = type(err)(_ERRNO_OF.get(type(err), errno.EIO), first_line(err) if str(err) else type(err).__name__, url)
        except TypeError:  # botocore's timeouts are OSErrors whose constructors take keywords only
            raise err from err.__cause__
        raise named from (err.__cause__ or err)


def remove_file(url: str, storage_options: dict | None = None) -> None:
    """Delete the file at ``url``; one that is already gone is no error (another process removed it)."""
    fs, path = filesystem(url, storage_options)
    try:
        with _naming(url):
            remove_paths(fs, [path])
    except FileNotFoundError:
        pass


def remove_empty_directories(directories: list[str], top: str) -> None:
    """Remove each of the local ``directories`` and then its parents below ``top`` while they are empty."""
    for directory in sorted(set(directories), key=len, reverse=True):
        while os.path.abspath(directory).startswith(os.path.abspath(top) + os.sep):
            try:
                os.rmdir(directory)
            except OSError:  # not empty (or gone): its parents are not empty either
                break
            directory = os.path.dirname(directory)


_DELETE_BATCH = 1000
"""Most keys one S3 DeleteObjects request takes."""


def remove_paths(fs, paths: list[str], recursive: bool = False) -> None:
    """Delete ``paths`` of ``fs`` (with everything under them if ``recursive``), raising for any the store
    kept. A path that is not there is treated as ``fs.rm`` treats it (local: :class:`FileNotFoundError`).

    s3fs deletes through S3's DeleteObjects in quiet mode and ignores the reply's ``Errors``: a key that a
    bucket policy or a failing node kept is listed there under a 200, and the delete read as done. Stale
    parts stayed in a finished catalog (queries returned rows ``hats.properties`` does not count) and
    ``--overwrite`` wrote into the old catalog. Here the first kept key is raised as an ``OSError`` naming it.
    """
    if not paths:
        return
    if "s3" not in fs.protocol:
        fs.rm(paths, recursive=recursive)
        return
    keys: dict[str, list[str]] = {}
    # files only, folder markers included: expand_path also gives the "folders" between, which are no objects
    found = [f for p in paths for f in (fs.find(p, withdirs=False) or [p])] if recursive else fs.expand_path(paths)
    for path in found:
        bucket, key, _ = fs.split_path(path)
        if key:  # a bare bucket is no object to delete
            keys.setdefault(bucket, []).append(key)
    for bucket, names in keys.items():
        for start in range(0, len(names), _DELETE_BATCH):
            batch = names[start : start + _DELETE_BATCH]
            reply = fs.call_s3("delete_objects", Bucket=bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True})
            for key in batch:
                fs.invalidate_cache(f"{bucket}/{key}")
            kept = reply.get("Errors") or []
            if kept:
                first = kept[0]
                code = first.get("Code", "")
                more = f", nor {len(kept) - 1} more" if len(kept) > 1 else ""
                raise (PermissionError if code == "AccessDenied" else OSError)(
                    errno.EACCES if code == "AccessDenied" else errno.EIO,
                    f"S3 did not delete this object ({code}: {first.get('Message', '')}){more}",
                    f"s3://{bucket}/{first.get('Key', '')}",
                )


def read_bytes(url: str, storage_options: dict | None = None) -> bytes:
    fs, path = filesystem(url, storage_options)
    try:
        with _naming(url):
            return fs.cat_file(path)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{url!r} does not exist") from err


def read_text(url: str, storage_options: dict | None = None) -> str:
    return read_bytes(url, storage_options).decode()


def atomic_write_bytes(url: str, data: bytes, storage_options: dict | None = None) -> None:
    """Write ``data`` to ``url`` so that readers see either nothing or the whole file."""
    if is_remote(url):
        fs, path = filesystem(url, storage_options)
        with _naming(url):
            fs.pipe_file(path, data)
        return
    with atomic_output(url, storage_options) as tmp, open(tmp, "wb") as fh:
        fh.write(data)


def atomic_write_text(url: str, text: str, storage_options: dict | None = None) -> None:
    atomic_write_bytes(url, text.encode(), storage_options)


def read_versioned(url: str, storage_options: dict | None = None) -> tuple[bytes, object]:
    """``(content, version)`` of a small file ``url``, for :func:`replace_if_version`: its ETag on S3 (asked
    before the content is read, so a version never vouches for content older than itself), the sha256 of
    its content locally (a file removed and created again may get the same inode, size and, within the
    clock's resolution, time), None elsewhere. :class:`FileNotFoundError` when there is none."""
    fs, path = filesystem(url, storage_options)
    try:
        if not is_remote(url):
            data = read_bytes(url, storage_options)
            return data, hashlib.sha256(data).hexdigest()
        if "s3" in fs.protocol:
            fs.invalidate_cache(path)
            with _naming(url):
                version = fs.info(path)["ETag"]
                return fs.cat_file(path), version
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{url!r} does not exist") from err
    return read_bytes(url, storage_options), None


def replace_if_version(url: str, data: bytes, version, storage_options: dict | None = None) -> bool:
    """Replace ``url`` with ``data`` only if it still has ``version`` (:func:`read_versioned`); False, and
    nothing written, if it was replaced or removed since. Readers see the old file or the new one.

    ``s3://``: a conditional PUT (``If-Match``, which S3 has honoured since 2024; S3-compatible stores that
    answer it with 501 Not Implemented get a plain PUT). Local: the content compared just before the
    rename, a window of microseconds. Elsewhere: a plain write."""
    fs, path = filesystem(url, storage_options)
    if not is_remote(url):
        path, tmp = _temp_beside(url)
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                with open(path, "rb") as fh:
                    if hashlib.sha256(fh.read()).hexdigest() != version:
                        return False
            except FileNotFoundError:
                return False
            os.replace(tmp, path)
            return True
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    with _naming(url):
        if "s3" in fs.protocol and version is not None:
            _check_conditional_writes(url, len(data), "IfMatch")
            try:  # one PUT: S3 takes no condition on a multipart upload, and s3fs would drop it
                fs.pipe_file(path, data, IfMatch=version, chunksize=_MAX_PUT_BYTES)
                return True
            except FileNotFoundError:  # removed since: If-Match finds no object
                return False
            except OSError as err:
                status = _http_status(err)
                if status in (409, 412):  # replaced since (409: a concurrent conditional write)
                    return False
                if status != 501:
                    raise
        fs.pipe_file(path, data)
    return True


def create_exclusive_bytes(url: str, data: bytes, storage_options: dict | None = None) -> None:
    """Write ``data`` to ``url`` only if nothing is there, else raise :class:`FileExistsError`; readers
    see nothing or the whole file. Of two writers racing, exactly one wins.

    Local: a hidden temporary file hard-linked to ``url`` (``link`` fails on an existing name, and the
    name appears with its content; on a filesystem without hard links, an exclusive create). ``s3://``:
    a conditional PUT (``If-None-Match: *``), which S3 has honoured since 2024 (409, a concurrent
    conditional write, counts as exists). Other fsspec filesystems, and S3-compatible stores that answer
    a conditional PUT with 501 Not Implemented: check, then write (a window of one round trip).
    """
    if not is_remote(url):
        path, tmp = _temp_beside(url)
        created = False
        try:
            with open(tmp, "wb") as fh:
                created = True
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise
            except OSError as err:  # a filesystem without hard links (FUSE mounts of object stores, exFAT, SMB)
                if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
                with open(path, "xb") as fh:  # exclusive still; a reader may see it empty for an instant
                    fh.write(data)
        finally:
            if created:  # else removing it would raise too, hiding the error that stopped its creation
                os.unlink(tmp)
        return
    fs, path = filesystem(url, storage_options)
    with _naming(url):
        if "s3" in fs.protocol:  # s3:// and s3a://
            _check_conditional_writes(url, len(data), "IfNoneMatch")
            try:
                fs.pipe_file(path, data, mode="create", chunksize=_MAX_PUT_BYTES)
                return
            except FileExistsError:
                raise
            except OSError as err:
                status = _http_status(err)
                if status in (409, 412):  # 412: a store that does not name the condition; 409: a concurrent create
                    raise FileExistsError(f"{url!r} exists") from err
                if status != 501:  # 501: an S3-compatible store without conditional writes
                    raise
        if fs.exists(path):
            raise FileExistsError(f"{url!r} exists")
        fs.pipe_file(path, data)


_MAX_PUT_BYTES = 5 * 2**30
"""The largest object one S3 PUT writes; a conditional write must be one PUT."""


def _check_conditional_writes(url: str, size: int, condition: str) -> None:
    """Refuse a conditional write that would not be one: s3fs passes botocore only the parameters its S3
    model knows, so with a botocore older than S3's conditional writes (``IfNoneMatch`` 2024-08,
    ``IfMatch`` 2024-11) the condition was dropped without a word and two runs could both hold one lock."""
    import botocore

    if size >= _MAX_PUT_BYTES:
        raise InputError(f"{url!r}: a conditional write of {size} bytes is over S3's single-PUT limit of 5 GiB")
    if condition not in _put_object_parameters():
        raise InputError(
            f"botocore {botocore.__version__} predates S3's conditional writes ({condition} unknown), so the write to "
            f"{url!r} cannot be made only if {'nothing is there' if condition == 'IfNoneMatch' else 'it is unchanged'}; "
            "upgrade botocore (and aiobotocore, which pins it)"
        )


@functools.cache
def _put_object_parameters() -> frozenset[str]:
    import botocore.session

    model = botocore.session.get_session().get_service_model("s3").operation_model("PutObject")
    return frozenset(model.input_shape.members)


def _http_status(err: BaseException) -> int | None:
    """The HTTP status of the botocore error behind an s3fs ``OSError`` (s3fs maps 400 and 412 alike to EINVAL)."""
    response = getattr(err.__cause__, "response", None) or {}
    return response.get("ResponseMetadata", {}).get("HTTPStatusCode")


def _busy(err: BaseException) -> bool:
    """Whether S3 answered that it is busy: a 5xx status, or SlowDown."""
    return _http_status(err) in (500, 502, 503, 504) or "SlowDown" in str(err)


def _temp_beside(url: str) -> tuple[str, str]:
    """``(path, tmp)``: the local path of ``url`` and a hidden temporary name in its directory (made if
    missing), which catalog listings skip and :func:`skymorph.catalog.layout.remove_catalog` clears."""
    path = strip_protocol(url) if str(url).startswith("file://") else str(url)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    # a name of up to 255 bytes, as the file system allows, however long the target's (38 characters are added)
    base = os.path.basename(path).encode()[:200].decode(errors="ignore")
    return path, os.path.join(directory, f".{base}.{uuid.uuid4().hex}.tmp")


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
            with _naming(url):
                fs.put_file(tmp, path)
        return
    path, tmp = _temp_beside(url)
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
    """Read one Parquet file (local or remote) into a pyarrow Table.

    A file that is not Parquet (empty, truncated, a CSV) or lacks one of ``columns`` is an
    :class:`InputError` naming ``url``; a failure to fetch it keeps its own type.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, path = filesystem(url, storage_options)
    with _naming(url):
        if not fs.exists(path):
            raise FileNotFoundError(f"{url!r} does not exist")
        if fs.isdir(path):
            raise InputError(f"{url!r} is a directory, not a Parquet file")
        with fs.open(path, "rb") as fh:
            try:
                # With torch loaded, an Arrow thread still calling into Python at exit aborts the interpreter
                # ("terminate called without an active exception", pyarrow 26 and torch 2.13, up to a third
                # of runs on a busy machine). pq.read_table scans through pyarrow.dataset, whose threads run
                # even with use_threads=False, and ParquetFile's pre-buffering reads this Python file object
                # on Arrow's I/O threads; without either, every read happens on this thread.
                parquet = pq.ParquetFile(fh, pre_buffer=False)
                names = parquet.schema_arrow.names
                missing = [c for c in columns or () if c not in names]
                if missing:  # ParquetFile.read would silently leave them out
                    raise InputError(f"{url!r} has no column {missing[0]!r} (columns: {', '.join(names)})")
                return parquet.read(columns=columns, use_threads=False)
            except pa.ArrowInvalid as err:
                raise InputError(f"{url!r} is not a readable Parquet file ({first_line(err)})") from err


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
    if options.get("skip_instance_cache"):  # every file opened a connection pool of its own, never closed
        raise InputError("--storage-options \"skip_instance_cache\" made each S3 file a connection pool of its own (a run "
                         "several times slower, with asyncio errors at exit); leave it out: skymorph keeps one per endpoint and "
                         "credentials, and looks again where it must")
    _check_option_endpoints(options, "--storage-options")
    return options


def check_new(urls, what: str, overwrite: bool = False, storage_options: dict | None = None) -> None:
    """Raise :class:`InputError` if one of ``urls`` (the files that the output ``what`` writes) exists,
    unless ``overwrite``. As astropy's ``Table.write``: a trained model, the model a catalog was made
    with, or a user's own file is replaced only when asked."""
    if overwrite:
        return
    found = [str(url) for url in ([urls] if isinstance(urls, str) else urls) if exists(str(url), storage_options)]
    if found:
        more = f" (and {len(found) - 1} more of its files)" if len(found) > 1 else ""
        raise InputError(f"{what} {found[0]!r} exists{more}; pass --overwrite to replace it, or choose another path")


def check_writable(url: str, what: str, *, directory: bool = False) -> None:
    """Raise :class:`InputError` now, before any work, if a local output ``url`` cannot be written.

    ``what`` names the output in the message (a flag such as ``--out``). ``directory``: the output is a
    directory (files are written inside it) rather than one file. Checks that the target is not of the
    other kind and that files can be created in the nearest directory that already exists (by making
    and removing a hidden probe file there; no directory is created). Remote URLs are not checked here
    (see :func:`check_bucket`).
    """
    url = str(url)
    check_url(url)
    if is_remote(url):
        return
    path = os.path.abspath(strip_protocol(url) if url.startswith("file://") else url)
    if directory and os.path.exists(path) and not os.path.isdir(path):
        raise InputError(f"cannot write to {what} {url!r}: it is a file, not a directory; give a directory path")
    if not directory and os.path.isdir(path):
        raise InputError(f"cannot write to {what} {url!r}: it is a directory; give a file path")
    parent = path if directory else os.path.dirname(path)
    while not os.path.exists(parent):  # the nearest ancestor that exists; the root always does
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise InputError(f"cannot write to {what} {url!r}: {parent!r} is a file, not a directory")
    try:
        longest = os.pathconf(parent, "PC_NAME_MAX")
    except (OSError, ValueError):
        longest = 255
    for name in os.path.relpath(path, parent).split(os.sep):  # else the error names the temporary file's name
        if len(os.fsencode(name)) > longest:
            raise InputError(f"cannot write to {what} {url!r}: its name {name[:24]!r}... is {len(os.fsencode(name))} bytes, "
                             f"more than the {longest} this file system allows; give a shorter name")
    try:
        handle, probe = tempfile.mkstemp(prefix=".skymorph-probe-", suffix=".tmp", dir=parent)  # a temporary name, if left
    except OSError as err:
        raise InputError(
            f"cannot write to {what} {url!r}: cannot create files in {parent!r} ({err.strerror or err}); "
            "choose a writable location"
        ) from err
    os.close(handle)
    os.unlink(probe)


def check_bucket(url: str, what: str, storage_options: dict | None = None) -> None:
    """Raise :class:`InputError` now, in one line, if the S3 bucket of ``url`` is missing or its endpoint
    unreachable; a denied check passes (access may be granted below the bucket). One request without
    retries (a down endpoint answers in about a second, not after s3fs's and botocore's retries), asked
    again twice, 1 and 2 s later, where the endpoint answers that it is busy (5xx, SlowDown: a throttled
    endpoint is up); other operations keep their retries. Not S3: nothing."""
    url = str(url)
    if not is_s3(url):
        return
    import fsspec

    options = storage_options_for(url, storage_options)
    config = dict(options.get("config_kwargs") or {})
    config["retries"] = {"total_max_attempts": 1}
    options["config_kwargs"] = config
    try:
        fs = fsspec.filesystem("s3", **{**options, "skip_instance_cache": True})
    except (ImportError, TypeError, ValueError) as err:
        raise InputError(f"cannot open {url!r}: {first_line(err)}") from err
    fs.retries = 1  # this instance only: s3fs's retry loop around each request
    bucket = fs.split_path(url)[0]
    try:
        _head_bucket(fs, url, what, bucket, options)
    finally:
        _close_s3(fs)


def _close_s3(fs) -> None:
    """Close the connections of an S3 filesystem used once, now, on s3fs's event loop. Left to the garbage
    collector (fsspec's instances are in reference cycles, so a collection on any thread frees them), s3fs
    closes them on the event loop running on the collecting thread: the Dask client's, where that fails with
    "Task exception was never retrieved ... attached to a different loop" on stderr."""
    from fsspec.asyn import sync

    creator = getattr(fs, "_s3creator", None)  # None: no request was made
    if creator is None:
        return
    try:
        sync(fs.loop, creator.__aexit__, None, None, None, timeout=5)  # idempotent: s3fs's own close later does nothing
    except Exception:  # noqa: BLE001 -- closing is best effort; the check's outcome stands
        pass


def _head_bucket(fs, url: str, what: str, bucket: str, options: dict) -> None:
    try:
        for wait_s in (1.0, 2.0, None):
            try:
                fs.call_s3("head_bucket", Bucket=bucket)
                break
            except OSError as err:  # an endpoint that answers 5xx or SlowDown is up, and busy: asked again
                if wait_s is None or not _busy(err):
                    raise
                time.sleep(wait_s)
    except FileNotFoundError as err:
        raise InputError(f"{what} {url!r}: bucket {bucket!r} does not exist; create it first") from err
    except PermissionError:
        # HEAD on a bucket needs s3:ListBucket on all of it; a user granted only objects under a prefix
        # (common on shared buckets) may still read and write there, so the request itself will tell
        return
    except Exception as err:
        message = remote_error_message(err, options)
        if message is None:
            if not isinstance(err, OSError):
                raise
            message = (f"bucket {bucket!r} cannot be used ({first_line(err)})" + ("; the endpoint answered three times "
                       "that it is busy or down for the moment: run again later" if _busy(err) else ""))
        raise InputError(f"{what} {url!r}: {message}") from err


def remote_error_message(err: BaseException, storage_options: dict | None = None) -> str | None:
    """A one-line message for a botocore error (unreachable endpoint, no credentials, an answer that is
    not S3), naming the endpoint and what to check; ``None`` for any other error. botocore's errors are not ``OSError``s
    and s3fs passes them through untranslated. ``storage_options`` supply the endpoint when the error
    does not carry one."""
    exceptions = sys.modules.get("botocore.exceptions")  # not imported: cannot be a botocore error
    if exceptions is None:
        return None
    reason = first_line(err, limit=300)
    parsers = sys.modules.get("botocore.parsers")
    if parsers is not None and isinstance(err, parsers.ResponseParserError):  # not a BotoCoreError
        return (
            f"the S3 endpoint {_endpoint_of(err, storage_options)} answered with something that is not S3 ({reason}); "
            "check that AWS_ENDPOINT_URL or --storage-options endpoint_url names an S3 service"
        )
    if not isinstance(err, exceptions.BotoCoreError):
        return None
    credentials = (exceptions.NoCredentialsError, exceptions.PartialCredentialsError, exceptions.CredentialRetrievalError)
    if isinstance(err, credentials):
        return (
            f"no usable S3 credentials ({reason}); set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), "
            "or give --storage-options '{\"anon\": true}' for a public bucket"
        )
    endpoint = _endpoint_of(err, storage_options)
    if isinstance(err, (exceptions.ConnectionError, exceptions.HTTPClientError)):
        return (
            f"cannot reach the S3 endpoint {endpoint} ({reason}); check that it is up and that AWS_ENDPOINT_URL "
            "or --storage-options endpoint_url names it"
        )
    return (
        f"S3 request to {endpoint} failed ({reason}); check AWS_ENDPOINT_URL or --storage-options endpoint_url, "
        "and the credentials"
    )


def _endpoint_of(err: BaseException, storage_options: dict | None) -> str:
    """``scheme://host:port`` of the endpoint a botocore error was about."""
    from urllib.parse import urlsplit

    url = (getattr(err, "kwargs", None) or {}).get("endpoint_url")
    options = storage_options or {}
    client_kwargs = options.get("client_kwargs") if isinstance(options.get("client_kwargs"), dict) else {}
    url = url or options.get("endpoint_url") or client_kwargs.get("endpoint_url")
    url = url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not isinstance(url, str) or not url:
        return "(AWS's default endpoint)"
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else url
