"""What a catalog holds: open and validate one, and summarise it (``skymorph catalog info``).

:func:`open_catalog` reads only the small files (``hats.properties``, ``partition_info.csv``,
``dataset/_common_metadata``) through :mod:`skymorph.catalog.layout` and fails with one line naming
the URL if any is missing; every reader (query, pick, info) starts from the :class:`Catalog` it
returns. :func:`info` adds the failed tiles and the distribution of ``bald_total``, computed out of
core by DuckDB (a streaming t-digest for the quantiles, so memory does not grow with the catalog).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from skymorph.catalog import layout
from skymorph.errors import CatalogError, InputError

__all__ = ["Catalog", "CatalogInfo", "open_catalog", "info", "BALD_QUANTILES"]

BALD_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


@dataclass(frozen=True)
class Catalog:
    """An opened catalog: its ``url``, typed ``properties``, the ``metadata`` of the model that made it,
    the Arrow ``schema`` of its rows, its order-K ``pixels`` and the ``storage_options`` to read it."""

    url: str
    properties: layout.CatalogProperties
    metadata: layout.CatalogMetadata
    schema: object
    pixels: tuple[int, ...]
    storage_options: dict = field(default_factory=dict)

    @property
    def order(self) -> int:
        return self.properties.order

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(self.schema.names)

    def part_urls(self, pixels=None) -> list[str]:
        """The part files of ``pixels`` (default: every pixel of ``partition_info.csv``); one listing of
        each pixel directory only, or of the dataset for all of them."""
        if pixels is None:
            # partition_info.csv, not the listing, says which pixels the catalog has, as for a cone and
            # for LSDB: a run resumed on a finished catalog writes parts in new pixels before its finish.
            wanted = set(self.pixels)
            parts = [part for part in layout.list_parts(self.url, self.storage_options)
                     if part.order == self.order and part.npix in wanted]
            empty = wanted - {part.npix for part in parts}
            if empty:  # a cone refuses such a pixel too: a whole-catalog read was a smaller catalog, silently
                raise self._damaged(f"partition Npix={min(empty)} of partition_info.csv has no part file")
            return [part.url for part in parts]
        from skymorph.storage import filesystem, listed_url

        urls = []
        for npix in sorted(pixels):
            directory = layout.pixel_dir(self.url, self.order, int(npix))
            fs, path = filesystem(directory, self.storage_options)
            try:
                fs.invalidate_cache(path)  # fsspec keeps listings: parts may have landed since (layout.list_parts)
                names = fs.ls(path, detail=False)
            except FileNotFoundError:
                raise self._damaged(f"partition Npix={npix} of partition_info.csv has no directory {directory}") from None
            found = [listed_url(name, self.url) for name in sorted(names) if layout.parse_part_path(name) is not None]
            if not found:
                raise self._damaged(f"partition Npix={npix} of partition_info.csv has no part file")
            urls += found
        return urls

    def check_unchanged(self) -> None:
        """The catalog on storage must be the one opened (the same ``hats.properties``): rows read from a
        catalog run again since, kept open in a notebook, would carry the old run's model and provenance."""
        try:
            now = layout.read_properties(self.url, self.storage_options)
        except CatalogError:
            now = None
        if now != self.properties:
            raise CatalogError(f"catalog {self.url!r} was written again since it was opened (or is being written); "
                               "open it again")

    def check_outside(self, out: str, flag: str) -> None:
        """Refuse an output ``out`` in the catalog: a file in its dataset would be read as a part by
        pyarrow, LSDB and hats, and one beside it would be foreign to a rerun of ``skymorph run``."""
        from skymorph.storage import within

        if within(out, self.url):
            raise InputError(f"{flag} {out!r} is inside catalog {self.url!r}; write it elsewhere")

    def check_total_rows(self, rows: int) -> None:
        """``rows``, counted in the part files, must be ``hats.properties``' count: a part file lost from a
        pixel that has others (an interrupted copy) is otherwise a smaller catalog, read without a word."""
        if rows != self.properties.total_rows:
            raise self._damaged(f"its part files hold {rows:,} rows where hats.properties counts {self.properties.total_rows:,}")

    def _damaged(self, what: str) -> CatalogError:
        return CatalogError(f"catalog {self.url!r}: {what}: a `skymorph run` is rewriting the catalog, or it is damaged "
                            "(then rerun it with --overwrite)")


def open_catalog(url: str, storage_options: dict | None = None) -> Catalog:
    """Open the skymorph catalog at ``url`` (local path or ``s3://``); :class:`CatalogError` if it is not one."""
    url = str(url).rstrip("/") or str(url)  # "/" is the root, not the working directory
    options = dict(storage_options or {})
    properties = layout.read_properties(url, options)
    schema, metadata = layout.read_common_metadata(url, options)
    pixels = tuple(sorted(npix for order, npix in layout.read_partition_info(url, options) if order == properties.order))
    missing = [c for c in ("object_id", "ra", "dec", layout.SPATIAL_INDEX_COLUMN, "bald_total") if c not in schema.names]
    if missing:
        raise CatalogError(f"{url!r} lacks the column(s) {missing}; is it a skymorph catalog?")
    return Catalog(url=url, properties=properties, metadata=metadata, schema=schema, pixels=pixels, storage_options=options)


@dataclass(frozen=True)
class CatalogInfo:
    """``skymorph catalog info``: size, model provenance, failures and the ``bald_total`` distribution.

    ``bald_quantiles`` maps each of :data:`BALD_QUANTILES` to its (t-digest approximate) value;
    ``bald_min``/``bald_max``/``bald_mean`` are exact; all are None in a catalog without rows (JSON null,
    not NaN, which strict JSON parsers refuse). ``failed_tiles`` holds ``(tile, stage, reason)``.
    ``positions``: ``sky``, or ``placeholder`` where the rows' ra/dec are placeholders (tiles ingested
    without positions); empty in a catalog written before it was recorded.
    """

    url: str
    rows: int
    partitions: int
    order: int
    columns: tuple[str, ...]
    model_sha256: str
    samples: int
    seed: int
    schema: str
    n_volunteers: int
    version: str
    likelihood: str
    failed_tiles: tuple[tuple[str, str, str], ...]
    bald_min: float | None
    bald_mean: float | None
    bald_max: float | None
    bald_quantiles: dict
    positions: str = ""

    def to_dict(self) -> dict:
        return {
            "url": self.url,
            "rows": self.rows,
            "partitions": self.partitions,
            "order": self.order,
            "positions": self.positions or None,
            "columns": list(self.columns),
            "model": {
                "sha256": self.model_sha256,
                "samples": self.samples,
                "seed": self.seed,
                "schema": self.schema,
                "n_volunteers": self.n_volunteers,
                "likelihood": self.likelihood or None,
                "skymorph_version": self.version,
            },
            "failed_tiles": [dict(zip(("tile", "stage", "reason"), f)) for f in self.failed_tiles],
            "bald_total": {
                "min": self.bald_min,
                "mean": self.bald_mean,
                "max": self.bald_max,
                **{f"q{round(q * 100):02d}": v for q, v in self.bald_quantiles.items()},
            },
        }

    def __str__(self) -> str:
        if self.bald_min is None:
            bald = ["bald_total   (no finite values)" if self.rows else "bald_total   (no rows)"]
        else:
            quantiles = "  ".join(f"q{round(q * 100):02d}={v:.4g}" for q, v in self.bald_quantiles.items())
            bald = [f"bald_total   min={self.bald_min:.4g} mean={self.bald_mean:.4g} max={self.bald_max:.4g}",
                    f"             {quantiles}  (approximate: t-digest)"]
        lines = [
            f"catalog      {self.url}",
            f"rows         {self.rows:,} in {self.partitions:,} partitions (HEALPix order {self.order})",
            *(["positions    placeholders (ra = dec = 0: the tiles were ingested without sky positions); cone "
               "searches and partitions mean nothing"] if self.positions == layout.PLACEHOLDER_POSITIONS else []),
            f"columns      {len(self.columns)}: {', '.join(self.columns[:6])}"
            + (", ... (all of them: catalog info --json)" if len(self.columns) > 6 else ""),
            f"model        sha256 {self.model_sha256}",
            f"             T={self.samples} seed={self.seed} schema={self.schema} n_volunteers={self.n_volunteers}"
            f" likelihood={self.likelihood or 'unrecorded'} skymorph {self.version}",
            *bald,
            f"failed tiles {len(self.failed_tiles)}",
        ]
        lines += [f"  {tile} [{stage}]: {reason}" for tile, stage, reason in self.failed_tiles[:20]]
        if len(self.failed_tiles) > 20:
            lines.append(f"  ... and {len(self.failed_tiles) - 20} more")
        return "\n".join(lines)


def _failed_tiles(catalog: Catalog) -> tuple[tuple[str, str, str], ...]:
    from skymorph.catalog.writer import read_failures

    return tuple((f.get("tile"), f.get("stage"), f.get("reason")) for f in read_failures(catalog.url, catalog.storage_options))


def info(url: str, storage_options: dict | None = None) -> CatalogInfo:
    """Summarise the catalog at ``url``: rows, partitions, columns, model, failed tiles, ``bald_total``."""
    from skymorph.catalog.query import connect

    catalog = open_catalog(url, storage_options)
    quantile_list = ", ".join(repr(q) for q in BALD_QUANTILES)
    with connect(catalog) as con:
        # NaN (a catalog not written by skymorph run, which refuses them) would make mean and max NaN
        finite = "FILTER (WHERE NOT isnan(bald_total))"
        rows, low, mean, high, quantiles = con.execute(
            f"SELECT count(*), min(bald_total) {finite}, avg(bald_total) {finite}, max(bald_total) {finite}, "
            f"approx_quantile(bald_total, [{quantile_list}]) {finite} FROM catalog"
        ).fetchone()
    catalog.check_total_rows(rows)
    schema = catalog.metadata.schema
    return CatalogInfo(
        url=catalog.url,
        rows=int(rows),
        partitions=len(catalog.pixels),
        order=catalog.order,
        columns=catalog.columns,
        model_sha256=catalog.metadata.model_sha256,
        samples=catalog.metadata.samples,
        seed=catalog.metadata.seed,
        schema=schema.name,
        n_volunteers=catalog.metadata.n_volunteers,
        version=catalog.metadata.version,
        likelihood=catalog.metadata.likelihood,
        positions=catalog.properties.skymorph_positions,
        failed_tiles=_failed_tiles(catalog),
        bald_min=None if low is None else float(low),
        bald_mean=None if mean is None else float(mean),
        bald_max=None if high is None else float(high),
        bald_quantiles=dict(zip(BALD_QUANTILES, (None,) * len(BALD_QUANTILES) if quantiles is None
                                else (float(v) for v in quantiles))),
    )
