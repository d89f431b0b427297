"""skymorph.exporter: trained checkpoint -> ONNX with frozen MC-dropout masks -> TensorRT plan.

The only bridge from torch models to engines: :func:`export_checkpoint` does what ``skymorph export``
does (checkpoint -> ONNX, or -> ONNX -> TensorRT plan); :func:`export_onnx` (checkpoint file) and
:func:`export_onnx_model` (in-memory network) write an ONNX model; :func:`build_tensorrt` builds a
TensorRT plan from it on a machine with an NVIDIA GPU. :func:`freeze` gives the PyTorch frozen-mask
model that the self-checks use, :func:`freeze_checkpoint` the one the ``torch`` engine runs.
"""

from skymorph.exporter._export import export_checkpoint
from skymorph.exporter._onnx import ExportReport, export_onnx, export_onnx_model
from skymorph.exporter._tensorrt import TensorRTReport, build_tensorrt, require_tensorrt

_FROZEN = ("FrozenMaskNet", "checkpoint_extra", "freeze", "freeze_checkpoint", "masks_sha256", "weights_sha256")

__all__ = [
    "export_checkpoint",
    "export_onnx",
    "export_onnx_model",
    "ExportReport",
    "build_tensorrt",
    "TensorRTReport",
    "require_tensorrt",
    "freeze",
    "freeze_checkpoint",
    "FrozenMaskNet",
    "weights_sha256",
    "masks_sha256",
    "checkpoint_extra",
]


def __getattr__(name: str):
    # torch is imported with the frozen-mask model when it is first used, not with the package: building
    # a TensorRT plan from an ONNX model needs none
    if name in _FROZEN:
        from skymorph.exporter import _frozen

        return getattr(_frozen, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
