"""deploy/: the SLURM cluster factory renders the configured job; images, compose and Kubernetes manifests
carry what a GPU survey needs and no secrets; `skymorph run --scheduler` runs on real `dask scheduler` /
`dask worker --resources GPU=1` processes."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shlex
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from skymorph.cli import build_parser
from skymorph.errors import InputError
from skymorph.inference.slurm import SlurmConfig, load_slurm_config, slurm_cluster, walltime_minutes

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
SLURM_GPU = DEPLOY / "slurm" / "jobqueue.yaml"
SLURM_CPU = DEPLOY / "slurm" / "jobqueue-cpu.yaml"
LOOPBACK = {"scheduler_host": "127.0.0.1", "dashboard_address": "127.0.0.1:0", "max_jobs": 0}

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
    # as bash reads it where no TMPDIR is set (SLURM sets none): `--local-directory $TMPDIR` lost its value,
    # and `dask worker` took the next flag's for an extra argument
    (line,) = [line for line in script.splitlines() if "distributed.cli.dask_worker" in line]
    env = {key: value for key, value in os.environ.items() if key != "TMPDIR"}
    words = subprocess.run(["bash", "-c", f'set -- {line.split("dask_worker", 1)[1]}; printf "%s\\n" "$@"'], env=env,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    assert _flag(words, "--local-directory") == "/tmp"


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


def test_engines_on_slurm_workers_share_their_job_s_cores():
    """Workers of an adaptive cluster all join after the run starts, so none was in the driver's count of
    threads per host: each of a CPU job's 8 processes gave each engine all 32 cores."""
    cpu, gpu = load_slurm_config(SLURM_CPU), load_slurm_config(SLURM_GPU)
    assert cpu.engine_threads * cpu.processes * cpu.threads_per_process == cpu.cpus_per_job  # 1 x 8 x 4 = 32
    assert gpu.engine_threads == gpu.cpus_per_job // gpu.threads_per_process  # 16 // 8: CPU work beside the GPU


def test_walltime_minutes():
    assert walltime_minutes("04:00:00") == 240
    assert walltime_minutes("1-02:30:30") == 1440 + 150 + 0.5
    for bad in ("4h", "04:61:00", "-1:00:00", ""):
        with pytest.raises(InputError, match=rf"^walltime must be \[D-\]HH:MM:SS (\(SLURM's -t\)|with MM and SS below 60), got '{bad}'$"):
            walltime_minutes(bad)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"worker_lifetime_minutes": 235, "lifetime_stagger_minutes": 5}, "below the walltime"),
        ({"gpus_per_job": 2}, "one worker process per GPU"),
        ({"processes": 2}, "one worker process"),
        ({"threads_per_process": 17}, "exceeds cpus_per_job"),
        ({"memory_gib": 0}, "memory_gib"),
        ({"min_jobs": 5, "max_jobs": 2}, "min_jobs"),
        ({"worker_extra_args": ["--resources", "GPU=2"]}, "must not set --resources"),
        ({"wall_time": "01:00:00"}, "Did you mean 'walltime'"),
        ({"walltime": 14400}, "quoted string"),
        ({"job_extra_directives": None}, "list of strings"),
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
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("account: 'équipe'\n".encode("latin-1"))
    with pytest.raises(InputError, match=r"latin1.yaml' is not UTF-8 text \(invalid continuation byte at byte 10\)"):
        load_slurm_config(latin1)


def test_a_bad_slurm_config_stops_a_run_before_its_catalog_is_touched(tmp_path, tiny_model):
    """It was first read when the cluster started, after the catalog's lock was taken."""
    import numpy as np

    from skymorph.inference.job import RunConfig, run_survey
    from skymorph.tiles import write_tile, write_tile_list

    tile = str(tmp_path / "t.zarr")
    write_tile(tile, np.zeros((2, 1, 32, 32), np.uint8), np.arange(2), np.zeros(2), np.zeros(2), survey="test", bands=["r"],
               pixel_scale_arcsec=0.262, stretch="asinh", resize="none")
    write_tile_list(str(tmp_path / "tiles.txt"), [tile])
    broken = tmp_path / "broken.yaml"
    broken.write_text("walltime: [unclosed\n")
    config = RunConfig(tiles=str(tmp_path / "tiles.txt"), model=tiny_model, out=str(tmp_path / "catalog"), cluster="slurm",
                       cluster_config=str(broken), progress=False)
    with pytest.raises(InputError, match="not valid YAML"):
        run_survey(config)
    assert not (tmp_path / "catalog").exists()
    # judged with the command line's overrides: --workers 2 is max_jobs 2, below the file's min_jobs 4
    (tmp_path / "jobs.yaml").write_text(SLURM_GPU.read_text().replace("min_jobs: 0", "min_jobs: 4"))
    with pytest.raises(InputError, match=r"jobs.yaml' with max_jobs=2 from the command line: min_jobs \(4\) must not exceed max_jobs \(2\)"):
        run_survey(dataclasses.replace(config, cluster_config=str(tmp_path / "jobs.yaml"), workers=2))
    assert not (tmp_path / "catalog").exists()
    # max_jobs 0 submits no worker job: the run waited for ever
    (tmp_path / "none.yaml").write_text(SLURM_GPU.read_text().replace("max_jobs: 16", "max_jobs: 0"))
    with pytest.raises(InputError, match=r"none.yaml' has max_jobs 0, so skymorph run would submit no worker job"):
        run_survey(dataclasses.replace(config, cluster_config=str(tmp_path / "none.yaml")))
    with pytest.raises(InputError, match=r"^SLURM config '.*missing.yaml' does not exist; give a YAML file like"):
        run_survey(dataclasses.replace(config, cluster_config=str(tmp_path / "missing.yaml")))
    assert not (tmp_path / "catalog").exists()


def test_an_explicit_cluster_beats_a_scheduler_address_left_in_the_environment(monkeypatch):
    """With DASK_SCHEDULER_ADDRESS set, --cluster slurm connected to that scheduler and submitted no job."""
    from skymorph.inference.cluster import ClusterSpec

    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", "tcp://127.0.0.1:8786")
    assert ClusterSpec(cluster="slurm", cluster_config=str(SLURM_GPU), workers=3).address is None
    assert ClusterSpec().address == "tcp://127.0.0.1:8786"
    assert ClusterSpec(scheduler="tcp://127.0.0.1:9000").address == "tcp://127.0.0.1:9000"


def test_config_is_frozen():
    config = load_slurm_config(SLURM_GPU)
    assert isinstance(config, SlurmConfig)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.walltime = "01:00:00"
    assert config.walltime == load_slurm_config(SLURM_GPU).walltime


def test_slurm_module_imports_nothing_heavy_and_names_the_extra_when_jobqueue_is_missing(monkeypatch):
    import subprocess
    import sys

    from skymorph.errors import MissingDependencyError

    probe = ("import sys, skymorph.inference.slurm; "
             "print(sorted(m for m in ('dask_jobqueue', 'torch', 'onnxruntime') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert "dask_jobqueue" not in loaded and "torch" not in loaded
    monkeypatch.setitem(sys.modules, "dask_jobqueue", None)  # what `import dask_jobqueue` sees when it is absent
    with pytest.raises(MissingDependencyError, match=r"^running on SLURM needs dask-jobqueue: pip install 'dask-jobqueue>=0\.9' \(skymorph's slurm extra\)$"):
        slurm_cluster(SLURM_GPU, **LOOPBACK)


def test_sbatch_script_starts_scheduler_gpu_workers_and_the_driver():
    script = (DEPLOY / "slurm" / "skymorph-run.sbatch").read_text()
    assert re.search(r"srun .*\\\n\s+dask scheduler --scheduler-file", script)
    assert re.search(r"srun [^\n]*--gpus-per-task=1[^\n]*\\\n\s+dask worker --scheduler-file", script)
    assert "--resources GPU=1" in script
    assert re.search(r"skymorph run [^\n]*\\\n\s+--scheduler-file \"\$SCHEDULER_FILE\" --gpu", script)


def _stub(path: Path, body: str) -> None:
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(0o755)


@pytest.mark.parametrize("failing", ["scheduler", "worker"])
def test_sbatch_script_ends_when_a_step_fails_instead_of_holding_the_nodes(tmp_path, failing):
    """It waited for a scheduler file that a failed scheduler step never writes, and the driver waited for
    workers that a failed worker step never starts: both until --time (12 h of every node and GPU)."""
    import signal
    import subprocess

    bin_dir, venv = tmp_path / "bin", tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    bin_dir.mkdir()
    (venv / "bin" / "activate").write_text("")
    _stub(bin_dir / "srun", f"""
case "$*" in *"dask {failing}"*) echo "srun: error: step failed" >&2; exit 1;; esac
while [ $# -gt 0 ]; do [ "$1" = --scheduler-file ] && file=$2; shift; done
case "$file" in *.json) echo '{{"address": "tcp://127.0.0.1:1"}}' > "$file";; esac
exec sleep 120
""")
    _stub(bin_dir / "skymorph", "sleep 120 & trap 'kill $!; exit 143' TERM; wait $!\n")  # a driver waiting for workers
    _stub(bin_dir / "scancel", "exit 0\n")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "42", "SLURM_NNODES": "1",
           "SLURM_GPUS_PER_NODE": "gpu:1", "SLURM_CPUS_PER_TASK": "16", "SKYMORPH_VENV": str(venv)}
    with open(tmp_path / "job.err", "w") as stderr:  # a file, not a pipe: the sleeping stub steps keep it open
        job = subprocess.Popen(["bash", str(DEPLOY / "slurm" / "skymorph-run.sbatch"), "s3://b/tiles.txt", "s3://b/m.onnx",
                                "s3://b/catalog"], cwd=tmp_path, env=env, stderr=stderr, start_new_session=True)
    try:
        job.wait(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(job.pid, signal.SIGKILL)  # the stub steps left sleeping
    err = (tmp_path / "job.err").read_text()
    if failing == "scheduler":
        assert job.returncode == 1 and "the scheduler step ended before writing" in err, err
    else:
        assert job.returncode == 143 and "the worker step ended (see its error above); stopping the driver" in err, err


# ---- images ------------------------------------------------------------------------------------


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs: comments dropped, continuation lines joined."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in dockerfile.read_text().splitlines() if not line.lstrip().startswith("#")))
    pairs = []
    for line in text.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            pairs.append((keyword.upper(), " ".join(rest.split())))
    return pairs


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu"])
def test_dockerfiles_pin_torch_use_constraints_and_drop_root(name):
    dockerfile = DEPLOY / "docker" / name
    steps = _instructions(dockerfile)
    keywords = [k for k, _ in steps]
    runs = [args for k, args in steps if k == "RUN"]
    args = dict(a.split("=", 1) for k, a in steps if k == "ARG" and "=" in a)
    assert args["TORCH_VERSION"] == "2.13.0"
    torch_install = next(r for r in runs if "torch==" in r)
    assert "--index-url https://download.pytorch.org/whl/cpu" in torch_install
    assert '"torch==${TORCH_VERSION}"' in torch_install
    skymorph_install = next(r for r in runs if re.search(r"pip install -c constraints\.txt \"\.\[", r))
    assert runs.index(torch_install) < runs.index(skymorph_install), "torch first, so the CPU wheel is the one kept"
    users = [a for k, a in steps if k == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must end as a non-root user"
    assert keywords.index("USER") > keywords.index("RUN"), "USER after the installs"
    assert "WORKDIR" in keywords
    entrypoint = next(a for k, a in steps if k == "ENTRYPOINT")
    assert entrypoint in ('["skymorph"]', '["dask"]')
    assert (dockerfile.parent / f"{name}.dockerignore").is_file()


def test_gpu_image_has_cuda_onnxruntime_gpu_only_and_tensorrt():
    steps = _instructions(DEPLOY / "docker" / "Dockerfile.gpu")
    args = dict(a.split("=", 1) for k, a in steps if k == "ARG" and "=" in a)
    assert re.fullmatch(r"nvidia/cuda:12\.\d+\.\d+-cudnn-runtime-ubuntu22\.04", args["CUDA_IMAGE"])
    assert next(a for k, a in steps if k == "FROM") == "${CUDA_IMAGE}"
    install = " ".join(a for k, a in steps if k == "RUN")
    assert '".[gpu,slurm]"' in install
    # Exactly one onnxruntime build: the CPU wheel pulled in as a core dependency is removed again.
    assert "pip uninstall -y onnxruntime " in install + " "
    assert "--force-reinstall --no-deps \"onnxruntime-gpu==${ORT_GPU_VERSION}\"" in install
    # onnxruntime-gpu 1.27 and later link CUDA 13, fall back to the CPU on a CUDA 12 image, and still list
    # the CUDA provider: the build checks the libraries the provider links
    assert tuple(map(int, args["ORT_GPU_VERSION"].split(".")[:2])) <= (1, 26)
    assert "libonnxruntime_providers_cuda.so" in install and "'ldd'" in install
    assert "--extra-index-url https://pypi.nvidia.com \"tensorrt-cu12==${TENSORRT_VERSION}\" \"${CUDA_PYTHON_SPEC}\"" in install
    # The native engine and the TensorRT export need cuda-python too, of the image's CUDA major version.
    cuda_major = re.search(r":(\d+)\.", args["CUDA_IMAGE"]).group(1)
    assert args["CUDA_PYTHON_SPEC"].strip('"') == f"cuda-python>=12.6,<{int(cuda_major) + 1}"
    assert "import_cudart()" in install


def test_dockerignore_keeps_the_context_to_the_package():
    rules = [line for line in (DEPLOY / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
             if line and not line.startswith("#")]
    assert rules[0] == "*"
    assert {"!pyproject.toml", "!constraints.txt", "!skymorph/"} <= set(rules)


# ---- docker compose ----------------------------------------------------------------------------


def _compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_has_scheduler_cpu_and_gpu_workers_store_and_job():
    services = _compose()["services"]
    assert {"scheduler", "worker", "worker-gpu", "minio", "minio-init", "job", "job-gpu"} <= set(services)
    assert services["worker"]["profiles"] == ["cpu"] and services["worker-gpu"]["profiles"] == ["gpu"]
    gpu = services["worker-gpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device == {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    command = gpu["command"]
    assert command[command.index("--resources") + 1] == "GPU=1"
    assert command[command.index("--nworkers") + 1] == "1"
    assert "--resources" not in services["worker"]["command"]
    # the cores the engines divide (cgroup quota): without a limit each replica's took all the host's
    worker = services["worker"]["command"]
    assert services["worker"]["cpus"] == int(worker[worker.index("--nworkers") + 1]) * int(worker[worker.index("--nthreads") + 1])
    for name, gpu_flag in (("job", False), ("job-gpu", True)):
        command = services[name]["command"]
        assert command[:3] == ["run", "--scheduler", "tcp://scheduler:8786"]
        assert {"--tiles", "--model", "--out"} <= set(command)
        assert ("--gpu" in command) is gpu_flag
    init = services["minio-init"]
    assert init["depends_on"]["minio"]["condition"] == "service_healthy"
    assert "mc mb --ignore-existing" in init["command"][0]
    for name in ("worker", "worker-gpu"):
        assert services[name]["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"


def test_compose_credentials_come_from_the_env_file():
    text = (DEPLOY / "compose.yaml").read_text()
    services = _compose()["services"]
    for name in ("worker", "worker-gpu", "job", "job-gpu"):
        env = services[name]["environment"]
        assert env["AWS_ACCESS_KEY_ID"].startswith("${SKYMORPH_S3_ACCESS_KEY:?")
        assert env["AWS_SECRET_ACCESS_KEY"].startswith("${SKYMORPH_S3_SECRET_KEY:?")
    assert services["minio"]["environment"]["MINIO_ROOT_PASSWORD"].startswith("${MINIO_ROOT_PASSWORD:?")
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", code))
    example = dict(
        line.split("=", 1)
        for line in (DEPLOY / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert required <= set(example), f"document {required - set(example)} in deploy/.env.example"
    for key in required:
        if re.search("PASSWORD|SECRET|ACCESS_KEY|USER", key):
            assert example[key].startswith("CHANGE-ME"), f"{key} in .env.example must be a placeholder"
    assert ".env" in (DEPLOY / ".gitignore").read_text().split()


# ---- Kubernetes (dask-kubernetes operator) -----------------------------------------------------

K8S = DEPLOY / "kubernetes"


def _kustomize_objects(directory: Path) -> list[dict]:
    """The objects a kustomization lists, following resources into other kustomizations."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    objects = []
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        assert path.exists(), f"{directory}/kustomization.yaml lists missing {entry}"
        if path.is_dir():
            objects += _kustomize_objects(path)
        else:
            objects += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return objects


def _containers(pod_spec: dict) -> list[dict]:
    return pod_spec["containers"]


def _assert_s3_keys_from_secret(container: dict) -> None:
    env = {item["name"]: item for item in container.get("env", [])}
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        ref = env[key]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "skymorph-s3", "key": key}
        assert "value" not in env[key]
    assert {"configMapRef": {"name": "skymorph-s3-endpoint"}} in container["envFrom"]


GPU_WORKER_SIZING = {"cores": 16, "threads": 8}
"""docs/deploy.md, "Sizing workers and threads": at the 50,000 galaxies/s target a GPU needs 12-14 cores
beside it (docs/scaling.md, section 5), and each task uses at most one core for posteriors and one for
reading ahead. Every GPU template in deploy/ gives this."""


def _gpu_worker_sizing(container: dict) -> dict:
    args = container["args"]
    limits, requests = container["resources"]["limits"], container["resources"]["requests"]
    assert limits["cpu"] == requests["cpu"], "a GPU worker's cores are reserved, not shared"
    return {"cores": int(limits["cpu"]), "threads": int(args[args.index("--nthreads") + 1])}


def test_slurm_and_compose_gpu_workers_are_sized_as_the_kubernetes_ones():
    raw = yaml.safe_load(SLURM_GPU.read_text())
    assert {"cores": raw["cpus_per_job"], "threads": raw["threads_per_process"]} == GPU_WORKER_SIZING
    sbatch = (DEPLOY / "slurm" / "skymorph-run.sbatch").read_text()
    cores = re.search(r"^#SBATCH --cpus-per-task=(\d+)$", sbatch, re.MULTILINE)
    threads = re.search(r"^THREADS_PER_GPU=\$\{THREADS_PER_GPU:-(\d+)\}$", sbatch, re.MULTILINE)
    assert cores and threads, "skymorph-run.sbatch no longer sets --cpus-per-task and THREADS_PER_GPU's default"
    assert {"cores": int(cores[1]), "threads": int(threads[1])} == GPU_WORKER_SIZING
    command = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]["worker-gpu"]["command"]
    assert int(command[command.index("--nthreads") + 1]) == GPU_WORKER_SIZING["threads"]


def _assert_gpu_worker(pod_spec: dict) -> None:
    (container,) = _containers(pod_spec)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    args = container["args"]
    assert args[0] == "worker"
    assert args[args.index("--resources") + 1] == "GPU=1"
    assert args[args.index("--nworkers") + 1] == "1"
    assert _gpu_worker_sizing(container) == GPU_WORKER_SIZING
    assert container["command"] == ["dask"]
    _assert_s3_keys_from_secret(container)


def test_cluster_kustomization_has_scheduler_cpu_and_gpu_groups():
    objects = _kustomize_objects(K8S / "cluster")
    by_kind = {obj["kind"]: obj for obj in objects}
    assert {"Namespace", "DaskCluster", "DaskWorkerGroup"} <= set(by_kind)
    cluster, group = by_kind["DaskCluster"], by_kind["DaskWorkerGroup"]
    assert cluster["apiVersion"] == group["apiVersion"] == "kubernetes.dask.org/v1"
    assert group["spec"]["cluster"] == cluster["metadata"]["name"]
    scheduler = _containers(cluster["spec"]["scheduler"]["spec"])[0]
    assert scheduler["args"][0] == "scheduler"
    assert {p["containerPort"] for p in scheduler["ports"]} == {8786, 8787}
    (cpu_worker,) = _containers(cluster["spec"]["worker"]["spec"])
    assert "nvidia.com/gpu" not in cpu_worker["resources"]["limits"]
    assert "--resources" not in cpu_worker["args"]
    args = cpu_worker["args"]
    # the operator scales down by deleting the pod named like the worker it retires: `--nworkers 4` names
    # them <pod>-0 .. -3, and no pod was deleted (dask/dask-kubernetes#521)
    assert args[args.index("--nworkers") + 1] == "1"
    assert int(args[args.index("--nworkers") + 1]) * int(args[args.index("--nthreads") + 1]) == int(
        cpu_worker["resources"]["limits"]["cpu"]
    ), "CPU workers: processes x threads = cores"
    _assert_s3_keys_from_secret(cpu_worker)
    _assert_gpu_worker(group["spec"]["worker"]["spec"])


def test_daskjob_runs_skymorph_on_gpu_workers():
    objects = _kustomize_objects(K8S / "job")
    (job,) = [obj for obj in objects if obj["kind"] == "DaskJob"]
    assert job["apiVersion"] == "kubernetes.dask.org/v1"
    (driver,) = _containers(job["spec"]["job"]["spec"])
    assert driver["args"][0] == "run" and "--gpu" in driver["args"]
    assert {"--tiles", "--model", "--out"} <= set(driver["args"])
    args = build_parser().parse_args(driver["args"])  # the image's entrypoint is skymorph
    assert args.gpu and args.worker_timeout == 1800, "a worker that never comes must end the job, not hold it forever"
    assert "nvidia.com/gpu" not in driver["resources"]["limits"], "the driver needs no GPU"
    _assert_s3_keys_from_secret(driver)
    cluster_spec = job["spec"]["cluster"]["spec"]
    assert cluster_spec["scheduler"]["service"]["selector"]["dask.org/cluster-name"] == job["metadata"]["name"]
    _assert_gpu_worker(cluster_spec["worker"]["spec"])


@pytest.mark.parametrize("directory", ["base", "cluster", "job"])
def test_kubectl_kustomize_renders_the_objects_the_tests_read(directory):
    """The real kustomize (in kubectl) accepts each kustomization and renders the objects the tests
    above read, each in the skymorph namespace, plus the generated ConfigMap the containers' envFrom
    names (the tests' own reader does not run generators)."""
    import shutil
    import subprocess

    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed, so the manifests are checked only by the tests' own reader")
    rendered = subprocess.run([kubectl, "kustomize", str(K8S / directory)], capture_output=True, text=True, timeout=60)
    assert rendered.returncode == 0, rendered.stderr
    objects = [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]
    read = [(obj["kind"], obj["metadata"]["name"]) for obj in _kustomize_objects(K8S / directory)]
    assert sorted((obj["kind"], obj["metadata"]["name"]) for obj in objects) == sorted([*read, ("ConfigMap", "skymorph-s3-endpoint")])
    assert all(obj["metadata"].get("namespace") == "skymorph" for obj in objects if obj["kind"] != "Namespace")
    (config,) = [obj for obj in objects if obj["kind"] == "ConfigMap"]
    assert config["data"] == {"AWS_DEFAULT_REGION": "us-east-1"}


def test_every_manifest_object_lands_in_the_skymorph_namespace():
    for directory in ("cluster", "job"):
        kustomization = yaml.safe_load((K8S / directory / "kustomization.yaml").read_text())
        assert kustomization["namespace"] == "skymorph"
    secret = yaml.safe_load((K8S / "s3-secret.example.yaml").read_text())
    assert secret["metadata"] == {"name": "skymorph-s3", "namespace": "skymorph"}
    assert set(secret["stringData"].values()) == {"CHANGE-ME"}


# ---- no secrets, no addresses ------------------------------------------------------------------

ALLOWED_HOSTS = {
    # cluster-internal service names and loopback
    "scheduler", "minio", "skymorph-scheduler.skymorph", "localhost", "127.0.0.1", "YOUR-S3-SERVICE",
    # package indexes the images install from
    "download.pytorch.org", "pypi.nvidia.com",
}
PLACEHOLDER = re.compile(r"^(CHANGE-ME.*|YOUR_[A-Z_]+|\$\{[A-Z0-9_]+(:\?[^}]*)?\}|\$\$?[A-Z_]+|\"\$\$?[A-Z_]+\")$")
SECRET_KEY = re.compile(r"(password|secret|token|access_key|private_key)", re.IGNORECASE)


def _string_items(node, key=None):
    """``(key, value)`` for every string value in a parsed YAML tree; ``{name, value}`` env pairs count
    under their ``name``."""
    if isinstance(node, dict):
        if set(node) >= {"name", "value"} and isinstance(node["value"], str):
            yield node["name"], node["value"]
        for k, v in node.items():
            yield from _string_items(v, k)
    elif isinstance(node, list):
        for item in node:
            yield from _string_items(item, key)
    elif isinstance(node, str) and key is not None:
        yield str(key), node


AWS_KEY_ID = re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b")
AWS_SECRET = re.compile(r"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+=]{40}(?![A-Za-z0-9/+=])")
PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")
PRIVATE_IP = re.compile(r"\b(10\.\d+|172\.(1[6-9]|2\d|3[01])|192\.168)\.\d+\.\d+\b")
URL_HOST = re.compile(r"\b(?:https?|tcp|tls|wss?)://([^/:\s\"'$]+)")


def _findings(path: Path) -> list[str]:
    """What in ``path`` looks like a credential, a private address or a host outside the deployment."""
    text = path.read_text()
    found = []
    for pattern, what in ((AWS_KEY_ID, "AWS access key id"), (AWS_SECRET, "40-character secret-like string"),
                          (PRIVATE_KEY, "private key"), (PRIVATE_IP, "private IP address")):
        if pattern.search(text):
            found.append(what)
    found += [f"host {host}" for host in URL_HOST.findall(text) if host not in ALLOWED_HOSTS]
    pairs = []
    if path.suffix in (".yaml", ".yml"):
        for doc in yaml.safe_load_all(text):
            pairs += list(_string_items(doc))
    elif path.name.startswith(".env"):
        pairs = [tuple(line.split("=", 1)) for line in text.splitlines() if "=" in line and not line.startswith("#")]
    found += [f"literal {key}" for key, value in pairs if SECRET_KEY.search(key) and not PLACEHOLDER.match(value.strip())]
    return found


def test_deploy_holds_no_secrets_private_addresses_or_foreign_hosts():
    files = [p for p in DEPLOY.rglob("*") if p.is_file()]
    assert len(files) >= 15
    for path in files:
        assert _findings(path) == [], path


@pytest.mark.parametrize(
    "name, text, expected",
    [
        ("a.yaml", "env:\n  - name: DB_PASSWORD\n    value: hunter2\n", "literal DB_PASSWORD"),
        ("b.yaml", "minio:\n  MINIO_ROOT_PASSWORD: s3cr3t-value\n", "literal MINIO_ROOT_PASSWORD"),
        (".env.x", "SKYMORPH_S3_SECRET_KEY=abc\n", "literal SKYMORPH_S3_SECRET_KEY"),
        ("c.yaml", "key: AKIAABCDEFGHIJKLMNOP\n", "AWS access key id"),
        ("d.yaml", "k: " + "a1B/" * 10 + "\n", "40-character secret-like string"),
        ("e.yaml", "url: http://10.1.2.3:9000\n", "private IP address"),
        ("f.yaml", "url: https://s3.example.org/bucket\n", "host s3.example.org"),
    ],
)
def test_the_scan_catches_what_it_looks_for(tmp_path, name, text, expected):
    path = tmp_path / name
    path.write_text(text)
    assert expected in _findings(path)


# ---- `skymorph run --scheduler` on real `dask scheduler` / `dask worker --resources GPU=1` processes ----


@pytest.fixture
def scheduler_and_workers(tmp_path):
    """`dask scheduler` on 127.0.0.1, one worker advertising GPU=1 (2 threads) and one CPU-only worker.
    Yields ``(address, {"gpu": worker address, "cpu": worker address})``; all processes are killed after."""
    from distributed import Client

    from skymorph.testing.dask_processes import dask_processes

    gpu = ["--name", "gpu", "--nthreads", "2", "--resources", "GPU=1"]
    cpu = ["--name", "cpu", "--nthreads", "1"]
    with dask_processes(str(tmp_path), [gpu, cpu]) as procs, Client(procs.address, timeout=60) as client:
        by_name = {info["name"]: addr for addr, info in client.scheduler_info(n_workers=-1)["workers"].items()}
        yield procs.address, by_name


def test_skymorph_run_against_a_scheduler_puts_gpu_tasks_on_the_gpu_worker(s3, s3_bucket, tmp_path, scheduler_and_workers,
                                                                         torch_one_thread):
    import os
    import subprocess
    import sys

    import numpy as np
    import pyarrow as pa
    import torch
    from distributed import Client

    from skymorph.catalog import layout
    from skymorph.exporter import export_onnx_model
    from skymorph.model_metadata import InputSpec
    from skymorph.schema import get_schema
    from skymorph.storage import read_parquet
    from skymorph.survey import synthesize
    from skymorph.tiles import open_tile, read_tile_list
    from skymorph.trainer.models import build_model

    size, schema = 32, "gz2"
    survey = f"{s3_bucket}/survey"
    synthesize(survey, n_tiles=2, per_tile=48, size=size, seed=1, schema=schema, workers=1, progress=False)
    torch.manual_seed(0)
    net = build_model("w20", get_schema(schema), InputSpec(1, size, size), "multinomial", dense=16)
    model = str(tmp_path / "tiny.onnx")
    export_onnx_model(net, model, samples=4, seed=0)

    address, workers = scheduler_and_workers
    catalog = f"{s3_bucket}/catalog"
    result = subprocess.run(
        [sys.executable, "-m", "skymorph.cli", "run", "--tiles", f"{survey}/tiles.txt", "--model", model,
         "--out", catalog, "--scheduler", address, "--gpu", "--batch-size", "16"],
        env={**os.environ, **s3.env}, capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stderr[-2000:]

    expected = np.concatenate([open_tile(url).read_coords()[0] for url in read_tile_list(f"{survey}/tiles.txt")])
    parts = pa.concat_tables([read_parquet(part.url) for part in layout.list_parts(catalog)])
    assert sorted(parts.column("object_id").to_pylist()) == sorted(expected.tolist())

    with Client(address, timeout=30) as client:
        executed = client.run(lambda dask_worker: dask_worker.state.executed_count)
    assert executed[workers["cpu"]] == 0, "a task asking for GPU=1 ran on the worker without a GPU"
    assert executed[workers["gpu"]] >= 2, "one task per tile at least"


def test_skymorph_run_on_slurm_submits_a_worker_job_and_cancels_it_at_the_end(tmp_path, tiny_model, monkeypatch, capsys):
    """``--cluster slurm`` end to end through dask-jobqueue, with an sbatch that runs the job script on this
    machine after a queue wait (:mod:`skymorph.testing.slurm`): the adaptive cluster, empty at the start,
    submits one worker job once there are tasks and leaves it in the queue (it cancelled and resubmitted a
    job of 2 processes every 3 s, for as long as the queue held it: dask/distributed#7019); its workers join
    the in-flight window; the catalog is exact; and the job is cancelled when the run ends, leaving no worker
    behind. With ``--overwrite``, the old catalog stays until a worker job has started: the driver submits
    the first job itself (the cluster submits jobs only for tasks, and none is submitted before), which is
    kept, idle, until the tasks come (it was closed after 3 s and another queued); a job that never leaves
    the queue within ``--worker-timeout`` changes nothing."""
    import sys

    from jobhelpers import assert_exact, make_tiles

    from skymorph.cli import main
    from skymorph.testing.dask_processes import wait_for
    from skymorph.testing.slurm import FakeSlurm

    tiles = make_tiles(str(tmp_path), 3, 40, compact=True)
    catalog = str(tmp_path / "catalog")
    run = ["run", "--tiles", str(tmp_path / "tiles.txt"), "--model", tiny_model, "--out", catalog]
    assert main([*run, "--workers", "1", "--n-volunteers", "20"]) == 0  # the old catalog
    site = {**LOOPBACK, "walltime": "00:10:00", "gpus_per_job": 0, "processes": 2, "threads_per_process": 1,
            "cpus_per_job": 2, "memory_gib": 2, "worker_lifetime_minutes": 8, "lifetime_stagger_minutes": 1, "max_jobs": 1,
            "python": sys.executable, "log_directory": str(tmp_path / "logs"), "worker_extra_args": ["--host", "127.0.0.1"]}
    (tmp_path / "site.yaml").write_text(yaml.safe_dump(site))
    on_slurm = [*run, "--overwrite", "--cluster", "slurm", "--cluster-config", str(tmp_path / "site.yaml"), "--rows-per-task", "20"]

    stuck = FakeSlurm.create(tmp_path / "stuck", queue_wait_s=600)
    with monkeypatch.context() as env:
        env.setenv("PATH", f"{stuck.bin}{os.pathsep}{os.environ['PATH']}")
        capsys.readouterr()
        try:
            code = main([*on_slurm, "--worker-timeout", "3"])
        finally:
            stuck.kill_all()
    err = capsys.readouterr().err
    assert code != 0 and "nothing was changed" in err and "squeue" in err, err[-2000:]
    assert len(stuck.submitted()) == 1 and set(stuck.cancelled()) == set(stuck.submitted())
    assert_exact(catalog, tiny_model, tiles, n_volunteers=20)

    slurm = FakeSlurm.create(tmp_path / "slurm", queue_wait_s=3)
    monkeypatch.setenv("PATH", f"{slurm.bin}{os.pathsep}{os.environ['PATH']}")
    from skymorph.catalog import layout

    remove_catalog = layout.remove_catalog

    def slow_removal(*args, **kwargs):  # as a large catalog on S3 takes: the job the driver asked for sits idle
        time.sleep(8)
        remove_catalog(*args, **kwargs)

    monkeypatch.setattr(layout, "remove_catalog", slow_removal)
    try:
        code = main([*on_slurm, "--worker-timeout", "120"])
    finally:
        jobs = slurm.submitted()
        slurm.kill_all()
    assert code == 0, capsys.readouterr().err[-2000:]
    assert_exact(catalog, tiny_model, tiles)
    assert len(jobs) == 1, f"one job, left in the queue until it started: {len(jobs)} submitted, {len(slurm.cancelled())} cancelled"
    script = slurm.script(jobs[0])
    assert "#SBATCH --cpus-per-task=2" in script and "#SBATCH -t 00:10:00" in script
    assert "--nthreads 1" in script and "--nworkers 2" in script and "--host 127.0.0.1" in script
    assert set(slurm.cancelled()) == set(jobs)
    wait_for(lambda: not slurm.running(), 30, "the cancelled job's workers to exit")


@pytest.mark.parametrize("starting", ["every", "one"], ids=["every worker started", "one worker never started"])
def test_a_job_whose_workers_all_retired_is_replaced(tmp_path, monkeypatch, starting):
    """A job of 2 worker processes reached its workers' --lifetime: the cluster never forgot it (it forgets
    a lost worker by name, and these are named after the job plus a suffix), so no job replaced it, and
    the next task waited for ever. :class:`JobAdaptive` drops it and submits another; also when one of its
    workers never started (it hangs at start here), which JobAdaptive once waited for, for ever."""
    import sys
    import time

    from dask_jobqueue import SLURMCluster
    from distributed import Client

    from skymorph.inference.adaptive import JobAdaptive
    from skymorph.testing.dask_processes import wait_for
    from skymorph.testing.slurm import FakeSlurm

    slurm = FakeSlurm.create(tmp_path / "slurm")
    monkeypatch.setenv("PATH", f"{slurm.bin}{os.pathsep}{os.environ['PATH']}")
    config = SlurmConfig(walltime="00:10:00", memory_gib=2, cpus_per_job=2, threads_per_process=1, worker_lifetime_minutes=8,
                         lifetime_stagger_minutes=1, gpus_per_job=0, processes=2, python=sys.executable, **LOOPBACK)
    # a lifetime of seconds, which the config (whole minutes) cannot give: the later flag wins
    hang = tmp_path / "second_worker_hangs.py"
    hang.write_text("import time\n\n\ndef dask_setup(worker):\n    if str(worker.name).endswith('-1'):\n        time.sleep(3600)\n")
    kwargs = {**config.cluster_kwargs(), "worker_extra_args": [*config.worker_args(), "--lifetime", "6s",
                                                               "--lifetime-stagger", "0s", "--host", "127.0.0.1",
                                                               *(["--preload", str(hang)] if starting == "one" else [])]}
    try:
        with SLURMCluster(**kwargs) as cluster, Client(cluster) as client:
            # one job at all times: nothing is scaled down, so only the lifetime ends it
            cluster.adapt(minimum_jobs=1, maximum_jobs=1, Adaptive=JobAdaptive, ended_after_s=1)
            assert client.submit(time.sleep, 0.1, pure=False).result(timeout=60) is None
            first = slurm.submitted()
            assert len(first) == 1
            wait_for(lambda: first[0] not in slurm.running(), 60, "the first job's workers to reach their lifetime")
            assert client.submit(time.sleep, 0.1, pure=False).result(timeout=60) is None
            assert len(slurm.submitted()) == 2 and slurm.submitted()[0] == first[0]
    finally:
        slurm.kill_all()


def _slurm_failing_jobs(tmp_path, monkeypatch, caplog, failing: int):
    """A FakeSlurm on PATH whose first ``failing`` jobs fail, a one-process job config, and JobAdaptive's log caught."""
    import logging
    import sys

    from skymorph.testing.slurm import FakeSlurm

    slurm = FakeSlurm.create(tmp_path / "slurm", queue_wait_s=0.5, failing_jobs=failing)
    monkeypatch.setenv("PATH", f"{slurm.bin}{os.pathsep}{os.environ['PATH']}")
    config = SlurmConfig(walltime="00:10:00", memory_gib=2, cpus_per_job=1, threads_per_process=1, worker_lifetime_minutes=8,
                         lifetime_stagger_minutes=1, gpus_per_job=0, python=sys.executable, worker_extra_args=("--host", "127.0.0.1"),
                         **LOOPBACK)
    caplog.set_level(logging.WARNING, logger="skymorph.inference.adaptive")
    return slurm, config


@pytest.mark.parametrize("failing", [1, 100], ids=["one job fails", "every job fails"])
def test_a_job_that_ended_before_its_workers_connected_is_replaced_a_few_times(tmp_path, monkeypatch, caplog, failing):
    """A job that a node failed, or whose workers could not start, never had a worker connected: the cluster
    counted it as queued for ever, submitted nothing in its place, and the run waited for it. JobAdaptive
    asks squeue about it: a job that has ended is replaced. A worker environment that fails every job stops
    the submissions after ``max_failed_starts`` in a row, with the error logged, not a queue full of failures."""
    import time

    from dask_jobqueue import SLURMCluster
    from distributed import Client

    from skymorph.inference.adaptive import JobAdaptive
    from skymorph.testing.dask_processes import wait_for

    slurm, config = _slurm_failing_jobs(tmp_path, monkeypatch, caplog, failing)
    try:
        with SLURMCluster(**config.cluster_kwargs()) as cluster, Client(cluster) as client:
            cluster.adapt(minimum_jobs=0, maximum_jobs=1, Adaptive=JobAdaptive, ended_jobs=config.ended_jobs, queue_check_s=1,
                          max_failed_starts=2)
            task = client.submit(time.sleep, 0.1, pure=False)
            if failing == 1:
                assert task.result(timeout=60) is None
                first, second = slurm.submitted()
                assert "failed on its node" in (slurm.jobs / f"{first}.log").read_text()
                assert [r.levelname for r in caplog.records] == ["WARNING"] and first in caplog.records[0].getMessage()
            else:
                wait_for(lambda: any(r.levelname == "ERROR" for r in caplog.records), 60, "the adaptive cluster to give up")
                time.sleep(4)  # four more checks: nothing more is submitted
                assert len(slurm.submitted()) == 2 and not task.done()
                assert [r.levelname for r in caplog.records] == ["WARNING", "WARNING", "ERROR"]
                assert slurm.submitted()[1] in caplog.records[1].getMessage()
                assert caplog.records[-1].getMessage().startswith("2 batch jobs in a row ended before any of their workers "
                                                                  "connected; no more are submitted while no job has a worker")
    finally:
        slurm.kill_all()


def test_a_job_that_fails_to_start_beside_a_running_one_is_replaced_whatever_the_count(tmp_path, monkeypatch, caplog):
    """Failed starts in a row stopped every submission for good, even beside a job that ran: once its
    workers reached their lifetime, nothing replaced them and the run hung. Only while no job has a
    worker do they stop the submissions."""
    from dask_jobqueue import SLURMCluster
    from distributed import Client

    from skymorph.inference.adaptive import JobAdaptive

    slurm, config = _slurm_failing_jobs(tmp_path, monkeypatch, caplog, 0)
    adaptive = {"Adaptive": JobAdaptive, "ended_jobs": config.ended_jobs, "queue_check_s": 1, "max_failed_starts": 1}
    try:
        with SLURMCluster(**config.cluster_kwargs()) as cluster, Client(cluster) as client:
            cluster.adapt(minimum_jobs=1, maximum_jobs=1, **adaptive)
            client.wait_for_workers(1, timeout=90)  # a job that runs, before the one that fails
            (slurm.jobs / "failing").write_text("1\n")
            cluster.adapt(minimum_jobs=2, maximum_jobs=2, **adaptive)
            client.wait_for_workers(2, timeout=90)  # the job that failed was replaced beside the one that ran
            assert len(slurm.submitted()) == 3, slurm.submitted()
            assert [r.levelname for r in caplog.records] == ["WARNING"]
    finally:
        slurm.kill_all()


def test_slurm_says_which_jobs_ended_by_their_state_or_when_it_no_longer_knows_them(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    squeue = bin_dir / "squeue"
    squeue.write_text(f"""#!/usr/bin/env bash
echo "$@" >> {calls}
case "$*" in
    *--jobs=7,*) echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1 ;;
    *--jobs=7*) echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1 ;;
    *--jobs=8*) echo "8 PENDING" ;;
    *--jobs=1,2,3,4*) printf 'CLUSTER: gpu\n1 PENDING\n2 FAILED\n3 COMPLETING\n' ;;
esac
""")
    squeue.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    import sys

    config = SlurmConfig(walltime="00:10:00", memory_gib=2, cpus_per_job=1, threads_per_process=1, worker_lifetime_minutes=8,
                         lifetime_stagger_minutes=1, python=sys.executable, job_extra_directives=("--clusters=gpu",), **LOOPBACK)
    assert config.ended_jobs(["1", "2", "3", "4"]) == {"2", "4"}  # failed, and no longer listed; pending and completing live
    assert calls.read_text().split() == ["--noheader", "--all", "--format=%i", "%T", "--jobs=1,2,3,4", "--clusters=gpu"]
    assert config.ended_jobs(["7", "8"]) == {"7"}  # one purged id fails the query: each is asked on its own
    squeue.write_text("#!/usr/bin/env bash\nexit 1\n")
    assert config.ended_jobs(["1"]) is None  # no answer: nothing is taken for ended


@pytest.mark.parametrize("sibling", ["idle", "retired"])
def test_a_job_whose_worker_runs_a_task_is_not_cancelled_for_its_sibling(tmp_path, monkeypatch, sibling):
    """One task, on a job of 2 worker processes: the scheduler's target is 1 worker, and it offered the idle
    one to close. Three checks later Adaptive closed it, which cancels its whole job, the worker running the
    task included, and submitted another, again and again (under load, the SLURM run above failed so).
    :class:`JobAdaptive` asks for workers to close by job: a job goes whole, or not at all. A sibling that
    retired first (lifetimes are staggered) was offered too, as not connected, and cancelled the job the
    same way: only connected workers are closed."""
    import sys
    import time

    from dask_jobqueue import SLURMCluster
    from distributed import Client

    from skymorph.inference.adaptive import JobAdaptive
    from skymorph.testing.slurm import FakeSlurm

    slurm = FakeSlurm.create(tmp_path / "slurm", queue_wait_s=2)
    monkeypatch.setenv("PATH", f"{slurm.bin}{os.pathsep}{os.environ['PATH']}")
    retire = tmp_path / "first_worker_retires.py"
    retire.write_text("def dask_setup(worker):\n    if str(worker.name).endswith('-0'):\n"
                      "        worker.loop.call_later(1, lambda: worker.loop.add_callback(worker.close_gracefully))\n")
    config = SlurmConfig(walltime="00:10:00", memory_gib=2, cpus_per_job=2, threads_per_process=1, worker_lifetime_minutes=8,
                         lifetime_stagger_minutes=1, gpus_per_job=0, processes=2, python=sys.executable,
                         worker_extra_args=("--host", "127.0.0.1", *(["--preload", str(retire)] if sibling == "retired" else [])),
                         **LOOPBACK)
    try:
        with SLURMCluster(**config.cluster_kwargs()) as cluster, Client(cluster) as client:
            cluster.adapt(minimum_jobs=0, maximum_jobs=1, Adaptive=JobAdaptive)
            # 8 s: 8 checks of the cluster, where 3 closed the sibling; on the worker that stays
            task = client.submit(time.sleep, 8, pure=False, workers=["SLURMCluster-0-1"])
            assert task.result(timeout=120) is None
            assert (slurm.submitted()[1:], slurm.cancelled()) == ([], []), "the job running the task was cancelled"
    finally:
        slurm.kill_all()


def test_a_job_running_a_task_is_not_cancelled_when_every_job_is_busy(tmp_path, monkeypatch):
    """The tail of a run: two tasks left, one on each of two jobs of 2 processes. The scheduler's target is
    2 workers, so it offered one whole job to close, busy or not (it only prefers idle groups); three checks
    later the job was cancelled and its task started again elsewhere. A job with a busy worker stays."""
    import sys

    from dask_jobqueue import SLURMCluster
    from distributed import Client, wait

    from skymorph.inference.adaptive import JobAdaptive
    from skymorph.testing.slurm import FakeSlurm

    slurm = FakeSlurm.create(tmp_path / "slurm")
    monkeypatch.setenv("PATH", f"{slurm.bin}{os.pathsep}{os.environ['PATH']}")
    config = SlurmConfig(walltime="00:10:00", memory_gib=2, cpus_per_job=2, threads_per_process=1, worker_lifetime_minutes=8,
                         lifetime_stagger_minutes=1, gpus_per_job=0, processes=2, python=sys.executable,
                         worker_extra_args=("--host", "127.0.0.1"), **LOOPBACK)
    starts = tmp_path / "starts.log"

    def log_start(tag: str) -> str:  # defined here, so pickled by value: the workers cannot import this module
        from distributed import get_worker

        with open(starts, "a") as log:
            log.write(f"{tag} {get_worker().name}\n")
        time.sleep(15)  # the scheduler's target drops once the burst is done; 3 checks later the job went
        return tag

    try:
        with SLURMCluster(**config.cluster_kwargs()) as cluster, Client(cluster) as client:
            cluster.adapt(minimum_jobs=0, maximum_jobs=2, Adaptive=JobAdaptive)
            burst = client.map(time.sleep, [0.5] * 40, pure=False)  # enough work for both jobs
            client.wait_for_workers(4, timeout=120)
            tails = [client.submit(log_start, tag, pure=False, workers=[worker], allow_other_workers=True)
                     for tag, worker in (("A", "SLURMCluster-0-0"), ("B", "SLURMCluster-1-0"))]
            wait(burst, timeout=120)
            assert [tail.result(timeout=120) for tail in tails] == ["A", "B"]
            assert sorted(starts.read_text().split("\n")[:-1]) == ["A SLURMCluster-0-0", "B SLURMCluster-1-0"], "a task ran twice"
            assert slurm.cancelled() == [], "a job running a task was cancelled"
    finally:
        slurm.kill_all()


def test_cluster_config_without_slurm_and_slurm_without_sbatch_are_one_line_errors(tmp_path, monkeypatch):
    """--cluster-config alone was ignored (a LocalCluster ran on the login node), and --cluster slurm
    where there is no sbatch waited forever for workers that were never submitted."""
    from skymorph.inference.cluster import ClusterSpec, connect

    with pytest.raises(InputError, match=r"^--cluster-config applies to --cluster slurm; add --cluster slurm"):
        ClusterSpec(cluster_config=str(SLURM_GPU))
    with pytest.raises(InputError, match=r"^--threads-per-worker sizes the embedded cluster; a SLURM worker's threads are"):
        ClusterSpec(cluster="slurm", cluster_config=str(SLURM_GPU), threads_per_worker=4)
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch on it
    with pytest.raises(InputError, match=r"submits its workers with sbatch, which is not on this machine's PATH"):
        with connect(ClusterSpec(cluster="slurm", cluster_config=str(SLURM_GPU))):
            pass
