"""The ``--out`` of ``survey synth`` and ``survey ingest``: checked before any work, never mixed with an
older survey.

Both write ``tiles/*.zarr``, ``tiles.txt`` and a labels table. Writing over an earlier survey in place
would leave its tile stores that the new list does not name, its ``truth.parquet`` or
``ingest_failures.csv`` beside the new files, and tiles of the same URL with other galaxies, which a
catalog that already ran them would never notice. So an ``--out`` holding any of those is refused
unless ``overwrite``, which deletes exactly those first: nothing else, so files kept beside a survey
(notes, cutouts under ``--out/tiles/``) stay.

An ``--out`` that holds no survey must be new or empty (an empty ``tiles/`` counts as empty: a survey
stopped before its first tile leaves it), with or without ``overwrite``. Writing a survey into a
directory of other files mixes the two: written into a skymorph catalog, it made ``skymorph run``
refuse that catalog (it holds ``labels.parquet``, ``tiles``, ..., which a catalog does not), with or
without ``--overwrite``, until the survey's files were picked out by hand. Same rule, and wording, as
``skymorph run --out``.

One writer at a time: :func:`writing_survey` holds ``OUT/.skymorph-writer.lock`` (the lease of
:class:`~skymorph.catalog.lock.DriverLock`, kept alive by a heartbeat) from the check of ``--out``
until the survey is written. Two ingests or syntheses into one new ``--out`` both found it empty and
wrote tile stores of the same names: one store held rows of both, and the labels table described
only one of them.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Iterator
from contextlib import contextmanager

from skymorph import storage
from skymorph.errors import InputError, some_names

__all__ = ["SURVEY_FILES", "WRITER_LOCK", "check_survey_out", "prepare_survey_out", "remove_survey", "writing_survey"]

SURVEY_FILES = ("tiles.txt", "labels.parquet", "truth.parquet", "ingest_failures.csv")
"""What a survey writes at ``--out`` besides its tile stores ``tiles/*.zarr``."""
WRITER_LOCK = ".skymorph-writer.lock"
"""The lock a survey's writer holds at ``--out`` while it writes (module docstring)."""

# storage.atomic_write_text's, write_parquet's and create_exclusive_bytes's temporary names
# (".labels.parquet.<uuid hex>.tmp"), which a survey killed mid-write leaves beside its files: the survey's own
_TEMP = re.compile(r"^\.(%s)\.[0-9a-f]{32}\.tmp$" % "|".join(re.escape(name) for name in (*SURVEY_FILES, WRITER_LOCK)))


def _survey_entries(fs, root: str) -> tuple[list[str], list[str], list[str]]:
    """``(files, stores, foreign)`` under ``root``: paths of :data:`SURVEY_FILES`, paths of tile stores
    ``tiles/*.zarr``, and the names (``tiles/x`` below ``tiles/``) of everything no survey writes, sorted."""
    fs.invalidate_cache(root)
    top = storage.list_dir(fs, root)
    below = storage.list_dir(fs, top["tiles"]) if "tiles" in top else {}
    files = [top[name] for name in SURVEY_FILES if name in top and fs.isfile(top[name])]
    stores = [path for name, path in sorted(below.items()) if name.endswith(".zarr")]
    foreign = sorted(name for name in top if name not in (*SURVEY_FILES, WRITER_LOCK, "tiles") and not _TEMP.match(name))
    foreign += [f"tiles/{name}" for name in sorted(below) if not name.endswith(".zarr")]
    if "tiles" in top and not fs.isdir(top["tiles"]):
        foreign.append("tiles")  # a file named tiles
    return files, stores, sorted(foreign)


def check_survey_out(out: str, overwrite: bool, storage_options: dict | None, lock=None) -> None:
    """Fail now, before reading any input, if ``out`` cannot be written: a local path that is a file or
    not writable, an S3 bucket that is missing or unreachable, ``lock`` (its writer lock) held by a live
    writer, a directory (or prefix) that holds no survey and is not empty (module docstring: a survey is
    never mixed into other files), or one that holds a survey, unless ``overwrite``."""
    if storage.is_remote(out):
        # one request without retries: fs.exists() would answer "no bucket" for a down endpoint, after
        # s3fs's and botocore's retries (11-19 s)
        storage.check_bucket(out, "--out", storage_options)
    else:
        storage.check_writable(out, "--out", directory=True)
    fs, root = storage.filesystem(out, storage_options)
    if storage.is_remote(out) and fs.isfile(root):
        raise InputError(f"--out {out!r} is a file; give a directory for the survey")
    if lock is not None:  # a survey being written: that, not the advice to overwrite it
        lock.check()
    files, stores, foreign = _survey_entries(fs, root)
    if not stores and not any(posixpath.basename(path) == "tiles.txt" for path in files):
        # no survey, whatever its file names: a labels.parquet of the user's own (the active-learning loop
        # writes one) made a working directory a survey, which --overwrite deleted
        foreign, files = sorted(foreign + [posixpath.basename(path) for path in files]), []
    if foreign and not (files or stores):
        raise InputError(f"--out {out!r} holds {some_names(foreign)}, which a survey does not (it has no tiles.txt or "
                         "tiles/*.zarr); give a new or empty --out (--overwrite replaces only a survey, never other files)")
    if (files or stores) and not overwrite:
        found = [posixpath.basename(path) for path in files] + ([f"{len(stores)} tile store(s) in tiles/"] if stores else [])
        raise InputError(f"--out {out!r} already holds a survey ({', '.join(found)}); "
                         "choose another --out or pass --overwrite to replace it")


def remove_survey(out: str, storage_options: dict | None) -> None:
    """Remove the survey ``out`` holds: :data:`SURVEY_FILES`, ``tiles/*.zarr`` and ``tiles/`` if that
    leaves it empty (local), nothing else."""
    fs, root = storage.filesystem(out, storage_options)
    files, stores, _ = _survey_entries(fs, root)
    storage.remove_paths(fs, files + stores, recursive=True)
    if not storage.is_remote(out):
        try:
            os.rmdir(os.path.join(storage.strip_protocol(out), "tiles"))
        except OSError:  # missing, or holding files of others (cutouts kept beside a survey)
            pass


def prepare_survey_out(out: str, storage_options: dict | None) -> None:
    """After :func:`check_survey_out`, once the new survey is ready to write: :func:`remove_survey` the
    old one, and make ``out/tiles`` (local). Called only then, so that an input found bad on the way (no
    cutout readable) leaves the old survey as it was."""
    remove_survey(out, storage_options)
    if not storage.is_remote(out):
        try:
            os.makedirs(os.path.join(storage.strip_protocol(out), "tiles"), exist_ok=True)
        except OSError as err:
            raise InputError(f"cannot write to --out {out!r}: {err.strerror or err}") from err


@contextmanager
def writing_survey(out: str, overwrite: bool, storage_options: dict | None, command: str) -> Iterator:
    """Hold ``out``'s writer lock while the block writes the survey, after :func:`check_survey_out`: a
    second writer started meanwhile gets a one-line :class:`~skymorph.errors.CatalogError` naming the
    first (command, host, pid, start), not the advice to overwrite the survey the first is writing.
    ``out`` is checked again under the lock: a writer that waited for it would otherwise write over the
    survey just made, without ``overwrite``. Yields the lock, whose ``check_held()`` a writer calls
    before it removes or writes anything (it raises once another writer took the lock over, the
    heartbeat having stopped for its ``stale_after_s``). ``command`` (``survey ingest``) names the
    writer. The local directories the lock made for ``out`` are removed again if left empty."""
    from skymorph.catalog.lock import DriverLock

    lock = DriverLock(out, storage_options, url=storage.join(out, WRITER_LOCK), writer=f"`skymorph {command}`")
    check_survey_out(out, overwrite, storage_options, lock)  # before the lock puts a file there
    path = None if storage.is_remote(out) else os.path.abspath(storage.strip_protocol(out))
    existing = path
    while existing is not None and not os.path.exists(existing):  # what the lock's file will not have made
        existing = os.path.dirname(existing)
    try:
        with lock:
            check_survey_out(out, overwrite, storage_options)
            yield lock
    finally:
        if path is not None:  # a survey written, or others' files, keep theirs
            storage.remove_empty_directories([path], existing)
