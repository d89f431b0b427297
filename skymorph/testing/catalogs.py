"""Synthetic skymorph catalogs in DESIGN's HATS layout, for tests and benchmarks.

:func:`write_synthetic_catalog` lays ceil(``n_rows`` / ``per_tile``) square tiles (``tile_deg`` on a
side) on a grid in a sky patch, draws ``per_tile`` galaxies uniformly on the sphere inside each, and
writes every (tile, HEALPix pixel) group as one part file, exactly where :mod:`skymorph.catalog.layout`
puts them. Paths, part names, ``hats.properties``, ``partition_info.csv`` and the ``skymorph.*``
metadata all come from that module, so a synthetic catalog and one written by ``skymorph run``
cannot diverge.

The posterior columns are plausible, not computed from a model: per question the fractions are a
Dirichlet draw, the spread a binomial standard error plus model scatter, ``q05``/``q95`` the fraction
-/+ 1.645 spread clipped to [0, 1], ``asked`` the product of the fractions of the answers leading to the
question, ``bald`` a random share of the fraction entropy and ``bald_total = sum_q asked_q * bald_q``
(DESIGN's definition). All columns are float32 as the writer's, so sizes are realistic.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np

from skymorph.errors import InputError
from skymorph.posterior import column_names
from skymorph.schema import get_schema

__all__ = ["SyntheticCatalog", "write_synthetic_catalog", "FAKE_MODEL_SHA256"]

FAKE_MODEL_SHA256 = hashlib.sha256(b"skymorph synthetic catalog").hexdigest()


@dataclass(frozen=True)
class SyntheticCatalog:
    """What :func:`write_synthetic_catalog` wrote: ``url``, ``rows``, ``parts``, ``pixels`` (order-K
    Npix with data), ``order`` and the tile names (``tile_urls``, one per tile, as the ``tile`` column)."""

    url: str
    rows: int
    parts: int
    pixels: tuple[int, ...]
    order: int
    tile_urls: tuple[str, ...]


def _posterior(rng: np.random.Generator, schema, n: int, n_volunteers: int) -> dict[str, np.ndarray]:
    fractions = np.empty((n, schema.n_answers), dtype=np.float64)
    bald = np.empty((n, len(schema.questions)), dtype=np.float64)
    for qi, sl in enumerate(schema.question_slices):
        width = sl.stop - sl.start
        gammas = rng.standard_gamma(rng.uniform(0.3, 3.0, size=(n, 1)), size=(n, width))
        f = gammas / np.maximum(gammas.sum(axis=1, keepdims=True), 1e-300)
        fractions[:, sl] = f
        entropy = -(f * np.log(np.clip(f, 1e-12, 1.0))).sum(axis=1)
        bald[:, qi] = entropy * rng.beta(1.5, 6.0, size=n)
    spread = np.sqrt(fractions * (1 - fractions) / n_volunteers + rng.uniform(0.0, 0.1, size=fractions.shape) ** 2)
    asked = np.ones((n, len(schema.questions)))
    for qi, path in enumerate(schema.ancestry):
        for answer in path:
            asked[:, qi] *= fractions[:, answer]
    columns: dict[str, np.ndarray] = {}
    for a, name in enumerate(schema.answer_columns):
        f, s = fractions[:, a], spread[:, a]
        columns[f"{name}_fraction"] = f
        columns[f"{name}_fraction_std"] = s
        columns[f"{name}_fraction_q05"] = np.clip(f - 1.645 * s, 0, 1)
        columns[f"{name}_fraction_q95"] = np.clip(f + 1.645 * s, 0, 1)
    for qi, q in enumerate(schema.question_names):
        columns[f"{q}_asked"] = asked[:, qi]
        columns[f"{q}_bald"] = bald[:, qi]
    columns["bald_total"] = (asked * bald).sum(axis=1)
    return {k: v.astype(np.float32) for k, v in columns.items()}


def _tile_centres(n_tiles: int, tile_deg: float, ra0: float, dec0: float) -> np.ndarray:
    side = int(np.ceil(np.sqrt(n_tiles)))
    i = np.arange(n_tiles)
    dec = dec0 + (i // side - (side - 1) / 2) * tile_deg
    ra = ra0 + (i % side - (side - 1) / 2) * tile_deg / np.cos(np.radians(dec))
    return np.stack([ra % 360.0, dec], axis=1)


def _write_tiles(job: dict) -> list:
    """Write the parts of tiles ``job["tiles"]`` with the catalog writer; one RangeRecord per tile."""
    from skymorph.catalog import writer

    schema = get_schema(job["schema"])
    per_tile, tile_deg = job["per_tile"], job["tile_deg"]
    records = []
    for tile_index, (ra_c, dec_c) in zip(job["tiles"], job["centres"]):
        rng = np.random.default_rng([job["seed"], tile_index])
        half = np.radians(tile_deg / 2)
        # Uniform on the sphere inside the tile: uniform in sin(dec), then in RA.
        sin_lo, sin_hi = np.sin(max(np.radians(dec_c) - half, -np.pi / 2)), np.sin(min(np.radians(dec_c) + half, np.pi / 2))
        dec = np.degrees(np.arcsin(rng.uniform(sin_lo, sin_hi, per_tile)))
        ra = (ra_c + rng.uniform(-0.5, 0.5, per_tile) * tile_deg / np.cos(np.radians(dec_c))) % 360.0
        object_id = np.int64(tile_index) * per_tile + np.arange(per_tile, dtype=np.int64)
        tile_url = job["tile_urls"][tile_index]
        posterior = _posterior(rng, schema, per_tile, job["n_volunteers"])
        table = writer.build_part_table(job["arrow_schema"], object_id, ra, dec, tile_url, 0, posterior)
        parts = writer.write_part(job["out"], table, tile_url, 0, per_tile, job["order"])
        records.append(writer.RangeRecord(tile_url, 0, per_tile, per_tile, per_tile, tuple(parts)))
    return records


def write_synthetic_catalog(
    out: str,
    n_rows: int,
    *,
    per_tile: int = 4096,
    tile_deg: float = 0.5,
    centre: tuple[float, float] = (150.0, 2.0),
    order: int = 5,
    schema: str = "decals",
    n_volunteers: int = 40,
    seed: int = 0,
    workers: int | None = None,
    failed_tiles: tuple[tuple[str, str], ...] = (),
    progress: bool = False,
) -> SyntheticCatalog:
    """Write a catalog of ``ceil(n_rows / per_tile)`` tiles of ``per_tile`` rows to local path ``out``.

    Tiles are ``tile_deg`` squares on a grid centred on ``centre`` (RA, Dec in degrees); the ``tile``
    column holds ``<out>/tiles/tile-<i>.zarr`` (no tile store is written). Parallel over ``workers``
    processes (default: all cores); deterministic for a given seed. ``failed_tiles`` ``(tile, reason)``
    pairs go to ``_skymorph/failures.parquet`` (stage ``read``).
    """
    from skymorph.catalog import layout, writer

    if n_rows < 1 or per_tile < 1:
        raise InputError(f"n_rows and per_tile must be positive, got {n_rows}, {per_tile}")
    schema_obj = get_schema(schema)
    n_tiles = -(-n_rows // per_tile)
    centres = _tile_centres(n_tiles, tile_deg, *centre)
    tile_urls = tuple(os.path.join(out, "tiles", f"tile-{i:06d}.zarr") for i in range(n_tiles))
    metadata = layout.CatalogMetadata(
        model_sha256=FAKE_MODEL_SHA256,
        samples=30,
        seed=seed,
        n_volunteers=n_volunteers,
        schema_json=schema_obj.to_json(),
        version="synthetic",
        likelihood="multinomial",
    )
    arrow_schema = writer.catalog_schema(column_names(schema_obj), metadata)
    workers = max(1, min(workers or os.cpu_count() or 1, n_tiles))
    chunks = np.array_split(np.arange(n_tiles), min(n_tiles, workers * 8))
    base = dict(out=out, per_tile=per_tile, tile_deg=tile_deg, order=order, schema=schema, seed=seed,
                n_volunteers=n_volunteers, arrow_schema=arrow_schema, tile_urls=tile_urls)
    jobs = [dict(base, tiles=chunk.tolist(), centres=centres[chunk].tolist()) for chunk in chunks if len(chunk)]
    manifest = writer.Manifest(model_sha256=FAKE_MODEL_SHA256, order=order, ranges={})
    with ProcessPoolExecutor(workers) if workers > 1 else nullcontext() as pool:
        results = pool.map(_write_tiles, jobs) if workers > 1 else map(_write_tiles, jobs)
        if progress:
            from skymorph.progress import progress_bar

            results = progress_bar(results, total=len(jobs), desc="synthetic catalog", unit="chunk")
        for records in results:
            for record in records:
                manifest.add(record)
    writer.write_manifest(out, manifest)
    writer.write_failures(out, [{"tile": t, "start": 0, "stop": per_tile, "stage": "read", "reason": r}
                                for t, r in failed_tiles])
    properties = layout.CatalogProperties(
        catalog_name=os.path.basename(os.path.abspath(out)) or "synthetic",
        total_rows=0,
        order=order,
        builder="skymorph.testing.catalogs",
        creation_date=layout.CatalogProperties.now(),
        skymorph_version="synthetic",
        skymorph_model_sha256=FAKE_MODEL_SHA256,
        skymorph_samples=30,
        skymorph_seed=seed,
        skymorph_n_volunteers=n_volunteers,
        skymorph_schema=schema_obj.name,
    )
    report = writer.finish_catalog(out, manifest, arrow_schema, properties)
    return SyntheticCatalog(url=out, rows=report.total_rows, parts=report.n_parts, pixels=report.pixels,
                            order=order, tile_urls=tile_urls)
