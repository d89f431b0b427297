"""An exported float32 graph rewritten to compute in float16, for strongly typed TensorRT networks.

TensorRT 11 builds every network strongly typed (it removed ``BuilderFlag.FP16``): layers run in the
types the ONNX graph says, so an fp16 plan needs an fp16 graph. This rewrite covers what skymorph's
exporter emits: float32 initializers and ``Constant`` values become float16, casts to float32 become
casts to float16, and one final ``Cast`` turns the output back to float32. The uint8 input is untouched,
so the plan takes the same images and gives the same output type as the ONNX model.

(onnxconverter-common's converter was tried: it left the uint8 -> float cast inconsistent with its
value info, and with casts blocked it did not finish on a 4 MB model.)
"""

from __future__ import annotations

import numpy as np

from skymorph.errors import ModelError, first_line

__all__ = ["to_fp16"]

_FP16_MAX = float(np.finfo(np.float16).max)


def _half(tensor):
    from onnx import numpy_helper

    array = numpy_helper.to_array(tensor)
    # Clip, not overflow to inf: weights beyond 65504 would poison every output.
    half = np.clip(array, -_FP16_MAX, _FP16_MAX).astype(np.float16)
    converted = numpy_helper.from_array(half, tensor.name)
    tensor.CopyFrom(converted)


def to_fp16(model):
    """A float16 copy of the ONNX ``model`` (``onnx.ModelProto``) with float32 output; see the module doc."""
    import onnx
    from onnx import TensorProto

    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    if len(graph.output) != 1 or graph.output[0].type.tensor_type.elem_type != TensorProto.FLOAT:
        raise ModelError("fp16 conversion expects one float32 output, as `skymorph export` writes")
    keep_float = {node.input[2] for node in graph.node if node.op_type == "Resize" and len(node.input) > 2 and node.input[2]}
    for tensor in graph.initializer:
        if tensor.data_type == TensorProto.FLOAT and tensor.name not in keep_float:
            _half(tensor)
    for node in graph.node:
        for attribute in node.attribute:
            if node.op_type == "Cast" and attribute.name == "to" and attribute.i == TensorProto.FLOAT:
                attribute.i = TensorProto.FLOAT16
            elif (
                node.op_type in ("Constant", "ConstantOfShape")
                and attribute.name == "value"
                and attribute.t.data_type == TensorProto.FLOAT
                and node.output[0] not in keep_float
            ):
                _half(attribute.t)
    output = graph.output[0].name
    half_output = f"{output}_fp16"
    for node in graph.node:
        node.output[:] = [half_output if name == output else name for name in node.output]
    graph.node.append(onnx.helper.make_node("Cast", [half_output], [output], to=TensorProto.FLOAT, name="output_to_float32"))
    del graph.value_info[:]
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as err:
        raise ModelError(f"the fp16 rewrite of the model is invalid: {first_line(err)}") from err
    return model
