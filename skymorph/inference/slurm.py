"""Dask workers as SLURM jobs (dask-jobqueue), configured from one YAML file.

``skymorph run --cluster slurm --cluster-config deploy/slurm/jobqueue.yaml`` reads the file into a
validated :class:`SlurmConfig` (:func:`load_slurm_config`) and builds its ``dask_jobqueue.SLURMCluster``
(:meth:`SlurmConfig.cluster`; :func:`slurm_cluster` does both): the scheduler runs in the calling process (a login node or a small
job), each worker is one ``sbatch`` job. A GPU job asks for one GPU (``--gres=gpu:1``) and runs one
worker process advertising ``--resources GPU=1``, so tasks that need a GPU land only there, at most
``threads_per_process`` at a time. Workers retire (``--lifetime``, staggered) before SLURM's walltime
kills them, handing their work back to the scheduler; with ``max_jobs > 0`` the cluster is adaptive
(:class:`~skymorph.inference.adaptive.JobAdaptive`: a queued job is left in the queue, a running one is
closed only whole, and a job whose workers have all retired, or one that ``squeue`` says has ended
though none of its workers ever connected, is replaced).

Needs dask-jobqueue, skymorph's ``slurm`` extra (``pip install -c constraints.txt -e '.[slurm]'`` in the
repository).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from skymorph.errors import InputError, MissingDependencyError, did_you_mean, first_line

__all__ = ["SlurmConfig", "load_slurm_config", "slurm_cluster", "walltime_minutes"]

_FINAL_STATES = frozenset({"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "TIMEOUT"})
"""squeue's states of a job that has ended (``%T``); not PREEMPTED, which SLURM may queue again."""

_WALLTIME = re.compile(r"^(?:(?P<days>\d+)-)?(?P<hours>\d+):(?P<minutes>\d{1,2}):(?P<seconds>\d{1,2})$")


def walltime_minutes(walltime: str) -> float:
    """Minutes in a SLURM time limit ``[D-]HH:MM:SS``: ``D * 1440 + HH * 60 + MM + SS / 60``."""
    match = _WALLTIME.match(str(walltime).strip())
    if match is None:
        raise InputError(f"walltime must be [D-]HH:MM:SS (SLURM's -t), got {walltime!r}")
    days = int(match["days"] or 0)
    minutes, seconds = int(match["minutes"]), int(match["seconds"])
    if minutes > 59 or seconds > 59:
        raise InputError(f"walltime must be [D-]HH:MM:SS with MM and SS below 60, got {walltime!r}")
    return days * 1440 + int(match["hours"]) * 60 + minutes + seconds / 60


@dataclass(frozen=True)
class SlurmConfig:
    """One SLURM job = one Dask worker node share; the YAML keys are these field names.

    The worker retires at ``worker_lifetime_minutes`` +/- ``lifetime_stagger_minutes`` (uniform), so
    ``worker_lifetime_minutes + lifetime_stagger_minutes`` must stay below the walltime: the gap is
    the time a retiring worker has to finish or hand back its tasks.
    """

    walltime: str
    memory_gib: float
    cpus_per_job: int
    threads_per_process: int
    worker_lifetime_minutes: int
    lifetime_stagger_minutes: int = 5
    gpus_per_job: int = 1
    processes: int = 1
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    min_jobs: int = 0
    max_jobs: int = 0
    job_name: str = "skymorph-worker"
    python: str | None = None
    local_directory: str | None = None
    log_directory: str | None = None
    interface: str | None = None
    scheduler_host: str | None = None
    dashboard_address: str = ":8787"
    death_timeout_s: int = 120
    job_script_prologue: tuple[str, ...] = ()
    job_extra_directives: tuple[str, ...] = ()
    worker_extra_args: tuple[str, ...] = ()

    def __post_init__(self):
        for name in ("cpus_per_job", "threads_per_process", "processes", "worker_lifetime_minutes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"SLURM config: {name} must be a positive integer, got {value!r}")
        for name in ("lifetime_stagger_minutes", "gpus_per_job", "min_jobs", "max_jobs", "death_timeout_s"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InputError(f"SLURM config: {name} must be an integer >= 0, got {value!r}")
        if not isinstance(self.memory_gib, (int, float)) or isinstance(self.memory_gib, bool) or self.memory_gib <= 0:
            raise InputError(f"SLURM config: memory_gib must be a positive number, got {self.memory_gib!r}")
        if self.gpus_per_job > 1:
            raise InputError(
                f"SLURM config: gpus_per_job is {self.gpus_per_job}, but a job runs one worker process per GPU: "
                "set gpus_per_job: 1 and raise max_jobs (SLURM gives each job its own GPU), "
                "or use deploy/slurm/skymorph-run.sbatch for whole nodes"
            )
        if self.gpus_per_job == 1 and self.processes != 1:
            raise InputError(
                f"SLURM config: a GPU job runs one worker process (one per GPU), got processes: {self.processes}; "
                "use threads_per_process for concurrency on the GPU"
            )
        threads = self.processes * self.threads_per_process
        if threads > self.cpus_per_job:
            raise InputError(
                f"SLURM config: processes x threads_per_process = {threads} exceeds cpus_per_job = {self.cpus_per_job}; "
                "raise cpus_per_job or lower the threads"
            )
        if self.min_jobs > self.max_jobs:
            raise InputError(f"SLURM config: min_jobs ({self.min_jobs}) must not exceed max_jobs ({self.max_jobs})")
        if not isinstance(self.walltime, str):
            raise InputError(
                f"SLURM config: walltime must be a quoted string like \"04:00:00\" "
                f"(YAML reads an unquoted HH:MM:SS as a base-60 number), got {self.walltime!r}"
            )
        limit = walltime_minutes(self.walltime)
        latest = self.worker_lifetime_minutes + self.lifetime_stagger_minutes
        if latest >= limit:
            raise InputError(
                f"SLURM config: worker_lifetime_minutes + lifetime_stagger_minutes = {latest} min must be below "
                f"the walltime {self.walltime} ({limit:g} min) so workers retire before SLURM kills them"
            )
        for name in ("job_script_prologue", "job_extra_directives", "worker_extra_args"):
            value = getattr(self, name)
            if not isinstance(value, (tuple, list)) or not all(isinstance(item, str) for item in value):
                raise InputError(f"SLURM config: {name} must be a list of strings, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        extra = " ".join(self.worker_extra_args)
        for flag in ("--resources", "--lifetime", "--nthreads", "--nworkers"):
            if flag in extra:
                raise InputError(
                    f"SLURM config: worker_extra_args must not set {flag}: it comes from the config fields "
                    "(gpus_per_job, worker_lifetime_minutes, threads_per_process, processes)"
                )

    @classmethod
    def from_dict(cls, values: dict, source: str = "SLURM config") -> SlurmConfig:
        if not isinstance(values, dict):
            raise InputError(f"{source}: expected a mapping of settings, got {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        for key in values:
            if key not in known:
                raise InputError(f"{source}: unknown setting {key!r}.{did_you_mean(str(key), known)}")
        missing = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING and f.name not in values]
        if missing:
            raise InputError(f"{source}: missing required setting(s) {', '.join(missing)}")
        values = {key: (tuple(v) if isinstance(v, list) else v) for key, v in values.items()}
        try:
            return cls(**values)
        except InputError as err:  # name the file (and the overrides) the checks of __post_init__ cannot
            raise InputError(f"{source}: {str(err).removeprefix('SLURM config: ')}") from None

    def worker_args(self) -> list[str]:
        """``dask worker`` flags: lifetime and stagger, and ``--resources GPU=1`` on a GPU job."""
        args = [
            "--lifetime",
            f"{self.worker_lifetime_minutes}m",
            "--lifetime-stagger",
            f"{self.lifetime_stagger_minutes}m",
        ]
        if self.gpus_per_job:
            args += ["--resources", f"GPU={self.gpus_per_job}"]
        return args + list(self.worker_extra_args)

    def job_directives(self) -> list[str]:
        """Extra ``#SBATCH`` lines beyond what dask-jobqueue writes (partition, account, cpus, mem, time)."""
        directives = []
        if self.gpus_per_job:
            directives.append(f"--gres=gpu:{self.gpus_per_job}")
        if self.qos:
            directives.append(f"--qos={self.qos}")
        return directives + list(self.job_extra_directives)

    @property
    def engine_threads(self) -> int:
        """Intra-op threads of each task's engine: the job's CPUs over its processes x threads (one task
        per Dask thread), so that the engines of a job fill its cores and no more. Known here for every
        worker; a worker itself, joining an adaptive cluster that started empty, sees only its own threads,
        not its siblings', and gave each engine the whole job's cores (8 processes: 8 times too many)."""
        return self.cpus_per_job // (self.processes * self.threads_per_process)  # >= 1: checked on construction

    def cluster(self):
        """The ``dask_jobqueue.SLURMCluster`` of these settings, adaptive where ``max_jobs > 0`` (see
        :func:`slurm_cluster`)."""
        try:
            from dask_jobqueue import SLURMCluster
        except ImportError as err:
            raise MissingDependencyError(
                "running on SLURM needs dask-jobqueue: pip install 'dask-jobqueue>=0.9' (skymorph's slurm extra)"
            ) from err
        from skymorph.inference.adaptive import JobAdaptive

        cluster = SLURMCluster(**self.cluster_kwargs())
        if self.max_jobs:  # queued jobs kept, retired ones replaced, whatever the processes per job
            cluster.adapt(minimum_jobs=self.min_jobs, maximum_jobs=self.max_jobs, Adaptive=JobAdaptive, ended_jobs=self.ended_jobs)
        return cluster

    def ended_jobs(self, job_ids: list[str]) -> set[str] | None:
        """Those of ``job_ids`` that SLURM says have ended: listed by ``squeue`` in a final state (failed,
        completed, cancelled, ...), or no longer known to it (``Invalid job id``, once purged); None where
        squeue does not answer. The jobs are named, with ``--all``, so that hidden partitions and other users'
        settings do not hide them, and asked of the cluster a ``--clusters`` directive sends them to."""
        import subprocess

        clusters = [f"--clusters={match.group(1)}" for directive in self.job_directives()
                    if (match := re.fullmatch(r"(?:--clusters?[= ]|-M ?)(\S+)", directive.strip()))]

        def ask(ids: list[str]) -> tuple[dict[str, str], bool] | None:
            try:
                listed = subprocess.run(["squeue", "--noheader", "--all", "--format=%i %T", f"--jobs={','.join(ids)}", *clusters],
                                        capture_output=True, text=True, timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                return None
            if listed.returncode:
                return ({}, True) if "invalid job id" in listed.stderr.lower() else None
            states = {}
            for line in listed.stdout.splitlines():  # "CLUSTER: name" lines too, with --clusters
                fields = line.split()
                if len(fields) == 2 and fields[0] in ids:
                    states[fields[0]] = fields[1]
            return states, False

        answer = ask(job_ids)
        if answer is None:
            return None
        states, invalid = answer
        if invalid:  # one purged id fails the whole query: ask about each
            ended = set()
            for job_id in job_ids:
                one = ask([job_id])
                if one is not None and (one[1] or one[0].get(job_id) in _FINAL_STATES):
                    ended.add(job_id)
            return ended
        return {job_id for job_id in job_ids if job_id not in states or states[job_id] in _FINAL_STATES}

    def cluster_kwargs(self) -> dict:
        """Keyword arguments for ``dask_jobqueue.SLURMCluster``."""
        scheduler_options = {"dashboard_address": self.dashboard_address}
        if self.scheduler_host:
            scheduler_options["host"] = self.scheduler_host
        return {
            "job_name": self.job_name,
            "python": self.python,
            "queue": self.partition,
            "account": self.account,
            "walltime": self.walltime,
            "processes": self.processes,
            "cores": self.processes * self.threads_per_process,
            "job_cpu": self.cpus_per_job,
            "memory": f"{self.memory_gib:g}GiB",
            "job_extra_directives": self.job_directives(),
            "worker_extra_args": self.worker_args(),
            "job_script_prologue": list(self.job_script_prologue),
            "local_directory": self.local_directory,
            "log_directory": self.log_directory,
            "interface": self.interface,
            "death_timeout": self.death_timeout_s,
            "scheduler_options": scheduler_options,
        }


def load_slurm_config(config_path: str, **overrides) -> SlurmConfig:
    """Read ``config_path`` (YAML mapping of :class:`SlurmConfig` fields) and apply ``overrides``."""
    import yaml

    from skymorph.storage import read_text

    try:
        values = yaml.safe_load(read_text(config_path))
    except FileNotFoundError:
        raise InputError(f"SLURM config {str(config_path)!r} does not exist; give a YAML file like "
                         "deploy/slurm/jobqueue.yaml") from None
    except yaml.YAMLError as err:
        raise InputError(f"SLURM config {str(config_path)!r} is not valid YAML: {first_line(err)}") from err
    except UnicodeDecodeError as err:
        raise InputError(f"SLURM config {str(config_path)!r} is not UTF-8 text ({err.reason} at byte {err.start}); "
                         "give a YAML file like deploy/slurm/jobqueue.yaml") from None
    if isinstance(values, dict):
        values = {**values, **overrides}
    given = f" with {', '.join(f'{key}={value}' for key, value in overrides.items())} from the command line" if overrides else ""
    return SlurmConfig.from_dict(values, source=f"SLURM config {str(config_path)!r}{given}")


def slurm_cluster(config_path: str, **overrides):
    """A ``dask_jobqueue.SLURMCluster`` built from the YAML file at ``config_path``.

    ``overrides`` replace settings of the file (same names as :class:`SlurmConfig`'s fields, e.g.
    ``account="abc123"``, ``max_jobs=32``). With ``max_jobs > 0`` the cluster adapts between
    ``min_jobs`` and ``max_jobs`` jobs, which also replaces workers that retired at their lifetime;
    with ``max_jobs = 0`` no job is submitted until the caller scales it. Close it when done.
    """
    return load_slurm_config(config_path, **overrides).cluster()
