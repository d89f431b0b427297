"""A synthetic survey with known truth: tile stores, simulated Galaxy Zoo votes and the true parameters.

``synthesize(out, ...)`` picks ``n_tiles`` HEALPix pixels (cdshealpix, nested) whose centres lie in a
footprint, draws ``per_tile`` positions uniformly inside each pixel, renders the galaxies
(:mod:`skymorph.survey._galaxy`), simulates volunteers (:mod:`skymorph.survey._votes`) and writes::

    out/tiles/hpx<order>_<pixel>.zarr   one tile store per pixel (skymorph.tiles)
    out/tiles.txt                       the tile list (entries relative to out/)
    out/labels.parquet                  object_id, tile, row, {q}_{a} vote counts (int32), total_votes
    out/truth.parquet                   object_id, tile, row, ra, dec, the morphology, {q}_{a}_true

Tiles are made in parallel by a process pool. Every tile draws from its own random streams, derived
from ``seed`` and the tile's index with numpy's ``SeedSequence``, so the bytes do not depend on the
number of workers or the order in which tiles finish: same seed, same survey, on the same kind of CPU.
numpy picks its float kernels by instruction set (AVX-512, AVX2, SSE), whose last bits differ: a
survey of 1,024 galaxies made under AVX2 differed from the AVX-512 one in 43 of 8.4 million pixels,
by 1, and in one galaxy's votes on a question whose true fraction sat on a rounding edge.

``overwrite`` removes the survey at ``out`` before the new one is made: a run stopped on the way leaves
neither (the same seed makes the same survey again).
"""

from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import numpy as np

from skymorph import storage
from skymorph.cores import check_parallelism, usable_cores
from skymorph.errors import InputError, SkymorphError, check_int
from skymorph.posterior import MAX_VOLUNTEERS
from skymorph.schema import Schema, get_schema
from skymorph.seeds import check_seed
from skymorph.survey._output import prepare_survey_out, writing_survey

__all__ = ["synthesize", "SynthSummary", "Footprint"]

_SURVEY = "skymorph-synthetic"
_BAND = "r"
_POSITION_ORDER = 29  # positions are centres of random order-29 sub-pixels (~0.4 mas): uniform by area
_MAX_TILE_ORDER = 10  # _pick_pixels lists the whole sky at the tile order: 12.6 M pixels, ~0.3 GB, at 10


@dataclass(frozen=True)
class Footprint:
    """An RA/Dec box in degrees (ICRS): tiles are the HEALPix pixels whose centres fall inside."""

    ra_min_deg: float = 120.0
    ra_max_deg: float = 250.0
    dec_min_deg: float = -5.0
    dec_max_deg: float = 60.0

    def __post_init__(self) -> None:
        if not 0 <= self.ra_min_deg < self.ra_max_deg <= 360:
            raise InputError(f"footprint needs 0 <= ra_min < ra_max <= 360 degrees, got {self.ra_min_deg}, {self.ra_max_deg}")
        if not -90 <= self.dec_min_deg < self.dec_max_deg <= 90:
            raise InputError(
                f"footprint needs -90 <= dec_min < dec_max <= 90 degrees, got {self.dec_min_deg}, {self.dec_max_deg}"
            )


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`synthesize` wrote: where, how much, how fast."""

    out: str
    n_tiles: int
    n_galaxies: int
    size: int
    schema: str
    seed: int
    workers: int
    bytes_written: int
    seconds: float
    cpu_seconds: float  # CPU time of the tile makers (this process or the workers), not of the whole run

    @property
    def galaxies_per_second(self) -> float:
        return self.n_galaxies / self.seconds if self.seconds > 0 else float("inf")

    def __str__(self) -> str:
        return (
            f"synthetic survey: {self.n_tiles} tiles, {self.n_galaxies} galaxies ({self.size} px, schema "
            f"{self.schema}, seed {self.seed}), {self.bytes_written / 1e6:.1f} MB in {self.seconds:.1f} s "
            f"({self.galaxies_per_second:.0f} galaxies/s with {self.workers} workers; "
            f"{self.n_galaxies / max(self.cpu_seconds, 1e-9):.0f} galaxies per CPU second)\n"
            f"  tiles:  {storage.join(self.out, 'tiles.txt')}\n"
            f"  labels: {storage.join(self.out, 'labels.parquet')}\n"
            f"  truth:  {storage.join(self.out, 'truth.parquet')}"
        )


@dataclass(frozen=True)
class _TileJob:
    """Everything one worker needs to make one tile (picklable)."""

    index: int
    name: str
    url: str
    order: int
    pixel: int
    ra: np.ndarray  # positions are drawn by the parent: workers then need not import cdshealpix/astropy
    dec: np.ndarray
    per_tile: int
    size: int
    seed: int
    schema: Schema
    n_volunteers: float
    storage_options: dict


def _pick_pixels(n_tiles: int, order: int, footprint: Footprint, rng: np.random.Generator) -> np.ndarray:
    """``n_tiles`` distinct nested HEALPix pixels at ``order`` with centres in ``footprint``, sorted."""
    from cdshealpix import nested

    pixels = np.arange(12 * 4**order, dtype=np.uint64)
    lon, lat = nested.healpix_to_lonlat(pixels, order)
    ra, dec = lon.deg, lat.deg
    inside = pixels[
        (ra >= footprint.ra_min_deg) & (ra < footprint.ra_max_deg) & (dec >= footprint.dec_min_deg) & (dec < footprint.dec_max_deg)
    ]
    if inside.size < n_tiles:
        raise InputError(
            f"the footprint holds only {inside.size} HEALPix pixels of order {order}, fewer than the "
            f"{n_tiles} tiles asked for; widen the footprint or raise the HEALPix order (--healpix-order)"
        )
    return np.sort(rng.choice(inside, size=n_tiles, replace=False))


def _positions(pixel: int, order: int, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` positions uniform by area inside one nested pixel: centres of its random descendants at
    order 29 (equal-area cells, and a descendant's centre lies in its ancestor by construction)."""
    from cdshealpix import nested

    per_pixel = 4 ** (_POSITION_ORDER - order)
    children = np.uint64(pixel) * np.uint64(per_pixel) + rng.integers(0, per_pixel, size=n, dtype=np.uint64)
    lon, lat = nested.healpix_to_lonlat(children, _POSITION_ORDER)
    return lon.deg.astype(np.float64), lat.deg.astype(np.float64)


def _tile_rngs(seed: int, index: int) -> list[np.random.Generator]:
    """The tile's independent streams (positions, parameters, pixels, votes) from ``seed`` and its
    index alone, whichever process draws them."""
    streams = np.random.SeedSequence(seed, spawn_key=(1, index)).spawn(4)
    return [np.random.default_rng(s) for s in streams]


def _make_tile(job: _TileJob) -> dict:
    """Render, vote and write one tile; return its truth and votes (small arrays) for the tables."""
    from skymorph.survey._galaxy import FIELD_ARCSEC, STRETCH, GalaxyParams, render
    from skymorph.survey._votes import simulate_votes, true_vote_fractions
    from skymorph.tiles import write_tile

    cpu_started = time.process_time()
    _, rng_params, rng_pixels, rng_votes = _tile_rngs(job.seed, job.index)
    ra, dec = job.ra, job.dec
    psf_fwhm_arcsec = float(rng_params.uniform(1.0, 1.6))
    params = GalaxyParams.draw(rng_params, job.per_tile)
    images = render(params, job.size, psf_fwhm_arcsec, rng_pixels, stretch=True)[:, None]
    fractions = true_vote_fractions(params, job.schema)
    counts, total = simulate_votes(fractions, job.schema, job.n_volunteers, rng_votes)
    object_id = job.index * job.per_tile + np.arange(job.per_tile, dtype=np.int64)
    write_tile(
        job.url, images, object_id, ra, dec,
        survey=_SURVEY, bands=[_BAND], pixel_scale_arcsec=FIELD_ARCSEC / job.size,
        stretch=dict(STRETCH), resize="none: rendered at this size",
        chunk_size=256, storage_options=job.storage_options,
        extra_attrs={"seed": job.seed, "healpix_order": job.order, "healpix_pixel": job.pixel,
                     "psf_fwhm_arcsec": psf_fwhm_arcsec},
    )
    fs, path = storage.filesystem(job.url, job.storage_options)
    return {
        "object_id": object_id, "ra": ra, "dec": dec, "params": params.columns(),
        "psf_fwhm_arcsec": np.full(job.per_tile, psf_fwhm_arcsec), "fractions": fractions,
        "counts": counts, "total": total, "bytes": int(fs.du(path)),
        "cpu_seconds": time.process_time() - cpu_started,
    }


def _tables(jobs: list[_TileJob], results: list[dict], schema: Schema, provenance: dict[str, str]):
    """``(labels, truth)`` pyarrow Tables, rows in tile order then row order, with ``provenance`` as
    Parquet key-value metadata."""
    import pyarrow as pa

    cat = lambda key: np.concatenate([r[key] for r in results])  # noqa: E731
    tile = pa.array([job.name for job in jobs for _ in range(job.per_tile)], pa.string())
    rows = np.concatenate([np.arange(job.per_tile, dtype=np.int32) for job in jobs])
    base = {"object_id": cat("object_id"), "tile": tile, "row": rows}
    counts = cat("counts")
    labels = {**base, **{c: counts[:, i] for i, c in enumerate(schema.answer_columns)}, "total_votes": cat("total")}
    fractions = cat("fractions")
    params = {k: np.concatenate([r["params"][k] for r in results]) for k in results[0]["params"]}
    truth = {
        **base, "ra": cat("ra"), "dec": cat("dec"), **params, "psf_fwhm_arcsec": cat("psf_fwhm_arcsec"),
        **{f"{c}_true": fractions[:, i] for i, c in enumerate(schema.answer_columns)},
    }
    return pa.table(labels, metadata=provenance), pa.table(truth, metadata=provenance)


def synthesize(
    out: str,
    n_tiles: int = 16,
    per_tile: int = 512,
    size: int = 128,
    seed: int = 0,
    schema: str | Schema = "decals",
    n_volunteers: float = 40,
    workers: int | None = None,
    storage_options: dict | None = None,
    *,
    healpix_order: int = 5,
    footprint: Footprint = Footprint(),
    progress: bool = True,
    overwrite: bool = False,
) -> SynthSummary:
    """Write a synthetic survey to ``out`` (local path or ``s3://bucket/prefix``); see the module doc.

    ``n_tiles`` HEALPix pixels of ``healpix_order`` in ``footprint``, ``per_tile`` galaxies each,
    ``size`` x ``size`` pixel single-band cutouts; votes in ``schema`` (``decals``, ``gz2``; a custom
    schema's unknown questions get uniform vote fractions) from about ``n_volunteers`` volunteers a
    galaxy; ``workers`` processes (default: all cores). The same ``seed`` gives the same images, labels and truth (tile metadata records when it was written). An
    ``out`` that already holds a survey is refused unless ``overwrite``, which replaces it; one that
    another synthesis or ingest is writing is refused.

    With more than one worker the tiles are made in spawned processes, so a script that calls this
    must do so under ``if __name__ == "__main__":`` (as for any multiprocessing code).
    """
    from skymorph import __version__
    from skymorph.tiles import check_cutout_size, write_tile_list

    started = time.perf_counter()
    n_tiles = check_int("n_tiles", "--tiles", n_tiles, 1)
    per_tile = check_int("per_tile", "--per-tile", per_tile, 1)
    size = check_cutout_size(size, 16)
    seed = check_seed(seed)
    healpix_order = check_int("healpix_order", "--healpix-order", healpix_order, 0)
    if healpix_order > _MAX_TILE_ORDER:
        raise InputError(
            f"healpix_order (--healpix-order) must be at most {_MAX_TILE_ORDER} (tiles of ~3.4 arcmin; survey "
            f"patches are ~0.2 deg, order 8), got {healpix_order}"
        )
    if not (isinstance(n_volunteers, (int, float, np.integer, np.floating)) and 0 < n_volunteers < np.inf):
        raise InputError(f"n_volunteers (--volunteers) must be a finite number > 0, got {n_volunteers!r}")
    if n_volunteers > MAX_VOLUNTEERS:  # votes train would refuse (it takes counts below 2**24)
        raise InputError(f"n_volunteers (--volunteers) must be at most {MAX_VOLUNTEERS}, as `skymorph run "
                         f"--n-volunteers`, got {n_volunteers:g}")
    if not isinstance(footprint, Footprint):
        raise InputError(f"footprint must be a skymorph.survey.Footprint, got {type(footprint).__name__}")
    workers = usable_cores() if workers is None else check_parallelism(workers, "workers", "--workers", "tile-making processes")
    schema = get_schema(schema)
    storage_options = dict(storage_options or {})
    out = str(out).rstrip("/") if storage.is_remote(out) else str(out)
    layout_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    pixels = _pick_pixels(n_tiles, healpix_order, footprint, layout_rng)  # may refuse the footprint: before --out is touched
    with writing_survey(out, overwrite, storage_options, "survey synth") as lock:
        prepare_survey_out(out, storage_options)

        width = len(str(12 * 4**healpix_order - 1))
        jobs = []
        for index, pixel in enumerate(pixels):
            name = f"hpx{healpix_order}_{int(pixel):0{width}d}"
            url = storage.join(out, "tiles", f"{name}.zarr")
            ra, dec = _positions(int(pixel), healpix_order, per_tile, _tile_rngs(seed, index)[0])
            jobs.append(_TileJob(index, name, url, healpix_order, int(pixel), ra, dec, per_tile, size, seed, schema,
                                 float(n_volunteers), storage_options))
        workers = min(workers, n_tiles)
        results = _run(jobs, workers, progress)

        provenance = {
            "skymorph.source": "synthetic", "skymorph.seed": str(seed), "skymorph.schema": schema.to_json(),
            "skymorph.n_volunteers": f"{float(n_volunteers):g}", "skymorph.version": __version__,
        }
        labels, truth = _tables(jobs, results, schema, provenance)
        written = sum(r["bytes"] for r in results)
        lock.check_held()  # not the files that make it a survey, if another writer took the lock over meanwhile
        for name, table in (("labels.parquet", labels), ("truth.parquet", truth)):
            url = storage.join(out, name)
            storage.write_parquet(table, url, storage_options)
            fs, path = storage.filesystem(url, storage_options)
            written += int(fs.size(path))
        write_tile_list(storage.join(out, "tiles.txt"), [job.url for job in jobs], storage_options)
    return SynthSummary(
        out=out, n_tiles=n_tiles, n_galaxies=n_tiles * per_tile, size=size, schema=schema.name, seed=seed,
        workers=workers, bytes_written=written, seconds=time.perf_counter() - started,
        cpu_seconds=sum(r["cpu_seconds"] for r in results),
    )


def _run(jobs: list[_TileJob], workers: int, progress: bool) -> list[dict]:
    """Make every tile, in this process (one worker) or a pool; results in job order."""
    from skymorph.progress import progress_bar

    bar = progress_bar(total=sum(j.per_tile for j in jobs), unit="gal", desc="synth", disable=not progress)
    results: list[dict | None] = [None] * len(jobs)
    with bar:
        if workers == 1:
            for i, job in enumerate(jobs):
                results[i] = _make_tile(job)
                bar.update(job.per_tile)
            return results
        import multiprocessing

        # spawn, not fork: the parent may hold threads (zarr's event loop, s3fs) that fork would copy mid-state
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_exit_with_parent) as pool:
            futures = {pool.submit(_make_tile, job): i for i, job in enumerate(jobs)}
            try:
                for future in as_completed(futures):
                    results[futures[future]] = future.result()
                    bar.update(jobs[futures[future]].per_tile)
            except BaseException as err:  # SIGTERM, Ctrl-C, a failed tile: the tiles queued are not made (it took 52 s)
                # cancelled here, waiting for the tiles being made: the with block's own shutdown() resets
                # cancel_futures, and one with wait=False left the pool to make every queued tile
                pool.shutdown(wait=True, cancel_futures=True)
                if isinstance(err, BrokenProcessPool):
                    raise SkymorphError("a tile-making process died (killed, or out of memory?); rerun with --overwrite, "
                                        "with fewer --workers or a smaller --per-tile or --size if memory ran out") from None
                raise
    return results


def _exit_with_parent() -> None:
    """Pool initializer: end this worker when the process that started it dies (SIGKILL, the OOM killer).
    A worker waiting on its queue never notices, and one making a tile went on writing it into the
    survey that a rerun had since made."""
    import multiprocessing
    import multiprocessing.connection
    import os
    import threading

    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=lambda: (multiprocessing.connection.wait([parent.sentinel]), os._exit(1)), daemon=True,
                         name="exit-with-parent").start()
