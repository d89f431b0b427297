"""The ``--out`` of ``survey synth`` and ``survey ingest``: checked before any work, never mixed with an
older survey.

Both write ``tiles/*.zarr``, ``tiles.txt`` and a labels table. Writing over an earlier survey in place
would leave its tile stores that the new list does not name, its ``truth.parquet`` or
``ingest_failures.csv`` beside the new files, and tiles of the same URL with other galaxies, which a
catalog that already ran them would never notice. So an ``--out`` holding any of those is refused
unless ``overwrite``, which deletes exactly those first: nothing else, so cutouts kept under
``--out/tiles/`` (ingest's input, say) stay.
"""

from __future__ import annotations

import os
import posixpath

from skymorph import storage
from skymorph.errors import InputError

__all__ = ["SURVEY_FILES", "check_survey_out", "prepare_survey_out"]

SURVEY_FILES = ("tiles.txt", "labels.parquet", "truth.parquet", "ingest_failures.csv")
"""What a survey writes at ``--out`` besides its tile stores ``tiles/*.zarr``."""


def check_survey_out(out: str, storage_options: dict | None) -> None:
    """Fail now, before reading any input, if ``out`` cannot be written: a local path that is a file or
    not writable, or an S3 bucket that is missing or unreachable."""
    if storage.is_remote(out):
        # one request without retries: fs.exists() would answer "no bucket" for a down endpoint, after
        # s3fs's and botocore's retries (11-19 s)
        storage.check_bucket(out, "--out", storage_options)
    else:
        storage.check_writable(out, "--out", directory=True)


def prepare_survey_out(out: str, overwrite: bool, storage_options: dict | None) -> None:
    """After :func:`check_survey_out`: fail if ``out`` already holds survey outputs, unless
    ``overwrite``, which removes them (:data:`SURVEY_FILES` and ``tiles/*.zarr``)."""
    fs, root = storage.filesystem(out, storage_options)
    fs.invalidate_cache(root)
    files = [f"{root}/{name}" for name in SURVEY_FILES if fs.isfile(f"{root}/{name}")]
    stores = [path.rstrip("/") for path in (fs.ls(f"{root}/tiles", detail=False) if fs.isdir(f"{root}/tiles") else [])
              if path.rstrip("/").endswith(".zarr")]
    if (files or stores) and not overwrite:
        found = [posixpath.basename(path) for path in files] + ([f"{len(stores)} tile store(s) in tiles/"] if stores else [])
        raise InputError(f"--out {out!r} already holds a survey ({', '.join(found)}); "
                         "choose another --out or pass --overwrite to replace it")
    for path in files + stores:
        fs.rm(path, recursive=True)
    if not storage.is_remote(out):
        try:
            os.makedirs(os.path.join(storage.strip_protocol(out), "tiles"), exist_ok=True)
        except OSError as err:
            raise InputError(f"cannot write to --out {out!r}: {err.strerror or err}") from err
