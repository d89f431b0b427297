"""Writing a catalog: part files from workers, the run manifest, and the finish step in the driver.

Workers call :func:`write_part` once per tile row range: its rows are split by HEALPix pixel of the
catalog order and each piece is written atomically to ``Npix=P/part-<digest of tile + range>.parquet``
(:func:`skymorph.catalog.layout.part_name`), so a retried or resumed range overwrites its own files
and never duplicates a row. The driver records finished ranges in a :class:`Manifest` and, after the
last task, :func:`finish_catalog` removes parts no finished range owns, counts rows from Parquet
footers and writes ``_common_metadata``, ``partition_info.csv`` and ``hats.properties``.

The manifest is ``_skymorph/manifest.json`` plus a journal: while the job runs, a
:class:`ManifestJournal` appends the ranges finished in the last second as one small segment file, so
recording progress costs the new ranges only, not the whole manifest (500,000 ranges serialise to
78 MB in 3.0 s, benchmarks/manifest.py). :func:`write_manifest` compacts: it writes the whole
manifest, then removes the segments it holds. Every write is atomic and adding a range twice is
harmless, so a driver killed at any point leaves a manifest that :func:`read_manifest` reads whole.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np

from skymorph.catalog import layout
from skymorph.catalog.layout import CatalogMetadata, CatalogProperties
from skymorph.errors import CatalogError, first_line
from skymorph.storage import (
    atomic_write_bytes,
    atomic_write_text,
    filesystem,
    is_remote,
    read_text,
    remove_empty_directories,
    remove_paths,
    strip_protocol,
    write_parquet,
)

__all__ = [
    "healpix_29",
    "column_metadata",
    "catalog_schema",
    "describe_schema",
    "with_version",
    "build_part_table",
    "write_part",
    "RangeRecord",
    "Manifest",
    "read_manifest",
    "write_manifest",
    "journal_segments",
    "ManifestJournal",
    "write_failures",
    "read_failures",
    "FinishReport",
    "finish_catalog",
]

_COMPRESSION = "zstd"

# What each column means, as Arrow field metadata (``description``, ``unit``) in ``_common_metadata`` (the
# schema HATS readers take; not in every part, where 163 descriptions would add ~40 KB to each footer)
# and in query outputs; the quantities are skymorph.posterior's. Posterior columns are told apart by
# their suffix, the longest first. {n} is "N = <n_volunteers>", or "N" where that is unknown.
_BASE_DESCRIPTIONS = {
    "object_id": "Object identifier, from the tile store's object_id array.",
    "ra": "Right ascension, ICRS.",
    "dec": "Declination, ICRS.",
    layout.SPATIAL_INDEX_COLUMN: "HEALPix nested index of (ra, dec) at order 29 (the HATS spatial index).",
    "tile": "URL of the tile store that holds the galaxy's image.",
    "row": "Index of the galaxy's image in its tile store.",
    "bald_total": "Sum over questions q of q_asked x q_bald, in nats.",
}
_UNITS = {"ra": "deg", "dec": "deg"}
_SPREAD = (" of the vote fraction k/N ({n} volunteers asked the question) under the posterior predictive: "
           "the model's uncertainty plus counting noise.")
_SUFFIX_DESCRIPTIONS = (
    ("_fraction_std", "Standard deviation" + _SPREAD),
    ("_fraction_q05", "5% quantile" + _SPREAD),
    ("_fraction_q95", "95% quantile" + _SPREAD),
    ("_fraction", "Posterior-mean vote fraction: the share of volunteers asked this question who give this answer."),
    ("_asked_bald", "This question's asked x bald: its term in bald_total, the information expected from the volunteers "
                    "asked it (catalog pick's score), in nats."),
    ("_asked", "Predicted share of volunteers who would be asked this question: the product of the fractions "
               "of the answers leading to it (1 at the root)."),
    ("_bald", "BALD (Walmsley et al. 2020): the largest mutual information between an answer's vote count and "
              "the model's sample over this question's answers, in nats."),
)


def healpix_29(ra_deg: np.ndarray, dec_deg: np.ndarray) -> np.ndarray:
    """The nested HEALPix index at order 29 of each position (hats' ``_healpix_29`` spatial index).

    The same call hats makes (``hats.pixel_math.healpix_shim.radec2pix``): cdshealpix
    ``nested.lonlat_to_healpix`` at depth 29, as int64. The pixel at catalog order ``K`` is then
    ``_healpix_29 >> 2 * (29 - K)``.
    """
    import astropy.units as u
    from astropy.coordinates import Latitude, Longitude
    from cdshealpix import nested

    lon = Longitude(np.asarray(ra_deg, dtype=np.float64), unit=u.deg)
    lat = Latitude(np.asarray(dec_deg, dtype=np.float64), unit=u.deg)
    return nested.lonlat_to_healpix(lon, lat, layout.SPATIAL_INDEX_ORDER).astype(np.int64)


def column_metadata(name: str, n_volunteers: int | None = None) -> dict[str, str]:
    """What catalog column ``name`` holds, from its name: ``{"description": ...}`` plus ``"unit"``
    (astropy's string) where it has one; ``{}`` for a name that is no catalog column's.
    ``n_volunteers`` is the catalog's N, named in the descriptions of the vote-fraction spreads."""
    description = _BASE_DESCRIPTIONS.get(name) or next((text for suffix, text in _SUFFIX_DESCRIPTIONS if name.endswith(suffix)), None)
    if description is None:
        return {}
    meta = {"description": description.format(n="N" if n_volunteers is None else f"N = {n_volunteers}")}
    return meta | ({"unit": _UNITS[name]} if name in _UNITS else {})


def catalog_schema(posterior_columns, metadata: CatalogMetadata):
    """The catalog's Arrow schema: :data:`layout.BASE_COLUMNS` then ``posterior_columns`` (float32, in
    the order :func:`skymorph.posterior.summarize` returns them), with ``metadata`` as key-value
    metadata (the parts' schema; :func:`describe_schema` adds what each column means)."""
    import pyarrow as pa

    base = [
        pa.field("object_id", pa.int64(), nullable=False),
        pa.field("ra", pa.float64(), nullable=False),
        pa.field("dec", pa.float64(), nullable=False),
        pa.field(layout.SPATIAL_INDEX_COLUMN, pa.int64(), nullable=False),
        pa.field("tile", pa.string(), nullable=False),
        pa.field("row", pa.int64(), nullable=False),
    ]
    clash = set(posterior_columns) & set(layout.BASE_COLUMNS)
    if clash:
        raise CatalogError(f"posterior columns {sorted(clash)} clash with the catalog's base columns")
    fields = base + [pa.field(name, pa.float32()) for name in posterior_columns]
    return pa.schema(fields, metadata=metadata.to_kv())


def with_version(schema, version: str):
    """``schema`` with ``version`` as its ``skymorph.version`` key-value metadata: a worker stamps the
    version it runs, and the finish step the versions of all the parts (:func:`layout.joined_versions`)."""
    return schema.with_metadata({**(schema.metadata or {}), b"skymorph.version": version.encode()})


def describe_schema(schema):
    """``schema`` with field metadata ``description`` (and ``unit``) on every catalog column: a field's
    own, else :func:`column_metadata` of its name, with N from the ``skymorph.n_volunteers`` key (query
    results come from DuckDB, which keeps no field metadata)."""
    import pyarrow as pa

    n = (schema.metadata or {}).get(b"skymorph.n_volunteers", b"")
    n = int(n) if n.isdigit() else None
    return pa.schema([f if f.metadata else f.with_metadata(column_metadata(f.name, n)) for f in schema], metadata=schema.metadata)


def build_part_table(schema, object_id, ra, dec, tile: str, start: int, posterior: dict):
    """One Arrow table for rows ``start, start + 1, ...`` of ``tile``, columns exactly ``schema``'s."""
    import pyarrow as pa

    n = len(object_id)
    columns = {
        "object_id": np.asarray(object_id, dtype=np.int64),
        "ra": np.asarray(ra, dtype=np.float64),
        "dec": np.asarray(dec, dtype=np.float64),
        layout.SPATIAL_INDEX_COLUMN: healpix_29(ra, dec),
        "tile": pa.array([tile] * n, type=pa.string()),
        "row": np.arange(start, start + n, dtype=np.int64),
    }
    names = schema.names[len(layout.BASE_COLUMNS):]
    missing = [name for name in names if name not in posterior]
    if missing or len(posterior) != len(names):
        raise CatalogError(f"posterior columns {sorted(posterior)} do not match the catalog schema's {names}")
    for name in names:
        values = np.asarray(posterior[name], dtype=np.float32)
        if values.shape != (n,):
            raise CatalogError(f"posterior column {name!r} has shape {values.shape}, expected ({n},)")
        columns[name] = values
    return pa.Table.from_arrays([pa.array(columns[f.name], type=f.type) for f in schema], schema=schema)


def write_part(catalog: str, table, tile_url: str, start: int, stop: int, order: int,
               storage_options: dict | None = None) -> list[tuple[int, str, int]]:
    """Write the rows of tile range ``[start, stop)`` (``table``, as from :func:`build_part_table`) as
    one part per HEALPix pixel of ``order``; returns ``[(npix, part name, rows), ...]``.

    Each part carries the table's schema and key-value metadata; each write is atomic.
    """
    import pyarrow.compute as pc

    name = layout.part_name(tile_url, start, stop)
    shift = 2 * (layout.SPATIAL_INDEX_ORDER - order)
    pixels = np.right_shift(table.column(layout.SPATIAL_INDEX_COLUMN).to_numpy(), shift)
    unique = np.unique(pixels)
    written = []
    for npix in unique:
        piece = table.filter(pc.equal(pixels, npix)) if len(unique) > 1 else table
        write_parquet(piece, layout.part_url(catalog, order, int(npix), name), storage_options, compression=_COMPRESSION)
        written.append((int(npix), name, piece.num_rows))
    return written


# ---- manifest ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RangeRecord:
    """A finished tile row range: ``[start, stop)`` of ``tile`` (``n`` rows in all, stored in chunks of
    ``chunk_size``), written as ``parts`` = ``((npix, name, rows), ...)``."""

    tile: str
    start: int
    stop: int
    n: int
    chunk_size: int
    parts: tuple[tuple[int, str, int], ...]

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.tile, self.start, self.stop)

    @property
    def rows(self) -> int:
        return sum(rows for _, _, rows in self.parts)

    def to_dict(self) -> dict:
        return {"tile": self.tile, "start": self.start, "stop": self.stop, "n": self.n,
                "chunk_size": self.chunk_size, "parts": [list(p) for p in self.parts]}

    @classmethod
    def from_dict(cls, data: dict) -> RangeRecord:
        # One string per tile, shared by its ranges as in the run that wrote them: 79 B a range less on resume.
        return cls(tile=sys.intern(data["tile"]), start=int(data["start"]), stop=int(data["stop"]), n=int(data["n"]),
                   chunk_size=int(data["chunk_size"]),
                   parts=tuple((int(p), str(name), int(rows)) for p, name, rows in data["parts"]))


@dataclass
class Manifest:
    """``CATALOG/_skymorph/manifest.json``: which model wrote the catalog, at which order, for how many
    volunteers and with how many rows per task, whether its tiles' positions are placeholders (these two
    None in manifests older than their field), and the tile ranges done. Mutable: the driver adds ranges as
    results arrive and rewrites the file atomically."""

    model_sha256: str
    order: int
    ranges: dict
    n_volunteers: int = 40
    rows_per_task: int | None = None
    placeholder_positions: bool | None = None

    def add(self, record: RangeRecord) -> None:
        self.ranges[record.key] = record

    def to_json(self) -> str:
        return json.dumps({
            "format": 1,
            "model_sha256": self.model_sha256,
            "order": self.order,
            "n_volunteers": self.n_volunteers,
            "rows_per_task": self.rows_per_task,
            "placeholder_positions": self.placeholder_positions,
            "ranges": [r.to_dict() for r in sorted(self.ranges.values(), key=lambda r: r.key)],
        }, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str, source: str = "manifest") -> Manifest:
        try:
            data = json.loads(text)
            records = [RangeRecord.from_dict(r) for r in data["ranges"]]
            return cls(model_sha256=data["model_sha256"], order=int(data["order"]),
                       ranges={r.key: r for r in records}, n_volunteers=int(data["n_volunteers"]),
                       rows_per_task=None if data.get("rows_per_task") is None else int(data["rows_per_task"]),
                       placeholder_positions=None if data.get("placeholder_positions") is None else bool(data["placeholder_positions"]))
        except (ValueError, KeyError, TypeError) as err:
            raise CatalogError(f"{source} is corrupt ({err}); rerun with --overwrite to start the catalog afresh") from err


def journal_segments(catalog: str, storage_options: dict | None = None) -> list[str]:
    """The journal's segment files, oldest first: none once :func:`write_manifest` has compacted them."""
    fs, root = filesystem(layout.journal_url(catalog), storage_options)
    fs.invalidate_cache(root)
    if not fs.exists(root):
        return []
    return sorted(p for p in fs.ls(root, detail=False) if p.endswith(".json") and not p.rsplit("/", 1)[-1].startswith("."))


def read_manifest(catalog: str, storage_options: dict | None = None) -> Manifest | None:
    """The catalog's manifest with its journal applied, or None where there is none yet."""
    url = layout.manifest_url(catalog)
    try:
        text = read_text(url, storage_options)
    except FileNotFoundError:
        return None
    except UnicodeDecodeError as err:
        raise CatalogError(f"{url} is corrupt (not UTF-8 text: {err.reason}); rerun with --overwrite to start the catalog afresh") from None
    manifest = Manifest.from_json(text, source=url)
    segments = journal_segments(catalog, storage_options)
    if segments:
        fs, _ = filesystem(catalog, storage_options)
        for path, data in sorted(fs.cat(segments).items()):  # one concurrent fetch on S3
            try:
                records = [RangeRecord.from_dict(r) for r in json.loads(data)]
            except (ValueError, KeyError, TypeError) as err:
                raise CatalogError(f"manifest journal segment {path} is corrupt ({err}); rerun with --overwrite") from err
            for record in records:
                manifest.add(record)
    return manifest


def write_manifest(catalog: str, manifest: Manifest, storage_options: dict | None = None) -> None:
    """Write the whole manifest, then remove the journal segments it now holds (compaction)."""
    segments = journal_segments(catalog, storage_options)
    atomic_write_text(layout.manifest_url(catalog), manifest.to_json(), storage_options)
    if segments:
        remove_paths(filesystem(catalog, storage_options)[0], segments)


class ManifestJournal:
    """Records finished ranges for the driver: :meth:`add` to the in-memory manifest, :meth:`flush`
    the ranges added since the last flush as one segment ``journal/<ns time>-<session>-<seq>.json``,
    compacting (:func:`write_manifest`) once ``compact_every`` segments have piled up, which bounds
    how many files a resume reads."""

    def __init__(self, catalog: str, manifest: Manifest, storage_options: dict | None = None, compact_every: int = 1000) -> None:
        self.catalog, self.manifest, self.storage_options = catalog, manifest, storage_options
        self.compact_every = compact_every
        self._session = uuid.uuid4().hex[:12]
        self._seq = 0
        self._pending: list[RangeRecord] = []
        self._segments = len(journal_segments(catalog, storage_options))

    def add(self, record: RangeRecord) -> None:
        self.manifest.add(record)
        self._pending.append(record)

    def flush(self) -> None:
        if not self._pending:
            return
        name = f"{time.time_ns():020d}-{self._session}-{self._seq:08d}.json"
        text = json.dumps([r.to_dict() for r in self._pending], separators=(",", ":"))
        atomic_write_text(f"{layout.journal_url(self.catalog)}/{name}", text, self.storage_options)
        self._seq += 1
        self._segments += 1
        self._pending = []
        if self._segments >= self.compact_every:
            self.compact()

    def compact(self) -> None:
        self._pending = []  # the whole manifest holds them
        write_manifest(self.catalog, self.manifest, self.storage_options)
        self._segments = 0


# ---- failures ---------------------------------------------------------------------------------------


def write_failures(catalog: str, failures: list[dict], storage_options: dict | None = None) -> None:
    """``failures.parquet``: one row per failed tile range: tile, start, stop, stage, reason (``stop``
    null where the tile failed before its length was known: the rows from ``start`` on)."""
    import pyarrow as pa

    schema = pa.schema([("tile", pa.string()), ("start", pa.int64()), ("stop", pa.int64()),
                        ("stage", pa.string()), ("reason", pa.string())])
    table = pa.Table.from_pylist([{k: f.get(k) for k in schema.names} for f in failures], schema=schema)
    write_parquet(table, layout.failures_url(catalog), storage_options)


def read_failures(catalog: str, storage_options: dict | None = None) -> list[dict]:
    from skymorph.storage import read_parquet

    try:
        return read_parquet(layout.failures_url(catalog), storage_options).to_pylist()
    except FileNotFoundError:
        return []


# ---- finish -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FinishReport:
    total_rows: int
    n_parts: int
    pixels: tuple[int, ...]
    removed_parts: int
    removed_temp_files: int = 0


def finish_catalog(catalog: str, manifest: Manifest, schema, properties: CatalogProperties,
                   storage_options: dict | None = None, threads: int = 16) -> FinishReport:
    """Make ``catalog`` a complete HATS catalog from the parts the manifest's ranges own.

    Parts on disk that no finished range owns (left by a range planned differently, or by an
    interrupted run whose range was not recorded and is not finished now) are removed, and so are the
    hidden temp files of local writers killed before their rename. Rows are counted
    from the Parquet footers and checked against the manifest. ``properties.total_rows`` is replaced
    by the count. Metadata files are written last, each atomically.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    owned = {(npix, name): rows for r in manifest.ranges.values() for npix, name, rows in r.parts}
    on_disk = layout.list_parts(catalog, storage_options)
    keep = [p for p in on_disk if p.order == manifest.order and (p.npix, p.name) in owned]
    stale = [p for p in on_disk if not (p.order == manifest.order and (p.npix, p.name) in owned)]
    found = {(p.npix, p.name) for p in keep}
    lost = sorted(set(owned) - found)
    if lost:
        npix, name = lost[0]
        raise CatalogError(
            f"catalog {catalog!r}: {len(lost)} part file(s) in the manifest are missing (e.g. Npix={npix}/{name}); "
            "rerun with --overwrite"
        )
    temps = layout.list_temp_files(catalog, storage_options)  # every range is finished: no writer owns them
    remove_paths(filesystem(catalog, storage_options)[0], [strip_protocol(p.url) for p in stale] + temps)
    if not is_remote(catalog):  # hats' validation refuses a pixel directory without a part (S3 has no directories)
        remove_empty_directories([os.path.dirname(strip_protocol(p.url)) for p in stale] + [os.path.dirname(p) for p in temps],
                                  strip_protocol(layout.dataset_url(catalog)))

    def rows_and_version(part) -> tuple[int, str]:  # not the footer: 330 KB each, 30 GB for 10^5 parts
        try:
            footer = layout.part_footer(part.url, storage_options)
        except pa.ArrowInvalid as err:  # damaged after its writer's atomic write: by another hand
            raise CatalogError(f"catalog {catalog!r}: part {part.url} is not a readable Parquet file ({first_line(err)}); "
                               "rerun with --overwrite") from err
        return footer.num_rows, layout.metadata_text(footer.metadata).get("skymorph.version", "")

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        counts, versions = zip(*pool.map(rows_and_version, keep)) if keep else ((), ())
    for part, rows in zip(keep, counts):
        if rows != owned[(part.npix, part.name)]:
            raise CatalogError(
                f"catalog {catalog!r}: part {part.url} has {rows} rows, the manifest says "
                f"{owned[(part.npix, part.name)]}; rerun with --overwrite"
            )
    total = int(sum(counts))
    pixels = tuple(sorted({p.npix for p in keep}))
    # the versions that wrote the parts, not only this finishing run's: a run resumed after an upgrade
    version = layout.joined_versions(versions)
    if version:
        schema = with_version(schema, version)
        properties = replace(properties, skymorph_version=version)

    buffer = io.BytesIO()
    pq.write_metadata(describe_schema(schema), buffer)
    atomic_write_bytes(layout.common_metadata_url(catalog), buffer.getvalue(), storage_options)
    layout.write_partition_info(catalog, manifest.order, pixels, storage_options)
    layout.write_properties(catalog, replace(properties, total_rows=total, order=manifest.order), storage_options)
    return FinishReport(total_rows=total, n_parts=len(keep), pixels=pixels, removed_parts=len(stale), removed_temp_files=len(temps))
