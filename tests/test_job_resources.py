"""Where the job's tasks may run, on real Dask workers: GPU resources asked for but advertised by no
worker are refused before any task is submitted; the engine cache lives on the worker plugin and is
freed with it; engines are sized to the cores a process may use."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys

import pytest
from distributed import Client, LocalCluster
from test_job import assert_exact, make_tiles

from skymorph.catalog import layout
from skymorph.errors import InputError, MissingDependencyError, ModelError
from skymorph.inference.job import RunConfig, run_survey
from skymorph.inference.task import EngineCache, ModelRef, get_engine


def _local_cluster(**kwargs) -> LocalCluster:
    return LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0", **kwargs)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_gpu_tasks_on_workers_without_a_gpu_are_refused_then_run_where_one_is_advertised(tmp_path, tiny_model):
    tiles = make_tiles(str(tmp_path), n_tiles=2, per_tile=40)
    catalog = str(tmp_path / "catalog")
    with _local_cluster(processes=True) as cluster:
        config = RunConfig(tiles=str(tmp_path / "tiles.txt"), model=tiny_model, out=catalog,
                           scheduler=cluster.scheduler_address, gpu=True, progress=False)
        with pytest.raises(InputError) as refused:
            run_survey(config)
    message = str(refused.value)
    assert "\n" not in message
    assert message == (
        f"none of the 1 Dask worker(s) at {cluster.scheduler_address} has the resource GPU=1 that --gpu asks for; "
        f"start workers with `dask worker {cluster.scheduler_address} --resources GPU=1`, or run without --gpu"
    )
    assert layout.list_parts(catalog) == []

    with _local_cluster(processes=True, resources={"GPU": 1}) as cluster:
        report = run_survey(RunConfig(tiles=str(tmp_path / "tiles.txt"), model=tiny_model, out=catalog,
                                      scheduler=cluster.scheduler_address, gpu=True, progress=False))
    assert report.ok and report.rows_written == 80 and report.total_rows == 80
    assert_exact(catalog, tiny_model, tiles)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_model_that_needs_a_gpu_gets_an_embedded_cluster_with_one(tmp_path, tiny_model, capsys):
    """A TensorRT plan without --gpu: the driver reads its sidecar only (no TensorRT needed here), the
    embedded cluster advertises GPU=1, so the run gets as far as loading the plan on the worker."""
    from skymorph.inference._tensorrt import PlanSidecar
    from skymorph.inference.engines import read_model_info

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
    with pytest.raises(expected, match="TensorRT"):
        run_survey(config)
    err = capsys.readouterr().err
    assert "skymorph run: 1 tile(s), model" in err  # the workers were up, with a GPU
    from skymorph.inference.cluster import has_nvidia_gpu

    assert ("this machine shows no NVIDIA GPU" in err) is not has_nvidia_gpu()


def _engine_id(ref: ModelRef) -> int:
    return id(get_engine(ref))


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_engine_cache_lives_on_the_worker_plugin_and_is_freed_with_it(tiny_model):
    from skymorph.inference.cluster import usable_cores

    with open(tiny_model, "rb") as fh:
        sha256 = hashlib.sha256(fh.read()).hexdigest()
    ref = ModelRef(tiny_model, sha256)
    with _local_cluster(processes=False) as cluster, Client(cluster) as client:
        worker = next(iter(cluster.workers.values()))
        client.register_plugin(EngineCache(ref))
        cache = worker.plugins[EngineCache.name]
        assert cache.threads == usable_cores() and list(cache.engines) == [sha256]
        assert client.submit(_engine_id, ref, pure=False).result() == id(cache.engines[sha256])
        client.register_plugin(EngineCache(ref))  # a second run on this scheduler: the cache stays, engines and all
        assert worker.plugins[EngineCache.name] is cache and list(cache.engines) == [sha256]
        with pytest.raises(ModelError, match="changed during the run"):
            client.submit(_engine_id, ModelRef(tiny_model, "0" * 64), pure=False).result()

        client.unregister_worker_plugin(EngineCache.name)
        assert cache.engines == {} and EngineCache.name not in worker.plugins
        with pytest.raises(RuntimeError, match="no skymorph-engine-cache plugin on this worker"):
            client.submit(_engine_id, ref, pure=False).result()


_PINNED_CHILD = """
import hashlib, os, sys
from distributed import Client, LocalCluster
from skymorph.inference.cluster import usable_cores
from skymorph.inference.task import EngineCache, ModelRef

model = sys.argv[1]
ref = ModelRef(model, hashlib.sha256(open(model, "rb").read()).hexdigest())
with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, Client(cluster) as client:
    client.register_plugin(EngineCache(ref))
    cache = next(iter(cluster.workers.values())).plugins[EngineCache.name]
    print(usable_cores(), cache.threads, os.cpu_count())
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
