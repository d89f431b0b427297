"""How many cores this process may use: its CPU affinity, or its cgroup's CPU quota where that is fewer.

Light (no Dask): ``survey synth`` and ``survey ingest`` size their pools by it, as ``skymorph run`` sizes
its workers and engines (:mod:`skymorph.inference.cluster`).
"""

from __future__ import annotations

import os

__all__ = ["cgroup_cpu_quota", "check_parallelism", "usable_cores"]


def usable_cores() -> int:
    """The cores this process may use, not all the machine's: its CPU affinity (which a batch system
    narrows), or its cgroup's CPU quota where that is fewer (:func:`cgroup_cpu_quota`: a Kubernetes pod's
    CPU limit leaves the affinity at every core of the node, and engines sized to those were throttled)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    return cores if quota is None else max(1, min(cores, int(quota)))  # rounded down, as Go's automaxprocs does


def check_parallelism(value, name: str, flag: str, what: str, at_least: int = 0) -> int:
    """``value`` as an int from 1 to 4 x :func:`usable_cores` (and at least ``at_least``), else a one-line
    :class:`InputError` naming ``flag``: a million ``what`` (torch threads, processes) crashed the process
    or filled the machine. Not the cores themselves: a run trained with 8 threads is reproduced, bit for
    bit, only with 8, on whatever machine."""
    from skymorph.errors import check_int

    cores = usable_cores()
    return check_int(name, flag, value, 1, maximum=max(at_least, 4 * cores),
                     why=f": this process may use {cores} cores, and many more {what} only contend")


def cgroup_cpu_quota(root: str = "/sys/fs/cgroup", membership: str = "/proc/self/cgroup") -> float | None:
    """The CPUs this process's cgroups may use per period, or None without a quota: the least of cgroup
    v2's ``cpu.max`` (``"400000 100000"``: 4; ``"max 100000"``: none) or v1's ``cpu.cfs_quota_us`` over
    ``cpu.cfs_period_us`` (quota -1: none) in the process's own cgroup (``membership``) under ``root`` and
    in each cgroup above it, up to ``root`` itself (a container's namespace). A limit set on a parent
    binds its children: a container's limit with the process in a child cgroup (``/init``) read as none.
    None too where none of them can be read."""
    try:
        with open(membership) as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    quotas = []
    for line in lines:
        hierarchy, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        parts = [part for part in path.split("/") if part]
        if hierarchy == "0" and controllers == "":
            bases, version = [root], "v2"
        elif "cpu" in controllers.split(","):
            bases, version = [os.path.join(root, mount) for mount in ("cpu", "cpu,cpuacct", "cpuacct,cpu")], "v1"
        else:
            continue
        for base in bases:
            for depth in range(len(parts), -1, -1):
                quota = _read_quota(os.path.join(base, *parts[:depth]), version)
                if quota is not None:
                    quotas.append(quota)
    return min(quotas) if quotas else None


def _read_quota(directory: str, version: str) -> float | None:
    """The CPU quota of the cgroup at ``directory``; None without one or where it cannot be read."""
    try:
        if version == "v2":
            with open(os.path.join(directory, "cpu.max")) as fh:
                quota, period = (fh.read().split() + ["100000"])[:2]
            return None if quota == "max" else int(quota) / int(period)
        with open(os.path.join(directory, "cpu.cfs_quota_us")) as fh, open(os.path.join(directory, "cpu.cfs_period_us")) as gh:
            quota, period = int(fh.read()), int(gh.read())
        return None if quota < 0 else quota / period
    except (OSError, ValueError, ZeroDivisionError):
        return None
