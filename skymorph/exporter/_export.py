"""Checkpoint -> ONNX model, or -> ONNX model -> TensorRT plan: what ``skymorph export`` does, in one call."""

from __future__ import annotations

from skymorph.errors import InputError
from skymorph.exporter._onnx import DEFAULT_OPSET, ExportReport, check_arguments, check_not_input, export_onnx
from skymorph.exporter._tensorrt import TensorRTReport, build_tensorrt, require_tensorrt
from skymorph.storage import check_new, exists, same_location

__all__ = ["FORMATS", "PLAN_SUFFIXES", "export_checkpoint"]

FORMATS = ("onnx", "tensorrt")
PLAN_SUFFIXES = (".plan", ".engine")


def export_checkpoint(
    checkpoint: str,
    out: str,
    samples: int = 30,
    seed: int = 0,
    *,
    format: str = "onnx",
    opset: int = DEFAULT_OPSET,
    fp16: bool = False,
    onnx_out: str | None = None,
    overwrite: bool = False,
    opt_batch: int | None = None,
    max_batch: int | None = None,
    timing_cache: str | None = None,
    storage_options: dict | None = None,
) -> tuple[ExportReport, TensorRTReport | None]:
    """Export ``checkpoint`` with T = ``samples`` masks drawn from ``seed``: ``(onnx_report, plan_report)``.

    ``format="onnx"``: the ONNX model at ``out`` (:func:`export_onnx`); ``plan_report`` is None.
    ``format="tensorrt"``: ``out`` ends in ``.plan`` or ``.engine``; the ONNX model goes to ``onnx_out``
    (default: ``out`` with the suffix ``.onnx``) and the plan built from it (:func:`build_tensorrt`, fp16
    if ``fp16``, tuned for batches of ``opt_batch`` (default 256) up to ``max_batch`` (default 1024)) to
    ``out``. An output that exists is an :class:`InputError` unless ``overwrite``: it may be
    the model a catalog was made with. No output may be the checkpoint itself.
    Every argument is checked before the checkpoint is read, and TensorRT's presence before the ONNX export.
    """
    if format not in FORMATS:
        raise InputError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    check_arguments(samples, seed, opset)
    if format == "onnx":
        for given, flag in ((fp16, "--fp16"), (onnx_out, "--onnx-out"), (opt_batch is not None, "--opt-batch"),
                            (max_batch is not None, "--max-batch"), (timing_cache, "--timing-cache")):
            if given:  # else ignored without a word
                raise InputError(f"{flag} applies to --format tensorrt only; drop it to write the float32 ONNX model at --out")
        if str(out).lower().endswith(PLAN_SUFFIXES):  # `run` would take it for a plan by its name (any case)
            raise InputError(f"--out {str(out)!r} names a TensorRT plan; add --format tensorrt to build one, or end it in .onnx")
        check_not_input(checkpoint, out)
        if not str(out).lower().endswith(".onnx"):  # `run` picks the engine by the suffix
            raise InputError(f"--out {str(out)!r}: end the ONNX model's name in .onnx, by which `skymorph run` knows it")
        onnx_report = export_onnx(checkpoint, out, samples, seed, opset=opset, overwrite=overwrite, storage_options=storage_options)
        return onnx_report, None
    out = str(out)
    if not out.lower().endswith(PLAN_SUFFIXES):
        raise InputError(f"--out {out!r}: a TensorRT plan needs a .plan or .engine suffix")
    opt_batch = 256 if opt_batch is None else opt_batch
    max_batch = 1024 if max_batch is None else max_batch
    if not 1 <= opt_batch <= max_batch:
        raise InputError(f"need 1 <= --opt-batch <= --max-batch, got {opt_batch} and {max_batch}")
    onnx_url = str(onnx_out) if onnx_out else out.rsplit(".", 1)[0] + ".onnx"
    check_not_input(checkpoint, out)
    if onnx_out:
        check_not_input(checkpoint, onnx_url, "--onnx-out")
    elif same_location(checkpoint, onnx_url):
        raise InputError(
            f"--out {out!r} writes its ONNX model to {onnx_url!r}, the checkpoint being exported; name another path with --onnx-out"
        )
    if same_location(onnx_url, out):
        raise InputError(f"--onnx-out {onnx_url!r} is --out: give the ONNX model its own path")
    if timing_cache:  # the build writes the cache last: over the checkpoint or a model it had just written
        for other, what in ((checkpoint, "the checkpoint being exported"), (out, "--out"), (onnx_url, "the ONNX model's path")):
            if same_location(timing_cache, other):
                raise InputError(f"--timing-cache {str(timing_cache)!r} is {what}; give the cache a file of its own")
    if not onnx_url.lower().endswith(".onnx"):
        raise InputError(f"--onnx-out {onnx_url!r}: end the ONNX model's name in .onnx, by which `skymorph run` knows it")
    if not onnx_out and not overwrite and exists(onnx_url, storage_options):
        raise InputError(
            f"--out {out!r} also writes its ONNX model to {onnx_url!r}, which exists; move it away, "
            "name another path with --onnx-out, or pass --overwrite to replace it"
        )
    check_new(out, "--out", overwrite, storage_options)
    if onnx_out:
        check_new(onnx_url, "--onnx-out", overwrite, storage_options)
    require_tensorrt()
    # its --onnx-out was checked with --out above, before TensorRT was looked for
    onnx_report = export_onnx(checkpoint, onnx_url, samples, seed, opset=opset, overwrite=True, storage_options=storage_options)
    plan_report = build_tensorrt(
        onnx_url, out, fp16=fp16, opt_batch=opt_batch, max_batch=max_batch, timing_cache=timing_cache,
        storage_options=storage_options,
    )
    return onnx_report, plan_report
