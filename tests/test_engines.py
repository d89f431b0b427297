"""Engines (skymorph.inference.engines): onnxruntime and torch agree; bad models are refused in one line."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

from skymorph.errors import InputError, MissingDependencyError, ModelError
from skymorph.exporter import export_onnx
from skymorph.inference.engines import ORT_PROVIDERS, load_engine, read_model_info
from skymorph.inference.tensorrt_engine import PlanSidecar, check_plan_compatible, sidecar_url
from skymorph.model_metadata import InputSpec
from skymorph.schema import get_schema
from skymorph.trainer.checkpoint import CheckpointMeta, save_checkpoint
from skymorph.trainer.models import build_model

pytestmark = pytest.mark.usefixtures("torch_one_thread")

SCHEMA = get_schema("gz2")
SPEC = InputSpec(1, 32, 32)
T, SEED = 4, 5


@pytest.fixture(scope="module")
def model_files(tmp_path_factory, torch_one_thread_module):
    """A checkpoint and its ONNX export (T=4, seed 5)."""
    root = tmp_path_factory.mktemp("engines")
    torch.manual_seed(0)
    net = build_model("w20", SCHEMA, SPEC, "multinomial")
    save_checkpoint(str(root / "m.ckpt"), net, CheckpointMeta(SCHEMA, "w20", "multinomial", 0.5, SPEC))
    export_onnx(str(root / "m.ckpt"), str(root / "m.onnx"), samples=T, seed=SEED)
    return root / "m.ckpt", root / "m.onnx"


def _images(n, shape=SPEC.shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def test_onnxruntime_and_torch_engines_agree(model_files):
    ckpt, onnx_path = model_files
    ort_engine = load_engine(str(onnx_path), threads=1)
    torch_engine = load_engine(str(ckpt), samples=T, seed=SEED, threads=1)
    assert (ort_engine.backend, torch_engine.backend) == ("onnxruntime", "torch")
    assert not ort_engine.needs_gpu and not torch_engine.needs_gpu
    assert ort_engine.model_sha256 == hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    assert torch_engine.model_sha256 == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert ort_engine.metadata == torch_engine.metadata
    images = _images(6)
    got, expected = ort_engine(images), torch_engine(images)
    assert got.shape == (6, T, SCHEMA.n_answers) and got.dtype == np.float32 and expected.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert ort_engine(images[:0]).shape == (0, T, SCHEMA.n_answers)


def test_backend_is_chosen_by_suffix_or_named(model_files, tmp_path):
    _, onnx_path = model_files
    copy = tmp_path / "model.bin"
    copy.write_bytes(onnx_path.read_bytes())
    with pytest.raises(InputError, match=r"cannot tell the backend .* \(--backend, or backend= in Python\)"):
        load_engine(str(copy))
    for typo in (tmp_path / "model.onx", tmp_path / "nowhere" / "model"):  # a mistyped path is named as missing
        with pytest.raises(InputError, match=rf"model '{re.escape(str(typo))}' does not exist; check the path"):
            read_model_info(str(typo))
    with pytest.raises(ModelError, match="is an ONNX model, not a TensorRT plan; use --backend onnxruntime"):
        read_model_info(str(onnx_path), backend="tensorrt")
    assert load_engine(str(copy), backend="onnxruntime").backend == "onnxruntime"
    with pytest.raises(InputError, match="Did you mean 'onnxruntime'"):
        load_engine(str(onnx_path), backend="onnxruntim")


def test_wrong_images_are_refused(model_files):
    engine = load_engine(str(model_files[1]), threads=1)
    for bad in (_images(2, (3, 32, 32)), _images(2, (1, 64, 64)), _images(2).astype(np.float32), _images(2)[0]):
        with pytest.raises(ModelError, match=r"takes uint8 images \(B, 1, 32, 32\)"):
            engine(bad)


def test_truncated_onnx_is_refused(model_files, tmp_path):
    data = model_files[1].read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match=r"not a readable ONNX model \(truncated or corrupt: (?!\[ONNXRuntimeError\])"):
        load_engine(str(tmp_path / "cut.onnx"))


def test_a_model_newer_than_onnxruntime_says_so_not_corrupt(model_files, tmp_path):
    """A model from a newer exporter was "truncated or corrupt: [ONNXRuntimeError] : 1 : FAIL :
    /onnxruntime_src/...model.cc:256 onnxruntime::Model::Model(...", the reason cut off, and the advice (re-export)
    no help."""
    import onnxruntime

    for name, change, reason in (
        ("ir.onnx", lambda m: setattr(m, "ir_version", 99), r"Unsupported model IR version: 99, max supported IR version: \d+"),
        ("opset.onnx", lambda m: m.opset_import[0].__setattr__("version", 99), r"opset 99 of ai.onnx, which this onnxruntime supports up to \d+"),
    ):
        model = onnx.load(str(model_files[1]))
        change(model)
        onnx.save(model, str(tmp_path / name))
        with pytest.raises(ModelError, match=rf"^'.*{name}' needs a newer onnxruntime than {re.escape(onnxruntime.__version__)} "
                                             rf"\({reason}\); upgrade onnxruntime where the model runs, or export it with a lower --opset$"):
            load_engine(str(tmp_path / name))


def test_a_checkpoint_named_onnx_is_called_a_checkpoint(model_files, tmp_path):
    """train --out takes any name: a checkpoint saved as model.onnx was "truncated or corrupt"."""
    (tmp_path / "model.onnx").write_bytes(model_files[0].read_bytes())
    with pytest.raises(ModelError, match=r"^'.*model.onnx' is a PyTorch checkpoint \(a zip file\), not an ONNX model; export "
                                         r"it first: `skymorph export CHECKPOINT --out model.onnx`$"):
        load_engine(str(tmp_path / "model.onnx"))


def test_onnx_without_skymorph_metadata_is_refused(model_files, tmp_path):
    model = onnx.load(str(model_files[1]))
    del model.metadata_props[:]
    onnx.save(model, str(tmp_path / "plain.onnx"))
    with pytest.raises(ModelError, match="no skymorph metadata.*skymorph export"):
        load_engine(str(tmp_path / "plain.onnx"))


def test_onnx_with_a_float16_output_is_refused(model_files, tmp_path):
    """The samples go to the posterior maths as float32, as Engine promises: a hand-made float16 output passed."""
    model = onnx.load(str(model_files[1]))
    name = model.graph.output[0].name
    for node in model.graph.node:
        node.output[:] = [f"{name}_fp32" if out == name else out for out in node.output]
    model.graph.node.append(onnx.helper.make_node("Cast", [f"{name}_fp32"], [name], to=onnx.TensorProto.FLOAT16))
    model.graph.output[0].type.tensor_type.elem_type = onnx.TensorProto.FLOAT16
    onnx.save(model, str(tmp_path / "half.onnx"))
    with pytest.raises(ModelError, match=r"half.onnx' should give one float32 output \(B, 4, 30\) as its metadata says, has "
                                         r"\[\('samples', 'tensor\(float16\)'"):
        load_engine(str(tmp_path / "half.onnx"))


def test_schema_mismatch_is_refused(model_files):
    assert load_engine(str(model_files[1]), expect_schema="gz2").metadata.schema == SCHEMA
    with pytest.raises(ModelError, match="predicts schema 'gz2'.*not 'decals'"):
        load_engine(str(model_files[1]), expect_schema="decals")


def _fake_plan(tmp_path, onnx_path, version="9.0.0", plan=b"not really a plan"):
    engine = load_engine(str(onnx_path))
    sidecar = PlanSidecar(
        metadata=engine.metadata, tensorrt_version=version, compute_capability="8.0", input_name="images",
        output_name="samples", plan_sha256=hashlib.sha256(plan).hexdigest(), fp16=False, min_batch=1, opt_batch=8, max_batch=64,
    )
    (tmp_path / "m.plan").write_bytes(plan)
    (tmp_path / "m.plan.json").write_text(sidecar.to_json())
    return sidecar


def test_plan_sidecar_round_trips_and_versions_are_checked(model_files, tmp_path):
    sidecar = _fake_plan(tmp_path, model_files[1])
    assert PlanSidecar.from_json((tmp_path / "m.plan.json").read_text(), "sidecar") == sidecar
    assert json.loads((tmp_path / "m.plan.json").read_text())["metadata"]["skymorph.samples"] == str(T)
    check_plan_compatible(sidecar, "m.plan", "9.0.0", "8.0")
    with pytest.raises(ModelError, match="built by TensorRT 9.0.0, this machine has TensorRT 10.3.0"):
        check_plan_compatible(sidecar, "m.plan", "10.3.0", "8.0")
    with pytest.raises(ModelError, match="compute capability 8.0, this GPU has 9.0"):
        check_plan_compatible(sidecar, "m.plan", "9.0.0", "9.0")


def test_plans_are_checked_before_tensorrt_is_needed(model_files, tmp_path):
    _fake_plan(tmp_path, model_files[1])
    plan = str(tmp_path / "m.plan")
    if importlib.util.find_spec("tensorrt") is None:
        with pytest.raises(MissingDependencyError, match=r"TensorRT is not installed: pip install tensorrt cuda-python \(skymorph's tensorrt extra\)"):
            load_engine(plan)
    (tmp_path / "m.plan").write_bytes(b"not really")
    with pytest.raises(ModelError, match="does not match its sidecar's sha256"):
        load_engine(plan)
    (tmp_path / "m.plan.json").write_text("{}")
    with pytest.raises(ModelError, match="not a skymorph plan sidecar"):
        load_engine(plan)
    (tmp_path / "m.plan.json").unlink()
    with pytest.raises(ModelError, match="has no sidecar"):
        load_engine(plan)
    assert sidecar_url(plan) == plan + ".json"


def test_a_model_with_an_operator_onnxruntime_cannot_run_is_one_line(model_files, tmp_path):
    """NotImplemented (no kernel for an operator at its version or type) was a traceback and 'internal error'."""
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Erf", ["x"], ["y"])], "g", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    for prop in onnx.load(str(model_files[1])).metadata_props:
        model.metadata_props.add(key=prop.key, value=prop.value)
    onnx.save(model, str(tmp_path / "erf.onnx"))
    with pytest.raises(ModelError, match=r"erf.onnx' has an operator onnxruntime \S+ cannot run \(.*Erf.*\); upgrade onnxruntime"):
        load_engine(str(tmp_path / "erf.onnx"), threads=1)


def test_the_cuda_provider_computes_in_full_float32(model_files):
    """onnxruntime's CUDA provider defaults to TF32 (10-bit mantissas): a GPU worker's rows of a catalog
    would differ from its CPU workers'."""
    import onnxruntime

    from skymorph.inference.engines import _with_options

    assert _with_options(["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        ("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has no CUDA provider (onnxruntime-gpu on a GPU machine)")
    engine = load_engine(str(model_files[1]), threads=1)
    assert engine.session.get_provider_options()["CUDAExecutionProvider"]["use_tf32"] == "0"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch with CUDA)")
def test_the_torch_backend_on_a_gpu_computes_in_full_float32_and_agrees_with_onnx(model_files, monkeypatch):
    """torch defaults cuDNN convolutions to TF32, where the CUDA provider and TensorRT plans are kept
    from it: the reference backend's GPU rows differed from every other engine's."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)  # restored after: the engine sets it process-wide
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True)
    reference = load_engine(str(model_files[0]), backend="torch", samples=T, seed=SEED, device="cuda")
    assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    images = _images(16)
    np.testing.assert_allclose(reference(images), load_engine(str(model_files[1]), threads=1)(images), rtol=1e-4, atol=1e-5)


def test_model_info_of_an_onnx_model_matches_its_engine(model_files, tmp_path):
    import onnxruntime

    engine = load_engine(str(model_files[1]), threads=1)
    info = read_model_info(str(model_files[1]))
    assert (info.backend, info.model_sha256, info.metadata) == ("onnxruntime", engine.model_sha256, engine.metadata)
    gpu_providers = set(ORT_PROVIDERS[:-1]) & set(onnxruntime.get_available_providers())
    assert info.needs_gpu == bool(gpu_providers)
    data = model_files[1].read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="not a readable ONNX model"):
        read_model_info(str(tmp_path / "cut.onnx"))
    model = onnx.load(str(model_files[1]))
    del model.metadata_props[:]
    onnx.save(model, str(tmp_path / "plain.onnx"))
    with pytest.raises(ModelError, match="no skymorph metadata.*skymorph export"):
        read_model_info(str(tmp_path / "plain.onnx"))


def _python(code: str) -> str:
    """Run ``code`` in a fresh interpreter (to see which modules it imports); its stdout."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_the_exporter_imports_torch_only_for_the_frozen_mask_model():
    """Any import from skymorph.exporter loaded torch (1 s), a plan's build from an ONNX model included."""
    code = (
        "import sys; from skymorph.exporter import build_tensorrt, require_tensorrt; "
        "assert 'torch' not in sys.modules, 'torch imported'; "
        "from skymorph.exporter import weights_sha256; print('torch' in sys.modules, weights_sha256.__module__)"
    )
    assert _python(code).split() == ["True", "skymorph.exporter._frozen"]


def test_model_info_of_a_plan_needs_only_its_sidecar(model_files, tmp_path):
    sidecar = _fake_plan(tmp_path, model_files[1])
    plan = str(tmp_path / "m.plan")
    code = (
        "import sys; from skymorph.inference.engines import read_model_info; "
        f"info = read_model_info({plan!r}); print(info.backend, info.needs_gpu, info.model_sha256); "
        "assert 'tensorrt' not in sys.modules and 'torch' not in sys.modules, 'tensorrt or torch imported'"
    )
    assert _python(code).split() == ["tensorrt", "True", sidecar.plan_sha256]
    assert read_model_info(plan).metadata == sidecar.metadata
    (tmp_path / "m.plan").write_bytes(b"not really")
    with pytest.raises(ModelError, match="does not match its sidecar's sha256"):
        read_model_info(plan)
    (tmp_path / "m.plan.json").unlink()
    with pytest.raises(ModelError, match="has no sidecar"):
        read_model_info(plan)


def test_model_info_of_a_checkpoint_matches_the_torch_engine(model_files):
    engine = load_engine(str(model_files[0]), threads=1)
    info = read_model_info(str(model_files[0]))
    assert (info.backend, info.model_sha256, info.metadata) == ("torch", engine.model_sha256, engine.metadata)
    assert (info.metadata.samples, info.metadata.seed) == (30, 0)
    assert info.needs_gpu == torch.cuda.is_available()


def test_an_onnx_model_without_onnxruntime_is_one_line(model_files):
    code = (
        "import sys; sys.modules['onnxruntime'] = None  # as if not installed\n"
        "from skymorph.errors import MissingDependencyError; from skymorph.inference.engines import load_engine, read_model_info\n"
        "for call in (load_engine, read_model_info):\n"
        "    try:\n"
        f"        call({str(model_files[1])!r})\n"
        "    except MissingDependencyError as err:\n"
        "        print(err)\n"
    )
    assert _python(code).splitlines() == ["onnxruntime is not installed: pip install onnxruntime (or onnxruntime-gpu, skymorph's gpu extra)"] * 2


def test_onnx_engine_reads_s3_and_never_imports_torch(model_files, s3_bucket):
    from skymorph.storage import atomic_write_bytes

    url = f"{s3_bucket}/m.onnx"
    atomic_write_bytes(url, model_files[1].read_bytes())
    code = (
        "import sys, numpy as np; from skymorph.inference.engines import load_engine; "
        f"e = load_engine({url!r}, threads=1); out = e(np.zeros((2, 1, 32, 32), np.uint8)); "
        "assert 'torch' not in sys.modules, 'torch imported'; print(e.model_sha256); print(out.tolist())"
    )
    sha256, values = _python(code).splitlines()
    local = load_engine(str(model_files[1]), threads=1)
    assert sha256 == local.model_sha256
    np.testing.assert_array_equal(np.array(json.loads(values), np.float32), local(np.zeros((2, 1, 32, 32), np.uint8)))
