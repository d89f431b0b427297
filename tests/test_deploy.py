"""deploy/: the SLURM cluster factory renders the configured job; images, compose and Kubernetes manifests
carry what a GPU survey needs and no secrets; `skymorph run --scheduler` runs on real `dask scheduler` /
`dask worker --resources GPU=1` processes."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from skymorph.errors import InputError
from skymorph.inference.slurm import SlurmConfig, load_slurm_config, slurm_cluster, walltime_minutes

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
SLURM_GPU = DEPLOY / "slurm" / "jobqueue.yaml"
SLURM_CPU = DEPLOY / "slurm" / "jobqueue-cpu.yaml"
LOOPBACK = {"scheduler_host": "127.0.0.1", "dashboard_address": ":0", "max_jobs": 0}

# ---- SLURM -------------------------------------------------------------------------------------


def _sbatch_directives(script: str) -> list[str]:
    return [line.removeprefix("#SBATCH ").strip() for line in script.splitlines() if line.startswith("#SBATCH ")]


def _worker_command(script: str) -> list[str]:
    (line,) = [line for line in script.splitlines() if "distributed.cli.dask_worker" in line]
    return shlex.split(line)


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_gpu_job_script_renders_the_configured_resources():
    raw = yaml.safe_load(SLURM_GPU.read_text())
    with slurm_cluster(SLURM_GPU, **LOOPBACK) as cluster:
        script = cluster.job_script()
        assert not cluster.workers, "max_jobs=0 must submit nothing"
    directives = _sbatch_directives(script)
    assert f"-p {raw['partition']}" in directives
    assert f"-A {raw['account']}" in directives
    assert f"--cpus-per-task={raw['cpus_per_job']}" in directives
    assert f"--mem={raw['memory_gib']}G" in directives
    assert f"-t {raw['walltime']}" in directives
    assert "--gres=gpu:1" in directives
    argv = _worker_command(script)
    assert _flag(argv, "--nthreads") == str(raw["threads_per_process"])
    assert "--nworkers" not in argv, "one worker process per GPU job"
    assert _flag(argv, "--resources") == "GPU=1"
    assert _flag(argv, "--lifetime") == f"{raw['worker_lifetime_minutes']}m"
    assert _flag(argv, "--lifetime-stagger") == f"{raw['lifetime_stagger_minutes']}m"
    latest_retirement = raw["worker_lifetime_minutes"] + raw["lifetime_stagger_minutes"]
    hours, minutes, seconds = (int(x) for x in raw["walltime"].split(":"))
    assert latest_retirement < hours * 60 + minutes + seconds / 60
    for line in raw["job_script_prologue"]:
        assert line in script


def test_cpu_job_script_has_no_gpu_and_fills_the_cores():
    raw = yaml.safe_load(SLURM_CPU.read_text())
    with slurm_cluster(SLURM_CPU, account="abc123", **LOOPBACK) as cluster:
        script = cluster.job_script()
    directives = _sbatch_directives(script)
    assert "-A abc123" in directives, "overrides replace the file's settings"
    assert not any("gres" in d for d in directives)
    argv = _worker_command(script)
    assert "--resources" not in argv
    assert int(_flag(argv, "--nworkers")) * int(_flag(argv, "--nthreads")) == raw["cpus_per_job"]
    assert f"--cpus-per-task={raw['cpus_per_job']}" in directives


def test_walltime_minutes():
    assert walltime_minutes("04:00:00") == 240
    assert walltime_minutes("1-02:30:30") == 1440 + 150 + 0.5
    for bad in ("4h", "04:61:00", "-1:00:00", ""):
        with pytest.raises(InputError, match="walltime"):
            walltime_minutes(bad)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"worker_lifetime_minutes": 235, "lifetime_stagger_minutes": 5}, "below the walltime"),
        ({"gpus_per_job": 2}, "one worker process per GPU"),
        ({"processes": 2}, "one worker process"),
        ({"threads_per_process": 9}, "exceeds cpus_per_job"),
        ({"memory_gib": 0}, "memory_gib"),
        ({"min_jobs": 5, "max_jobs": 2}, "min_jobs"),
        ({"worker_extra_args": ["--resources", "GPU=2"]}, "must not set --resources"),
        ({"wall_time": "01:00:00"}, "Did you mean 'walltime'"),
    ],
)
def test_bad_slurm_settings_are_one_line_input_errors(change, message):
    with pytest.raises(InputError, match=message) as info:
        load_slurm_config(SLURM_GPU, **change)
    assert "\n" not in str(info.value)


def test_missing_setting_and_bad_yaml(tmp_path):
    partial = tmp_path / "partial.yaml"
    partial.write_text("walltime: '01:00:00'\n")
    with pytest.raises(InputError, match="missing required setting.*memory_gib"):
        load_slurm_config(partial)
    broken = tmp_path / "broken.yaml"
    broken.write_text("walltime: [unclosed\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_slurm_config(broken)


def test_config_is_frozen():
    config = load_slurm_config(SLURM_GPU)
    assert isinstance(config, SlurmConfig)
    with pytest.raises(AttributeError):
        config.walltime = "01:00:00"


def test_sbatch_script_starts_scheduler_gpu_workers_and_the_driver():
    script = (DEPLOY / "slurm" / "skymorph-run.sbatch").read_text()
    assert re.search(r"srun .*\\\n\s+dask scheduler --scheduler-file", script)
    assert re.search(r"srun [^\n]*--gpus-per-task=1[^\n]*\\\n\s+dask worker --scheduler-file", script)
    assert "--resources GPU=1" in script
    assert re.search(r"skymorph run [^\n]*\\\n\s+--scheduler-file \"\$SCHEDULER_FILE\" --gpu", script)
