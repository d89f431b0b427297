"""The ``--out`` of ``survey synth`` and ``survey ingest``: checked before any work, never mixed with an
older survey.

Both write ``tiles/*.zarr``, ``tiles.txt`` and a labels table. Writing over an earlier survey in place
would leave its tile stores that the new list does not name, its ``truth.parquet`` or
``ingest_failures.csv`` beside the new files, and tiles of the same URL with other galaxies, which a
catalog that already ran them would never notice. So an ``--out`` holding a survey is refused unless
``overwrite``, which deletes the earlier survey's files first (and nothing else there).
"""

from __future__ import annotations

import os

from skymorph import storage
from skymorph.errors import InputError

__all__ = ["SURVEY_ENTRIES", "prepare_survey_out"]

SURVEY_ENTRIES = ("tiles", "tiles.txt", "labels.parquet", "truth.parquet", "ingest_failures.csv")


def prepare_survey_out(out: str, overwrite: bool, storage_options: dict | None) -> None:
    """Fail now, before any work, if ``out`` cannot be written or already holds a survey (unless
    ``overwrite``, which removes the survey's entries of :data:`SURVEY_ENTRIES`)."""
    if storage.is_remote(out):
        # one request without retries: fs.exists() would answer "no bucket" for a down endpoint, after
        # s3fs's and botocore's retries (11-19 s)
        storage.check_bucket(out, "--out", storage_options)
    else:
        storage.check_writable(out, "--out", directory=True)
    fs, root = storage.filesystem(out, storage_options)
    fs.invalidate_cache(root)
    existing = [name for name in SURVEY_ENTRIES if fs.exists(f"{root}/{name}") and not _empty_dir(fs, f"{root}/{name}")]
    if existing and not overwrite:
        raise InputError(f"--out {out!r} already holds a survey ({', '.join(existing)}); "
                         "choose another --out or pass --overwrite to replace it")
    for name in existing:
        fs.rm(f"{root}/{name}", recursive=True)
    if not storage.is_remote(out):
        try:
            os.makedirs(os.path.join(storage.strip_protocol(out), "tiles"), exist_ok=True)
        except OSError as err:
            raise InputError(f"cannot write to --out {out!r}: {err.strerror or err}") from err


def _empty_dir(fs, path: str) -> bool:
    return fs.isdir(path) and not fs.ls(path, detail=False)
