"""Real `dask scheduler` and `dask worker` processes on 127.0.0.1, for resilience and deployment tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = ["DaskProcesses", "dask_processes", "wait_for"]


def wait_for(condition, timeout_s: float, what: str, interval_s: float = 0.05):
    """Poll ``condition()`` until it returns something truthy (and return that), or fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def _address_in(scheduler_file: str) -> str | None:
    """The scheduler's address, once its file is there whole: the scheduler writes it in place (open, then
    ``json.dump``), so a file that exists may still be empty or cut short."""
    try:
        with open(scheduler_file) as fh:
            return json.load(fh)["address"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return None


@dataclass(frozen=True)
class DaskProcesses:
    scheduler_file: str
    address: str
    workers: list  # the worker Popen objects, in the order of ``worker_args``
    scheduler: subprocess.Popen


@contextmanager
def dask_processes(directory: str, worker_args: list[list[str]], timeout_s: float = 60):
    """Start a scheduler on a free loopback port and one ``dask worker`` per entry of ``worker_args`` (extra
    flags, e.g. ``["--nthreads", "1", "--no-nanny"]``); wait until all workers are connected. Every process
    is killed on exit."""
    from distributed import Client

    dask = os.path.join(os.path.dirname(sys.executable), "dask")
    scheduler_file = os.path.join(directory, "scheduler.json")
    if os.path.exists(scheduler_file):  # an earlier scheduler's: its address would be taken for the new one's
        os.remove(scheduler_file)
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--dashboard-address", "127.0.0.1:0",
                               "--scheduler-file", scheduler_file], **quiet)]
    try:
        address = wait_for(lambda: _address_in(scheduler_file), timeout_s, "the scheduler file")
        base = [dask, "worker", address, "--host", "127.0.0.1", "--no-dashboard", "--nworkers", "1"]
        workers = [subprocess.Popen([*base, *args], **quiet) for args in worker_args]
        procs += workers
        if workers:
            with Client(address, timeout=timeout_s) as client:
                client.wait_for_workers(len(workers), timeout=timeout_s)
        yield DaskProcesses(scheduler_file, address, workers, procs[0])
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
