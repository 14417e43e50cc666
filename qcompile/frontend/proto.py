"""ONNX proto helpers shared by the frontend (lifting) and the ORT lowering.

* :class:`OpaqueAttr`: an attribute with no plain-Python form, kept as serialized bytes.
* :func:`skeleton`: a weight-free copy of a model for ``onnx.checker`` and shape inference.
* :func:`attr_value`, :func:`type_of`, :func:`initializer_array`, :func:`constant_array`:
  proto -> Python/numpy/IR values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from qcompile.ir import DType, TensorType

SMALL = 64  # tensors up to this many elements keep their data (shape tensors for data_prop)
# Graph.model_props key: the default-domain opset the source model had before lift converted it
SOURCE_OPSET = "source_opset"


@dataclass(frozen=True)
class OpaqueAttr:
    """An attribute kept as serialized protobuf bytes (GRAPH, GRAPHS, SPARSE_TENSOR, TYPE_PROTO...)."""

    attr_type: int
    data: bytes


def _numel(dims) -> int:
    return int(np.prod(dims)) if len(dims) else 1


def _big_constant(node: onnx.NodeProto) -> onnx.TensorProto | None:
    """The tensor of a default-domain ``Constant{value}`` node with more than SMALL elements."""
    if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or len(node.attribute) != 1:
        return None
    a = node.attribute[0]
    if a.name != "value" or a.type != onnx.AttributeProto.TENSOR:
        return None
    return a.t if _numel(a.t.dims) > SMALL else None


def skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose large initializers (and large ``Constant`` tensors, the way
    paddle2onnx stores weights) are graph inputs without data.

    Checking and shape inference only need the types and shapes of weights (plus small integer
    tensors for data propagation); serialising megabytes of weights to the C++ checker twice
    was most of the lift time.
    """
    src = model.graph
    g = onnx.GraphProto()
    g.name = src.name
    outputs = {o.name for o in src.output}
    weights = []
    for n in src.node:
        t = _big_constant(n)
        if t is not None and n.output[0] not in outputs:
            weights.append(onnx.helper.make_tensor_value_info(n.output[0], t.data_type,
                                                              list(t.dims)))
        else:
            g.node.append(n)
    g.output.extend(src.output)
    g.value_info.extend(src.value_info)
    g.input.extend(src.input)
    listed = {vi.name for vi in src.input}
    for t in src.initializer:
        if _numel(t.dims) <= SMALL:
            g.initializer.append(t)
        elif t.name not in listed:
            g.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    g.input.extend(weights)
    g.sparse_initializer.extend(src.sparse_initializer)
    sk = onnx.ModelProto()
    sk.ir_version = model.ir_version
    sk.opset_import.extend(model.opset_import)
    sk.functions.extend(model.functions)
    sk.graph.CopyFrom(g)
    return sk


def initializer_array(t: onnx.TensorProto) -> tuple[np.ndarray, DType | None]:
    """An initializer's array; 4-bit tensors widen to int8/uint8 and keep their IR type."""
    a = numpy_helper.to_array(t)
    if t.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
        dt = DType(t.data_type)
        return a.astype(dt.to_numpy()), dt
    return a, None


def type_of(tp: onnx.TypeProto) -> TensorType:
    """A TypeProto as an IR TensorType (UNDEFINED for non-tensors; None shape when unknown)."""
    if not tp.HasField("tensor_type"):
        return TensorType(DType.UNDEFINED, None)
    tt = tp.tensor_type
    if not tt.HasField("shape"):
        return TensorType(DType(tt.elem_type), None)
    dims: list[int | str | None] = []
    for d in tt.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return TensorType(DType(tt.elem_type), tuple(dims))


def attr_value(a: onnx.AttributeProto):
    """An AttributeProto as a plain Python value (tuples for lists, ndarrays for tensors)."""
    A = onnx.AttributeProto
    if a.type == A.FLOAT:
        return float(a.f)
    if a.type == A.INT:
        return int(a.i)
    if a.type == A.STRING:
        return _str(a.s)
    if a.type == A.TENSOR:
        return numpy_helper.to_array(a.t)
    if a.type == A.FLOATS:
        return tuple(float(x) for x in a.floats)
    if a.type == A.INTS:
        return tuple(int(x) for x in a.ints)
    if a.type == A.STRINGS:
        return tuple(_str(s) for s in a.strings)
    if a.type == A.TENSORS:
        return tuple(numpy_helper.to_array(t) for t in a.tensors)
    return OpaqueAttr(int(a.type), a.SerializeToString())


def _str(b: bytes) -> str | bytes:
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return b


def constant_array(node: onnx.NodeProto) -> np.ndarray | None:
    """The value of a Constant node, or None when it is sparse/string-like (kept as a node)."""
    if len(node.attribute) != 1:
        return None
    a = node.attribute[0]
    if a.name == "value":
        return numpy_helper.to_array(a.t)
    if a.name == "value_float":
        return np.array(a.f, dtype=np.float32)
    if a.name == "value_floats":
        return np.array(list(a.floats), dtype=np.float32)
    if a.name == "value_int":
        return np.array(a.i, dtype=np.int64)
    if a.name == "value_ints":
        return np.array(list(a.ints), dtype=np.int64)
    return None
