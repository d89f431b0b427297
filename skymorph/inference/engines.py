"""Engines: an exported model loaded once, then called on uint8 image batches.

``engine = load_engine("model.onnx")``; ``engine(images)`` maps uint8 (B, C, H, W) to float32 (B, T, A):
T MC-dropout samples of A answers (probabilities softmaxed within each question, or Dirichlet
concentrations, as ``engine.metadata.likelihood`` says). Backends:

``onnxruntime``
    an ``.onnx`` file from ``skymorph export``; execution providers CUDA (in full float32, TF32 off),
    then CPU, whichever the installed onnxruntime has.
``tensorrt``
    a ``.plan`` / ``.engine`` file and its ``.json`` sidecar from ``skymorph export --format tensorrt``;
    the native runtime (:mod:`skymorph.inference.tensorrt_engine`).
``torch``
    the reference: a checkpoint, frozen with ``samples`` masks from ``seed`` exactly as the exporter does;
    CUDA when present. Only this backend imports torch (and skymorph.exporter).

:func:`read_model_info` gives what a run's driver needs (metadata, sha256, whether the model runs on a
GPU) without building an engine.

Every refusal (unreadable file, no skymorph metadata, another schema, wrong images) is a one-line
:class:`~skymorph.errors.ModelError` naming the model.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np

from skymorph.errors import InputError, MissingDependencyError, ModelError, did_you_mean, first_line
from skymorph.model_metadata import ModelMetadata
from skymorph.schema import get_schema
from skymorph.storage import exists, is_remote, read_bytes

__all__ = ["Engine", "load_engine", "ModelInfo", "read_model_info", "BACKENDS", "ORT_PROVIDERS"]

BACKENDS = ("auto", "onnxruntime", "tensorrt", "torch")
ORT_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")
"""onnxruntime execution providers in order of preference; those the install lacks are skipped. Not its
TensorRT provider: it builds an engine in every worker's session, again for each new batch size, with
TF32 on by default (rows of one catalog computed at another precision than its CPU workers'), and needs
the TensorRT major its build linked. TensorRT runs as a plan of its own (``skymorph export --format
tensorrt``, the ``tensorrt`` backend)."""
_SUFFIX_BACKEND = {".onnx": "onnxruntime", ".plan": "tensorrt", ".engine": "tensorrt", ".ckpt": "torch", ".pt": "torch"}
_WARMUP_BATCH = 8
_TORCH_SAMPLES, _TORCH_SEED = 30, 0
"""T and seed with which the torch backend freezes a checkpoint unless told otherwise."""


class Engine:
    """A loaded model. ``__call__(images)`` checks the batch and hands it to the backend's ``_run``."""

    backend: str = ""

    def __init__(self, url: str, metadata: ModelMetadata, model_sha256: str, needs_gpu: bool) -> None:
        self.url = url
        self.metadata = metadata
        self.model_sha256 = model_sha256
        self.needs_gpu = needs_gpu

    @property
    def output_shape(self) -> tuple[int, int]:
        """(T, A) of every galaxy's output."""
        return (self.metadata.samples, self.metadata.schema.n_answers)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """uint8 images (B, C, H, W) -> float32 (B, T, A)."""
        expected = self.metadata.input.shape
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != expected:
            got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, np.ndarray) else type(images).__name__
            raise ModelError(f"model {self.url!r} takes uint8 images (B, {', '.join(map(str, expected))}), got {got}")
        if images.shape[0] == 0:
            return np.empty((0, *self.output_shape), dtype=np.float32)
        return self._run(np.ascontiguousarray(images))

    def _run(self, images: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        """Free what the backend holds outside Python's reach (GPU buffers, streams); nothing by default."""

    def __repr__(self) -> str:
        m = self.metadata
        return (
            f"<{type(self).__name__} {self.url!r} backend={self.backend} {m.arch} {m.likelihood} "
            f"schema={m.schema.name} T={m.samples} seed={m.seed} sha256={self.model_sha256[:12]}>"
        )


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as err:
        raise MissingDependencyError("onnxruntime is not installed: pip install onnxruntime (or onnxruntime-gpu, skymorph's gpu extra)") from err
    return onnxruntime


def _ort_session(url: str, data: bytes, providers: list[str], threads: int | None, optimize: bool = True):
    """An onnxruntime session on ``data``; a :class:`ModelError` naming ``url`` if the file is not a model."""
    ort = _import_onnxruntime()
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

    options = ort.SessionOptions()
    level = ort.GraphOptimizationLevel
    options.graph_optimization_level = level.ORT_ENABLE_ALL if optimize else level.ORT_DISABLE_ALL
    options.inter_op_num_threads = 1
    if threads:
        options.intra_op_num_threads = threads
    # onnxruntime's errors share no base class but Exception; these are the ones a bad file raises.
    load_errors = (ort_errors.InvalidProtobuf, ort_errors.InvalidGraph, ort_errors.Fail, ort_errors.InvalidArgument)
    try:
        return ort.InferenceSession(data, options, providers=_with_options(providers))
    except ort_errors.NotImplemented as err:  # an operator at a version or type this build has no kernel for
        raise ModelError(f"{url!r} has an operator onnxruntime {ort.__version__} cannot run ({first_line(_ort_reason(err), 160)}); "
                         "upgrade onnxruntime where the model runs, or export it with a lower --opset") from err
    except load_errors as err:
        if data[:4] == b"PK\x03\x04":  # a zip: what torch.save writes (train --out takes any name)
            raise ModelError(f"{url!r} is a PyTorch checkpoint (a zip file), not an ONNX model; export it first: "
                             "`skymorph export CHECKPOINT --out model.onnx`") from err
        reason = _ort_reason(err)
        newer = re.search(r"Unsupported model IR version: \d+, max supported IR version: \d+", reason) or re.search(
            r"Opset (\d+) is under development.* support for domain (\S+) is till opset (\d+)", reason)
        if newer:  # re-exporting as the message below says would not help: the reader is too old
            what = newer.group(0) if newer.lastindex is None else (
                f"opset {newer.group(1)} of {newer.group(2)}, which this onnxruntime supports up to {newer.group(3).rstrip('.')}")
            raise ModelError(f"{url!r} needs a newer onnxruntime than {ort.__version__} ({what}); upgrade onnxruntime "
                             "where the model runs, or export it with a lower --opset") from err
        raise ModelError(
            f"{url!r} is not a readable ONNX model (truncated or corrupt: {first_line(reason, 160)}); "
            "re-export it with `skymorph export`"
        ) from err


def _ort_reason(err: Exception) -> str:
    """onnxruntime's message without its ``[ONNXRuntimeError] : 1 : FAIL :`` and C++ source location and
    signature, which filled the one line the reason came after."""
    return re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : (/\S+:\d+ [^()]*\([^()]*\) )?", "", str(err).strip())


def _ort_gpu_providers() -> list[str]:
    """The GPU execution providers of the installed onnxruntime, in order of preference."""
    return [p for p in ORT_PROVIDERS[:-1] if p in _import_onnxruntime().get_available_providers()]


_PROVIDER_OPTIONS = {"CUDAExecutionProvider": {"use_tf32": "0"}}
"""onnxruntime's CUDA provider computes MatMul and Conv in TF32 by default (10-bit mantissas on Ampere and
newer): rows a GPU worker wrote would differ from its CPU neighbours' in one catalog."""


def _with_options(providers: list[str]) -> list:
    """``providers`` as onnxruntime takes them, each with its :data:`_PROVIDER_OPTIONS`."""
    return [(p, _PROVIDER_OPTIONS[p]) if p in _PROVIDER_OPTIONS else p for p in providers]


def _onnx_signature(url: str, session, metadata: ModelMetadata) -> tuple[str, str]:
    """``(input name, output name)`` after checking the graph's shapes against ``metadata``."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    c, h, w = metadata.input.shape
    t, a = metadata.samples, metadata.schema.n_answers
    if len(inputs) != 1 or inputs[0].type != "tensor(uint8)" or list(inputs[0].shape[1:]) != [c, h, w]:
        got = [(i.name, i.type, i.shape) for i in inputs]
        raise ModelError(f"{url!r} should take one uint8 input (B, {c}, {h}, {w}) as its metadata says, has {got}")
    if len(outputs) != 1 or outputs[0].type != "tensor(float)" or list(outputs[0].shape[1:]) != [t, a]:
        got = [(o.name, o.type, o.shape) for o in outputs]
        raise ModelError(f"{url!r} should give one float32 output (B, {t}, {a}) as its metadata says, has {got}")
    return inputs[0].name, outputs[0].name


class OnnxRuntimeEngine(Engine):
    """An exported ONNX model in an onnxruntime session (read from bytes, so ``s3://`` works too)."""

    backend = "onnxruntime"

    def __init__(self, url: str, data: bytes, threads: int | None = None) -> None:
        providers = [*_ort_gpu_providers(), "CPUExecutionProvider"]
        self.session = _ort_session(url, data, providers, threads)
        metadata = ModelMetadata.from_props(self.session.get_modelmeta().custom_metadata_map, source=repr(url))
        super().__init__(url, metadata, hashlib.sha256(data).hexdigest(), self.session.get_providers()[0] != "CPUExecutionProvider")
        self._input_name, self._output_name = _onnx_signature(url, self.session, metadata)
        self(np.zeros((_WARMUP_BATCH, *metadata.input.shape), dtype=np.uint8))

    def _run(self, images: np.ndarray) -> np.ndarray:
        return self.session.run([self._output_name], {self._input_name: images})[0]


class TorchEngine(Engine):
    """The reference: a checkpoint frozen with ``samples`` masks from ``seed`` (as the exporter does).

    Unlike onnxruntime's, its numbers can differ in the last bits (float32 rounding, ~1e-7 relative)
    with the batch a galaxy is in and its place there: torch picks kernels by shape. A catalog for the
    record is made from the exported ONNX model. On a GPU, TF32 is off, as on the CUDA provider."""

    backend = "torch"

    def __init__(
        self, url: str, data: bytes, samples: int, seed: int, threads: int | None = None, device=None
    ) -> None:
        import torch

        from skymorph.exporter import freeze_checkpoint

        if threads:
            torch.set_num_threads(threads)  # process-wide: an engine is loaded once per worker process
        frozen, metadata = freeze_checkpoint(url, data, samples, seed)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cuda":  # process-wide, as above; TF32 convolutions round to 10-bit mantissas
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        self.model = frozen.to(self.device)
        super().__init__(url, metadata, hashlib.sha256(data).hexdigest(), self.device.type == "cuda")

    def _run(self, images: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.model(torch.from_numpy(images).to(self.device)).float().cpu().numpy()


def _backend_for(url: str, backend: str, storage_options: dict | None = None) -> str:
    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}." + did_you_mean(backend, BACKENDS))
    if backend != "auto":
        return backend
    suffix = PurePosixPath(str(url).split("?", 1)[0]).suffix.lower()
    if suffix not in _SUFFIX_BACKEND:
        # a mistyped local path: say that, not what its suffix is (on S3, exists() answers False for an
        # endpoint that is down too, so the suffix message stands there)
        if not is_remote(str(url)) and not exists(str(url), storage_options):
            raise InputError(f"model {url!r} does not exist; check the path (an exported model ends in .onnx, .plan or .engine)")
        raise InputError(
            f"cannot tell the backend of {url!r} from its suffix (.onnx, .plan, .engine, .ckpt, .pt); give the backend explicitly (--backend, or backend= in Python)"
        )
    return _SUFFIX_BACKEND[suffix]


def _check_schema(engine: Engine, expect_schema) -> None:
    expected = get_schema(expect_schema)
    got = engine.metadata.schema
    if not got.same_tree(expected):
        raise ModelError(
            f"model {engine.url!r} predicts schema {got.name!r} ({got.n_answers} answers), not {expected.name!r} "
            f"({expected.n_answers} answers); use a model trained on {expected.name!r}"
        )


def load_engine(
    model_url: str,
    backend: str = "auto",
    threads: int | None = None,
    expect_schema=None,
    storage_options: dict | None = None,
    *,
    samples: int = _TORCH_SAMPLES,
    seed: int = _TORCH_SEED,
    device: str | None = None,
) -> Engine:
    """Load the model at ``model_url`` (local path or ``s3://``) into an :class:`Engine`.

    ``backend="auto"`` picks by suffix: ``.onnx`` onnxruntime, ``.plan``/``.engine`` tensorrt, ``.ckpt``
    torch. ``threads``: intra-op CPU threads (default: the runtime's own choice). ``expect_schema``
    (name, JSON path or Schema) refuses a model of another decision tree. ``samples``, ``seed`` and
    ``device`` apply to the torch backend only (an exported model carries its own T and seed).
    """
    backend = _backend_for(model_url, backend, storage_options)
    if threads is not None and threads < 1:
        raise InputError(f"threads must be at least 1, got {threads}")
    data = read_bytes(str(model_url), storage_options)
    if backend == "onnxruntime":
        engine: Engine = OnnxRuntimeEngine(str(model_url), data, threads)
    elif backend == "tensorrt":
        from skymorph.inference.tensorrt_engine import load_plan

        engine = load_plan(str(model_url), data, storage_options)
    else:
        engine = TorchEngine(str(model_url), data, samples, seed, threads, device)
    if expect_schema is not None:
        _check_schema(engine, expect_schema)
    return engine


@dataclass(frozen=True)
class ModelInfo:
    """What the driver of a run needs of a model (see :func:`read_model_info`): its metadata, the sha256
    of the file, and whether it runs on a GPU (a TensorRT plan always; an ONNX model where onnxruntime's
    CUDA provider finds a GPU; a checkpoint where torch sees CUDA)."""

    url: str
    backend: str
    metadata: ModelMetadata
    model_sha256: str
    needs_gpu: bool


def read_model_info(model_url: str, backend: str = "auto", storage_options: dict | None = None) -> ModelInfo:
    """The :class:`ModelInfo` of the model at ``model_url``, checked as far as this machine can.

    An ONNX model is opened in an unoptimised CPU-only session (metadata and signature, no warm-up)
    and, where onnxruntime has CUDA, once more on CUDA to see whether there is a GPU; a plan is judged
    by its sidecar alone, so no TensorRT or GPU is needed here; a checkpoint is frozen on the CPU with the defaults of :func:`load_engine`, because its
    metadata (the digests of weights and masks) only exists once it is.
    """
    backend = _backend_for(model_url, backend, storage_options)
    url = str(model_url)
    data = read_bytes(url, storage_options)
    digest = hashlib.sha256(data).hexdigest()
    if backend == "onnxruntime":
        session = _ort_session(url, data, ["CPUExecutionProvider"], threads=1, optimize=False)
        metadata = ModelMetadata.from_props(session.get_modelmeta().custom_metadata_map, source=repr(url))
        _onnx_signature(url, session, metadata)
        # a session on CUDA falls back to the CPU on a machine without a GPU (onnxruntime-gpu on a CPU
        # node): whether it did is the answer
        needs_gpu = "CUDAExecutionProvider" in _ort_gpu_providers() and "CUDAExecutionProvider" in _ort_session(
            url, data, ["CUDAExecutionProvider", "CPUExecutionProvider"], threads=1, optimize=False
        ).get_providers()
    elif backend == "tensorrt":
        from skymorph.inference.tensorrt_engine import read_sidecar

        metadata, needs_gpu = read_sidecar(url, digest, storage_options).metadata, True
    else:
        import torch

        metadata = TorchEngine(url, data, _TORCH_SAMPLES, _TORCH_SEED, device="cpu").metadata
        needs_gpu = torch.cuda.is_available()
    return ModelInfo(url=url, backend=backend, metadata=metadata, model_sha256=digest, needs_gpu=needs_gpu)
