"""Adaptive scaling for a cluster of batch jobs (dask-jobqueue) that each run several worker processes.

``distributed.deploy.Adaptive`` as it stands fails such a cluster (``processes > 1`` in the SLURM
config, as the CPU template's 8) in three ways, all seen with :mod:`skymorph.testing.slurm`:

- **Queued jobs are cancelled.** With no worker yet, the scheduler's target is one worker, below the
  job's ``processes``. Adaptive then cancels the queued job after ``wait_count`` checks, 3 s, and submits
  another one, for as long as the queue holds jobs longer than that: on a busy cluster, for ever
  (dask/distributed#7019, dask/dask-jobqueue#498). The same happens whenever the target dips while a
  job waits.
- **Running jobs are cancelled.** The scheduler offers workers to close one at a time: with a target
  of one worker, one of a job's two, the idle one. Closing it cancels its job, the other worker and the
  task it runs included, and a new job is submitted for that task. The checks counted towards closing a
  worker while its job was queued also carried over to its arrival, so a job could be closed one check
  after it started.
- **Retired jobs are not replaced.** The cluster forgets a lost worker by its name. A worker of a job
  of several processes is named after the job plus a suffix (``SLURMCluster-0-1``), so the job is never
  forgotten. Once every job has reached its ``--lifetime``, the run waits for workers that never come.

:class:`JobAdaptive` keeps the scheduler's target and fixes all three. Only connected workers are
closed to meet it: a job is not cancelled for a worker still queued, one that retired before its
siblings (lifetimes are staggered) or one its nanny is restarting. The scheduler is asked for workers to
close grouped by job (``worker_key``), so it offers a whole job or none, and a worker's count of checks
starts when it connects. A job is closed whole, all its connected workers retired, and only while none
of them is processing a task: the scheduler offers busy jobs too when every job is busy (two tasks left
on two jobs, a target of 2 workers). A job that had a worker connected and has had none for ``ended_after_s`` (its
workers retired or died, including a job one of whose workers never started) is dropped from the
cluster's plan, so that the next check submits its replacement. So is a job that ended before any of its
workers connected (a node that failed it, a worker environment that does not start), where the batch
system can be asked which jobs have ended (``ended_jobs``: for SLURM, ``squeue`` on their ids): before,
the cluster counted such a job as queued for ever and the run waited for it. After ``max_failed_starts``
such jobs in a row, and while no job has a worker connected, nothing more is submitted (a broken worker
environment would otherwise fill the queue with jobs that fail) and the error is logged. Closing the
cluster still cancels every job. A job started before the scheduler has had any task (``skymorph run --overwrite`` asks for one, to
see a worker before it removes the old catalog) is kept until tasks come, not closed as idle.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

from distributed.deploy.adaptive import Adaptive

__all__ = ["JobAdaptive"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _JobOf:
    """The scheduler's ``worker_key``: a worker's job, from ``jobs`` (worker name -> job name, as planned at
    this check), so that ``Scheduler.workers_to_close`` offers a job's workers together or not at all."""

    jobs: dict[str, str]

    def __call__(self, worker_state) -> str:
        return self.jobs.get(worker_state.name, worker_state.name)


@dataclass
class _Job:
    """What :class:`JobAdaptive` knows of one submitted job."""

    process: weakref.ref  # its job object: weak, as the cluster, closing, checks that every live one was closed
    started: bool  # whether one of its workers has been connected
    last_connected: float  # when one of them last was (time.monotonic); until then, when the job was first seen


class JobAdaptive(Adaptive):
    """``Adaptive`` for jobs of grouped workers: pass it as ``cluster.adapt(..., Adaptive=JobAdaptive)``.

    ``ended_after_s``: how long a job that had a worker connected must have none before it counts as ended
    and is replaced; long enough for a nanny to restart a worker that died, which takes seconds.
    ``ended_jobs``: a function (blocking; run in a thread) of job ids giving those the batch system says
    have ended, or None where it cannot tell; asked at most every ``queue_check_s``, about the jobs none
    of whose workers has connected and that are older than that. Such a job ended without starting: it
    is replaced, and after ``max_failed_starts`` in a row none is while no job has a worker connected."""

    def __init__(self, *args, ended_after_s: float = 60.0, ended_jobs: Callable[[list[str]], set[str] | None] | None = None,
                 queue_check_s: float = 30.0, max_failed_starts: int = 5, **kwargs) -> None:
        self.ended_after_s = ended_after_s
        self.ended_jobs = ended_jobs
        self.queue_check_s = queue_check_s
        self.max_failed_starts = max_failed_starts
        self._failed_starts = 0  # jobs in a row that ended before a worker connected; 0 again once one connects
        self._gave_up = False  # whether that has stopped the submissions (and been logged)
        self._queue_checked = time.monotonic()
        # by job name, which comes back for the next job once its job is dropped (SpecCluster numbers jobs
        # from the lowest free number): hence the job object, to tell the two apart
        self._jobs: dict[str, _Job] = {}
        self._had_work = False  # whether the scheduler has asked for a worker yet
        super().__init__(*args, **kwargs)

    def _workers_of(self, job: str) -> set[str]:
        spec = self.cluster.worker_spec[job]
        return {f"{job}{suffix}" for suffix in spec["group"]} if "group" in spec else {job}

    async def recommendations(self, target: int) -> dict:
        self._had_work = self._had_work or target > 0
        observed, now = self.observed, time.monotonic()
        connected: set[str] = set()  # workers of the jobs now planned that are connected
        ended = []
        for job in list(self.cluster.worker_spec):
            process = self.cluster.workers.get(job)  # None until the cluster has submitted it
            if process is None:
                continue
            here = self._workers_of(job) & observed
            known = self._jobs.get(job)
            if known is None or known.process() is not process:
                known = self._jobs[job] = _Job(weakref.ref(process), False, now)
            if here:
                if not known.started:
                    self._failed_starts, self._gave_up = 0, False
                known.started, known.last_connected = True, now
                connected |= here
            elif known.started and now - known.last_connected >= self.ended_after_s:
                ended.append(job)  # ran, and has no worker left: its lifetime, its walltime, or a crash
        ended += await self._never_started(now)
        if ended:
            # dropped and closed now, before a scale-up can plan a job of the same name in its place
            await self.cluster.scale_down(ended)
        for job in set(self._jobs) - set(self.cluster.worker_spec):  # ended, or closed by a scale-down
            del self._jobs[job]
        job_of = {worker: job for job in self.cluster.worker_spec for worker in self._workers_of(job)}
        self.worker_key = _JobOf(job_of)
        recommendation = await super().recommendations(target)
        if recommendation["status"] == "up" and self._failed_starts >= self.max_failed_starts and not connected:
            if not self._gave_up:
                self._gave_up = True
                logger.error("%d batch jobs in a row ended before any of their workers connected; no more are submitted "
                             "while no job has a worker: read the jobs' logs and fix the cause (the run waits for workers; "
                             "--worker-timeout stops it, resumable)", self._failed_starts)
            return {"status": "same"}  # a job that starts (one still queued, say) resets the count
        for name in list(self.close_counts):  # counted while away: a worker's wait_count starts when it is connected
            if name not in connected:
                del self.close_counts[name]
        if recommendation["status"] != "down":
            return recommendation
        if not self._had_work:  # a job started before any task (run --overwrite asks for one): kept for the tasks
            return {"status": "same"}
        # Adaptive also offers workers not connected (queued, retired, restarting), whose job it would cancel;
        # the scheduler offers busy jobs too (it only prefers idle ones); and a job's workers, connected at
        # different checks, reach wait_count apart, while closing one cancels the whole job
        offered = {job_of.get(name, name) for name in recommendation["workers"] if name in connected}
        busy = await self._busy_workers() if offered else set()
        workers = sorted(name for job in offered if not (self._workers_of(job) & busy) for name in self._workers_of(job) & connected)
        return {"status": "down", "workers": workers} if workers else {"status": "same"}

    async def _never_started(self, now: float) -> list[str]:
        """The jobs that ended before any of their workers connected, by the batch system's account; each is
        logged, and counted towards ``max_failed_starts``."""
        if self.ended_jobs is None or now - self._queue_checked < self.queue_check_s:
            return []  # before the jobs are looked at: this runs at every check of the cluster
        waiting = {}  # job id -> job name
        for job, known in self._jobs.items():
            job_id = getattr(self.cluster.workers.get(job), "job_id", None)
            if not known.started and now - known.last_connected >= self.queue_check_s and job_id is not None:
                waiting[str(job_id)] = job
        if not waiting:
            return []
        self._queue_checked = now
        ended = await asyncio.to_thread(self.ended_jobs, sorted(waiting))
        gone = []
        for job_id in sorted(set(waiting) & (ended or set())):
            gone.append(waiting[job_id])
            self._failed_starts += 1
            logger.warning("batch job %s (%s) ended before any of its workers connected (see its log)", job_id, waiting[job_id])
        return gone

    async def _busy_workers(self) -> set[str]:
        """The names of the workers with a task processing, asked of the scheduler now."""
        processing = await self.scheduler.processing()
        names = {address: info["name"] for address, info in self.cluster.scheduler_info["workers"].items()}
        return {names.get(address, address) for address, keys in processing.items() if keys}
