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

:class:`JobAdaptive` keeps the scheduler's target and fixes all three. A job whose workers have not all
arrived is never cancelled to meet the target. The scheduler is asked for workers to close grouped by
job (``worker_key``), so it offers a whole job or none, and a worker's count of checks starts when it
arrives. A job whose workers all arrived and have all left is dropped from the cluster's plan, so that
the next check submits its replacement. Closing the cluster still cancels every job.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

from distributed.deploy.adaptive import Adaptive

__all__ = ["JobAdaptive"]


@dataclass(frozen=True)
class _JobOf:
    """The scheduler's ``worker_key``: a worker's job, from ``jobs`` (worker name -> job name, as planned at
    this check), so that ``Scheduler.workers_to_close`` offers a job's workers together or not at all."""

    jobs: dict[str, str]

    def __call__(self, worker_state) -> str:
        return self.jobs.get(worker_state.name, worker_state.name)


class JobAdaptive(Adaptive):
    """``Adaptive`` for jobs of grouped workers: pass it as ``cluster.adapt(..., Adaptive=JobAdaptive)``."""

    def __init__(self, *args, **kwargs) -> None:
        # job name -> (a weak reference to its job object, the names of its workers seen connected): a name
        # comes back for the next job once its job is dropped (SpecCluster numbers jobs from the lowest free
        # number); weak, since the cluster, closing, checks that every job object still alive was closed
        self._seen: dict[str, tuple[weakref.ref, set[str]]] = {}
        super().__init__(*args, **kwargs)

    def _workers_of(self, job: str) -> set[str]:
        spec = self.cluster.worker_spec[job]
        return {f"{job}{suffix}" for suffix in spec["group"]} if "group" in spec else {job}

    async def recommendations(self, target: int) -> dict:
        observed = self.observed
        arrived: set[str] = set()  # workers of the jobs now planned that have connected
        ended = []
        for job in list(self.cluster.worker_spec):
            process = self.cluster.workers.get(job)  # None until the cluster has submitted it
            if process is None:
                continue
            workers = self._workers_of(job)
            seen_process, seen = self._seen.get(job, (None, set()))
            seen = (seen if seen_process is not None and seen_process() is process else set()) | (workers & observed)
            self._seen[job] = (weakref.ref(process), seen)
            if seen == workers and not workers & observed:  # ran, and ended: its lifetime or walltime
                ended.append(job)
            else:
                arrived |= seen
        if ended:
            # dropped and closed now, before a scale-up can plan a job of the same name in its place
            await self.cluster.scale_down(ended)
            for job in ended:
                del self._seen[job]
        self.worker_key = _JobOf({worker: job for job in self.cluster.worker_spec for worker in self._workers_of(job)})
        recommendation = await super().recommendations(target)
        for name in list(self.close_counts):  # counted while queued: a worker's wait_count starts when it arrives
            if name not in arrived:
                del self.close_counts[name]
        if recommendation["status"] != "down":
            return recommendation
        workers = [name for name in recommendation["workers"] if name in arrived]
        return {"status": "down", "workers": workers} if workers else {"status": "same"}
