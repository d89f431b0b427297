"""Where ``skymorph run`` gets its Dask workers.

In order: ``--scheduler ADDRESS``, ``--scheduler-file FILE``, ``--cluster slurm`` (deploy/slurm via
:mod:`skymorph.inference.slurm`), the ``DASK_SCHEDULER_ADDRESS`` environment variable, else a
``LocalCluster`` of worker processes sized to this machine. Locally, worker processes x Dask threads x
engine threads = cores: each engine already uses several cores for one batch, so more concurrent
tasks than that would only oversubscribe the CPU.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from types import MappingProxyType

from distributed import WorkerPlugin

from skymorph.cores import cgroup_cpu_quota, usable_cores
from skymorph.errors import InputError

__all__ = ["ClusterSpec", "LocalSizing", "local_sizing", "usable_cores", "cgroup_cpu_quota", "connect", "scheduler_address", "threads_by_host",
           "worker_host", "GPU_WORKER", "task_resources", "has_resources", "require_resources"]

CLUSTER_KINDS = ("local", "slurm")


@dataclass(frozen=True)
class ClusterSpec:
    """How to reach (or make) the workers; see the module docstring for the order of precedence."""

    scheduler: str | None = None
    scheduler_file: str | None = None
    cluster: str = "local"
    cluster_config: str | None = None
    workers: int | None = None
    threads_per_worker: int = 1
    gpu: bool = False
    worker_timeout: float | None = None

    def __post_init__(self) -> None:
        if self.scheduler and self.scheduler_file:
            raise InputError("give --scheduler or --scheduler-file, not both")
        if self.cluster not in CLUSTER_KINDS:
            raise InputError(f"--cluster must be one of {CLUSTER_KINDS}, got {self.cluster!r}")
        if self.cluster == "slurm" and not self.cluster_config:
            raise InputError("--cluster slurm needs --cluster-config FILE (see deploy/slurm/)")
        if self.cluster_config and self.cluster != "slurm":  # it was ignored, and a LocalCluster ran here
            raise InputError("--cluster-config applies to --cluster slurm; add --cluster slurm, or drop --cluster-config")
        if self.cluster != "local" and (self.scheduler or self.scheduler_file):
            raise InputError(f"--cluster {self.cluster} starts its own scheduler; drop --scheduler/--scheduler-file")
        if self.workers is not None and self.workers < 1:
            raise InputError(f"--workers must be at least 1, got {self.workers}")
        if self.threads_per_worker < 1:
            raise InputError(f"--threads-per-worker must be at least 1, got {self.threads_per_worker}")
        sizing = [flag for flag, given in (("--workers", self.workers is not None),
                                           ("--threads-per-worker", self.threads_per_worker != 1)) if given]
        if sizing and self.joins_running_scheduler:  # they were ignored without a word
            where = "--scheduler-file" if self.scheduler_file else "--scheduler" if self.scheduler else "DASK_SCHEDULER_ADDRESS"
            raise InputError(f"{' and '.join(sizing)} size the cluster that skymorph starts, but {where} names a running "
                             "one, whose workers `dask worker --nworkers/--nthreads` sized; drop them")
        if self.cluster == "slurm" and self.threads_per_worker != 1:
            raise InputError("--threads-per-worker sizes the embedded cluster; a SLURM worker's threads are the "
                             "--cluster-config file's (cores / processes): drop it")
        embedded = self.cluster == "local" and not self.joins_running_scheduler
        if embedded and self.workers is not None and self.workers > (cores := usable_cores()):  # 1,000 on 2 cores hung
            raise InputError(f"--workers {self.workers} is more worker processes than this machine's {cores} usable "
                             "cores, each with its own engine; give at most that, or --threads-per-worker for more tasks")
        if self.scheduler_file and not os.path.exists(self.scheduler_file):
            raise InputError(f"scheduler file {self.scheduler_file!r} does not exist; start `dask scheduler --scheduler-file` first")

    @property
    def slurm_overrides(self) -> dict:
        """The settings of ``--cluster-config`` that the command line replaces: ``--workers`` caps the
        adaptive cluster as ``max_jobs`` (an explicit scale() would be undone by adapt())."""
        return {"max_jobs": self.workers} if self.workers else {}

    @property
    def address(self) -> str | None:
        """The scheduler address to connect to, if any: ``--scheduler``, else DASK_SCHEDULER_ADDRESS unless
        ``--cluster slurm`` (a flag given beats a variable left in the environment)."""
        if self.scheduler_file:
            return None
        from_environment = os.environ.get("DASK_SCHEDULER_ADDRESS") if self.cluster == "local" else None
        return self.scheduler or from_environment or None

    @property
    def joins_running_scheduler(self) -> bool:
        """Whether the workers are someone else's (a scheduler file or address), not a cluster skymorph starts."""
        return bool(self.scheduler_file or self.address)


@dataclass(frozen=True)
class LocalSizing:
    workers: int
    threads_per_worker: int
    engine_threads: int


def has_nvidia_gpu() -> bool:
    """Whether this machine exposes an NVIDIA GPU device (``/dev/nvidia0``, ...), without importing CUDA."""
    import glob

    return bool(glob.glob("/dev/nvidia[0-9]*"))


def local_sizing(workers: int | None, threads_per_worker: int, gpu: bool, cores: int | None = None) -> LocalSizing:
    """Split ``cores`` as ``workers x threads_per_worker x engine_threads <= cores``.

    By default one worker process per 4 cores (at least one; one per machine for a GPU): fewer, wider
    engines waste less on per-process model copies and keep batches large.
    """
    cores = cores or usable_cores()
    if workers is None:
        workers = 1 if gpu else max(1, cores // 4)
    engine_threads = max(1, cores // (workers * threads_per_worker))
    return LocalSizing(workers=workers, threads_per_worker=threads_per_worker, engine_threads=engine_threads)


def worker_host(address: str) -> str:
    """The host of a worker address: ``tcp://10.0.0.5:40123`` -> ``10.0.0.5``."""
    return address.rsplit(":", 1)[0].split("://")[-1]


def threads_by_host(client) -> dict[str, int]:
    """Dask threads of all workers per host, from the scheduler: what the engines there share."""
    counts: dict[str, int] = {}
    for address, info in client.scheduler_info(n_workers=-1)["workers"].items():
        host = worker_host(address)
        counts[host] = counts.get(host, 0) + int(info.get("nthreads", 1))
    return counts


GPU_WORKER = MappingProxyType({"GPU": 1})
"""What a GPU worker advertises (``dask worker --resources GPU=1``): one worker process per GPU."""


def task_resources(gpu: bool) -> dict | None:
    """What each task of a ``--gpu`` run asks for: 1/64 of a GPU worker's ``GPU=1``. That places tasks on
    GPU workers only, while the worker's threads bound how many share its GPU at once. A task asking for
    all of it ran alone, the GPU idle while the task read its images and wrote its rows (docs/deploy.md:
    8 task threads per GPU). 1/64 is exact in binary, so the shares add up without rounding."""
    return {name: amount / 64 for name, amount in GPU_WORKER.items()} if gpu else None


def has_resources(worker_info: dict, resources: dict | None) -> bool:
    """Whether a worker (its entry in ``client.scheduler_info()["workers"]``) has every one of ``resources``."""
    return all(worker_info.get("resources", {}).get(name, 0) >= amount for name, amount in (resources or {}).items())


def require_resources(client, resources: dict | None, wanted_by: str, alternative: str = "") -> None:
    """A one-line :class:`InputError` unless some connected worker advertises all of ``resources``
    (:data:`GPU_WORKER`): Dask would otherwise hold the tasks forever without a word. ``wanted_by`` names
    what asks for them; ``alternative`` is another way out. With no worker connected yet (an adaptive
    SLURM cluster starts empty) there is nothing to judge. A run with ``--worker-timeout`` waits for such
    workers instead, so this is not called."""
    if not resources:
        return
    workers = list(client.scheduler_info(n_workers=-1)["workers"].values())
    if not workers or any(has_resources(info, resources) for info in workers):
        return
    flags = " ".join(f"{name}={amount}" for name, amount in resources.items())
    address = client.scheduler.address
    raise InputError(
        f"none of the {len(workers)} Dask worker(s) at {address} has the resource {flags} that {wanted_by} asks for; "
        f"start workers with `dask worker {address} --resources {flags}` (give --worker-timeout SECONDS to wait for "
        f"them to join){alternative}"
    )


def _check_address(address: str, given_by: str) -> str:
    from distributed.comm.addressing import get_address_host_port, normalize_address

    try:
        normalized = normalize_address(address)
        if not normalized.startswith("inproc://"):  # an in-process address has no host or port
            get_address_host_port(normalized)
    except ValueError as err:
        raise InputError(f"{given_by} {address!r} is not a Dask scheduler address ({err}); give one like "
                         "tcp://HOST:8786, as `dask scheduler` prints it") from None
    return address


def _read_scheduler_file(path: str, attempts: int = 10, wait_s: float = 0.05) -> str:
    """The ``address`` in a scheduler file, read as Dask's Client does (a few tries: the scheduler may
    still be writing it); a one-line :class:`InputError` if it is not that JSON."""
    import json
    import time

    hint = "give the file that `dask scheduler --scheduler-file FILE` writes"
    for attempt in range(attempts):
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except UnicodeDecodeError as err:
            raise InputError(f"--scheduler-file {path!r} is not a text file ({err.reason}); {hint}") from None
        except OSError as err:
            raise InputError(f"cannot read --scheduler-file {path!r} ({err.strerror or err}); {hint}") from None
        except ValueError as err:
            if attempt + 1 < attempts:
                time.sleep(wait_s)
                continue
            raise InputError(f"--scheduler-file {path!r} is not JSON ({err}); {hint}") from None
        address = data.get("address") if isinstance(data, dict) else None
        if isinstance(address, str) and address.strip():
            return _check_address(address.strip(), f"the address in --scheduler-file {path!r},")
        if attempt + 1 < attempts:
            time.sleep(wait_s)
    raise InputError(f"--scheduler-file {path!r} holds no scheduler \"address\"; {hint}")


def scheduler_address(spec: ClusterSpec) -> str:
    """The checked address of the scheduler that ``spec`` names: ``--scheduler``, the one in
    ``--scheduler-file`` or ``DASK_SCHEDULER_ADDRESS``; a one-line :class:`InputError` otherwise."""
    if spec.scheduler_file:
        return _read_scheduler_file(spec.scheduler_file)
    if spec.scheduler:
        return _check_address(spec.scheduler, "--scheduler")
    return _check_address(spec.address, "DASK_SCHEDULER_ADDRESS")


@contextmanager
def connect(spec: ClusterSpec, slurm=None):
    """Yield ``(client, engine_threads)``: ``engine_threads`` is set for a LocalCluster and a SLURM
    cluster (:attr:`~skymorph.inference.slurm.SlurmConfig.engine_threads`), None where the workers belong
    to someone else (then each worker divides its host's cores, see
    :class:`skymorph.inference.task.EngineCache`). ``slurm``: the
    :class:`~skymorph.inference.slurm.SlurmConfig` of ``spec.cluster_config`` where the caller has read it
    already; else it is read here."""
    from distributed import Client, LocalCluster

    if spec.joins_running_scheduler:
        address = scheduler_address(spec)
        import dask
        from dask.utils import parse_timedelta

        timeout = parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"), default="s")
        # a scheduler started beside the driver (a DaskJob's: its Service answers once the scheduler's
        # readiness probe passes) may take longer than the connect timeout; --worker-timeout, given, says
        # how long the run may wait for its cluster
        timeout = spec.worker_timeout or timeout
        # an unreachable scheduler is only known after the timeout: say what is being waited for
        print(f"skymorph run: connecting to the Dask scheduler at {address} (giving up after {timeout:g} s)",
              file=sys.stderr, flush=True)
        try:
            client = Client(address, timeout=timeout)
        except OSError as err:
            where = f"{address!r} (from --scheduler-file {spec.scheduler_file!r})" if spec.scheduler_file else repr(address)
            raise InputError(f"cannot reach the Dask scheduler at {where} ({err}); is `dask scheduler` running there?") from err
        with _quiet_client_log(), client:  # quiet until the client is closed, which logs the reconnection it ends
            yield client, None
        return
    if spec.cluster == "slurm":
        import shutil

        from skymorph.inference.slurm import load_slurm_config

        if shutil.which("sbatch") is None:  # else the driver waited forever for workers never submitted
            raise InputError("--cluster slurm submits its workers with sbatch, which is not on this machine's PATH; run on "
                             "a SLURM login node, or start `dask worker`s yourself and pass --scheduler")
        config = slurm or load_slurm_config(spec.cluster_config, **spec.slurm_overrides)
        with config.cluster() as cluster:
            with Client(cluster) as client:
                yield client, config.engine_threads
        return
    sizing = local_sizing(spec.workers, spec.threads_per_worker, spec.gpu)
    resources = dict(GPU_WORKER) if spec.gpu else None
    if spec.gpu and not has_nvidia_gpu():  # the local workers advertise GPU=1 whatever the machine has
        print("skymorph run: warning: a GPU was asked for (--gpu, or a model that needs one), but this machine shows no "
              "NVIDIA GPU (/dev/nvidia*); an ONNX model runs on the CPU here, a TensorRT plan not at all", file=sys.stderr, flush=True)
    with LocalCluster(n_workers=sizing.workers, threads_per_worker=sizing.threads_per_worker, processes=True,
                      dashboard_address="127.0.0.1:0", resources=resources) as cluster, Client(cluster) as client:
        client.register_plugin(LeaveInterruptToDriver(), name="skymorph-leave-interrupt-to-driver")
        yield client, sizing.engine_threads


@contextmanager
def _quiet_client_log():
    """Keep what the Dask client logs when the scheduler's connection breaks off stderr (tracebacks from
    ``distributed.client`` at ERROR and ``distributed.batched`` at INFO, then "Failed to reconnect"): the
    driver says in one line that it lost the scheduler, and what to do."""
    import logging

    loggers = {logging.getLogger("distributed.client"): logging.CRITICAL, logging.getLogger("distributed.batched"): logging.WARNING}
    levels = {logger: logger.level for logger in loggers}
    for logger, level in loggers.items():
        logger.setLevel(level)
    try:
        yield
    finally:
        for logger, level in levels.items():
            logger.setLevel(level)


def _reported_by_the_driver(record) -> bool:
    """A logging filter: False for what ``distributed.worker`` logs, with a traceback, of what the driver
    reports in one line: "Failed to communicate with scheduler during heartbeat" (its scheduler closed
    first), and a run's plugin that "failed to setup" (a model the worker cannot load)."""
    message = record.getMessage()
    return not (message.startswith("Failed to communicate with scheduler during heartbeat")
                or message.startswith("Worker plugin skymorph-") and message.endswith("failed to setup"))


class LeaveInterruptToDriver(WorkerPlugin):
    """Ctrl-C is the driver's to handle in a LocalCluster's worker processes. It reaches the terminal's whole
    process group: the driver stops the run and closes the cluster, where each worker would also die of its
    own KeyboardInterrupt with a traceback. So workers (and any restarted later) ignore SIGINT, and do not
    warn of the task the closing cluster cancels under them (the one warning of that logger), nor log the
    tracebacks of what the driver reports in one line (:func:`_reported_by_the_driver`): a heartbeat that
    met the scheduler closing first (about one run in 12 on a busy machine: the scheduler lives in the
    driver's process), and a run's engine that a worker could not load."""

    def setup(self, worker) -> None:
        import logging
        import signal
        import threading

        logging.getLogger("distributed.worker.state_machine").setLevel(logging.ERROR)
        logging.getLogger("distributed.worker").addFilter(_reported_by_the_driver)
        if threading.current_thread() is threading.main_thread():  # the worker's event loop runs there
            signal.signal(signal.SIGINT, signal.SIG_IGN)
