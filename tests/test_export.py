"""Checkpoint -> ONNX with frozen masks (skymorph.exporter): equivalence, determinism, metadata, CLI."""

from __future__ import annotations

import hashlib
import json
import os
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from skymorph.cli import main
from skymorph.errors import InputError, ModelError
from skymorph.exporter import _export, _onnx, export_checkpoint, export_onnx_model, weights_sha256
from skymorph.inference.engines import load_engine
from skymorph.model_metadata import InputSpec, ModelMetadata
from skymorph.schema import get_schema
from skymorph.trainer.checkpoint import CheckpointMeta, save_checkpoint
from skymorph.trainer.models import build_model

pytestmark = pytest.mark.usefixtures("torch_one_thread")

SCHEMA = get_schema("decals")
SPEC = InputSpec(1, 40, 40, crop_fraction=0.9, resize=32)
T = 5


def _net(arch="w20", likelihood="multinomial", seed=0):
    torch.manual_seed(seed)
    net = build_model(arch, SCHEMA, SPEC, likelihood, dropout=0.5)
    with torch.no_grad():  # non-trivial batch-norm statistics, so that folding them is exercised
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return net.eval()


def _images(n, seed=1):
    return np.random.default_rng(seed).integers(0, 256, (n, *SPEC.shape), dtype=np.uint8)


def _session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _reference(net, images, masks):
    """(B, T, A) one masked head at a time, activated per question with numpy (independent of FrozenMaskNet)."""
    with torch.no_grad():
        features = net.features(torch.from_numpy(images)).double().numpy()
    weight = net.head.linear.weight.detach().double().numpy()
    bias = net.head.linear.bias.detach().double().numpy()
    logits = np.stack([(features * m) @ weight.T + bias for m in masks.double().numpy()], axis=1)
    if net.likelihood == "dirichlet_multinomial":
        return 1 + 99 / (1 + np.exp(-logits))
    out = np.empty_like(logits)
    for s in SCHEMA.question_slices:
        e = np.exp(logits[..., s] - logits[..., s].max(axis=-1, keepdims=True))
        out[..., s] = e / e.sum(axis=-1, keepdims=True)
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """``exported(arch, likelihood, seed) -> (net, path)``, each exported once per module."""
    cache = {}

    def export(arch="w20", likelihood="multinomial", seed=7):
        if (arch, likelihood, seed) not in cache:
            net = _net(arch, likelihood)
            path = tmp_path_factory.mktemp("export") / "m.onnx"
            report = export_onnx_model(net, path, samples=T, seed=seed)
            assert report.max_abs_diff <= 1e-4
            cache[arch, likelihood, seed] = (net, path)
        return cache[arch, likelihood, seed]

    return export


@pytest.mark.parametrize(
    "arch, likelihood", [("w20", "multinomial"), ("w20", "dirichlet_multinomial"), ("resnet_s", "multinomial"), ("resnet_s", "dirichlet_multinomial")]
)
def test_onnx_equals_the_masked_network(exported, arch, likelihood):
    net, path = exported(arch, likelihood)
    images = _images(7)
    got = _session(path).run(None, {"images": images})[0]
    assert got.shape == (7, T, SCHEMA.n_answers) and got.dtype == np.float32
    expected = _reference(net, images, net.head.draw_masks(T, 7))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    if likelihood == "multinomial":
        for s in SCHEMA.question_slices:
            np.testing.assert_allclose(got[..., s].sum(-1), 1.0, atol=1e-5)
    else:
        assert got.min() >= 1 and got.max() <= 100
    # the T samples are distinct sub-networks, not one network T times
    assert np.abs(got[:, 0] - got[:, 1]).max() > 1e-4


def test_graph_has_uint8_dynamic_batch_input_and_masks_as_constants(exported):
    net, path = exported()
    model = onnx.load(str(path))
    (graph_input,) = model.graph.input
    assert graph_input.name == "images"
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = graph_input.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == list(SPEC.shape)
    assert "Dropout" not in {node.op_type for node in model.graph.node}
    masks = net.head.draw_masks(T, 7).numpy()
    constants = [onnx.numpy_helper.to_array(t) for t in model.graph.initializer]
    assert any(c.shape == masks.shape and np.array_equal(c, masks) for c in constants)
    assert _session(path).run(None, {"images": _images(1)})[0].shape == (1, T, SCHEMA.n_answers)


def test_same_model_t_and_seed_give_the_same_bytes_and_another_seed_other_masks(exported, tmp_path):
    _, first = exported()
    again = export_onnx_model(_net(), tmp_path / "again.onnx", samples=T, seed=7)
    _, other = exported(seed=8)
    assert first.read_bytes() == (tmp_path / "again.onnx").read_bytes()
    assert again.model_sha256 == hashlib.sha256(first.read_bytes()).hexdigest()
    meta_first, meta_other = (load_engine(str(p)).metadata for p in (first, other))
    assert meta_other.masks_sha256 != meta_first.masks_sha256
    assert meta_other.weights_sha256 == meta_first.weights_sha256
    images = _images(4)
    a, b, c = (_session(p).run(None, {"images": images})[0] for p in (first, tmp_path / "again.onnx", other))
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)


def test_cli_exports_a_checkpoint_on_s3_with_round_tripping_metadata(s3_bucket, tmp_path, capsys):
    from skymorph.storage import read_bytes

    net = _net("resnet_s", "dirichlet_multinomial")
    meta = CheckpointMeta(SCHEMA, "resnet_s", "dirichlet_multinomial", 0.5, SPEC, provenance={"seed": 11})
    ckpt, out = f"{s3_bucket}/m.ckpt", f"{s3_bucket}/models/m.onnx"
    save_checkpoint(ckpt, net, meta)
    assert main(["export", ckpt, "--samples", str(T), "--seed", "2", "--out", out]) == 0
    assert f"T={T}, seed=2" in capsys.readouterr().out
    data = read_bytes(out)
    parsed = ModelMetadata.from_props({p.key: p.value for p in onnx.load_from_string(data).metadata_props})
    assert (parsed.schema, parsed.likelihood, parsed.samples, parsed.seed, parsed.dropout, parsed.input, parsed.arch) == (
        SCHEMA, "dirichlet_multinomial", T, 2, 0.5, SPEC, "resnet_s",
    )
    masks = np.ascontiguousarray(net.head.draw_masks(T, 2).numpy(), dtype="<f4")
    assert parsed.masks_sha256 == hashlib.sha256(masks.tobytes()).hexdigest()
    assert parsed.weights_sha256 == weights_sha256(net)
    assert parsed.extra["checkpoint_sha256"] == hashlib.sha256(read_bytes(ckpt)).hexdigest()
    assert json.loads(parsed.extra["provenance"]) == {"seed": 11}
    assert ModelMetadata.from_props(parsed.to_props()) == parsed
    engine = load_engine(out, threads=1)
    assert engine.metadata == parsed and engine.model_sha256 == hashlib.sha256(data).hexdigest()
    np.testing.assert_allclose(engine(_images(3)), _reference(net, _images(3), net.head.draw_masks(T, 2)), rtol=1e-4)


def test_weights_digest_follows_every_tensor():
    """Each tensor of the state dict (batch-norm buffers too) changes the digest, as do a tensor's name and
    shape over the same bytes: a change to the head alone was all that was checked."""
    net = _net("resnet_s")
    before = weights_sha256(net)
    state = net.state_dict()
    assert any("running_var" in key for key in state) and any("trunk" in key for key in state)
    for key, tensor in state.items():
        changed = {**state, key: tensor.clone().view(-1).add_(1).view(tensor.shape)}  # ints too (num_batches_tracked)
        other = _net("resnet_s")
        other.load_state_dict(changed)
        assert weights_sha256(other) != before, key
    assert weights_sha256(net) == before

    class One(nn.Module):
        def __init__(self, name: str, shape: tuple[int, ...]) -> None:
            super().__init__()
            self.register_parameter(name, nn.Parameter(torch.arange(6.0).reshape(shape)))

    digests = {weights_sha256(One(name, shape)) for name, shape in (("a", (2, 3)), ("b", (2, 3)), ("a", (3, 2)))}
    assert len(digests) == 3


def test_the_self_check_is_relative_so_large_dirichlet_concentrations_pass(tmp_path):
    """Concentrations near 60 differ between ONNX Runtime and PyTorch by 1.4e-4 here, some 20 float32
    steps of summing in another order (5e-6 relative): the absolute check refused this good model."""
    torch.manual_seed(0)
    net = build_model("resnet_s", get_schema("decals"), InputSpec(3, 64, 64), "dirichlet_multinomial")
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a trained network's batch statistics and a confident head
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5, generator=generator)
                module.running_var.uniform_(0.2, 3, generator=generator)
                module.weight.uniform_(0.5, 2, generator=generator)
        net.head.linear.weight.mul_(30)
    report = export_onnx_model(net, tmp_path / "m.onnx", samples=30, seed=0, check_batch=8)
    assert report.max_relative_diff <= _onnx.TOLERANCE and report.max_abs_diff > 0
    assert "relative to 1 + |torch|" in str(report)


def test_relative_difference_scales_by_one_plus_the_reference():
    """Independent of this CPU's kernels (the test above may see any |diff|): a concentration of 60 off by
    3e-3 passes the 1e-4 check, a probability of 0.5 off by 2e-4 does not."""
    concentration = _onnx.relative_difference(np.float32([60.003, 1.0]), np.float32([60.0, 1.0]))
    assert concentration == pytest.approx(0.003 / 61, rel=1e-3) and concentration <= _onnx.TOLERANCE
    probability = _onnx.relative_difference(np.float32([0.5002]), np.float32([0.5]))
    assert probability == pytest.approx(2e-4 / 1.5, rel=1e-3) and probability > _onnx.TOLERANCE


def test_failed_self_check_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(_onnx, "TOLERANCE", -1.0)
    with pytest.raises(ModelError, match="differs from PyTorch"):
        export_onnx_model(_net(), tmp_path / "m.onnx", samples=T)
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_of_an_in_memory_export_are_refused(tmp_path):
    with pytest.raises(InputError, match=re.escape("--samples (MC-dropout samples T) must be an integer from 1 to 1000, got 0;")):
        export_onnx_model(_net(), tmp_path / "m.onnx", samples=0)
    with pytest.raises(InputError, match=r"^--opset must be an integer from 18 \(the dynamo exporter's minimum\) to \d+ \(the newest of onnx .*\), got 13; "
                                         r"the default is 18$"):
        export_onnx_model(_net(), tmp_path / "m.onnx", opset=13)
    assert list(tmp_path.iterdir()) == []


def _cli_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("skymorph: error: ") and err.count("\n") == 1
    return err


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    assert "does not exist" in _cli_error(capsys, ["export", str(tmp_path / "none.ckpt"), "--out", str(tmp_path / "m.onnx")])
    (tmp_path / "bad.ckpt").write_bytes(b"not a checkpoint")
    assert "is not a checkpoint" in _cli_error(capsys, ["export", str(tmp_path / "bad.ckpt"), "--out", str(tmp_path / "m.onnx")])
    (tmp_path / "model.onnx").write_bytes(b"\x08\x08\x12\x07pytorch")  # an exported model given as the checkpoint
    assert f"{str(tmp_path / 'model.onnx')!r} is an ONNX model (what `skymorph export` writes), not a checkpoint; give the .ckpt" in (
        _cli_error(capsys, ["export", str(tmp_path / "model.onnx"), "--out", str(tmp_path / "m2.onnx")]))
    assert "--fp16" in _cli_error(capsys, ["export", str(tmp_path / "bad.ckpt"), "--out", str(tmp_path / "m.onnx"), "--fp16"])
    assert ".plan" in _cli_error(capsys, ["export", str(tmp_path / "bad.ckpt"), "--out", str(tmp_path / "m.onnx"), "--format", "tensorrt"])


def test_fp16_rewrite_keeps_the_interface_and_the_outputs(exported):
    from skymorph.exporter._fp16 import to_fp16

    _, path = exported("resnet_s", "dirichlet_multinomial")
    half = to_fp16(onnx.load(str(path)))
    assert {t.data_type for t in half.graph.initializer} <= {onnx.TensorProto.FLOAT16, onnx.TensorProto.INT64}
    assert half.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert half.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    # onnxruntime's CPU provider computes fp16 nodes it lacks kernels for in fp32: this checks the
    # rewritten graph's logic and the rounding of the weights, not fp16 arithmetic (test_tensorrt.py does).
    images = _images(3)
    expected = _session(path).run(None, {"images": images})[0]
    got = ort.InferenceSession(half.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"images": images})[0]
    assert got.dtype == np.float32
    assert np.max(np.abs(got - expected) / (1 + np.abs(expected))) < 1e-2


def test_cli_output_under_a_file_is_a_one_line_error(tmp_path, capsys):
    net = _net("w20", "multinomial")
    ckpt = str(tmp_path / "m.ckpt")
    save_checkpoint(ckpt, net, CheckpointMeta(SCHEMA, "w20", "multinomial", 0.5, SPEC))
    (tmp_path / "a_file").write_text("not a directory")
    code = main(["export", ckpt, "--samples", str(T), "--out", str(tmp_path / "a_file" / "model.onnx")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("skymorph: error:") and err.count("\n") == 1 and "a_file" in err


def test_weights_that_do_not_fit_their_recorded_tree_name_the_first_mismatch(tmp_path, capsys):
    """The message ended at torch's first line, "(Error(s) in loading state_dict for MorphologyNet:)"."""
    ckpt = str(tmp_path / "m.ckpt")
    save_checkpoint(ckpt, _net(), CheckpointMeta(get_schema("gz2"), "w20", "multinomial", 0.5, SPEC))  # decals weights
    code = main(["export", ckpt, "--samples", str(T), "--out", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert re.search(r"weights do not fit architecture 'w20' \(size mismatch for head\.linear\.weight: copying a param "
                     r"with shape torch\.Size\(\[\d+, \d+\]\) from checkpoint, the shape in current model is", err), err


def _checkpoint(tmp_path, seed=0) -> str:
    path = str(tmp_path / f"m{seed}.ckpt")
    save_checkpoint(path, _net(seed=seed), CheckpointMeta(SCHEMA, "w20", "multinomial", 0.5, SPEC))
    return path


def test_seed_outside_the_generators_range_is_refused_before_the_checkpoint_is_read(tmp_path, capsys):
    for seed in (-1, 2**64):
        with pytest.raises(InputError, match=r"--seed must be a non-negative integer below 2\*\*64, got "):
            export_onnx_model(_net(), tmp_path / "m.onnx", samples=T, seed=seed)
    # the checkpoint does not exist: the seed is what is reported
    err = _cli_error(capsys, ["export", str(tmp_path / "none.ckpt"), "--seed", "-1", "--out", str(tmp_path / "m.onnx")])
    assert "--seed must be a non-negative integer below 2**64, got -1; give e.g. --seed 0" in err
    assert list(tmp_path.iterdir()) == []
    report = export_onnx_model(_net(), tmp_path / "top.onnx", samples=T, seed=2**64 - 1)
    assert load_engine(str(tmp_path / "top.onnx")).metadata.seed == report.metadata.seed == 2**64 - 1


def test_a_plan_is_not_built_from_an_onnx_model_with_a_negative_seed(exported, tmp_path):
    from skymorph.exporter import build_tensorrt

    _, path = exported()
    model = onnx.load(str(path))
    for prop in model.metadata_props:
        if prop.key == "skymorph.seed":
            prop.value = "-1"
    onnx.save(model, str(tmp_path / "neg.onnx"))
    with pytest.raises(ModelError, match=r"neg.onnx' has invalid skymorph metadata: the model's seed must be a non-negative "
                                         r"integer below 2\*\*64, got -1; re-export it with `skymorph export`$"):
        build_tensorrt(str(tmp_path / "neg.onnx"), str(tmp_path / "m.plan"))


def test_a_checkpoint_is_loaded_and_hashed_from_the_same_bytes(tmp_path):
    """export_onnx reads the file once and hands those bytes on: the weights and the recorded digest
    then come from one version of a checkpoint that a training run may be overwriting."""
    from skymorph.exporter import export_onnx, freeze_checkpoint
    from skymorph.trainer.checkpoint import load_checkpoint

    ckpt, other = _checkpoint(tmp_path, seed=0), _checkpoint(tmp_path, seed=1)
    data = open(other, "rb").read()
    net, _, _ = load_checkpoint(ckpt, data=data)  # the bytes win over the file named
    assert weights_sha256(net) == weights_sha256(_net(seed=1)) != weights_sha256(_net(seed=0))
    _, metadata = freeze_checkpoint(ckpt, data, T, 0)
    assert metadata.extra["checkpoint_sha256"] == hashlib.sha256(data).hexdigest()
    report = export_onnx(ckpt, tmp_path / "m.onnx", samples=T)
    assert report.metadata.extra["checkpoint_sha256"] == hashlib.sha256(open(ckpt, "rb").read()).hexdigest()
    assert report.metadata.weights_sha256 == weights_sha256(_net(seed=0))


def test_tensorrt_export_derives_the_onnx_path_and_keeps_a_file_there_it_was_not_told_to_replace(tmp_path, monkeypatch, capsys):
    ckpt, plan = _checkpoint(tmp_path), str(tmp_path / "m.plan")
    sibling = tmp_path / "m.onnx"
    sibling.write_bytes(b"someone else's model")
    err = _cli_error(capsys, ["export", ckpt, "--samples", str(T), "--format", "tensorrt", "--out", plan])
    assert f"also writes its ONNX model to {str(sibling)!r}, which exists" in err and "--overwrite" in err
    assert sibling.read_bytes() == b"someone else's model"

    built = []
    monkeypatch.setattr(_export, "require_tensorrt", lambda: None)  # no GPU needed: the plan build is recorded
    monkeypatch.setattr(_export, "build_tensorrt", lambda onnx_path, out, **kw: built.append((onnx_path, out, kw)) or "plan report")
    onnx_report, plan_report = export_checkpoint(ckpt, plan, T, 3, format="tensorrt", fp16=True, overwrite=True, opt_batch=4, max_batch=8)
    assert plan_report == "plan report" and onnx_report.path == str(sibling) and onnx_report.metadata.seed == 3
    assert load_engine(str(sibling)).metadata == onnx_report.metadata
    assert built == [(str(sibling), plan, {"fp16": True, "opt_batch": 4, "max_batch": 8, "timing_cache": None, "storage_options": None})]
    named = str(tmp_path / "named.onnx")
    assert main(["export", ckpt, "--samples", str(T), "--format", "tensorrt", "--out", plan, "--onnx-out", named]) == 0
    assert built[-1][0] == named and "named.onnx" in capsys.readouterr().out


def test_export_checkpoint_refuses_flags_of_the_other_format_before_reading(tmp_path):
    missing = str(tmp_path / "none.ckpt")
    for kwargs, message in (
        ({"format": "tflite"}, "format must be one of onnx, tensorrt, got 'tflite'"),
        ({"fp16": True}, "--fp16 applies to --format tensorrt only"),
        ({"onnx_out": "x.onnx"}, "--onnx-out applies to --format tensorrt only"),
        ({"opt_batch": 64}, "--opt-batch applies to --format tensorrt only"),  # these three were ignored without a word
        ({"max_batch": 64}, "--max-batch applies to --format tensorrt only"),
        ({"timing_cache": "t.cache"}, "--timing-cache applies to --format tensorrt only"),
        ({"format": "tensorrt", "onnx_out": str(tmp_path / "m.plan")}, "give the ONNX model its own path"),
        ({"format": "tensorrt", "opt_batch": 16, "max_batch": 8}, "need 1 <= --opt-batch <= --max-batch, got 16 and 8"),
    ):
        out = str(tmp_path / ("m.plan" if kwargs.get("format") == "tensorrt" else "m.onnx"))
        with pytest.raises(InputError, match=re.escape(message)):
            export_checkpoint(missing, out, T, **kwargs)
    for suffix in (".plan", ".engine", ".PLAN"):  # ONNX under a plan's name: `run` would look for a plan there (any case)
        with pytest.raises(InputError, match=re.escape("names a TensorRT plan; add --format tensorrt to build one, or end it in .onnx")):
            export_checkpoint(missing, str(tmp_path / f"m{suffix}"), T)
    for name in ("m2.onx", "model"):  # accepted, and then `run` needed --backend to know it
        with pytest.raises(InputError, match=re.escape("end the ONNX model's name in .onnx, by which `skymorph run` knows it")):
            export_checkpoint(missing, str(tmp_path / name), T)
    with pytest.raises(InputError, match=r"--onnx-out .*m.onx.: end the ONNX model.s name in .onnx"):
        export_checkpoint(missing, str(tmp_path / "m.plan"), T, format="tensorrt", onnx_out=str(tmp_path / "m.onx"))
    assert list(tmp_path.iterdir()) == []


def test_onnx_out_of_an_onnx_export_is_refused_before_its_bucket_is_asked(tmp_path, capsys):
    """The command line checked that --onnx-out's S3 bucket was writable first (a request to AWS, and
    "no usable S3 credentials"), not that the flag does not apply."""
    assert main(["export", str(tmp_path / "m.ckpt"), "--out", str(tmp_path / "m.onnx"), "--onnx-out", "s3://nobucket/y.onnx"]) == 2
    assert capsys.readouterr().err.startswith("skymorph: error: --onnx-out applies to --format tensorrt only")


def test_no_output_may_replace_the_checkpoint_being_exported(tmp_path, monkeypatch, capsys):
    ckpt = _checkpoint(tmp_path)
    before = open(ckpt, "rb").read()
    (tmp_path / "link.ckpt").symlink_to(ckpt)
    monkeypatch.chdir(tmp_path)
    for out in (ckpt, "m0.ckpt", str(tmp_path / "sub" / ".." / "m0.ckpt"), str(tmp_path / "link.ckpt")):
        with pytest.raises(InputError, match=re.escape(f"--out {out!r} is the checkpoint being exported")):
            export_checkpoint(ckpt, out, T)
    with pytest.raises(InputError, match=re.escape("--onnx-out 'm0.ckpt' is the checkpoint being exported")):
        export_checkpoint(ckpt, str(tmp_path / "m.plan"), T, format="tensorrt", onnx_out="m0.ckpt")
    with pytest.raises(InputError, match="writes its ONNX model to .* the checkpoint being exported"):
        export_checkpoint(str(tmp_path / "m.onnx"), str(tmp_path / "m.plan"), T, format="tensorrt")
    err = _cli_error(capsys, ["export", ckpt, "--samples", str(T), "--out", ckpt])
    assert "is the checkpoint being exported" in err
    # the timing cache, written after the build, replaced the checkpoint or the ONNX model just written
    plan = str(tmp_path / "m.plan")
    for cache, what in ((ckpt, "the checkpoint being exported"), ("link.ckpt", "the checkpoint being exported"),
                        (plan, "--out"), (str(tmp_path / "m.onnx"), "the ONNX model's path")):
        with pytest.raises(InputError, match=re.escape(f"--timing-cache {cache!r} is {what}; give the cache a file of its own")):
            export_checkpoint(ckpt, plan, T, format="tensorrt", timing_cache=cache)
    from skymorph.exporter import build_tensorrt

    with pytest.raises(InputError, match=re.escape(f"{plan!r} is both the timing cache and the plan; give each a file of its own")):
        build_tensorrt(str(tmp_path / "m.onnx"), plan, timing_cache=plan)
    assert open(ckpt, "rb").read() == before and sorted(os.listdir(tmp_path)) == ["link.ckpt", "m0.ckpt"]


def test_opset_and_sample_count_outside_what_can_be_exported_are_refused_before_reading(tmp_path, capsys):
    newest = onnx.defs.onnx_opset_version()
    missing = str(tmp_path / "none.ckpt")
    for kwargs, message in (
        ({"opset": 99}, f"--opset must be an integer from 18 (the dynamo exporter's minimum) to {newest}"),
        ({"opset": 17}, "got 17"),
        ({"samples": 10**8}, "--samples (MC-dropout samples T) must be an integer from 1 to 1000, got 100000000"),
    ):
        with pytest.raises(InputError, match=re.escape(message)):
            export_checkpoint(missing, str(tmp_path / "m.onnx"), **{"samples": T, **kwargs})
    err = _cli_error(capsys, ["export", missing, "--opset", "99", "--out", str(tmp_path / "m.onnx")])
    assert "got 99" in err
    assert list(tmp_path.iterdir()) == []


def test_the_newest_opset_is_exported_as_asked_or_refused_in_one_line(tmp_path, capfd):
    """The onnx package may define an opset that onnxruntime cannot load yet: then a ModelError naming the
    highest opset it can, and no file; else a model of exactly that opset. Either way nothing on stderr."""
    newest = onnx.defs.onnx_opset_version()
    loadable = _highest_opset_onnxruntime_loads(newest)
    out = tmp_path / "m.onnx"
    if loadable < newest:
        with pytest.raises(ModelError, match=rf"loads models up to opset {loadable}, not the exported opset {newest}, so the "
                                             rf"export cannot be checked and was not written; use --opset {loadable} or lower$"):
            export_onnx_model(_net(), out, samples=T, opset=newest)
        assert not out.exists()
    else:
        report = export_onnx_model(_net(), out, samples=T, opset=newest)
        assert report.opset == newest and {o.domain: o.version for o in onnx.load(str(out)).opset_import}[""] == newest
    assert "Traceback" not in capfd.readouterr().err


def _highest_opset_onnxruntime_loads(opset: int) -> int:
    """``opset`` if onnxruntime loads a one-node model of it, else the highest it says it loads."""
    from onnx import TensorProto, helper

    value = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [value],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    # IR version 10: what every onnxruntime in use loads, so that only the opset is put to the test
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    try:
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime's own error types
        said = re.search(r"is till opset (\d+)", str(err))
        if said is None:  # another refusal than the opset's: show it
            raise
        return int(said.group(1))
    return opset


def test_an_export_does_not_replace_a_model_written_meanwhile(tmp_path):
    """The output is checked before the export and written ~10 s later: of two exports started together
    to one path, both said 'wrote', and the model left was not the one the second reported."""
    out = tmp_path / "m.onnx"
    out.write_bytes(b"another export's model")
    with pytest.raises(InputError, match=r"--out '.*m.onnx' was written by another process during this export; pass --overwrite"):
        export_onnx_model(_net(), out, samples=T, seed=0, overwrite=False)
    assert out.read_bytes() == b"another export's model" and os.listdir(tmp_path) == ["m.onnx"]
    report = export_onnx_model(_net(), out, samples=T, seed=0)
    assert hashlib.sha256(out.read_bytes()).hexdigest() == report.model_sha256
