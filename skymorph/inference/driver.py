"""The driver's loop of ``skymorph run``: keep tasks in flight, record each result as it arrives.

:func:`run_tasks` submits tile ranges, as many at once as :class:`Window` allows; journals each finished
range into the catalog's manifest; counts rows and stage times (:class:`Tally`); and stops a run whose
first ranges all fail alike (:func:`stop_if_systemic`), whose scheduler is lost, or that has had no
worker for ``--worker-timeout``. The worker plugin that carries the run's model to the workers is
unregistered at the end, with those of drivers that have left the scheduler, so that the workers of a
long-lived cluster do not keep old models.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from skymorph.errors import ClusterError, InputError, error_text, first_line

if TYPE_CHECKING:
    from skymorph.inference.job import RunConfig, _Plan

__all__ = ["SYSTEMIC_FAILURES", "Tally", "WORKER_CHECK_S", "Window", "registered_job", "run_tasks", "stop_if_storage_down",
           "stop_if_systemic", "wait_for_workers"]

_JOURNAL_EVERY_S = 1.0
SYSTEMIC_FAILURES = 16
"""Failed tile ranges, all alike and before any success, that stop a run (unless --allow-failures)."""


def _progress(config: RunConfig, total: int, done: int):
    from skymorph.progress import progress_bar

    return progress_bar(total=total, initial=done, unit="tile", desc="skymorph run", disable=not config.progress)


@dataclass
class Tally:
    """What the driver keeps while tasks finish: counts, failures and summed task stage times."""

    failures: list = field(default_factory=list)
    stages: dict = field(default_factory=lambda: {"read": 0.0, "engine": 0.0, "posterior": 0.0, "write": 0.0})
    rows_written: int = 0
    ranges_run: int = 0
    dashboard: str | None = None
    transient_streak: int = 0  # tile ranges failed in a row on storage hiccups that outlasted their retries


@dataclass
class Window:
    """How many tasks the driver keeps submitted: ``fixed`` (``--max-in-flight``) if given, else twice the
    cluster's Dask threads (at least 4), counted again every :data:`WORKER_CHECK_S` seconds. A cluster
    grows as the run goes (an adaptive SLURM cluster starts empty, a batch job's or DaskJob's workers join
    after the driver): counted once at the start, its window stayed at 4 tasks, and its new workers idle."""

    threads: Callable[[], int]
    fixed: int | None = None
    _size: int = 0
    _counted: float = -math.inf

    def size(self, now: float | None = None) -> int:
        if self.fixed is not None:
            return self.fixed
        now = time.monotonic() if now is None else now
        if now - self._counted >= WORKER_CHECK_S:
            try:
                self._size = max(4, 2 * self.threads())
            except Exception:  # noqa: BLE001 -- a scheduler gone mid-run is reported by the next arrival, resumable
                self._size = self._size or 4
            self._counted = now
        return self._size


@contextmanager
def registered_job(client, job) -> Iterator[str]:
    """Register the run's worker plugin (its :class:`~skymorph.inference.task.JobSpec`) on every worker,
    present and future, and yield its name; unregistered at the end, which frees its engines. Each worker
    loads its engine now: one that cannot (a model path only the driver sees, a plan without TensorRT)
    is a one-line :class:`~skymorph.errors.ModelError` here, before the catalog is touched."""
    import contextlib
    import uuid

    from skymorph.inference.cluster import threads_by_host
    from skymorph.inference.task import RunJob

    _unregister_orphaned_jobs(client)
    name = f"{_JOB_PREFIX}{uuid.uuid4().hex[:12]}-{client.id}"
    try:
        client.register_plugin(RunJob(job, name, threads_by_host(client)))
        yield name
    finally:
        if client.status == "running":  # else the scheduler forgets the plugin with the cluster
            with contextlib.suppress(Exception):  # a scheduler gone away must not hide why the run stopped
                client.unregister_worker_plugin(name)


def run_tasks(config: RunConfig, client, job_name: str, resources, plan: _Plan, manifest, tally: Tally, n_tiles: int,
              started: float, options: dict, lock) -> None:
    """Keep at most ``max_in_flight`` tasks of the run registered as ``job_name`` (:func:`registered_job`)
    submitted; record each result as it arrives, while ``lock`` (the driver's
    :class:`~skymorph.catalog.lock.DriverLock`) is held."""
    from concurrent.futures import CancelledError

    from distributed import as_completed
    from distributed.client import ClosedClientError

    from skymorph.catalog.writer import ManifestJournal, RangeRecord
    from skymorph.inference.task import run_job_range

    window = Window(lambda: sum(client.nthreads().values()), config.max_in_flight)
    in_flight: dict = {}
    pending = as_completed()
    skipped = plan.skipped
    bar = _progress(config, n_tiles, skipped)

    def submit_until_full() -> None:
        nonlocal skipped
        while len(in_flight) < window.size() and (item := plan.next()) is not None:
            tile, start, stop = item
            layout = plan.layouts.get(tile) if stop is not None else None
            future = client.submit(run_job_range, job_name, tile, start, stop, layout, pure=False, resources=resources)
            in_flight[future.key] = item
            pending.add(future)
        # the plan skips tiles already done as it looks for work: they are finished tiles too
        bar.update(plan.skipped - skipped)
        skipped = plan.skipped

    journal = ManifestJournal(config.out, manifest, options)
    last_flush = time.monotonic()
    address = client.scheduler.address
    completed = False  # set at the end of the loop: else an error is on its way out, and is the one to report
    try:
        submit_until_full()
        spec = config.cluster_spec()
        own_cluster = not spec.joins_running_scheduler
        for future in _arrivals(pending, client, config.worker_timeout, resources, own_cluster):
            lock.check_held()  # a run that lost its lock records nothing more
            tile, start, stop = in_flight.pop(future.key)
            try:
                result = future.result()
            except CancelledError:  # the driver cancels nothing: Dask cancels every task when the scheduler is lost
                raise
            except Exception as err:  # a task Dask gave up on (KilledWorker), or a bug: report it, carry on
                result = {"stop": stop, "seconds": {},
                          "failure": {"stage": "worker", "reason": error_text(err)}}
            future.release()
            tally.ranges_run += 1
            for key, value in result["seconds"].items():
                tally.stages[key] += value
            if result["failure"] is not None:
                if result["failure"]["stage"] == "lock":  # the task found another run's lock: is it so?
                    lock.check_held(read=True)
                transient = result["failure"].pop("transient", False)
                tally.failures.append({"tile": tile, "start": start, "stop": result["stop"], **result["failure"]})
                tally.transient_streak = tally.transient_streak + 1 if transient else 0
                if plan.outstanding.pop(tile, None) is not None:
                    bar.update(1)
                stop_if_storage_down(tally)
                if not config.allow_failures:
                    stop_if_systemic(tally)
            else:
                tally.transient_streak = 0
                if stop is None:
                    plan.first_range_done(tile, result["n"], result["chunk_size"], result["stop"])
                journal.add(RangeRecord(tile=tile, start=start, stop=result["stop"], n=result["n"],
                                         chunk_size=result["chunk_size"], parts=tuple(map(tuple, result["parts"]))))
                tally.rows_written += result["rows"]
                if tile in plan.outstanding and plan.range_done(tile):
                    bar.update(1)
                rate = tally.rows_written / max(time.perf_counter() - started, 1e-9)
                bar.set_postfix(galaxies=f"{tally.rows_written:,}", per_s=f"{rate:.0f}", refresh=False)
            if time.monotonic() - last_flush > _JOURNAL_EVERY_S:
                lock.check_held(read=True)  # a driver back from a pause must not journal into another run's catalog
                journal.flush()
                last_flush = time.monotonic()
            submit_until_full()
        completed = True
    except (CancelledError, ClosedClientError) as err:
        # not a failure of the tiles in flight: recording them as such would finish a catalog missing them
        raise _lost_scheduler(address, first_line(err, 200)) from err
    finally:
        try:
            if lock.confirm():
                journal.flush()
        except Exception:
            if completed:
                raise
            # else the error that stopped the run (storage down, the scheduler lost) is the one to see; the
            # ranges not journalled rerun
        finally:  # before any error's line, which a bar left open on a terminal ran into and redrew over
            bar.close()


def _arrivals(pending, client, worker_timeout: float | None, resources: dict | None, own_cluster: bool):
    """The futures of ``pending`` (``distributed.as_completed``) as they finish; with ``worker_timeout``, a
    :class:`ClusterError` once the scheduler has had no worker that can run the tasks (one with
    ``resources``) for that many seconds: the tasks would wait for one forever (a worker image that never
    pulls, GPU nodes never granted, workers that never leave a batch queue). ``own_cluster``: the
    scheduler is the driver's own (--cluster), gone when it exits, so the advice is not to join it."""
    from skymorph.inference.cluster import has_resources

    if worker_timeout is None:
        yield from pending
        return
    address = client.scheduler.address
    seen = next_check = time.monotonic()
    while not pending.is_empty():
        if pending.has_ready():
            seen = time.monotonic()  # a finished task: a worker was there
            yield next(pending)
            continue
        now = time.monotonic()
        if now >= next_check:
            try:
                workers = client.scheduler_info(n_workers=-1)["workers"].values()
            except (OSError, KeyError) as err:  # gone between two looks: a closed client's info has no "workers"
                raise _lost_scheduler(address, "the client lost its connection") from err
            if any(has_resources(info, resources) for info in workers):
                seen = now
            elif now - seen >= worker_timeout:
                raise _no_workers(address, resources, worker_timeout, own_cluster, started=True)
            next_check = now + min(WORKER_CHECK_S, worker_timeout / 4)
        time.sleep(_ARRIVAL_POLL_S)


def wait_for_workers(client, resources: dict | None, worker_timeout: float | None, own_cluster: bool) -> None:
    """Return once the scheduler has a worker that can run the tasks (one with ``resources``); with
    ``worker_timeout``, raise :class:`ClusterError` after that many seconds without one. For a run that
    must not change the catalog before it can start (``--overwrite`` removes the old one)."""
    from skymorph.inference.cluster import has_resources

    address = client.scheduler.address
    started = time.monotonic()
    while True:
        try:
            workers = client.scheduler_info(n_workers=-1)["workers"].values()
        except (OSError, KeyError) as err:
            raise ClusterError(f"lost the Dask scheduler at {address} while waiting for workers; nothing was changed: "
                               "run the same command again") from err
        if any(has_resources(info, resources) for info in workers):
            return
        if worker_timeout is not None and time.monotonic() - started >= worker_timeout:
            raise _no_workers(address, resources, worker_timeout, own_cluster, started=False)
        time.sleep(min(1.0, worker_timeout / 4) if worker_timeout else 1.0)


def _no_workers(address: str, resources: dict | None, worker_timeout: float, own_cluster: bool, *, started: bool) -> ClusterError:
    """--worker-timeout's error, for a run that has ``started`` writing its catalog or not."""
    kind = f"worker with resource {', '.join(resources)}" if resources else "worker"
    flags = "".join(f" --resources {k}=1" for k in (resources or {}))
    advice = ("find why its workers did not start (--cluster slurm: squeue, the worker jobs' logs)" if own_cluster
              else f"start workers (`dask worker {address}{flags}`)")
    outcome, again = (("the catalog is left unfinished, its finished tile ranges kept", "again to resume") if started
                      else ("nothing was changed", "again"))
    return ClusterError(
        f"the Dask scheduler at {address} has had no {kind} for {worker_timeout:g} s (--worker-timeout); {outcome}: "
        f"{advice} and run the same command {again}"
    )


def _lost_scheduler(address: str, reason: str) -> ClusterError:
    return ClusterError(
        f"lost the Dask scheduler at {address} mid-run ({reason}); the catalog is left unfinished, its "
        "finished tile ranges kept: run the same command again to resume"
    )


WORKER_CHECK_S = 5.0
"""How often a run asks the scheduler how many threads its workers have (the in-flight :class:`Window`)
and, with --worker-timeout, whether it has workers at all."""
_ARRIVAL_POLL_S = 0.02
"""How long such a run sleeps between looks for a finished task: far below a task's seconds."""

_JOB_PREFIX = "skymorph-job-"
"""A run's worker plugin is named ``skymorph-job-{12 hex}-{its driver's client id}``."""


def _unregister_orphaned_jobs(client) -> None:
    """Unregister the worker plugins of runs whose driver's client has left the scheduler: a driver killed
    with SIGKILL never unregisters its plugin, which keeps its loaded engine (GPU memory on a GPU worker)
    on every worker of a long-lived cluster, and is handed to every worker that joins later."""
    import contextlib
    import re

    plugins, clients = client.run_on_scheduler(lambda dask_scheduler: (list(dask_scheduler.worker_plugins),
                                                                       list(dask_scheduler.clients)))
    for name in plugins:
        # names of another form (older skymorph) say nothing about their driver: left alone
        named = re.fullmatch(rf"{_JOB_PREFIX}[0-9a-f]{{12}}-(.+)", name)
        if named and named.group(1) not in clients:
            with contextlib.suppress(Exception):  # housekeeping: another run's leftovers must not stop this one
                client.unregister_worker_plugin(name)


def stop_if_storage_down(tally: Tally) -> None:
    """A one-line :class:`ClusterError` once :data:`SYSTEMIC_FAILURES` tile ranges in a row have failed on
    storage hiccups that outlasted their retries (an endpoint down, or throttling for minutes), however
    many rows came before: each range takes minutes to fail so, and a survey's every remaining tile
    failed in turn (days, at survey scale), --allow-failures or not. The ranges left run on a rerun."""
    if tally.transient_streak < SYSTEMIC_FAILURES:
        return
    last = tally.failures[-1]
    raise ClusterError(f"the last {tally.transient_streak} tile ranges all failed on storage that did not answer in "
                       f"time (the last: {last['stage']}: {last['reason']}); stopped, the catalog left unfinished with "
                       "its finished tile ranges kept: run the same command again to resume once the storage answers")


def stop_if_systemic(tally: Tally) -> None:
    """A one-line :class:`InputError` once the first :data:`SYSTEMIC_FAILURES` tile ranges have all
    failed alike (same stage, same error type) and none has written a row: workers without credentials,
    a model they cannot load, a tile list of missing stores. Failing every tile of a survey one by one
    would take as long as the survey."""
    failures = tally.failures
    if tally.rows_written or len(failures) != SYSTEMIC_FAILURES:  # judged once: later failures add no verdict
        return
    kinds = {(f["stage"], f["reason"].split(":", 1)[0]) for f in failures}
    if len(kinds) == 1:
        raise InputError(f"the first {len(failures)} tile ranges all failed alike and none wrote a row (the first: "
                         f"{failures[0]['stage']}: {failures[0]['reason']}); stopped: fix the cause and run again, or pass "
                         "--allow-failures to go on")
