"""Checkpoint -> ONNX with T frozen dropout masks, DESIGN's metadata, and a self-check.

The graph: ``images`` uint8 (B, C, H, W), B dynamic -> preprocess -> trunk (once) -> features (B, F)
x masks (T, F) -> head linear -> output activation -> ``samples`` float32 (B, T, A).

It is exported with ``torch.onnx.export(dynamo=True)``: the maintained exporter (the TorchScript one
warns that it will be removed), which folds batch norm into the convolutions, leaves no Identity
nodes, and gives the same bytes for the same model, T and seed (tested). The masks are buffers, so
they become initializers (constants): ONNX Runtime never sees a Dropout node it could optimise away.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import warnings
from dataclasses import dataclass

import numpy as np

from skymorph.errors import InputError, ModelError, first_line
from skymorph.model_metadata import ModelMetadata
from skymorph.storage import atomic_write_bytes, check_new, create_exclusive_bytes, read_bytes, same_location

__all__ = [
    "ExportReport", "export_onnx", "export_onnx_model", "check_arguments", "INPUT_NAME", "OUTPUT_NAME", "DEFAULT_OPSET",
    "MIN_OPSET",
]

INPUT_NAME = "images"
OUTPUT_NAME = "samples"
DEFAULT_OPSET = 18
MIN_OPSET = 18
TOLERANCE = 1e-4
"""Largest |onnxruntime - torch| / (1 + |torch|) accepted by the self-check (float32 outputs): relative, as the
TensorRT check's, since Dirichlet concentrations reach 100, where 1e-4 absolute is a dozen float32 steps."""


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_onnx` wrote: where, with which metadata, and how well it matches PyTorch."""

    path: str
    metadata: ModelMetadata
    model_sha256: str
    size_bytes: int
    max_abs_diff: float
    max_relative_diff: float  # |diff| / (1 + |torch|), which TOLERANCE bounds
    check_batch: int
    opset: int

    def __str__(self) -> str:
        m = self.metadata
        return (
            f"wrote {self.path} ({self.size_bytes / 1e6:.1f} MB, sha256 {self.model_sha256[:12]}): {m.arch} "
            f"{m.likelihood}, schema {m.schema.name} ({m.schema.n_answers} answers), T={m.samples}, seed={m.seed}, "
            f"opset {self.opset}; onnxruntime vs torch on {self.check_batch} images: max |diff| {self.max_abs_diff:.2e} "
            f"({self.max_relative_diff:.2e} relative to 1 + |torch|)"
        )


@contextlib.contextmanager
def _quiet_exporter():
    """Silence the exporter's progress prints and warnings about optional packages (torchvision)."""
    # onnxscript's version converter logs a warning with a traceback when it cannot reach an opset; the
    # opset of the result is checked instead (_to_onnx_bytes)
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with contextlib.redirect_stdout(None):
                yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _to_onnx_bytes(frozen, metadata: ModelMetadata, opset: int) -> bytes:
    import onnx
    import torch

    spec = metadata.input
    example = torch.zeros((2, *spec.shape), dtype=torch.uint8)
    with _quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(
            frozen,
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes={"images": {0: torch.export.Dim("batch")}},
            optimize=True,
            verbose=False,
        )
    proto = program.model_proto
    got = {entry.domain: entry.version for entry in proto.opset_import}.get("", None)
    if got != opset:
        raise ModelError(f"the exporter could not convert the model to opset {opset} (it gave opset {got}); use --opset {DEFAULT_OPSET}")
    proto.producer_name = "skymorph"
    proto.producer_version = metadata.version
    proto.doc_string = (
        f"skymorph {metadata.arch} ({metadata.likelihood}) with {metadata.samples} frozen MC-dropout masks "
        f"(seed {metadata.seed}): images uint8 (B, C, H, W) -> samples (B, T, A)"
    )
    del proto.metadata_props[:]
    for key, value in sorted(metadata.to_props().items()):
        proto.metadata_props.add(key=key, value=value)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as err:
        raise ModelError(f"the exported graph fails onnx.checker: {first_line(err)}") from err
    return proto.SerializeToString()


def check_arguments(samples: int, seed: int, opset: int) -> None:
    """One-line :class:`InputError` for a T, seed or opset no export can use (checked before any reading).

    T in 1..:data:`~skymorph.model_metadata.MAX_SAMPLES`; the seed in [0, 2**64), which the masks' torch
    generator and the self-check's numpy one both take (:func:`~skymorph.seeds.check_seed`); the
    opset from the dynamo exporter's minimum, 18, to the newest the installed onnx package defines (the
    exporter cannot convert to a higher one and would leave the model at 18).
    """
    import onnx

    from skymorph.model_metadata import check_samples
    from skymorph.seeds import check_seed

    check_samples(samples)
    check_seed(seed)
    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
        raise InputError(
            f"--opset must be an integer from {MIN_OPSET} (the dynamo exporter's minimum) to {newest} (the newest of "
            f"onnx {onnx.__version__}), got {opset!r}; the default is {DEFAULT_OPSET}"
        )


def check_not_input(checkpoint, out, flag: str = "--out") -> None:
    """One-line :class:`InputError` if output ``out`` would overwrite the ``checkpoint`` being exported."""
    if same_location(checkpoint, out):
        raise InputError(
            f"{flag} {str(out)!r} is the checkpoint being exported, which writing there would replace; "
            "give the exported model a path of its own"
        )


def _self_check(frozen, model_bytes: bytes, metadata: ModelMetadata, batch: int, seed: int) -> tuple[float, float]:
    """``(max |onnxruntime - torch|, max |onnxruntime - torch| / (1 + |torch|))`` on a random uint8 batch (of
    another size than the traced one)."""
    import onnx
    import onnxruntime as ort
    import torch

    images = np.random.default_rng(seed).integers(0, 256, (batch, *metadata.input.shape), dtype=np.uint8)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    try:
        session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own Fail / InvalidGraph types
        opset = {entry.domain: entry.version for entry in onnx.load_from_string(model_bytes).opset_import}.get("")
        supported = re.search(r"support for domain ai\.onnx is till opset (\d+)", str(err))
        if supported and opset is not None and opset > int(supported.group(1)):
            raise ModelError(
                f"onnxruntime {ort.__version__} loads models up to opset {supported.group(1)}, not the exported opset "
                f"{opset}, so the export cannot be checked and was not written; use --opset {supported.group(1)} or lower"
            ) from err
        raise ModelError(
            f"onnxruntime {ort.__version__} cannot load the exported model ({first_line(err, 120)}); nothing was "
            "written: report this with the checkpoint"
        ) from err
    got = session.run([OUTPUT_NAME], {INPUT_NAME: images})[0]
    with torch.no_grad():
        expected = frozen(torch.from_numpy(images)).numpy()
    if got.shape != expected.shape:
        raise ModelError(f"the exported graph gives shape {got.shape}, PyTorch {expected.shape}")
    return float(np.max(np.abs(got.astype(np.float64) - expected))), relative_difference(got, expected)


def relative_difference(got: np.ndarray, expected: np.ndarray) -> float:
    """``max |got - expected| / (1 + |expected|)``: how both self-checks (ONNX against PyTorch, TensorRT
    against ONNX) compare outputs that range from probabilities to Dirichlet concentrations of 100."""
    expected = np.asarray(expected, dtype=np.float64)
    return float(np.max(np.abs(np.asarray(got, dtype=np.float64) - expected) / (1 + np.abs(expected))))


def export_onnx_model(
    net,
    out: str,
    samples: int = 30,
    seed: int = 0,
    *,
    opset: int = DEFAULT_OPSET,
    check_batch: int = 3,
    extra: dict | None = None,
    overwrite: bool = True,
    storage_options: dict | None = None,
) -> ExportReport:
    """Export an in-memory :class:`~skymorph.trainer.models.MorphologyNet` with T = ``samples`` frozen
    masks drawn from ``seed`` to ONNX at ``out`` (local path or ``s3://``), written atomically.

    Before writing, onnx.checker validates the graph and ONNX Runtime is compared with the PyTorch
    frozen-mask model on ``check_batch`` random images; a difference above 1e-4 of 1 + |torch| is a
    :class:`ModelError`.
    ``extra`` adds ``skymorph.<key>`` metadata (e.g. the checkpoint's digest and provenance). Without
    ``overwrite``, a file that appeared at ``out`` during the export (another export to the same path) is
    an :class:`InputError`, not replaced.
    """
    from skymorph.exporter._frozen import freeze

    check_arguments(samples, seed, opset)
    if check_batch < 1:
        raise InputError(f"check_batch must be at least 1, got {check_batch}")
    was_training = net.training
    frozen, metadata = freeze(net, samples, seed, extra)
    try:
        model_bytes = _to_onnx_bytes(frozen, metadata, opset)
        diff, relative = _self_check(frozen, model_bytes, metadata, check_batch, seed)
    finally:
        net.train(was_training)
    if not relative <= TOLERANCE:
        raise ModelError(
            f"exported ONNX differs from PyTorch by {relative:.2e} relative to 1 + |torch| (> {TOLERANCE:g}) on random images; "
            f"not writing {out!r}: report this with the checkpoint"
        )
    if overwrite:
        atomic_write_bytes(str(out), model_bytes, storage_options)
    else:
        try:
            create_exclusive_bytes(str(out), model_bytes, storage_options)
        except FileExistsError:
            raise InputError(f"--out {str(out)!r} was written by another process during this export; pass --overwrite to "
                             "replace it, or choose another path") from None
    return ExportReport(
        path=str(out),
        metadata=metadata,
        model_sha256=hashlib.sha256(model_bytes).hexdigest(),
        size_bytes=len(model_bytes),
        max_abs_diff=diff,
        max_relative_diff=relative,
        check_batch=check_batch,
        opset=opset,
    )


def export_onnx(
    checkpoint: str,
    out: str,
    samples: int = 30,
    seed: int = 0,
    *,
    opset: int = DEFAULT_OPSET,
    expect_schema=None,
    overwrite: bool = False,
    storage_options: dict | None = None,
) -> ExportReport:
    """Export the checkpoint at ``checkpoint`` (local or ``s3://``) to ONNX; see :func:`export_onnx_model`.

    The model's metadata also records the checkpoint's sha256 and its training provenance. An ``out``
    that exists is refused unless ``overwrite``: it may be the model a catalog was made with.
    """
    from skymorph.exporter._frozen import checkpoint_extra
    from skymorph.trainer.checkpoint import load_checkpoint

    check_arguments(samples, seed, opset)
    check_not_input(checkpoint, out)
    check_new(str(out), "--out", overwrite, storage_options)
    # read once: one download, and the recorded sha256 is that of the very bytes whose weights are exported
    data = read_bytes(str(checkpoint), storage_options)
    net, meta, _ = load_checkpoint(str(checkpoint), expect_schema=expect_schema, data=data)
    extra = checkpoint_extra(data, meta.provenance)
    del data  # not held through the export: a checkpoint can be large
    return export_onnx_model(net, out, samples, seed, opset=opset, extra=extra, overwrite=overwrite, storage_options=storage_options)
