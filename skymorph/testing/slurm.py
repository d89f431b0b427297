"""``sbatch``, ``scancel`` and ``squeue`` for a machine without SLURM, so that ``skymorph run --cluster
slurm`` can be tested end to end through dask-jobqueue: ``sbatch SCRIPT`` runs the job script as a local
process group, after a queue wait of the test's choosing, and prints SLURM's ``Submitted batch job ID``;
``scancel ID`` ends that group with SIGTERM, as SLURM does; ``squeue --jobs=ID,...`` prints ``ID RUNNING``
for a job whose group is still alive (queued or running) and ``ID FAILED`` for one whose group has
ended (without ``--jobs``: the live ones), whatever its other options. Everything else (the job script, the
workers it starts, their lifetime) is what a real cluster would run. The first ``failing_jobs`` jobs
fail instead of running their script, as on a node that fails them.
"""

from __future__ import annotations

import os
import signal
import stat
from dataclasses import dataclass
from pathlib import Path

__all__ = ["FakeSlurm"]

_SBATCH = """#!/usr/bin/env bash
# sbatch SCRIPT: run it after the queue wait in its own process group; the job id is this process's pid
set -eu
jobs='{jobs}'
id=$$
cp "${{@: -1}}" "$jobs/$id.sh"  # dask-jobqueue deletes its temporary script once sbatch returns
run="exec bash '$jobs/$id.sh'"
if [ "$(flock "$jobs/failing" bash -c 'n=$(cat "$0"); echo $((n - 1)) > "$0"; echo $n' "$jobs/failing")" -gt 0 ]; then
    run="echo 'fake slurm: this job failed on its node' >&2; exit 1"
fi
setsid bash -c "sleep {queue_wait_s}; $run" > "$jobs/$id.log" 2>&1 < /dev/null &
# whole, after the script: a job is listed (appended to submitted) once its script and pid are there
echo $! > "$jobs/$id.pid.tmp"
mv "$jobs/$id.pid.tmp" "$jobs/$id.pid"
echo "$id" >> "$jobs/submitted"
echo "Submitted batch job $id"
"""

_SCANCEL = """#!/usr/bin/env bash
# scancel ID...: SIGTERM to each job's process group, as SLURM sends
jobs='{jobs}'
for id in "$@"; do
    echo "$id" >> "$jobs/cancelled"
    kill -TERM -- "-$(cat "$jobs/$id.pid")" 2> /dev/null || true
done
"""

_SQUEUE = """#!/usr/bin/env bash
# squeue [--jobs=ID,...] [options]: "ID RUNNING" while a job's group has a process, else (asked by id) "ID FAILED"
jobs='{jobs}'
named=""
for arg in "$@"; do
    case "$arg" in --jobs=*) named="${{arg#--jobs=}}" ;; esac
done
ids="${{named:-$(cat "$jobs/submitted" 2> /dev/null)}}"
for id in ${{ids//,/ }}; do
    if kill -0 -- "-$(cat "$jobs/$id.pid" 2> /dev/null)" 2> /dev/null; then
        echo "$id RUNNING"
    elif [ -n "$named" ]; then
        echo "$id FAILED"
    fi
done
exit 0
"""


@dataclass(frozen=True)
class FakeSlurm:
    """The two commands, written to ``directory/bin`` (put it first on ``PATH``); jobs go in
    ``directory/jobs`` (script, log, pid)."""

    directory: Path

    @classmethod
    def create(cls, directory: str | os.PathLike, queue_wait_s: float = 0.0, failing_jobs: int = 0) -> FakeSlurm:
        """``queue_wait_s``: how long each job waits before it starts, as in a queue; ``failing_jobs``: how
        many of the first jobs fail after that wait instead of running their script."""
        fake = cls(Path(directory))
        fake.bin.mkdir(parents=True)
        fake.jobs.mkdir()
        (fake.jobs / "failing").write_text(f"{int(failing_jobs)}\n")
        for name, text in (("sbatch", _SBATCH), ("scancel", _SCANCEL), ("squeue", _SQUEUE)):
            path = fake.bin / name
            path.write_text(text.format(jobs=fake.jobs, queue_wait_s=float(queue_wait_s)))
            path.chmod(path.stat().st_mode | stat.S_IXUSR)
        return fake

    @property
    def bin(self) -> Path:
        return self.directory / "bin"

    @property
    def jobs(self) -> Path:
        return self.directory / "jobs"

    def submitted(self) -> list[str]:
        """Job ids in the order submitted (not by number: pids wrap), each once its script and pid file are
        whole (listed by its script, a job had no pid file yet at times)."""
        path = self.jobs / "submitted"
        return path.read_text().split() if path.exists() else []

    def script(self, job_id: str) -> str:
        return (self.jobs / f"{job_id}.sh").read_text()

    def cancelled(self) -> list[str]:
        path = self.jobs / "cancelled"
        return path.read_text().split() if path.exists() else []

    def running(self) -> list[str]:
        """Jobs with a process left in their group."""
        alive = []
        for job_id in self.submitted():
            try:
                os.killpg(int((self.jobs / f"{job_id}.pid").read_text()), 0)
            except ProcessLookupError:
                continue
            alive.append(job_id)
        return alive

    def kill_all(self) -> None:
        """End every job's process group (a test's clean-up, whatever happened)."""
        for job_id in self.running():
            os.killpg(int((self.jobs / f"{job_id}.pid").read_text()), signal.SIGKILL)
