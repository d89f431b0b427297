"""Where the job's tasks may run, on real Dask workers: GPU resources asked for but advertised by no
worker are refused before any task is submitted; the engine cache lives on the worker plugin and is
freed with it; engines are sized to the cores a process may use."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
from dataclasses import replace

import pytest
from distributed import Client, LocalCluster
from jobhelpers import assert_exact, make_tiles

from skymorph.catalog import layout
from skymorph.errors import ClusterError, InputError, MissingDependencyError, ModelError
from skymorph.inference.engines import read_model_info
from skymorph.inference.job import RunConfig, run_survey
from skymorph.inference.task import EngineCache, JobSpec, ModelRef, RunJob, s3_retry_options


def _local_cluster(**kwargs) -> LocalCluster:
    return LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address="127.0.0.1:0", **kwargs)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_gpu_tasks_on_workers_without_a_gpu_are_refused_then_run_where_one_is_advertised(tmp_path, tiny_model):
    """A refused --overwrite run removed the old catalog first: a finished catalog was gone, and the run never started."""
    tiles = make_tiles(str(tmp_path), n_tiles=2, per_tile=40)
    catalog, new = str(tmp_path / "catalog"), str(tmp_path / "new")
    with _local_cluster(processes=True, resources={"GPU": 1}) as cluster:
        report = run_survey(RunConfig(tiles=str(tmp_path / "tiles.txt"), model=tiny_model, out=catalog,
                                      scheduler=cluster.scheduler_address, gpu=True, progress=False))
    assert report.ok and report.rows_written == 80 and report.total_rows == 80
    assert_exact(catalog, tiny_model, tiles)

    with _local_cluster(processes=True) as cluster:
        config = RunConfig(tiles=str(tmp_path / "tiles.txt"), model=tiny_model, out=new,
                           scheduler=cluster.scheduler_address, gpu=True, progress=False)
        with pytest.raises(InputError) as refused:
            run_survey(config)
        with pytest.raises(InputError, match="has the resource GPU=1 that --gpu asks for"):
            run_survey(replace(config, out=catalog, overwrite=True))
        with pytest.raises(ClusterError) as timed_out:  # told to wait for GPU workers: it waits, then stops
            run_survey(replace(config, out=catalog, overwrite=True, worker_timeout=1))
    message = str(refused.value)
    assert "\n" not in message
    assert message == (
        f"none of the 1 Dask worker(s) at {cluster.scheduler_address} has the resource GPU=1 that --gpu asks for; "
        f"start workers with `dask worker {cluster.scheduler_address} --resources GPU=1` (give --worker-timeout SECONDS "
        "to wait for them to join), or run without --gpu"
    )
    assert str(timed_out.value) == (
        f"the Dask scheduler at {cluster.scheduler_address} has had no worker with resource GPU for 1 s (--worker-timeout); "
        f"nothing was changed: start workers (`dask worker {cluster.scheduler_address} --resources GPU=1`) and run the "
        "same command again"
    )
    assert layout.list_parts(new) == []
    assert_exact(catalog, tiny_model, tiles)  # the catalog --overwrite would have replaced, whole


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_gpu_run_with_a_worker_timeout_waits_beside_cpu_workers_for_a_gpu_worker(tmp_path, tiny_model, capsys):
    """It was refused at once, whatever --worker-timeout said: on Kubernetes the CPU worker group is up
    while the GPU pods wait for nodes. The old catalog of --overwrite is removed only once one joins."""
    import threading

    from skymorph.testing.dask_processes import dask_processes

    tiles = make_tiles(str(tmp_path), n_tiles=2, per_tile=40)
    catalog = str(tmp_path / "catalog")
    with _local_cluster(processes=True) as cluster:
        run_survey(RunConfig(tiles=str(tmp_path / "tiles.txt"), model=tiny_model, out=catalog,
                             scheduler=cluster.scheduler_address, progress=False))
    old_parts = set(layout.list_parts(catalog))
    seen_before_gpu: list[set] = []

    with dask_processes(str(tmp_path), [["--nthreads", "1"]]) as procs:
        def start_gpu_worker():
            seen_before_gpu.append(set(layout.list_parts(catalog)))
            dask = os.path.join(os.path.dirname(sys.executable), "dask")
            procs.workers.append(subprocess.Popen([dask, "worker", procs.address, "--host", "127.0.0.1", "--no-dashboard",
                                                   "--nthreads", "2", "--resources", "GPU=1"],
                                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

        timer = threading.Timer(3.0, start_gpu_worker)
        timer.start()
        try:
            report = run_survey(RunConfig(tiles=str(tmp_path / "tiles.txt"), model=tiny_model, out=catalog, overwrite=True,
                                          scheduler_file=procs.scheduler_file, gpu=True, worker_timeout=120, progress=False))
        finally:
            timer.join()
            for worker in procs.workers[1:]:
                worker.kill()
                worker.wait(timeout=30)
    assert seen_before_gpu == [old_parts]  # 3 s in, the old catalog was still whole
    assert report.ok and report.rows_written == 80 and report.total_rows == 80
    assert_exact(catalog, tiny_model, tiles)
    err = capsys.readouterr().err
    assert (f"skymorph run: no GPU workers (GPU=1) at {procs.address} yet; waiting for some to join, at most 120 s "
            f"(--worker-timeout) (`dask worker {procs.address} --resources GPU=1`)") in err


def _meet(me: str, other: str) -> bool:
    """Set this task's event, then wait for the other task's: True only if both ran at once."""
    from distributed import Event

    Event(me).set()
    return Event(other).wait(timeout=20)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_gpu_tasks_share_a_gpu_worker_up_to_its_threads():
    """Each task asked for the whole GPU=1 that a GPU worker advertises, so its task threads ran one task at
    a time: the GPU idle while a task read its images and wrote its rows (docs/deploy.md)."""
    from skymorph.inference.cluster import GPU_WORKER, task_resources

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address="127.0.0.1:0",
                      resources=dict(GPU_WORKER)) as cluster, Client(cluster) as client:
        futures = [client.submit(_meet, a, b, resources=task_resources(True), pure=False) for a, b in (("a", "b"), ("b", "a"))]
        assert client.gather(futures) == [True, True]
    assert task_resources(False) is None


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_model_that_needs_a_gpu_gets_an_embedded_cluster_with_one(tmp_path, tiny_model, capfd):
    """A TensorRT plan without --gpu: the driver reads its sidecar only (no TensorRT needed here), the
    embedded cluster advertises GPU=1, so the run gets as far as loading the plan on the worker, which says so
    in one line (not the worker's traceback) and leaves --out as it was (it held a manifest for that plan)."""
    from skymorph.inference.engines import read_model_info
    from skymorph.inference.tensorrt_engine import PlanSidecar

    make_tiles(str(tmp_path), n_tiles=1, per_tile=8)
    plan = b"not really a plan"
    sidecar = PlanSidecar(metadata=read_model_info(tiny_model).metadata, tensorrt_version="0.0.0",
                          compute_capability="0.0", input_name="images", output_name="samples",
                          plan_sha256=hashlib.sha256(plan).hexdigest(), fp16=False, min_batch=1, opt_batch=8, max_batch=8)
    (tmp_path / "m.plan").write_bytes(plan)
    (tmp_path / "m.plan.json").write_text(sidecar.to_json())
    config = RunConfig(tiles=str(tmp_path / "tiles.txt"), model=str(tmp_path / "m.plan"), out=str(tmp_path / "catalog"),
                       workers=1, progress=False)
    # where TensorRT is installed the fake plan itself is refused (built by TensorRT 0.0.0)
    expected = ModelError if importlib.util.find_spec("tensorrt") else MissingDependencyError
    with pytest.raises(expected, match=r"^the Dask worker at tcp://127\.0\.0\.1:\d+ cannot load the model \(.*TensorRT"):
        run_survey(config)
    err = capfd.readouterr().err  # the worker processes' too
    assert "skymorph run: 1 tile(s), model" in err  # the workers were up, with a GPU
    assert "failed to setup" not in err and "Traceback" not in err
    assert not (tmp_path / "catalog").exists()
    from skymorph.inference.cluster import has_nvidia_gpu

    assert ("this machine shows no NVIDIA GPU" in err) is not has_nvidia_gpu()


@pytest.mark.timeout(120)
def test_the_embedded_cluster_listens_on_loopback_only():
    """Its dashboard listened on every interface (0.0.0.0) while the driver printed a 127.0.0.1 link; the
    dashboard shows task arguments, --storage-options among them (docs/deploy.md)."""
    import psutil

    from skymorph.inference.cluster import ClusterSpec, connect

    with connect(ClusterSpec(workers=1)) as (client, _):
        listening = [c.laddr for c in psutil.Process().net_connections("tcp") if c.status == psutil.CONN_LISTEN]
        assert client.dashboard_link.startswith("http://127.0.0.1:")
    assert listening and all(address.ip == "127.0.0.1" for address in listening), listening


def _engine_id(name: str, ref: ModelRef) -> int:
    from distributed import get_worker

    return id(get_worker().plugins[name].engines.get(ref))


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_runs_engine_lives_on_its_job_plugin_and_is_freed_with_it(tiny_model):
    """Engines were cached on one plugin that no run removed: a long-lived cluster kept one per model
    ever run, and workers joining later loaded the first run's model."""
    from skymorph.inference.cluster import usable_cores

    with open(tiny_model, "rb") as fh:
        sha256 = hashlib.sha256(fh.read()).hexdigest()
    ref = ModelRef(tiny_model, sha256, masks_sha256=read_model_info(tiny_model).metadata.masks_sha256)
    job = JobSpec(catalog="c", order=3, arrow_schema=None, model=ref, tree_json="{}", likelihood="multinomial", n_volunteers=40,
                  input_shape=(1, 8, 8), batch_size=8, rows_per_task=64, driver_session="0" * 32)
    with _local_cluster(processes=False) as cluster, Client(cluster) as client:
        worker = next(iter(cluster.workers.values()))
        client.register_plugin(RunJob(job, "run-a"))
        engines = worker.plugins["run-a"].engines
        assert engines.threads == usable_cores() and list(engines.engines) == [sha256]  # loaded when registered
        assert client.submit(_engine_id, "run-a", ref, pure=False).result() == id(engines.engines[sha256])
        with pytest.raises(ModelError, match="changed during the run"):
            client.submit(_engine_id, "run-a", ModelRef(tiny_model, "0" * 64, masks_sha256=ref.masks_sha256), pure=False).result()
        client.register_plugin(RunJob(job, "run-b"))  # a second run on this scheduler has engines of its own
        other = worker.plugins["run-b"].engines
        assert list(other.engines) == [sha256] and other.engines[sha256] is not engines.engines[sha256]

        client.unregister_worker_plugin("run-a")
        assert engines.engines == {} and "run-a" not in worker.plugins and list(other.engines) == [sha256]


def test_workers_retry_s3_and_s3a_reads_unless_the_caller_configured_retries():
    """A worker's reads of the model and tiles retry throttling and dropped connections (botocore's standard
    mode); s3a:// URLs are S3's too, which a prefix test of "s3://" missed."""
    standard = {"retries": {"max_attempts": 10, "mode": "standard"}}
    for url in ("s3://bucket/m.onnx", "s3a://bucket/m.onnx"):
        assert s3_retry_options(url, {"anon": True}) == {"anon": True, "config_kwargs": standard}
    own = {"config_kwargs": {"retries": {"max_attempts": 3}}}
    assert s3_retry_options("s3a://bucket/m.onnx", own) == own
    assert s3_retry_options("/models/m.onnx", None) == {}


def test_a_worker_whose_engine_drew_other_masks_refuses_it(tiny_model):
    """A checkpoint's masks are drawn from its seed on each worker: one with another torch could draw
    others, and write a catalog its recorded masks digest does not describe."""
    with open(tiny_model, "rb") as fh:
        ref = ModelRef(tiny_model, hashlib.sha256(fh.read()).hexdigest(), threads=1, masks_sha256="0" * 64)
    cache = EngineCache(ref)
    with pytest.raises(ModelError, match=r"drew other dropout masks on this worker \(sha256 [0-9a-f]{12}\.\.\., the run's "
                                         r"000000000000\.\.\.\): a checkpoint's masks come from torch's generator"):
        cache.get(ref)
    assert cache.engines == {}
    good = replace(ref, masks_sha256=read_model_info(tiny_model).metadata.masks_sha256)
    assert cache.get(good).metadata.masks_sha256 == good.masks_sha256 and list(cache.engines) == [good.sha256]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_worker_that_joins_after_the_run_starts_shares_its_host_s_cores(tiny_model):
    """A worker missing from the driver's count of threads per host (it joined later, as every worker of
    an adaptive cluster does) sized its engine as if alone on its host: two workers of one thread on one
    host each took every core."""
    from skymorph.inference.cluster import usable_cores

    with open(tiny_model, "rb") as fh:
        ref = ModelRef(tiny_model, hashlib.sha256(fh.read()).hexdigest(), masks_sha256=read_model_info(tiny_model).metadata.masks_sha256)
    job = JobSpec(catalog="c", order=3, arrow_schema=None, model=ref, tree_json="{}", likelihood="multinomial", n_volunteers=40,
                  input_shape=(1, 8, 8), batch_size=8, rows_per_task=64, driver_session="0" * 32)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address="127.0.0.1:0") as cluster, \
            Client(cluster) as client:
        client.register_plugin(RunJob(job, "run", threads_by_host={}))  # the driver counted no worker
        threads = [worker.plugins["run"].engines.threads for worker in cluster.workers.values()]
    assert threads == [max(1, usable_cores() // 2)] * 2


_PINNED_CHILD = """
import hashlib, os, sys
from distributed import Client, LocalCluster
from skymorph.inference.cluster import usable_cores
from skymorph.inference.engines import read_model_info
from skymorph.inference.task import JobSpec, ModelRef, RunJob

model = sys.argv[1]
ref = ModelRef(model, hashlib.sha256(open(model, "rb").read()).hexdigest(), masks_sha256=read_model_info(model).metadata.masks_sha256)
job = JobSpec(catalog="c", order=3, arrow_schema=None, model=ref, tree_json="{}", likelihood="multinomial", n_volunteers=40,
              input_shape=(1, 8, 8), batch_size=8, rows_per_task=64, driver_session="0" * 32)
with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client:
    client.register_plugin(RunJob(job, "run"))
    engines = next(iter(cluster.workers.values())).plugins["run"].engines
    print(usable_cores(), engines.threads, os.cpu_count())
"""


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")
def test_engines_are_sized_to_the_cores_a_process_may_use(tiny_model):
    """A worker pinned to one core gives its engine one thread, however many cores the machine has."""
    first_core = min(os.sched_getaffinity(0))
    pinned = subprocess.run([sys.executable, "-c", _PINNED_CHILD, tiny_model], capture_output=True, text=True,
                            timeout=120, preexec_fn=lambda: os.sched_setaffinity(0, {first_core}))
    assert pinned.returncode == 0, pinned.stderr[-2000:]
    usable, engine_threads, machine = map(int, pinned.stdout.split())
    assert (usable, engine_threads) == (1, 1) and machine == os.cpu_count()


def test_a_cgroup_cpu_quota_bounds_the_cores_an_engine_is_given(tmp_path):
    """A Kubernetes pod's CPU limit is a cgroup quota, not an affinity: a 4-CPU worker pod on a 64-core node
    gave its engines 64 cores' threads, and the kernel throttled them to 4."""
    from skymorph.inference.cluster import cgroup_cpu_quota, usable_cores

    def quota(membership: str, files: dict) -> float | None:
        root = tmp_path / f"case{len(list(tmp_path.iterdir()))}"
        root.mkdir()
        for name, text in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text(text)
        (root / "cgroup").write_text(membership)
        return cgroup_cpu_quota(str(root / "fs"), str(root / "cgroup"))

    assert quota("0::/\n", {"fs/cpu.max": "400000 100000\n"}) == 4.0  # v2, the container's own namespace
    assert quota("0::/kubepods/pod1/c1\n", {"fs/kubepods/pod1/c1/cpu.max": "250000 100000\n"}) == 2.5
    assert quota("0::/\n", {"fs/cpu.max": "max 100000\n"}) is None
    v1 = {"fs/cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "200000\n", "fs/cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n"}
    assert quota("4:cpu,cpuacct:/docker/abc\n3:memory:/docker/abc\n", v1) == 2.0
    assert quota("1:cpu:/\n", {"fs/cpu/cpu.cfs_quota_us": "-1\n", "fs/cpu/cpu.cfs_period_us": "100000\n"}) is None
    assert quota("0::/\n", {}) is None  # nothing to read: no quota known
    # a limit on a parent binds its children: the container's, with the process in a child cgroup; the least wins
    assert quota("0::/init\n", {"fs/cpu.max": "200000 100000\n", "fs/init/cpu.max": "max 100000\n"}) == 2.0
    assert quota("0::/a/b\n", {"fs/a/cpu.max": "300000 100000\n", "fs/a/b/cpu.max": "500000 100000\n"}) == 3.0
    assert quota("4:cpu:/docker/abc\n", {"fs/cpu/docker/cpu.cfs_quota_us": "150000\n", "fs/cpu/docker/cpu.cfs_period_us": "100000\n",
                                          "fs/cpu/docker/abc/cpu.cfs_quota_us": "-1\n", "fs/cpu/docker/abc/cpu.cfs_period_us": "100000\n"}) == 1.5
    assert cgroup_cpu_quota(str(tmp_path / "none"), str(tmp_path / "no-such-file")) is None
    assert 1 <= usable_cores() <= len(os.sched_getaffinity(0))


def test_local_workers_do_not_log_what_the_driver_reports_in_one_line():
    """About one run in 12 printed distributed.worker's 25-line "Failed to communicate with scheduler during
    heartbeat" traceback as the LocalCluster closed, after a run that succeeded; a model a worker could not
    load printed its "Worker plugin ... failed to setup" traceback before the driver's line. Other records pass."""
    import logging

    from skymorph.inference.cluster import _reported_by_the_driver

    def record(message: str, *args) -> logging.LogRecord:
        return logging.LogRecord("distributed.worker", logging.ERROR, __file__, 1, message, args, None)

    assert not _reported_by_the_driver(record("Failed to communicate with scheduler during heartbeat."))
    assert not _reported_by_the_driver(record("Worker plugin %s failed to setup", "skymorph-job-0123456789ab-Client-x"))
    assert _reported_by_the_driver(record("Worker plugin %s failed to setup", "someone-elses-plugin"))
    assert _reported_by_the_driver(record("Unexpected exception during heartbeat. Closing worker."))
    assert _reported_by_the_driver(record("Compute Failed"))
