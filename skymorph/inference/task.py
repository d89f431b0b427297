"""The worker side of ``skymorph run``: the run's worker plugin and the task for one tile range.

A run reaches its workers as a :class:`RunJob` plugin under a name of its own, which
:func:`run_job_range` looks up: the run's :class:`JobSpec` and its :class:`EngineCache`, whose engine
is loaded once per worker process (when the worker starts or joins, or on first use) and closed when
the run unregisters the plugin, so a long-lived cluster keeps no engine of a finished run. A task
carries only the model URL and digest, never the engine. The scheduler gives registered plugins to
workers that join or restart later, while data scattered to the workers is lost with the last worker
that held it (a restarted single worker would then fail every task left). :func:`run_range` opens the tile, reads
chunk after chunk on a background thread while the engine runs on the current one, summarizes the
posterior, writes the part files (once its driver is known to hold the catalog's lock) and returns
small statistics, or a failure record (tile, stage, reason) for a bad tile. Transient storage errors (connection drops, 5xx, SlowDown) are retried with
exponential backoff; a retried range rewrites the same deterministic part files, so nothing is
duplicated.
"""

from __future__ import annotations

import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from distributed import WorkerPlugin

from skymorph.catalog.layout import BASE_COLUMNS, unfinish_catalog
from skymorph.catalog.lock import check_session
from skymorph.errors import InputError, ModelError, SkymorphError, TileError, error_text, first_line
from skymorph.inference.cluster import usable_cores, worker_host
from skymorph.storage import is_s3

__all__ = ["ModelRef", "JobSpec", "EngineCache", "RunJob", "plan_ranges", "first_range_stop", "run_range",
           "run_job_range", "is_transient", "s3_retry_options"]

@dataclass(frozen=True)
class ModelRef:
    """Where a worker finds the model (``url``), the digests it must have (of the file, and of the dropout
    masks it samples with), and how to run it."""

    url: str
    sha256: str
    backend: str = "auto"
    threads: int | None = None
    storage_options: dict = field(default_factory=dict)
    masks_sha256: str = field(kw_only=True)


@dataclass(frozen=True)
class JobSpec:
    """What every task of a run shares: the catalog to write, its order and ``arrow_schema`` (with the
    ``skymorph.*`` key-value metadata), the model, its decision tree (``tree_json``) and how to summarize
    its samples.
    ``driver_session`` is the session of the driver's lock, which a task checks before it writes;
    ``unfinish_before_writing``: the catalog was finished, and must read as unfinished once parts are added;
    ``placeholder_positions``: whether the catalog's tiles have placeholder positions (every tile must agree)."""

    catalog: str
    order: int
    arrow_schema: object
    model: ModelRef
    tree_json: str
    likelihood: str
    n_volunteers: int
    input_shape: tuple[int, int, int]
    batch_size: int
    rows_per_task: int
    driver_session: str
    unfinish_before_writing: bool = False
    placeholder_positions: bool = False
    storage_options: dict = field(default_factory=dict)
    attempts: int = 5
    backoff_s: float = 0.5

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise InputError(f"JobSpec attempts (tries per tile range) must be at least 1, got {self.attempts}")
        if self.backoff_s < 0:
            raise InputError(f"JobSpec backoff_s must be at least 0 seconds, got {self.backoff_s}")


def s3_retry_options(url: str, storage_options: dict | None) -> dict:
    """``storage_options`` plus botocore's standard retry mode (10 attempts, exponential backoff on
    throttling, 5xx and dropped connections) for ``s3://`` URLs, unless the caller set ``config_kwargs``."""
    options = dict(storage_options or {})
    if is_s3(url) and "config_kwargs" not in options:
        options["config_kwargs"] = {"retries": {"max_attempts": 10, "mode": "standard"}}
    return options


class EngineCache:
    """The engines of one run on one worker process, by model digest: loaded at :meth:`setup` (when the
    worker starts or joins) or on first use, closed at :meth:`teardown`. Held by the run's
    :class:`RunJob` plugin, so it lives as long as the run.

    ``threads_by_host`` maps a worker host to the number of Dask threads of all workers there; the
    engine gets ``usable cores // that`` threads (``threads``) so that engines on one machine do not
    oversubscribe it. With ``ref.threads`` set it is used as is. ``engines`` maps a model's sha256 to
    its engine.
    """

    def __init__(self, ref: ModelRef, threads_by_host: dict | None = None) -> None:
        self.ref = ref
        self.threads_by_host = dict(threads_by_host or {})
        self.threads = ref.threads
        self.engines: dict = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        # Only the configuration travels to the workers; each makes its own lock and engines.
        return {"ref": self.ref, "threads_by_host": self.threads_by_host}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    async def count_threads_now(self, worker) -> None:
        """Add the Dask threads of the workers on ``worker``'s host now to :attr:`threads_by_host`, the
        driver's count when the run started: a worker that joined since (every worker of a cluster that
        grows, an adaptive SLURM cluster or a DaskJob's) is in no such count, and sized alone it gave its
        engine the cores of all its host's workers."""
        workers = (await worker.scheduler.identity())["workers"]
        host = worker_host(worker.address)
        now = sum(int(info.get("nthreads", 1)) for address, info in workers.items() if worker_host(address) == host)
        self.threads_by_host[host] = max(self.threads_by_host.get(host, 0), now)

    def setup(self, worker) -> None:
        if self.threads is None:
            busy = self.threads_by_host.get(worker_host(worker.address), worker.state.nthreads)
            self.threads = max(1, usable_cores() // max(1, busy))
        try:
            self.get(self.ref)
        except Exception as err:  # reaches the driver, where the model was there: say it is this worker's
            reason = first_line(err) if isinstance(err, SkymorphError) else error_text(err)
            hint = ("; every worker must be able to read it (an s3:// URL, or a path on a filesystem they share)"
                    if isinstance(err, FileNotFoundError | PermissionError) else "")
            kind = type(err) if isinstance(err, SkymorphError) else ModelError  # a MissingDependencyError stays one
            raise kind(f"the Dask worker at {worker.address} cannot load the model ({reason}){hint}") from err

    def teardown(self) -> None:
        with self._lock:
            engines, self.engines = list(self.engines.values()), {}
        for engine in engines:
            engine.close()

    def get(self, ref: ModelRef):
        """The engine for ``ref``, loaded on first use; a :class:`ModelError` if the file at ``ref.url``
        no longer has digest ``ref.sha256`` (the model changed during the run), or if its masks are not
        ``ref.masks_sha256``: a checkpoint's are drawn from its seed on each worker, and another torch
        there can draw others, which the catalog's provenance would not describe."""
        with self._lock:
            engine = self.engines.get(ref.sha256)
            if engine is None:
                from skymorph.inference.engines import load_engine

                threads = ref.threads if ref.threads is not None else self.threads
                engine = load_engine(ref.url, backend=ref.backend, threads=threads,
                                     storage_options=s3_retry_options(ref.url, ref.storage_options))
                problem = None
                if engine.model_sha256 != ref.sha256:
                    problem = (f"model {ref.url!r} changed during the run (sha256 {engine.model_sha256[:12]}..., "
                               f"expected {ref.sha256[:12]}...); restart `skymorph run`")
                elif engine.metadata.masks_sha256 != ref.masks_sha256:
                    problem = (f"model {ref.url!r} drew other dropout masks on this worker (sha256 "
                               f"{engine.metadata.masks_sha256[:12]}..., the run's {ref.masks_sha256[:12]}...): a checkpoint's "
                               "masks come from torch's generator; give every worker the driver's torch version, or run "
                               "the exported ONNX model, which holds its masks")
                if problem is not None:
                    engine.close()  # a TensorRT engine's GPU buffers, which nothing else would free
                    raise ModelError(problem)
                self.engines[ref.sha256] = engine
            return engine


class RunJob(WorkerPlugin):
    """One run on every worker, present and future, under a name of its own (runs sharing a scheduler
    do not replace each other's): its :class:`JobSpec` and its :class:`EngineCache`, freed with it."""

    def __init__(self, job: JobSpec, name: str, threads_by_host: dict | None = None) -> None:
        self.job = job
        self.name = name
        self.engines = EngineCache(job.model, threads_by_host)

    async def setup(self, worker) -> None:
        if self.engines.threads is None:  # sized by its host's threads: count them as they are now
            try:
                await self.engines.count_threads_now(worker)
            except Exception:  # noqa: BLE001 -- the driver's count, made when the run started, stands
                pass
        self.engines.setup(worker)

    def teardown(self, worker) -> None:
        self.engines.teardown()


def run_job_range(name: str, tile_url: str, start: int, stop: int | None, layout: tuple[int, int] | None = None) -> dict:
    """:func:`run_range` with the job and engines of the :class:`RunJob` plugin ``name`` on this worker."""
    from distributed import get_worker

    try:
        plugin = get_worker().plugins[name]
    except (ValueError, KeyError) as err:  # ValueError: not inside a worker
        raise RuntimeError(f"no {name} plugin on this worker; register RunJob(job, name) before submitting tasks") from err
    return run_range(plugin.job, tile_url, start, stop, plugin.engines.get, layout)


def plan_ranges(n: int, chunk_size: int, rows_per_task: int) -> list[tuple[int, int]]:
    """Row ranges ``[(start, stop), ...]`` covering ``n`` rows, each ``rows_per_task`` rounded to a
    whole number of stored chunks (at least one), so no chunk is read by two tasks."""
    step = max(1, round(rows_per_task / chunk_size)) * chunk_size
    return [(start, min(n, start + step)) for start in range(0, n, step)] or [(0, 0)]


def first_range_stop(n: int, chunk_size: int, rows_per_task: int) -> int:
    return plan_ranges(n, chunk_size, rows_per_task)[0][1]


_TRANSIENT_MESSAGE = re.compile(r"\((SlowDown|ServiceUnavailable|503|RequestTimeout|InternalError)\)|Service Unavailable")


def is_transient(err: BaseException) -> bool:
    """Whether ``err`` (or an error it was raised from) is a storage hiccup worth retrying: a dropped
    or refused connection, a timeout, an HTTP 5xx or S3 ``SlowDown``. Bad input never is."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, SkymorphError | FileNotFoundError | PermissionError | NotADirectoryError | IsADirectoryError):
            return False
        if isinstance(err, ConnectionError | TimeoutError):
            return True
        response = getattr(err, "response", None)
        if isinstance(response, dict):
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            code = response.get("Error", {}).get("Code", "")
            if status >= 500 or code in ("SlowDown", "Throttling", "RequestTimeout", "InternalError"):
                return True
        name = type(err).__name__
        if name in ("EndpointConnectionError", "ConnectionClosedError", "ReadTimeoutError", "ServerDisconnectedError",
                    "ClientConnectorError", "ClientOSError", "ClientPayloadError", "IncompleteRead",
                    "ResponseStreamingError"):
            return True
        # s3fs re-raises botocore errors as OSError carrying only botocore's message, "An error occurred
        # (SlowDown) when calling ...": match that phrasing, never a bare number (a chunk key can hold 503).
        if isinstance(err, OSError) and _TRANSIENT_MESSAGE.search(str(err)):
            return True
        err = err.__cause__ or err.__context__
    return False


class _StageError(Exception):
    def __init__(self, stage: str, error: BaseException) -> None:
        super().__init__(f"{stage}: {error}")
        self.stage = stage
        self.error = error


def _stage(stage: str, fn, *args):
    try:
        return fn(*args)
    except Exception as err:
        raise _StageError(stage, err) from err


_POSTERIOR_BACKLOG = 2
"""Batches of samples a task may have queued for its posterior thread: enough to keep that thread busy
while the engine runs, few enough that a task's memory stays bounded (docs/deploy.md)."""


def _process(job: JobSpec, tile_url: str, start: int, stop: int | None, seconds: dict, engine_for, layout) -> dict:
    from skymorph import __version__
    from skymorph.catalog.writer import build_part_table, with_version, write_part
    from skymorph.posterior import summarize
    from skymorph.schema import Schema
    from skymorph.tiles import open_tile

    t0 = time.perf_counter()
    tile = _stage("open", open_tile, tile_url, s3_retry_options(tile_url, job.storage_options))
    if tile.shape != tuple(job.input_shape):
        raise _StageError("open", TileError(
            f"tile {tile_url!r} has images {'x'.join(map(str, tile.shape))}; the model takes "
            f"{'x'.join(map(str, job.input_shape))} (C x H x W)"))
    if tile.placeholder_positions != job.placeholder_positions:
        raise _StageError("open", TileError(
            f"tile {tile_url!r} has {tile.positions_kind(tile.placeholder_positions)}, the catalog's other tiles "
            f"{tile.positions_kind(job.placeholder_positions)}; run it into a separate catalog"))
    if layout is not None and (tile.n, tile.chunk_size) != tuple(layout):
        raise _StageError("open", TileError(
            f"tile {tile_url!r} has {tile.n:,} rows in chunks of {tile.chunk_size}, but {layout[0]:,} rows in chunks of "
            f"{layout[1]} when this catalog read its first rows: it was rewritten since; run the changed tiles into a "
            "new catalog, or this one again with --overwrite"))
    if stop is None:
        stop = first_range_stop(tile.n, tile.chunk_size, job.rows_per_task)
    object_id, ra, dec = _stage("read", tile.read_coords, start, stop)
    seconds["read"] += time.perf_counter() - t0
    engine = _stage("engine", engine_for, job.model)
    schema = Schema.from_json(job.tree_json, source="model skymorph.schema")

    def summarize_timed(samples):
        t0 = time.perf_counter()
        summary = summarize(samples, schema, job.likelihood, job.n_volunteers)
        seconds["posterior"] += time.perf_counter() - t0
        return summary

    # The posterior of batch i is computed on a second thread while the engine runs on batch i + 1:
    # numpy and the engine both release the GIL, and the engine alone leaves gaps on the cores.
    summaries = []
    chunks = tile.iter_chunks(start, stop, prefetch=True)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="posterior") as posterior_pool:
        try:
            while True:
                t0 = time.perf_counter()
                item = _stage("read", next, chunks, None)
                seconds["read"] += time.perf_counter() - t0
                if item is None:
                    break
                _, _, images = item
                for b in range(0, len(images), job.batch_size):
                    t0 = time.perf_counter()
                    samples = _stage("engine", engine, images[b:b + job.batch_size])
                    seconds["engine"] += time.perf_counter() - t0
                    summaries.append(posterior_pool.submit(summarize_timed, samples))
                    if len(summaries) > _POSTERIOR_BACKLOG:
                        # Wait for an older batch: the engine's raw samples (T x A floats a galaxy, 6x a
                        # catalog row) would otherwise pile up wherever the posterior maths is the slower.
                        _stage("posterior", summaries[-_POSTERIOR_BACKLOG - 1].result)
        finally:
            chunks.close()
        summaries = [_stage("posterior", future.result) for future in summaries]

    t0 = time.perf_counter()
    names = job.arrow_schema.names[len(BASE_COLUMNS):]
    posterior = {name: np.concatenate([s[name] for s in summaries]) if summaries else np.zeros(0, np.float32)
                 for name in names}
    schema = with_version(job.arrow_schema, __version__)  # this worker's code made the rows, whatever the driver runs
    table = _stage("write", build_part_table, schema, object_id, ra, dec, tile_url, start, posterior)
    options = s3_retry_options(job.catalog, job.storage_options)
    _before_writing(job, options)
    parts = _stage("write", write_part, job.catalog, table, tile_url, start, stop, job.order, options)
    seconds["write"] += time.perf_counter() - t0
    return {"n": tile.n, "chunk_size": tile.chunk_size, "stop": stop, "parts": parts}


def _before_writing(job: JobSpec, options: dict) -> None:
    """The driver that sent this task must still hold the catalog: a task that outlived its driver
    (killed, or paused past the lock's lease and taken over, or replaced by an ``--overwrite`` run)
    would otherwise write an old model's numbers under a name the new run owns. A finished catalog
    being extended reads as unfinished before its first new part appears."""
    _stage("lock", check_session, job.catalog, job.driver_session, options)
    if job.unfinish_before_writing:
        _stage("write", unfinish_catalog, job.catalog, options)


def run_range(job: JobSpec, tile_url: str, start: int, stop: int | None, engine_for,
              layout: tuple[int, int] | None = None) -> dict:
    """Classify rows ``[start, stop)`` of ``tile_url`` (``stop=None``: the tile's first range, sized
    here once the tile's length and chunking are known) and write their part files, with the engine
    ``engine_for(job.model)`` gives (the run's :meth:`EngineCache.get`). ``layout``: the tile's
    ``(n, chunk_size)`` when its first range was read, which planned this range; a tile that no longer
    has it fails, as its ranges no longer cover it.

    Returns ``{"tile", "start", "stop", "n", "chunk_size", "parts": [(npix, name, rows), ...],
    "rows", "seconds": {"read", "engine", "posterior", "write"}, "attempts", "failure"}``, where
    ``failure`` is None or ``{"stage", "reason", "transient"}``: a bad tile is reported, not raised, so the
    job carries on and Dask does not retry what cannot succeed; ``transient``: a storage hiccup that
    outlasted the retries (:func:`is_transient`).
    """
    seconds = {"read": 0.0, "engine": 0.0, "posterior": 0.0, "write": 0.0}
    result = {"tile": tile_url, "start": start, "stop": stop, "n": None, "chunk_size": None, "parts": [],
              "rows": 0, "seconds": seconds, "attempts": 0, "failure": None}
    rng = random.Random(f"{tile_url}:{start}")
    for attempt in range(1, job.attempts + 1):
        result["attempts"] = attempt
        try:
            result.update(_process(job, tile_url, start, stop, seconds, engine_for, layout))
            result["rows"] = sum(rows for _, _, rows in result["parts"])
            return result
        except _StageError as err:
            if attempt < job.attempts and is_transient(err.error):
                time.sleep(job.backoff_s * 2 ** (attempt - 1) * (0.5 + rng.random()))
                continue
            reason = error_text(err.error)
            result["failure"] = {"stage": err.stage, "reason": reason, "transient": is_transient(err.error)}
            return result
