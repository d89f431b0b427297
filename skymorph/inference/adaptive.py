"""Adaptive scaling for a cluster of batch jobs (dask-jobqueue) that each run several worker processes.

``distributed.deploy.Adaptive`` as it stands fails such a cluster (``processes > 1`` in the SLURM
config, as the CPU template's 8) in two ways, both seen with :mod:`skymorph.testing.slurm`:

- **Queued jobs are cancelled.** With no worker yet, the scheduler's target is one worker, below the
  job's ``processes``. Adaptive then cancels the queued job after ``wait_count`` checks, 3 s, and submits
  another one, for as long as the queue holds jobs longer than that: on a busy cluster, for ever
  (dask/distributed#7019, dask/dask-jobqueue#498). The same happens whenever the target dips while a
  job waits.
- **Retired jobs are not replaced.** The cluster forgets a lost worker by its name. A worker of a job
  of several processes is named after the job plus a suffix (``SLURMCluster-0-1``), so the job is never
  forgotten. Once every job has reached its ``--lifetime``, the run waits for workers that never come.

:class:`JobAdaptive` keeps the scheduler's target and fixes both. A job whose workers have not all
arrived is never cancelled to meet the target. A job whose workers all arrived and have all left is
dropped from the cluster's plan, so that the next check submits its replacement. Closing the cluster
still cancels every job.
"""

from __future__ import annotations

import weakref

from distributed.deploy.adaptive import Adaptive

__all__ = ["JobAdaptive"]


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
        recommendation = await super().recommendations(target)
        if recommendation["status"] != "down":
            return recommendation
        workers = [name for name in recommendation["workers"] if name in arrived]
        return {"status": "down", "workers": workers} if workers else {"status": "same"}
