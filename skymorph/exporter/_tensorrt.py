"""Exported ONNX -> TensorRT plan + sidecar JSON, checked against onnxruntime on the same batch.

Needs an NVIDIA GPU, ``tensorrt`` and ``cuda-python`` (skymorph's ``tensorrt`` extra), all
imported lazily. One optimisation profile covers batches 1..``max_batch`` (tuned for ``opt_batch``).

fp16: TensorRT 10 lowers precision per layer when ``BuilderFlag.FP16`` is set. TensorRT 11 removed
that flag: networks are strongly typed, so the ONNX graph itself is rewritten to fp16 first
(:func:`skymorph.exporter._fp16.to_fp16`, keeping the uint8 input and float32 output) and the network
is created with ``STRONGLY_TYPED``. The version is detected by the flag's presence, not by number.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from skymorph.errors import InputError, ModelError
from skymorph.exporter._onnx import relative_difference
from skymorph.inference.tensorrt_engine import (
    PlanSidecar,
    TensorRTEngine,
    compute_capability,
    import_tensorrt,
    sidecar_url,
)
from skymorph.model_metadata import ModelMetadata
from skymorph.storage import atomic_write_bytes, atomic_write_text, exists, read_bytes, same_location

__all__ = ["TensorRTReport", "build_tensorrt", "require_tensorrt"]

TOLERANCE_FP32 = 1e-3
"""Largest accepted |TensorRT - onnxruntime| / (1 + |onnxruntime|) for an fp32 plan (TF32 is disabled)."""
TOLERANCE_FP16 = 3e-2
"""The same for an fp16 plan: half precision keeps about 3 significant digits."""


@dataclass(frozen=True)
class TensorRTReport:
    """What :func:`build_tensorrt` wrote and how closely the plan matches onnxruntime."""

    path: str
    sidecar_path: str
    sidecar: PlanSidecar
    size_bytes: int
    max_rel_diff: float
    check_batch: int

    def __str__(self) -> str:
        s = self.sidecar
        return (
            f"wrote {self.path} ({self.size_bytes / 1e6:.1f} MB, {'fp16' if s.fp16 else 'fp32'}, TensorRT "
            f"{s.tensorrt_version}, compute capability {s.compute_capability}, batch {s.min_batch}..{s.max_batch}) "
            f"and {self.sidecar_path}; TensorRT vs onnxruntime on {self.check_batch} images: max rel diff {self.max_rel_diff:.2e}"
        )


def require_tensorrt() -> None:
    """An error now, before a long export, unless a plan can be built here: ``tensorrt`` and cuda-python
    import (:class:`MissingDependencyError`) and CUDA device 0 answers (:class:`ModelError`), whose compute
    capability the plan is built for. A TensorRT container without cuda-python, or a login node without
    a GPU, failed only after the ONNX export and the plan's build."""
    import_tensorrt()
    compute_capability()


def _onnx_metadata(model_bytes: bytes, source: str) -> ModelMetadata:
    import onnx
    from google.protobuf.message import DecodeError

    try:
        proto = onnx.load_from_string(model_bytes)
    except DecodeError as err:
        raise ModelError(f"{source} is not a readable ONNX model (truncated or corrupt); re-export it") from err
    return ModelMetadata.from_props({p.key: p.value for p in proto.metadata_props}, source=source)


def _build_plan(trt, model_bytes: bytes, spec_shape, fp16: bool, opt_batch: int, max_batch: int, workspace_gib: float, cache: bytes):
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strongly_typed = fp16 and not hasattr(trt.BuilderFlag, "FP16")
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if strongly_typed:
        import onnx

        from skymorph.exporter._fp16 import to_fp16

        model_bytes = to_fp16(onnx.load_from_string(model_bytes)).SerializeToString()
    if not parser.parse(model_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelError(f"TensorRT's ONNX parser refused the model: {errors[:300]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * 2**30))
    if hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # fp32 means fp32: the plan is checked against onnxruntime
    if fp16 and not strongly_typed:
        config.set_flag(trt.BuilderFlag.FP16)
    timing_cache = config.create_timing_cache(cache)
    config.set_timing_cache(timing_cache, ignore_mismatch=False)
    profile = builder.create_optimization_profile()
    name = network.get_input(0).name
    profile.set_shape(name, (1, *spec_shape), (opt_batch, *spec_shape), (max_batch, *spec_shape))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ModelError("TensorRT failed to build the plan (see its log above)")
    return bytes(plan), bytes(config.get_timing_cache().serialize()), name, network.get_output(0).name


def build_tensorrt(
    onnx_path: str,
    out: str,
    fp16: bool = False,
    *,
    opt_batch: int = 256,
    max_batch: int = 1024,
    workspace_gib: float = 4.0,
    timing_cache: str | None = None,
    check_batch: int = 8,
    storage_options: dict | None = None,
) -> TensorRTReport:
    """Build a TensorRT plan at ``out`` (and ``out + ".json"``) from the exported ONNX at ``onnx_path``.

    ``timing_cache``: a file of kernel timings read if present and rewritten after the build (later
    builds on the same GPU take seconds). The plan is run on ``check_batch`` random images and compared
    with onnxruntime (CPU) on the same images; above the tolerance (1e-3 fp32, 3e-2 fp16, relative to
    1 + |value|) it is a :class:`ModelError` and nothing is written.
    """
    if not 1 <= opt_batch <= max_batch:
        raise InputError(f"need 1 <= --opt-batch <= --max-batch, got {opt_batch} and {max_batch}")
    plan, model, cache = (out, "the plan"), (onnx_path, "the ONNX model"), (timing_cache, "the timing cache")
    for (path, what), (other, other_what) in ((plan, model), (cache, model), (cache, plan)):
        if path and same_location(path, other):  # one would be written over the other
            raise InputError(f"{str(path)!r} is both {what} and {other_what}; give each a file of its own")
    model_bytes = read_bytes(str(onnx_path), storage_options)
    metadata = _onnx_metadata(model_bytes, repr(str(onnx_path)))  # its seed, from which the check batch is drawn, checked
    trt = import_tensorrt()
    cache = read_bytes(timing_cache, storage_options) if timing_cache and exists(timing_cache, storage_options) else b""
    plan, new_cache, input_name, output_name = _build_plan(
        trt, model_bytes, metadata.input.shape, fp16, opt_batch, max_batch, workspace_gib, cache
    )
    if timing_cache:
        atomic_write_bytes(timing_cache, new_cache, storage_options)
    sidecar = PlanSidecar(
        metadata=metadata,
        tensorrt_version=trt.__version__,
        compute_capability=compute_capability(),
        input_name=input_name,
        output_name=output_name,
        plan_sha256=hashlib.sha256(plan).hexdigest(),
        fp16=fp16,
        min_batch=1,
        opt_batch=opt_batch,
        max_batch=max_batch,
    )
    diff = _check_plan(plan, sidecar, model_bytes, str(out), min(check_batch, max_batch))
    tolerance = TOLERANCE_FP16 if fp16 else TOLERANCE_FP32
    if not diff <= tolerance:
        raise ModelError(f"the TensorRT plan differs from onnxruntime by {diff:.2e} (> {tolerance:g}); not writing {out!r}")
    atomic_write_bytes(str(out), plan, storage_options)
    atomic_write_text(sidecar_url(str(out)), sidecar.to_json(), storage_options)
    return TensorRTReport(str(out), sidecar_url(str(out)), sidecar, len(plan), diff, min(check_batch, max_batch))


def _check_plan(plan: bytes, sidecar: PlanSidecar, model_bytes: bytes, url: str, batch: int) -> float:
    """max |TensorRT - onnxruntime| / (1 + |onnxruntime|) on one random uint8 batch."""
    import onnxruntime as ort

    images = np.random.default_rng(sidecar.metadata.seed).integers(0, 256, (batch, *sidecar.metadata.input.shape), dtype=np.uint8)
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    expected = session.run(None, {sidecar.input_name: images})[0].astype(np.float64)
    engine = TensorRTEngine(url, plan, sidecar, sidecar.plan_sha256)
    try:
        got = engine(images)
    finally:
        engine.close()
    return relative_difference(got, expected)
