"""Where everything in a skymorph catalog lives, and the typed metadata around the Parquet parts.

A catalog is a HATS-layout Parquet dataset (hats/LSDB 0.11 read it as is)::

    CATALOG/hats.properties                 CatalogProperties (java-style key=value)
    CATALOG/partition_info.csv              "Norder,Npix" then one line per non-empty pixel
    CATALOG/dataset/_common_metadata        the Arrow schema + skymorph.* key-value metadata
    CATALOG/dataset/Norder=K/Dir=D/Npix=P/part-<digest>.parquet     D = 10000 * (P // 10000)
    CATALOG/_skymorph/manifest.json         run manifest: model digest, tile ranges done, their parts
    CATALOG/_skymorph/journal/*.json        ranges finished since the manifest was last compacted
    CATALOG/_skymorph/driver.lock           the running driver's lease (while a job runs)
    CATALOG/_skymorph/failures.parquet      tile, start, stop, stage, reason: the tile ranges that failed
    CATALOG/_skymorph/timing.json           where the time went

Every part holds the rows of one tile row range that fall in one HEALPix pixel of the catalog order
``K``. ``Npix=P`` is a directory of parts, hence ``hats_npix_suffix=/`` in ``hats.properties``.

The catalog order is fixed for a run (default :data:`DEFAULT_ORDER` = 5) rather than adapted to the
density as hats-import does, because workers write parts independently and in any order: with a fixed
order no part ever has to be rewritten when another tile arrives. Order 5 pixels are 3.36 deg^2
(about 1.8 deg across), the size of a default ``survey synth`` tile, so one tile range lands in one
or a few pixels. Pick the order for a survey from its density so that a partition holds 0.5-1 GB:
docs/scaling.md section 6 chooses order 6 for Rubin and 4 for Euclid.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone

from skymorph.errors import CatalogError, first_line
from skymorph.model_metadata import check_likelihood
from skymorph.storage import (
    atomic_write_text,
    exists,
    filesystem,
    is_remote,
    join,
    list_dir,
    listed_url,
    read_text,
    remove_file,
    remove_paths,
    strip_protocol,
)

__all__ = [
    "DEFAULT_ORDER",
    "MAX_ORDER",
    "SPATIAL_INDEX_COLUMN",
    "PLACEHOLDER_POSITIONS",
    "SKY_POSITIONS",
    "SPATIAL_INDEX_ORDER",
    "BASE_COLUMNS",
    "METADATA_KEYS",
    "CatalogMetadata",
    "metadata_text",
    "CatalogProperties",
    "PartFile",
    "dataset_url",
    "properties_url",
    "partition_info_url",
    "common_metadata_url",
    "skymorph_dir",
    "manifest_url",
    "journal_url",
    "driver_lock_url",
    "failures_url",
    "timing_url",
    "pixel_dir",
    "part_name",
    "part_url",
    "parse_part_path",
    "list_parts",
    "list_temp_files",
    "foreign_entries",
    "remove_catalog",
    "unfinish_catalog",
    "part_footer",
    "joined_versions",
    "read_properties",
    "write_properties",
    "read_partition_info",
    "write_partition_info",
    "read_common_metadata",
]

DEFAULT_ORDER = 5
MAX_ORDER = 19
"""hats partitions go to order 19 at most; anything finer is only the spatial index."""

SPATIAL_INDEX_COLUMN = "_healpix_29"
SPATIAL_INDEX_ORDER = 29

BASE_COLUMNS = ("object_id", "ra", "dec", SPATIAL_INDEX_COLUMN, "tile", "row")
"""Columns every row starts with; the posterior columns of :func:`skymorph.posterior.summarize` follow."""

METADATA_KEYS = (
    "skymorph.model_sha256",
    "skymorph.samples",
    "skymorph.seed",
    "skymorph.n_volunteers",
    "skymorph.schema",
    "skymorph.version",
)
"""Parquet key-value metadata on ``_common_metadata`` and on every part file (DESIGN "Catalog"); also
``skymorph.likelihood``, which catalogs written before it was recorded lack."""

_PROPERTIES = "hats.properties"
_PARTITION_INFO = "partition_info.csv"
_DATASET = "dataset"
_COMMON_METADATA = "_common_metadata"
_SKYMORPH = "_skymorph"
_ENTRIES = (_PROPERTIES, _PARTITION_INFO, _DATASET, _SKYMORPH)  # everything a catalog writes at its root


# ---- paths ------------------------------------------------------------------------------------------


def dataset_url(catalog: str) -> str:
    return join(catalog, _DATASET)


def properties_url(catalog: str) -> str:
    return join(catalog, _PROPERTIES)


def partition_info_url(catalog: str) -> str:
    return join(catalog, _PARTITION_INFO)


def common_metadata_url(catalog: str) -> str:
    return join(catalog, _DATASET, _COMMON_METADATA)


def skymorph_dir(catalog: str) -> str:
    return join(catalog, _SKYMORPH)


def manifest_url(catalog: str) -> str:
    return join(catalog, _SKYMORPH, "manifest.json")


def driver_lock_url(catalog: str) -> str:
    return join(catalog, _SKYMORPH, "driver.lock")


def journal_url(catalog: str) -> str:
    return join(catalog, _SKYMORPH, "journal")


def failures_url(catalog: str) -> str:
    return join(catalog, _SKYMORPH, "failures.parquet")


def timing_url(catalog: str) -> str:
    return join(catalog, _SKYMORPH, "timing.json")


def pixel_dir(catalog: str, order: int, npix: int) -> str:
    """``CATALOG/dataset/Norder=K/Dir=D/Npix=P`` with ``D = 10000 * (P // 10000)`` (hats' layout)."""
    return join(catalog, _DATASET, f"Norder={order}", f"Dir={10000 * (npix // 10000)}", f"Npix={npix}")


def part_name(tile_url: str, start: int, stop: int) -> str:
    """``part-<sha256(tile URL, start, stop)[:20]>.parquet``: the same tile range always gets the same
    name, so a rerun (resume, a retried task) overwrites rather than duplicates."""
    digest = hashlib.sha256(f"{tile_url}\n{int(start)}\n{int(stop)}".encode()).hexdigest()[:20]
    return f"part-{digest}.parquet"


def part_url(catalog: str, order: int, npix: int, name: str) -> str:
    return join(pixel_dir(catalog, order, npix), name)


_PART_PATH = re.compile(r"Norder=(\d+)/Dir=(\d+)/Npix=(\d+)/(part-[0-9a-f]+\.parquet)$")


@dataclass(frozen=True)
class PartFile:
    """One part file: its HEALPix pixel (``order``, ``npix``), file ``name`` and full ``url``."""

    order: int
    npix: int
    name: str
    url: str


def parse_part_path(url: str) -> PartFile | None:
    """The :class:`PartFile` for a path ending in ``Norder=K/Dir=D/Npix=P/part-*.parquet``, else None."""
    match = _PART_PATH.search(str(url).replace("\\", "/"))
    if match is None:
        return None
    order, directory, npix, name = match.groups()
    if int(directory) != 10000 * (int(npix) // 10000):
        return None
    return PartFile(order=int(order), npix=int(npix), name=name, url=str(url))


def list_parts(catalog: str, storage_options: dict | None = None) -> list[PartFile]:
    """Every part file under ``CATALOG/dataset``, sorted by pixel then name (one listing, no reads)."""
    fs, root = filesystem(dataset_url(catalog), storage_options)
    fs.invalidate_cache()  # fsspec caches listings (per directory) per process; parts may have landed since
    if not fs.exists(root):
        return []
    parts = []
    for path in fs.find(root):
        part = parse_part_path(path)
        if part is not None:
            parts.append(PartFile(part.order, part.npix, part.name, listed_url(path, catalog)))
    return sorted(parts, key=lambda p: (p.order, p.npix, p.name))


def list_temp_files(catalog: str, storage_options: dict | None = None) -> list[str]:
    """Hidden ``.*.tmp`` files the catalog's writers left: what a local writer killed between write and
    rename leaves (readers skip hidden files; S3 writes are one PUT and leave none), in ``CATALOG``,
    ``CATALOG/dataset`` and ``CATALOG/_skymorph``. Not the lock's: a live driver's heartbeat writes one.
    None on S3, without a listing: the rerun of a finished catalog would otherwise list every part."""
    if is_remote(catalog):
        return []
    fs, root = filesystem(catalog, storage_options)
    if not fs.exists(root):
        return []
    lock_temp = "." + posixpath.basename(driver_lock_url(catalog)) + "."
    found = list(list_dir(fs, root).values())
    for sub in (dataset_url(catalog), join(catalog, _SKYMORPH)):
        if fs.exists(strip_protocol(sub)):
            found += fs.find(strip_protocol(sub))
    names = {path: posixpath.basename(path) for path in found}
    return sorted(path for path, name in names.items() if _is_temp(name) and not name.startswith(lock_temp))


def _is_temp(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp")


def _root_entries(catalog: str, storage_options: dict | None) -> tuple:
    """``(fs, {name: path})`` of what lies directly under ``catalog`` (empty when it does not exist)."""
    fs, root = filesystem(catalog, storage_options)
    fs.invalidate_cache(root)
    return fs, list_dir(fs, root)


def foreign_entries(catalog: str, storage_options: dict | None = None) -> list[str]:
    """Names directly under ``catalog`` that no skymorph catalog writes, sorted: what ``run --overwrite``
    must not delete (a writer's hidden ``.*.tmp`` leftovers count as the catalog's own)."""
    _, entries = _root_entries(catalog, storage_options)
    return sorted(name for name in entries if name not in _ENTRIES and not _is_temp(name))


def remove_catalog(catalog: str, storage_options: dict | None = None, keep_lock: bool = False) -> None:
    """Delete what a skymorph catalog writes under ``catalog``, keeping the directory (or bucket) itself
    and anything else in it; with ``keep_lock``, the driver lock too (the run replacing the catalog holds it).

    ``hats.properties`` goes first, so that from the first deletion on the catalog reads as unfinished:
    in listing order, a reader (or a killed ``--overwrite``) found a finished catalog with parts missing."""
    fs, entries = _root_entries(catalog, storage_options)
    remove_file(properties_url(catalog), storage_options)
    for name, path in entries.items():
        if name == _PROPERTIES:
            continue
        if name == _SKYMORPH and keep_lock:
            keep = {fs._strip_protocol(driver_lock_url(catalog)), path.rstrip("/")}  # S3 lists a folder marker as itself
            for child in fs.ls(path, detail=False):
                if child.rstrip("/") not in keep:
                    remove_paths(fs, [child], recursive=True)
        elif name in _ENTRIES or _is_temp(name):
            remove_paths(fs, [path], recursive=True)


def unfinish_catalog(catalog: str, storage_options: dict | None = None) -> None:
    """Make a finished catalog read as unfinished (``hats.properties`` removed; the finish step writes it
    again): done before a part is added, so readers never count parts its metadata does not."""
    remove_file(properties_url(catalog), storage_options)


# ---- Parquet key-value metadata ---------------------------------------------------------------------


def metadata_text(kv: dict | None) -> dict[str, str]:
    """Parquet key-value metadata (pyarrow gives ``bytes``) as ``str`` keys and values."""
    return {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v) for k, v in (kv or {}).items()}


@dataclass(frozen=True)
class CatalogMetadata:
    """What made the posterior columns: stored as ``skymorph.*`` Parquet key-value metadata.

    ``schema_json`` is :meth:`skymorph.schema.Schema.to_json` of the model's decision tree.
    ``likelihood`` (``multinomial`` or ``dirichlet_multinomial``) says what the fractions and intervals
    are posteriors of; ``""`` for a catalog written before it was recorded.
    """

    model_sha256: str
    samples: int
    seed: int
    n_volunteers: int
    schema_json: str
    version: str
    likelihood: str = ""

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[0-9a-f]{64}", self.model_sha256):
            raise CatalogError(f"model_sha256 must be 64 hex digits, got {self.model_sha256!r}")
        if self.samples < 1 or self.n_volunteers < 1:
            raise CatalogError(f"samples and n_volunteers must be positive, got {self.samples}, {self.n_volunteers}")
        if self.likelihood != "":
            check_likelihood(self.likelihood, CatalogError)
        try:
            json.loads(self.schema_json)
        except json.JSONDecodeError as err:
            raise CatalogError(f"schema_json is not JSON: {err.msg}") from err

    @property
    def schema(self):
        """The decision tree as a :class:`skymorph.schema.Schema`."""
        from skymorph.schema import Schema

        return Schema.from_json(self.schema_json, source="catalog skymorph.schema")

    def to_kv(self) -> dict[str, str]:
        return {
            "skymorph.model_sha256": self.model_sha256,
            "skymorph.samples": str(self.samples),
            "skymorph.seed": str(self.seed),
            "skymorph.n_volunteers": str(self.n_volunteers),
            "skymorph.schema": self.schema_json,
            "skymorph.version": self.version,
            **({"skymorph.likelihood": self.likelihood} if self.likelihood else {}),
        }

    @classmethod
    def from_kv(cls, kv: dict, source: str = "catalog") -> CatalogMetadata:
        """From Parquet key-value metadata (``bytes`` or ``str`` keys and values)."""
        text = metadata_text(kv)
        missing = [key for key in METADATA_KEYS if key not in text]
        if missing:
            raise CatalogError(f"{source} lacks skymorph metadata ({', '.join(missing)}); was it written by `skymorph run`?")
        try:
            return cls(
                model_sha256=text["skymorph.model_sha256"],
                samples=int(text["skymorph.samples"]),
                seed=int(text["skymorph.seed"]),
                n_volunteers=int(text["skymorph.n_volunteers"]),
                schema_json=text["skymorph.schema"],
                version=text["skymorph.version"],
                likelihood=text.get("skymorph.likelihood", ""),
            )
        except ValueError as err:
            if isinstance(err, CatalogError):
                raise
            raise CatalogError(f"{source} has malformed skymorph metadata: {err}") from err


def part_footer(url: str, storage_options: dict | None = None):
    """The Parquet footer (``pyarrow.parquet.FileMetaData``) of the part file at ``url``: its row count and
    key-value metadata, the ``skymorph.version`` of the worker that wrote it included (reads the footer only)."""
    import pyarrow.parquet as pq

    fs, path = filesystem(url, storage_options)
    with fs.open(path, "rb") as fh:
        return pq.ParquetFile(fh).metadata


def joined_versions(versions) -> str:
    """The distinct ``versions`` (skymorph versions that wrote a catalog's parts), oldest first, as one
    text: ``"0.1.0"``, or ``"0.1.0, 0.2.0"`` for a catalog resumed or extended after an upgrade; ``""``
    for none. Ordered by their numbers (0.10 after 0.9), then as text."""
    def key(version: str):
        return [int(number) for number in re.findall(r"\d+", version)], version

    return ", ".join(sorted({v for v in versions if v}, key=key))


def _rewrite(catalog: str) -> str:
    """What to do about a damaged metadata file: the run's finish step writes them all again."""
    return f"rerun the `skymorph run` that made {catalog!r} (same --model and --out) to rewrite it"


def read_common_metadata(catalog: str, storage_options: dict | None = None):
    """``(pyarrow.Schema, CatalogMetadata)`` from ``CATALOG/dataset/_common_metadata``."""
    import pyarrow.parquet as pq

    url = common_metadata_url(catalog)
    fs, path = filesystem(url, storage_options)
    if not fs.exists(path):
        raise CatalogError(f"{catalog!r} is not a skymorph catalog ({url} missing); make one with `skymorph run`")
    try:
        with fs.open(path, "rb") as fh:
            schema = pq.read_schema(fh)
    except (OSError, ValueError) as err:  # ArrowInvalid (a ValueError): truncated, empty or not Parquet
        raise CatalogError(
            f"{url} is not readable Parquet metadata ({first_line(err)}); {_rewrite(catalog)}"
        ) from None
    return schema, CatalogMetadata.from_kv(schema.metadata, source=url)


# ---- hats.properties --------------------------------------------------------------------------------


SKY_POSITIONS, PLACEHOLDER_POSITIONS = "sky", "placeholder"
"""``skymorph_positions`` of a catalog whose tiles had sky positions, and of one whose tiles had none."""


@dataclass(frozen=True)
class CatalogProperties:
    """``hats.properties``: the hats keys LSDB needs plus skymorph's provenance.

    Field -> on-disk key: ``catalog_name`` -> ``obs_collection``, ``total_rows`` -> ``hats_nrows``,
    ``order`` -> ``hats_order`` (the fixed partition order), ``npix_suffix`` -> ``hats_npix_suffix``
    (``/``: each ``Npix=P`` is a directory), ``builder`` -> ``hats_builder``, ``creation_date`` ->
    ``hats_creation_date`` (UTC, ``%Y-%m-%dT%H:%MUTC`` as hats writes it); the ``skymorph_*`` fields
    are written under their own names. ``skymorph_positions`` is ``placeholder`` where the tiles had no
    sky positions (``survey ingest`` without ra/dec: every galaxy at ra = dec = 0), ``sky`` where they
    had, and empty in catalogs written before it was recorded. ``extra`` keeps unknown keys of a file
    read back.
    """

    catalog_name: str
    total_rows: int
    order: int = DEFAULT_ORDER
    ra_column: str = "ra"
    dec_column: str = "dec"
    healpix_column: str = SPATIAL_INDEX_COLUMN
    healpix_order: int = SPATIAL_INDEX_ORDER
    npix_suffix: str = "/"
    dataproduct_type: str = "object"
    builder: str = ""
    creation_date: str = ""
    skymorph_version: str = ""
    skymorph_model_sha256: str = ""
    skymorph_samples: int = 0
    skymorph_seed: int = 0
    skymorph_n_volunteers: int = 0
    skymorph_schema: str = ""
    skymorph_likelihood: str = ""
    skymorph_positions: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def placeholder_positions(self) -> bool:
        """Whether the rows' ra/dec are placeholders, not sky positions."""
        return self.skymorph_positions == PLACEHOLDER_POSITIONS

    def __post_init__(self) -> None:
        if not self.catalog_name or any(c in self.catalog_name for c in "\r\n"):  # '=' is fine: a value, never a key
            raise CatalogError(f"catalog_name must be a non-empty single-line name, got {self.catalog_name!r}")
        if self.total_rows < 0:
            raise CatalogError(f"total_rows must be >= 0, got {self.total_rows}")
        if not 0 <= self.order <= MAX_ORDER:
            raise CatalogError(f"catalog order must be in 0..{MAX_ORDER}, got {self.order}")
        if self.skymorph_positions not in ("", SKY_POSITIONS, PLACEHOLDER_POSITIONS):
            raise CatalogError(f"skymorph_positions must be {SKY_POSITIONS!r} or {PLACEHOLDER_POSITIONS!r}, got {self.skymorph_positions!r}")
        if self.dataproduct_type != "object":
            raise CatalogError(f"a skymorph catalog has dataproduct_type=object, got {self.dataproduct_type!r}")

    _KEYS = {
        "catalog_name": "obs_collection",
        "dataproduct_type": "dataproduct_type",
        "total_rows": "hats_nrows",
        "ra_column": "hats_col_ra",
        "dec_column": "hats_col_dec",
        "healpix_column": "hats_col_healpix",
        "healpix_order": "hats_col_healpix_order",
        "npix_suffix": "hats_npix_suffix",
        "order": "hats_order",
        "builder": "hats_builder",
        "creation_date": "hats_creation_date",
    }

    @staticmethod
    def now() -> str:
        """The current UTC time in hats' ``hats_creation_date`` format."""
        return datetime.now(tz=timezone.utc).strftime("%Y-%m-%dT%H:%M%Z")

    def to_text(self) -> str:
        """The file, as Java properties (hats reads it so): values with a newline or a backslash (a model's
        schema name may hold either) escaped, so that every value reads back as written."""
        lines = ["#HATS catalog"]
        for f in fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if value == "":
                continue
            lines.append(f"{_escape(self._KEYS.get(f.name, f.name), key=True)}={_escape(str(value))}")
        lines.extend(f"{_escape(key, key=True)}={_escape(str(value))}" for key, value in self.extra.items())
        return "\n".join(lines) + "\n"

    @classmethod
    def from_text(cls, text: str, source: str = "hats.properties") -> CatalogProperties:
        raw = {}
        for line in _logical_lines(text):
            split = _separator(line)
            if split is None:
                raise CatalogError(f"{source}: line {line!r} is not key=value")
            raw[_unescape(line[:split].strip())] = _unescape(line[split + 1:].lstrip())  # a value's trailing spaces are its own
        by_key = {disk: name for name, disk in cls._KEYS.items()}
        known = {f.name: f for f in fields(cls) if f.name != "extra"}
        kwargs, extra = {}, {}
        for key, value in raw.items():
            name = by_key.get(key, key)
            if name not in known:
                extra[key] = value
                continue
            if known[name].type in ("int", int):
                try:
                    value = int(value)
                except ValueError:
                    raise CatalogError(f"{source}: {key}={value!r} is not an integer") from None
            kwargs[name] = value
        for required in ("catalog_name", "total_rows"):
            if required not in kwargs:
                raise CatalogError(f"{source} lacks {cls._KEYS[required]}; is this a HATS catalog?")
        try:
            return cls(**kwargs, extra=extra)
        except (TypeError, ValueError) as err:
            if isinstance(err, CatalogError):
                raise
            raise CatalogError(f"{source} is malformed: {err}") from err


_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\f": "\\f"}
_UNESCAPES = {"n": "\n", "r": "\r", "t": "\t", "f": "\f"}


def _escape(text: str, key: bool = False) -> str:
    """``text`` as a Java properties value (or ``key``): backslash, newline, carriage return, tab and form
    feed as escapes, other control characters and Unicode's line separators as ``\\uXXXX``, a leading space escaped; in a key also ``=``,
    ``:`` and spaces, which would end it. Other characters as they are (the file is UTF-8)."""
    out = []
    for i, c in enumerate(text):
        if c in _ESCAPES:
            out.append(_ESCAPES[c])
        elif ord(c) < 0x20 or ord(c) in (0x7F, 0x85, 0x2028, 0x2029):  # the last three end a line for Python's splitlines
            out.append(f"\\u{ord(c):04x}")
        elif (key and c in "=: #!") or (i == 0 and c == " "):
            out.append("\\" + c)
        else:
            out.append(c)
    return "".join(out)


def _unescape(text: str) -> str:
    """The inverse of :func:`_escape`, for any Java properties escapes: ``\\uXXXX``, ``\\n``, ``\\t``,
    ``\\r``, ``\\f``, and a backslash before any other character standing for that character."""
    out, i = [], 0
    while i < len(text):
        c = text[i]
        if c != "\\" or i + 1 == len(text):
            out.append(c)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", text[i + 2:i + 6]):
            out.append(chr(int(text[i + 2:i + 6], 16)))
            i += 6
        else:
            out.append(_UNESCAPES.get(nxt, nxt))
            i += 2
    return "".join(out)


def _logical_lines(text: str) -> list[str]:
    """The key-value lines of a Java properties file: comments (``#``, ``!``) and blank lines dropped, a
    line ending in an odd number of backslashes joined to the next, leading whitespace stripped."""
    lines, pending = [], None
    for physical in re.split(r"\r\n|\r|\n", text):  # as Java ends lines: not at U+2028, as str.splitlines would
        line = physical.lstrip()
        if pending is None and (not line or line[0] in "#!"):
            continue
        line = line if pending is None else pending + line
        trailing = len(line) - len(line.rstrip("\\"))
        if trailing % 2:
            pending = line[:-1]
            continue
        pending = None
        lines.append(line)
    if pending is not None:
        lines.append(pending)
    return lines


def _separator(line: str) -> int | None:
    """Where the first unescaped ``=`` or ``:`` of a properties line is (None: no such separator)."""
    i = 0
    while i < len(line):
        if line[i] == "\\":
            i += 2
            continue
        if line[i] in "=:":
            return i
        i += 1
    return None


def _read_small_text(catalog: str, url: str, storage_options: dict | None) -> str:
    """The text of one of the catalog's small metadata files; one-line :class:`CatalogError` when it is
    missing or not UTF-8 text (a damaged file)."""
    try:
        return read_text(url, storage_options)
    except (FileNotFoundError, NotADirectoryError) as err:
        if isinstance(err, NotADirectoryError) or (not is_remote(catalog) and os.path.isfile(strip_protocol(catalog))):
            raise CatalogError(f"{catalog!r} is a file, not a catalog (a directory that `skymorph run` writes)") from None
        if exists(manifest_url(catalog), storage_options):
            raise CatalogError(f"{catalog!r} is an unfinished catalog ({url} missing): a `skymorph run` is writing it or "
                               "was stopped; rerun it with the same --tiles, --model and --out to finish it") from None
        bucket = strip_protocol(catalog).split("/", 1)[0]
        if is_remote(catalog) and not exists(f"{catalog.split('://', 1)[0]}://{bucket}", storage_options):
            raise CatalogError(f"{catalog!r} is not a catalog: bucket {bucket!r} does not exist; check the URL") from None
        raise CatalogError(f"{catalog!r} is not a catalog ({url} missing); make one with `skymorph run`") from err
    except UnicodeDecodeError as err:
        raise CatalogError(
            f"{url} is not a text file ({err.reason} at byte {err.start}); {_rewrite(catalog)}"
        ) from None


def read_properties(catalog: str, storage_options: dict | None = None) -> CatalogProperties:
    url = properties_url(catalog)
    return CatalogProperties.from_text(_read_small_text(catalog, url, storage_options), source=url)


def write_properties(catalog: str, properties: CatalogProperties, storage_options: dict | None = None) -> None:
    atomic_write_text(properties_url(catalog), properties.to_text(), storage_options)


# ---- partition_info.csv -----------------------------------------------------------------------------


def write_partition_info(catalog: str, order: int, pixels, storage_options: dict | None = None) -> None:
    """``Norder,Npix`` then one ``K,P`` line per pixel, sorted (hats' ``PartitionInfo.write_to_file``)."""
    lines = ["Norder,Npix"] + [f"{order},{p}" for p in sorted({int(p) for p in pixels})]
    atomic_write_text(partition_info_url(catalog), "\n".join(lines) + "\n", storage_options)


def read_partition_info(catalog: str, storage_options: dict | None = None) -> list[tuple[int, int]]:
    """``[(order, npix), ...]`` from ``partition_info.csv``."""
    url = partition_info_url(catalog)
    text = _read_small_text(catalog, url, storage_options)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines or lines[0].replace(" ", "") != "Norder,Npix":
        raise CatalogError(f"{url} does not start with the header 'Norder,Npix'; {_rewrite(catalog)}")
    pixels = []
    for line in lines[1:]:
        try:
            order, npix = (int(v) for v in line.split(","))
        except ValueError:
            raise CatalogError(f"{url}: line {line!r} is not 'Norder,Npix' integers; {_rewrite(catalog)}") from None
        pixels.append((order, npix))
    return pixels
