"""TensorRT plans (skymorph.exporter.build_tensorrt, the tensorrt engine): need an NVIDIA GPU and TensorRT.

Skipped, with the reason, where either is missing (every CPU-only CI machine).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = [pytest.mark.gpu, pytest.mark.tensorrt]

trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed (pip install tensorrt, on a GPU machine)")
pytest.importorskip("cuda", reason="cuda-python is not installed (pip install cuda-python)")
torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("no CUDA GPU", allow_module_level=True)

from skymorph.errors import ModelError  # noqa: E402
from skymorph.exporter import build_tensorrt, export_onnx_model  # noqa: E402
from skymorph.inference.engines import load_engine  # noqa: E402
from skymorph.inference.tensorrt_engine import compute_capability  # noqa: E402
from skymorph.model_metadata import InputSpec  # noqa: E402
from skymorph.schema import get_schema  # noqa: E402
from skymorph.trainer.models import build_model  # noqa: E402

SCHEMA = get_schema("decals")
SPEC = InputSpec(1, 64, 64)
T = 8


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("trt") / "m.onnx"
    export_onnx_model(build_model("w20", SCHEMA, SPEC, "multinomial"), path, samples=T, seed=0)
    return path


@pytest.mark.parametrize("fp16, tolerance", [(False, 1e-3), (True, 3e-2)])
def test_plan_matches_onnxruntime(onnx_path, tmp_path, fp16, tolerance):
    plan = tmp_path / "m.plan"
    report = build_tensorrt(str(onnx_path), str(plan), fp16=fp16, opt_batch=16, max_batch=64, timing_cache=str(tmp_path / "cache"))
    assert report.max_rel_diff <= tolerance
    sidecar = json.loads((tmp_path / "m.plan.json").read_text())
    assert sidecar["tensorrt_version"] == trt.__version__
    assert sidecar["compute_capability"] == compute_capability()
    assert (sidecar["input_name"], sidecar["output_name"], sidecar["fp16"]) == ("images", "samples", fp16)
    assert (tmp_path / "cache").stat().st_size > 0

    engine = load_engine(str(plan))
    reference = load_engine(str(onnx_path), threads=2)
    assert engine.backend == "tensorrt" and engine.needs_gpu
    assert engine.metadata == reference.metadata
    # 40 images: three chunks of the optimal batch 16, the last one partial, through both buffer slots
    images = np.random.default_rng(1).integers(0, 256, (40, *SPEC.shape), dtype=np.uint8)
    got, expected = engine(images), reference(images)
    assert got.shape == (40, T, SCHEMA.n_answers)
    assert np.max(np.abs(got - expected) / (1 + np.abs(expected))) <= tolerance
    engine.close()


def test_plan_of_another_tensorrt_version_is_refused(onnx_path, tmp_path):
    plan = tmp_path / "m.plan"
    build_tensorrt(str(onnx_path), str(plan), opt_batch=8, max_batch=8)
    sidecar = json.loads((tmp_path / "m.plan.json").read_text())
    sidecar["tensorrt_version"] = "1.0.0"
    (tmp_path / "m.plan.json").write_text(json.dumps(sidecar))
    with pytest.raises(ModelError, match="built by TensorRT 1.0.0"):
        load_engine(str(plan))


def test_threads_sharing_one_engine_get_their_own_answers(onnx_path, tmp_path):
    """A GPU worker's task threads (8 in deploy/) share its engine; the buffers and execution context are the engine's,
    so without its lock one thread's batch could overwrite another's."""
    from concurrent.futures import ThreadPoolExecutor

    plan = tmp_path / "m.plan"
    build_tensorrt(str(onnx_path), str(plan), fp16=False, opt_batch=16, max_batch=64)
    engine = load_engine(str(plan))
    batches = [np.random.default_rng(seed).integers(0, 256, (40, *SPEC.shape), dtype=np.uint8) for seed in range(12)]
    alone = [engine(images) for images in batches]
    with ThreadPoolExecutor(3) as pool:
        together = list(pool.map(engine, batches))
    for a, b in zip(alone, together):
        np.testing.assert_array_equal(a, b)
    engine.close()
