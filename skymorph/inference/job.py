"""``skymorph run``: the survey job's driver.

:func:`run_survey` validates everything it can before submitting work (the model carries skymorph
metadata, read without building an engine; the tile list parses; the output is writable and not another
model's catalog; some worker has the GPU that the tasks ask for),
then keeps a bounded window of tasks in flight on Dask (:mod:`skymorph.inference.driver`), one per tile
row range (:func:`skymorph.inference.task.run_range`), so its futures do not grow with the number of tiles (the
manifest it holds does, by about 0.5 KB per finished range: docs/scaling.md). Workers
write the part files; the driver records finished ranges in the manifest's journal (a small segment
at most once a second, so an interrupted driver resumes where it was, at a cost that does not grow
with the job), collects failures, and finishes the catalog
(:func:`skymorph.catalog.writer.finish_catalog`).

One driver per catalog: a second ``skymorph run`` on a catalog whose driver is alive is refused
(:class:`skymorph.catalog.lock.DriverLock`, a lease with a heartbeat); a driver that finds its lock
taken over stops, and a task checks that its driver still holds the lock before it writes a part.
A finished catalog given new tiles reads as unfinished from its first new part until the run finishes.

Resume: ranges already in the manifest for the same model digest are skipped; a tile's first range
is sized by its task (which opens the tile), its other ranges are then submitted by the driver.
"""

from __future__ import annotations

import json
import math
import os
import resource
import sys
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

from skymorph.catalog import layout
from skymorph.cores import check_parallelism
from skymorph.errors import CatalogError, InputError, SkymorphError, some_names
from skymorph.inference.driver import Tally, registered_job, run_tasks, wait_for_workers
from skymorph.posterior import MAX_VOLUNTEERS
from skymorph.storage import check_url

__all__ = ["RunConfig", "RunReport", "run_survey"]



@dataclass(frozen=True)
class RunConfig:
    """Everything ``skymorph run`` needs; checked on construction (files are checked by run_survey).

    ``rows_per_task`` is rounded to whole stored chunks; ``max_in_flight`` (default: 2 x the cluster's
    Dask threads, at least 4, counted again as workers join) bounds submitted-but-unfinished tasks; ``catalog_order`` is the fixed HEALPix
    partition order (see :mod:`skymorph.catalog.layout`); ``worker_timeout`` (seconds, default: wait) stops
    a run, resumable, once the scheduler has had no worker for its tasks (one with ``GPU=1`` for ``gpu``)
    for that long, at the start or mid-run.
    """

    tiles: str
    model: str
    out: str
    scheduler: str | None = None
    scheduler_file: str | None = None
    cluster: str = "local"
    cluster_config: str | None = None
    workers: int | None = None
    threads_per_worker: int = 1
    batch_size: int = 256
    max_in_flight: int | None = None
    worker_timeout: float | None = None
    rows_per_task: int = 4096
    n_volunteers: int = 40
    catalog_order: int = layout.DEFAULT_ORDER
    catalog_name: str | None = None
    allow_failures: bool = False
    gpu: bool = False
    backend: str = "auto"
    overwrite: bool = False
    progress: bool = True
    storage_options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("tiles", "model", "out"):
            if not str(getattr(self, name) or "").strip():
                raise InputError(f"--{name} is required")
            check_url(getattr(self, name))
            if name != "tiles" and "://" not in str(getattr(self, name)):
                # workers of another scheduler have other working directories: a relative --out
                # would put their part files there (the tile list's entries are resolved already)
                object.__setattr__(self, name, os.path.abspath(os.path.expanduser(str(getattr(self, name)))))
        for name in ("batch_size", "rows_per_task", "n_volunteers"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        # a million made a window of two million tasks in flight
        check_parallelism(self.threads_per_worker, "threads_per_worker", "--threads-per-worker", "task threads", at_least=64)
        name = self.catalog_name or _default_name(self.out)
        if any(c in name for c in "\r\n"):  # else refused by the finish step, after the whole run
            raise InputError(f"the catalog's name {name!r} (from --out) must be one line")
        if self.n_volunteers > MAX_VOLUNTEERS:  # else every tile failed in its posterior stage, after the catalog was made
            raise InputError(f"--n-volunteers must be at most {MAX_VOLUNTEERS}, got {self.n_volunteers}")
        if self.max_in_flight is not None and self.max_in_flight < 1:
            raise InputError(f"--max-in-flight must be at least 1, got {self.max_in_flight}")
        if self.worker_timeout is not None and not (math.isfinite(self.worker_timeout) and self.worker_timeout > 0):
            raise InputError(f"--worker-timeout must be a positive number of seconds, got {self.worker_timeout}")
        if not 0 <= self.catalog_order <= layout.MAX_ORDER:
            raise InputError(f"--catalog-order must be in 0..{layout.MAX_ORDER}, got {self.catalog_order}")
        if not isinstance(self.storage_options, dict):
            raise InputError("storage_options must be a dict of s3fs options")
        self.cluster_spec()  # raises on inconsistent cluster options

    def cluster_spec(self):
        from skymorph.inference.cluster import ClusterSpec

        return ClusterSpec(scheduler=self.scheduler, scheduler_file=self.scheduler_file, cluster=self.cluster,
                           cluster_config=self.cluster_config, workers=self.workers,
                           threads_per_worker=self.threads_per_worker, gpu=self.gpu, worker_timeout=self.worker_timeout)


@dataclass(frozen=True)
class RunReport:
    """What a run did. ``rows_written`` counts this run's rows; ``total_rows`` the whole catalog's;
    ``tiles_skipped`` the tiles an earlier run finished, ``ranges_skipped`` all the ranges it finished
    (those of tiles it left half done too)."""

    catalog: str
    model_sha256: str
    tiles: int
    tiles_skipped: int
    ranges_run: int
    rows_written: int
    total_rows: int
    failures: tuple
    seconds: float
    stage_seconds: dict
    dashboard: str | None
    driver_peak_rss_mib: float
    ranges_skipped: int = 0

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def galaxies_per_second(self) -> float:
        return self.rows_written / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        return (f"catalog {self.catalog}: {self.total_rows} rows; this run {self.rows_written} galaxies from "
                f"{self.ranges_run} task(s) in {self.seconds:.1f} s ({self.galaxies_per_second:.0f} galaxies/s), "
                f"{self.tiles_skipped} of {self.tiles} tile(s) and {self.ranges_skipped} range(s) already done, "
                f"{len(self.failures)} failure(s)")


def _peak_rss_mib() -> float:
    """This process's peak resident memory: VmHWM on Linux (getrusage's ru_maxrss survives exec, so
    a driver started from a big process would report its parent's peak), else ru_maxrss."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _check_out(out: str, options: dict) -> None:
    """``--out`` must be new, empty or a catalog: a run never writes into, and ``--overwrite`` never
    deletes, a directory that holds anything else."""
    from skymorph.storage import check_bucket, check_writable, filesystem

    check_bucket(out, "--out", options)
    fs, root = filesystem(out, options)
    if fs.isfile(root):
        raise CatalogError(f"--out {out!r} is a file; give a directory for the catalog")
    check_writable(out, "--out", directory=True)  # a read-only disk: said now, in one line naming --out
    foreign = layout.foreign_entries(out, options)
    if foreign:
        raise CatalogError(
            f"--out {out!r} holds {some_names(foreign)}, which a skymorph catalog does not; give a new or empty "
            "directory (--overwrite replaces only a catalog)"
        )


def _prepare_output(config: RunConfig, model_sha256: str, options: dict, placeholder_positions: bool = False):
    """``(manifest, is_new)``: the existing manifest (or a new one), after checking that the catalog
    belongs to this model, order, number of volunteers and rows per task, and has positions of the same
    kind (placeholders or sky). With ``--overwrite`` the catalog is new: the caller removes the old one
    once it holds the lock. Reads only."""
    from skymorph.catalog.writer import Manifest, read_manifest
    from skymorph.storage import filesystem

    fs, root = filesystem(config.out, options)
    manifest = None if config.overwrite else read_manifest(config.out, options)
    if manifest is None and not config.overwrite and fs.exists(root) and fs.exists(layout.properties_url(config.out)):
        raise CatalogError(f"{config.out!r} holds a catalog without a skymorph manifest; choose another --out or pass --overwrite")
    if manifest is not None:
        if manifest.model_sha256 != model_sha256:
            raise CatalogError(
                f"{config.out!r} was written by model sha256 {manifest.model_sha256[:12]}..., not "
                f"{config.model!r} ({model_sha256[:12]}...); choose another --out or pass --overwrite"
            )
        if manifest.order != config.catalog_order:
            raise CatalogError(
                f"{config.out!r} has catalog order {manifest.order}, not --catalog-order {config.catalog_order}; "
                "keep the order or pass --overwrite"
            )
        if manifest.n_volunteers != config.n_volunteers:
            raise CatalogError(
                f"{config.out!r} holds posteriors for {manifest.n_volunteers} volunteers, not --n-volunteers "
                f"{config.n_volunteers}; keep the number or pass --overwrite"
            )
        # ranges of another size would not match the recorded ones: done tiles would run again and
        # their rows be written twice
        if manifest.rows_per_task is not None and manifest.rows_per_task != config.rows_per_task:
            raise CatalogError(
                f"{config.out!r} was written with --rows-per-task {manifest.rows_per_task}, not {config.rows_per_task}; "
                "keep the number to resume it or pass --overwrite"
            )
        if manifest.placeholder_positions is None:  # a catalog begun before the kind was recorded
            manifest.placeholder_positions = _written_kind(manifest, config.storage_options, placeholder_positions)
        if manifest.placeholder_positions != placeholder_positions:
            from skymorph.tiles import Tile

            raise CatalogError(
                f"{config.out!r} was written from tiles with {Tile.positions_kind(manifest.placeholder_positions)}, and these "
                f"tiles have {Tile.positions_kind(placeholder_positions)}: choose another --out or pass --overwrite"
            )
        return manifest, False
    return Manifest(model_sha256=model_sha256, order=config.catalog_order, ranges={}, n_volunteers=config.n_volunteers,
                    rows_per_task=config.rows_per_task, placeholder_positions=placeholder_positions), True


def _written_kind(manifest, storage_options: dict, default: bool) -> bool:
    """Whether the tiles a catalog was written from had placeholder positions, where its manifest does
    not say: as a tile it holds says (tiles carry the flag), else ``default`` (no range yet, or that tile
    is gone)."""
    from skymorph.tiles import open_tile

    for record in manifest.ranges.values():
        try:
            return open_tile(record.tile, storage_options).placeholder_positions
        except (SkymorphError, OSError, ValueError):
            return default
    return default


class _Plan:
    """The ranges still to run, produced lazily: follow-up ranges of tiles already started come first
    (so tiles complete and leave the driver's books), then the next tile of the list. ``layouts`` holds
    the ``(n, chunk_size)`` that planned the follow-up ranges of each tile in progress: a task checks
    that its tile still has it (a tile rewritten since its first range was read is not cut in the old
    places). A tile whose every range is done is not opened again."""

    def __init__(self, tiles: list[str], manifest, rows_per_task: int) -> None:
        from skymorph.inference.task import plan_ranges

        self._plan_ranges = plan_ranges
        self._tiles = iter(tiles)
        self._followups: deque = deque()
        self._manifest = manifest
        self._rows_per_task = rows_per_task
        self._done: dict[str, list] = {}
        for record in manifest.ranges.values():
            self._done.setdefault(record.tile, []).append(record)
        self.outstanding: dict[str, int] = {}
        self.layouts: dict[str, tuple[int, int]] = {}
        self.skipped = 0
        self.ranges_skipped = 0

    def planned(self, n: int, chunk_size: int) -> list[tuple[int, int]]:
        return self._plan_ranges(n, chunk_size, self._rows_per_task)

    def has_work(self) -> bool:
        """Whether any range is left; looks ahead by one range, which :meth:`next` then returns."""
        item = self.next()
        if item is not None:
            self._followups.appendleft(item)
        return item is not None

    def next(self):
        if self._followups:
            return self._followups.popleft()
        for tile in self._tiles:
            done = self._done.pop(tile, [])
            if not done:
                self.outstanding[tile] = 1
                return (tile, 0, None)
            planned = self.planned(done[0].n, done[0].chunk_size)
            stale = [r for r in done if (r.start, r.stop) not in planned]
            for record in stale:
                del self._manifest.ranges[record.key]
            todo = [(a, b) for a, b in planned if (tile, a, b) not in self._manifest.ranges]
            self.ranges_skipped += len(planned) - len(todo)
            if not todo:
                self.skipped += 1
                continue
            self.outstanding[tile] = len(todo)
            self.layouts[tile] = (done[0].n, done[0].chunk_size)
            self._followups.extend((tile, a, b) for a, b in todo)
            return self._followups.popleft()
        return None

    def first_range_done(self, tile: str, n: int, chunk_size: int, stop: int) -> None:
        rest = [(a, b) for a, b in self.planned(n, chunk_size) if a >= stop and b > a]  # an empty tile's (0, 0) is done
        self.outstanding[tile] += len(rest)
        self.layouts[tile] = (n, chunk_size)
        self._followups.extend((tile, a, b) for a, b in rest)

    def range_done(self, tile: str) -> bool:
        """Count one range of ``tile`` finished; True when that was its last."""
        self.outstanding[tile] -= 1
        if self.outstanding[tile] == 0:
            del self.outstanding[tile]
            self.layouts.pop(tile, None)
            return True
        return False


def _finished(catalog: str, manifest, arrow_schema, options: dict) -> int | None:
    """The catalog's row count if its metadata files are there, readable and agree with ``manifest``
    and ``arrow_schema`` (a finished run wrote them last, ``hats.properties`` last of all, after the
    failures table), else None: then the finish step must rewrite them.

    Reads only the small files (``hats.properties``, ``partition_info.csv``, ``_common_metadata``),
    never the parts, so a rerun of a finished job stays cheap; a damaged or stale metadata file (a
    truncated ``_common_metadata``, garbage in ``partition_info.csv``) makes the rerun repair it. The
    stored ``skymorph.version`` is the parts' (their writers'), not this run's: a rerun after an upgrade
    that writes nothing leaves it.
    """
    from skymorph.catalog.writer import describe_schema, with_version
    from skymorph.storage import exists

    if not exists(layout.failures_url(catalog), options):
        return None
    try:
        properties = layout.read_properties(catalog, options)
        stored_schema, stored = layout.read_common_metadata(catalog, options)
        pixels = layout.read_partition_info(catalog, options)
    except CatalogError:
        return None
    records = manifest.ranges.values()
    if (properties.order != manifest.order
            or properties.total_rows != sum(record.rows for record in records)
            or sorted(pixels) != sorted({(manifest.order, npix) for r in records for npix, _, _ in r.parts})
            or not stored_schema.equals(describe_schema(with_version(arrow_schema, stored.version)), check_metadata=True)):
        return None
    return properties.total_rows


_FEW_ROWS_PER_PARTITION = 100
"""Below this many rows per partition on average, ``run`` suggests a lower ``--catalog-order``."""


def _note_sparse_partitions(rows: int, pixels, order: int) -> None:
    """A note on stderr when the catalog's order cut it into partitions of a few rows each: a part file
    per tile range and partition, so a sparse sky-wide catalog (2,000 cutouts over the sky at order 5:
    1,847 partitions) is mostly file overhead for every query. It names the highest lower order whose
    partitions (the parents ``pixels >> 2 (order - o)`` of the nested ``pixels``) would hold enough rows;
    where none would (a few tiles far apart), the catalog is just small, and it says nothing."""
    import numpy as np

    pixels = np.asarray(pixels, dtype=np.int64)
    if order == 0 or len(pixels) < 2 or rows >= _FEW_ROWS_PER_PARTITION * len(pixels):
        return
    for lower in range(order - 1, -1, -1):
        merged = len(np.unique(pixels >> 2 * (order - lower)))
        if rows >= _FEW_ROWS_PER_PARTITION * merged:
            print(f"skymorph run: note: {rows:,} rows in {len(pixels):,} partitions of HEALPix order {order} "
                  f"({rows / len(pixels):.1f} a partition); a catalog this sparse reads faster with fewer, larger files: "
                  f"run it again with --catalog-order {lower} ({merged:,} partitions) into a new --out, or with --overwrite",
                  file=sys.stderr, flush=True)
            return


def _check_sampled_tiles(tiles: list[str], metadata, config: RunConfig) -> bool:
    """Whether the catalog's positions are placeholders, judged from the first, middle and last tiles
    (``survey ingest`` without ra/dec marks its tiles so); each task checks its own tile against this.

    A one-line :class:`InputError` now if those tiles all hold images of another shape than the model
    takes (a survey's tiles share a shape, so every task would fail alike, tile by tile), or if some have
    placeholder positions and some sky positions. One odd tile beyond them is left to its task, which
    records it; so is a tile that cannot be opened. A warning if one holds pixels unlike every tile the
    model was trained on (bands, stretch, pixel scale): the shape alone let a model of r-band asinh images
    classify u-band linear ones without a word."""
    from skymorph.tiles import Tile, open_tile, pixels_differ

    input_shape, trained_on = metadata.input.shape, metadata.training_pixels
    shapes, placeholder, unlike = {}, {}, {}
    for url in dict.fromkeys((tiles[0], tiles[len(tiles) // 2], tiles[-1])):
        try:
            tile = open_tile(url, config.storage_options)
        except (SkymorphError, OSError, ValueError):
            continue
        shapes[url], placeholder[url] = tuple(tile.shape), tile.placeholder_positions
        differences = [pixels_differ(tile.pixels, pixels) for pixels in trained_on]
        if differences and all(differences):
            unlike[url] = differences[0]
    if unlike:
        url, differences = next(iter(unlike.items()))
        print(f"skymorph run: warning: tile {url!r} holds images unlike those the model was trained on (the tile's vs the "
              f"training's: {'; '.join(differences)}){', and so do other tiles' if len(unlike) > 1 else ''}: its posteriors "
              "there are an extrapolation", file=sys.stderr, flush=True)
    if len(set(placeholder.values())) > 1:
        fake, real = (next(url for url, p in placeholder.items() if p is value) for value in (True, False))
        raise InputError(f"tile {fake!r} has {Tile.positions_kind(True)} but tile {real!r} has {Tile.positions_kind(False)}: "
                         "run them into separate catalogs, or ingest the first with ra/dec")
    if shapes and all(shape != tuple(input_shape) for shape in shapes.values()):
        url, shape = next(iter(shapes.items()))
        size = lambda s: "x".join(map(str, s))  # noqa: E731
        raise InputError(f"tile {url!r} has images {size(shape)} (C x H x W), as do the other tiles sampled; the model "
                         f"{config.model!r} takes {size(input_shape)}: give tiles of that size, or a model exported for these")
    return any(placeholder.values())


@contextmanager
def _no_trace_unless_started(out: str, is_new: bool, options: dict):
    """For a new catalog: if the block fails before the manifest is written (no scheduler, no GPU
    worker), remove the empty directories that the driver's lock left, so --out is as it was."""
    from skymorph.storage import exists, is_remote, remove_empty_directories

    existed = exists(out, options)
    try:
        yield
    except BaseException:
        if is_new and not existed and not is_remote(out) and not exists(layout.manifest_url(out), options):
            # only when empty: never removes anything written
            remove_empty_directories([layout.skymorph_dir(out)], os.path.dirname(os.path.abspath(out)))
        raise


def _ran_tiles(tiles: list[str], manifest) -> tuple[set[str], dict[str, list]]:
    """``(ran, unlisted)``: the tiles the manifest has ranges of, and those ranges of the tiles ``tiles``
    does not list, by tile; one pass over the manifest for both checks below."""
    listed, ran, unlisted = set(tiles), set(), {}
    for record in manifest.ranges.values():
        ran.add(record.tile)
        if record.tile not in listed:
            unlisted.setdefault(record.tile, []).append(record)
    return ran, unlisted


def _check_unlisted_tiles_done(unlisted: dict[str, list]) -> None:
    """A catalog keeps the tiles it ran that a later tile list leaves out; one of them begun by a run that was
    stopped (a longer list, interrupted) and never finished made a finished catalog with part of a tile, exit
    0 and no failure. Refused, naming the tile, until a tile list that names it finishes it. ``unlisted``:
    :func:`_ran_tiles`'."""
    for tile, records in unlisted.items():
        n, rows, end = records[0].n, 0, 0  # the union of the ranges done: planned again at other sizes, they may overlap
        for start, stop in sorted((record.start, record.stop) for record in records):
            rows += max(0, stop - max(start, end))
            end = max(end, stop)
        if rows < n:
            raise CatalogError(
                f"the catalog holds {rows} of the {n} rows of tile {tile!r}, which the tile list does not name (a run with "
                "a longer list was stopped): give a tile list that names it, to finish it, or run with --overwrite")


def _check_moved_tiles(tiles: list[str], ran: set[str], unlisted: dict[str, list], options: dict) -> None:
    """The manifest knows tiles by URL: a tile list naming the catalog's tiles at new URLs (the survey
    moved, or copied to S3, since) ran every tile again under new part names, every galaxy twice. Refused
    when a listed tile that the catalog has not run has the name (:func:`~skymorph.tiles.tile_name`) and
    row count of one it ran from a URL no longer listed, and, where that one can still be read, the same
    first and last object ids (another ingest's ``ingest_00000`` extending the catalog has others). Only
    such tiles are opened. ``ran``, ``unlisted``: :func:`_ran_tiles`'."""
    from skymorph.errors import TileError
    from skymorph.tiles import open_tile, tile_name

    by_name: dict[str, dict[str, int]] = {}  # an unlisted tile's name -> its URLs -> their row counts
    for tile, records in unlisted.items():
        by_name.setdefault(tile_name(tile), {})[tile] = records[0].n

    def ends(tile) -> tuple:
        return (int(tile.read_coords(0, 1)[0][0]), int(tile.read_coords(tile.n - 1)[0][0])) if tile.n else ()

    for url in tiles:
        if url in ran or tile_name(url) not in by_name:
            continue
        try:
            new = open_tile(url, options)
        except (TileError, OSError):  # nothing to compare: its task records the failure, as on a new catalog
            continue
        new_ends = None
        for old_url, n in by_name[tile_name(url)].items():
            if new.n != n:
                continue
            try:
                old_ends = ends(open_tile(old_url, options))
                new_ends = ends(new) if new_ends is None else new_ends  # read once, however many old tiles compare
                if old_ends != new_ends:
                    continue  # another tile of the same name and size
                alike = "name, row count and first and last galaxies"
            except (TileError, OSError):
                alike = "name and row count"  # the old one is gone (moved): all there is to go by
            raise CatalogError(
                f"tile {url!r} has the {alike} of {old_url!r}, which this catalog ran and the tile list no longer names: "
                "is it the survey moved or copied? Then give the tile list the catalog was made with (a catalog knows its "
                "tiles by URL); to extend the catalog with other tiles, list them with the old ones; else run these tiles "
                "into a new catalog, or this one with --overwrite")


def _remove_for_overwrite(config: RunConfig, lock, options: dict) -> None:
    """With ``--overwrite``, remove the old catalog: only while this run holds the lock (a live run's
    catalog is never removed) and once it can start (scheduler reached, and a worker that can run the
    tasks there)."""
    if config.overwrite:
        lock.check_held(read=True)
        layout.remove_catalog(config.out, options, keep_lock=True)


def _tidy_finished(out: str, lock, options: dict) -> None:
    """A driver killed after its finish step wrote ``hats.properties`` left its journal, its lock and perhaps
    a temporary file: the rerun, which finds the catalog finished, compacts, removes and releases them,
    holding the lock (:meth:`DriverLock.check` found no live holder). A lock left there read as a live run,
    and from another host refused reruns for 5 minutes."""
    from skymorph.catalog.writer import journal_segments, read_manifest, write_manifest
    from skymorph.storage import exists, filesystem, remove_paths

    if not (journal_segments(out, options) or layout.list_temp_files(out, options) or exists(layout.driver_lock_url(out), options)):
        return
    with lock:
        lock.check_held(read=True)
        write_manifest(out, read_manifest(out, options), options)  # read under the lock: all that any run recorded
        remove_paths(filesystem(out, options)[0], layout.list_temp_files(out, options))


def _default_name(out: str) -> str:
    return out.rstrip("/").replace("\\", "/").rsplit("/", 1)[-1] or "skymorph"


def run_survey(config: RunConfig) -> RunReport:
    """Run the survey job described by ``config`` and return what it did (see the module docstring)."""
    from skymorph import __version__
    from skymorph.catalog.layout import CatalogMetadata, CatalogProperties
    from skymorph.catalog.lock import DriverLock
    from skymorph.catalog.writer import catalog_schema, finish_catalog, write_failures, write_manifest
    from skymorph.inference.cluster import GPU_WORKER, connect, has_resources, require_resources, scheduler_address, task_resources
    from skymorph.inference.engines import read_model_info
    from skymorph.inference.task import JobSpec, ModelRef, s3_retry_options
    from skymorph.posterior import column_names
    from skymorph.storage import atomic_write_text, check_bucket
    from skymorph.tiles import read_tiles

    started = time.perf_counter()
    spec = config.cluster_spec()
    if spec.joins_running_scheduler:
        scheduler_address(spec)  # a bad address fails now, before the catalog is touched
    slurm = None
    if spec.cluster == "slurm":
        from skymorph.inference.slurm import load_slurm_config

        slurm = load_slurm_config(spec.cluster_config, **spec.slurm_overrides)  # likewise, not once the lock is taken
        if not slurm.max_jobs:  # nothing else scales the cluster: the run would wait for workers never submitted
            raise InputError(f"SLURM config {spec.cluster_config!r} has max_jobs 0, so skymorph run would submit no worker "
                             "job and wait for ever; set max_jobs (the most worker jobs at once) in it, or pass --workers N")
    for url, flag in ((config.tiles, "--tiles"), (config.model, "--model")):
        check_bucket(url, flag, config.storage_options)  # a down endpoint: one request, not the reads' 10 with backoff
    options = s3_retry_options(config.out, config.storage_options)
    tiles = read_tiles(config.tiles, s3_retry_options(config.tiles, config.storage_options))
    info = read_model_info(config.model, backend=config.backend,
                           storage_options=s3_retry_options(config.model, config.storage_options))
    metadata, model_sha256 = info.metadata, info.model_sha256
    placeholder = _check_sampled_tiles(tiles, metadata, config)
    _check_out(config.out, options)
    lock = DriverLock(config.out, options)
    lock.check()  # a live driver's catalog is refused before anything else is read
    manifest, is_new = _prepare_output(config, model_sha256, options, placeholder)
    if not is_new:
        ran, unlisted = _ran_tiles(tiles, manifest)
        _check_unlisted_tiles_done(unlisted)
        _check_moved_tiles(tiles, ran, unlisted, s3_retry_options(config.tiles, config.storage_options))

    cat_meta = CatalogMetadata(model_sha256=model_sha256, samples=metadata.samples, seed=metadata.seed,
                               n_volunteers=config.n_volunteers, schema_json=metadata.schema.to_json(),
                               version=__version__, likelihood=metadata.likelihood)
    arrow_schema = catalog_schema(column_names(metadata.schema), cat_meta)
    plan = _Plan(tiles, manifest, config.rows_per_task)
    nothing_to_do = not plan.has_work()
    total_rows = None if is_new or not nothing_to_do else _finished(config.out, manifest, arrow_schema, options)
    if total_rows is not None:
        _tidy_finished(config.out, lock, options)
        return RunReport(catalog=config.out, model_sha256=model_sha256, tiles=len(tiles), tiles_skipped=plan.skipped,
                         ranges_skipped=plan.ranges_skipped, ranges_run=0, rows_written=0, total_rows=total_rows,
                         failures=(), seconds=time.perf_counter() - started, stage_seconds={}, dashboard=None,
                         driver_peak_rss_mib=_peak_rss_mib())

    # checks again, then holds the lease (heartbeat) until the catalog is finished
    with _no_trace_unless_started(config.out, is_new, options), lock:
        tally = Tally()
        if nothing_to_do:  # every range is done and only the finish step is left
            _remove_for_overwrite(config, lock, options)
        else:
            gpu = config.gpu or info.needs_gpu
            with connect(replace(spec, gpu=gpu), slurm) as (client, engine_threads):
                # with --worker-timeout the driver waits for GPU workers instead (GPU pods pending beside CPU ones)
                if info.needs_gpu and not config.worker_timeout:
                    require_resources(client, GPU_WORKER, f"model {config.model!r} (it runs on a GPU)")
                elif gpu and not config.worker_timeout:
                    require_resources(client, GPU_WORKER, "--gpu", ", or run without --gpu")
                resources = task_resources(gpu)
                tally.dashboard = client.dashboard_link
                print(f"skymorph run: {len(tiles)} tile(s), model {model_sha256[:12]}..., dashboard {tally.dashboard}",
                      file=sys.stderr, flush=True)
                workers = client.scheduler_info(n_workers=-1)["workers"].values()
                if not any(has_resources(worker, resources) for worker in workers):  # tasks wait for workers to join
                    limit = (f"at most {config.worker_timeout:g} s (--worker-timeout)" if config.worker_timeout else
                             "without a limit (--worker-timeout sets one)")
                    kind, flags = ("GPU workers (GPU=1)", " --resources GPU=1") if gpu else ("workers", "")
                    print(f"skymorph run: no {kind} at {client.scheduler.address} yet; waiting for some to join, {limit} "
                          f"(`dask worker {client.scheduler.address}{flags}`)", file=sys.stderr, flush=True)
                    # the old catalog goes only once the new one can be written
                    if config.overwrite:
                        if slurm is not None and not client.cluster.worker_spec:
                            # an adaptive SLURM cluster submits worker jobs only for tasks, and none is submitted
                            # yet: one job now, which JobAdaptive keeps for the tasks
                            client.cluster.scale(jobs=1)
                        wait_for_workers(client, resources, config.worker_timeout, not spec.joins_running_scheduler)
                ref = ModelRef(config.model, model_sha256, config.backend, engine_threads, config.storage_options,
                               masks_sha256=metadata.masks_sha256)
                job = JobSpec(catalog=config.out, order=config.catalog_order, arrow_schema=arrow_schema, model=ref,
                              tree_json=metadata.schema.to_json(), likelihood=metadata.likelihood,
                              n_volunteers=config.n_volunteers, input_shape=metadata.input.shape,
                              batch_size=config.batch_size, rows_per_task=config.rows_per_task,
                              driver_session=lock.session, unfinish_before_writing=not is_new,
                              placeholder_positions=manifest.placeholder_positions, storage_options=config.storage_options)
                # the workers there load their engines first: one that cannot stops the run with --out as it was
                with registered_job(client, job) as job_name:
                    _remove_for_overwrite(config, lock, options)
                    if is_new:
                        lock.check_held(read=True)
                        write_manifest(config.out, manifest, options)
                    run_tasks(config, client, job_name, resources, plan, manifest, tally, len(tiles), started, options, lock)

        lock.check_held(read=True)

        props = CatalogProperties(
            catalog_name=config.catalog_name or _default_name(config.out), total_rows=0, order=config.catalog_order,
            builder=f"skymorph v{__version__}", creation_date=CatalogProperties.now(), skymorph_version=__version__,
            skymorph_model_sha256=model_sha256, skymorph_samples=metadata.samples, skymorph_seed=metadata.seed,
            skymorph_n_volunteers=config.n_volunteers, skymorph_schema=metadata.schema.name,
            skymorph_likelihood=metadata.likelihood,
            skymorph_positions=layout.PLACEHOLDER_POSITIONS if manifest.placeholder_positions else layout.SKY_POSITIONS,
        )
        # this run's failures before the catalog reads as finished: a rerun after a crash in between would
        # find hats.properties and take an earlier run's table, tiles since run, for this one's
        write_failures(config.out, tally.failures, options)
        finished = finish_catalog(config.out, manifest, arrow_schema, props, options)
        _note_sparse_partitions(finished.total_rows, finished.pixels, config.catalog_order)
        write_manifest(config.out, manifest, options)  # compact: the finished catalog has no journal
        seconds = time.perf_counter() - started
        timing = {"seconds": seconds, "ranges_run": tally.ranges_run, "rows_written": tally.rows_written,
                  "galaxies_per_second": tally.rows_written / seconds if seconds else 0.0, "task_seconds": tally.stages}
        atomic_write_text(layout.timing_url(config.out), json.dumps(timing, indent=1), options)
        return RunReport(catalog=config.out, model_sha256=model_sha256, tiles=len(tiles), tiles_skipped=plan.skipped,
                         ranges_skipped=plan.ranges_skipped, ranges_run=tally.ranges_run, rows_written=tally.rows_written, total_rows=finished.total_rows,
                         failures=tuple(tally.failures), seconds=seconds, stage_seconds=tally.stages,
                         dashboard=tally.dashboard, driver_peak_rss_mib=_peak_rss_mib())
