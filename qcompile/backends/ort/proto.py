"""ONNX proto builders for the ORT lowering and its rules (nodes, attributes, tensors, types).

Attribute types follow the op's ONNX schema at the graph's opset where one exists (an IR value
``1`` for a FLOAT attribute is written as ``1.0``); opaque ops take types from the Python values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from qcompile.frontend.proto import OpaqueAttr
from qcompile.ir import DType, Graph, Node, TensorType, Value, schema

A = onnx.AttributeProto


def to_tensor(array: np.ndarray, name: str, dtype: DType | None = None) -> onnx.TensorProto:
    """A TensorProto of ``array``; ``dtype`` INT4/UINT4 packs the widened int8/uint8 codes."""
    if dtype in (DType.INT4, DType.UINT4):
        return helper.make_tensor(name, dtype.value, array.shape, array.flatten().tolist())
    return numpy_helper.from_array(np.asarray(array), name)


def value_info(v: Value) -> onnx.ValueInfoProto:
    """A ValueInfoProto of ``v``'s type (an empty one when the type is unknown)."""
    t: TensorType = v.type
    if t.dtype == DType.UNDEFINED:
        return helper.make_empty_tensor_value_info(v.name)
    shape = None if t.shape is None else [d if d is not None else None for d in t.shape]
    return helper.make_tensor_value_info(v.name, t.dtype.value, shape)


def make_node(node: Node, inputs: Sequence[str], outputs: Sequence[str], *,
              op: str | None = None, domain: str | None = None,
              attrs: dict[str, Any] | None = None, opset: int = 17) -> onnx.NodeProto:
    """A NodeProto with attribute types taken from the op's ONNX schema where one exists."""
    op = op or node.op
    domain = node.domain if domain is None else domain
    n = helper.make_node(op, list(inputs), list(outputs), name=node.name, domain=domain or None)
    schema_attrs = {}
    try:
        schema_attrs = onnx.defs.get_schema(op, opset, domain or "").attributes
    except Exception:  # opaque op: types from the Python values
        pass
    for key, value in sorted((node.attrs if attrs is None else attrs).items()):
        n.attribute.append(attribute(key, value, schema_attrs.get(key)))
    return n


def attribute(key: str, value: Any, spec) -> onnx.AttributeProto:
    """An AttributeProto of an IR attribute value, typed by ``spec`` (the schema's) if given."""
    if isinstance(value, OpaqueAttr):
        a = A()
        a.ParseFromString(value.data)
        a.name = key
        return a
    if isinstance(value, np.ndarray):
        return helper.make_attribute(key, numpy_helper.from_array(value))
    want = spec.type if spec is not None else None
    if want == A.FLOAT:
        return helper.make_attribute(key, float(value), attr_type=A.FLOAT)
    if want == A.INT:
        return helper.make_attribute(key, int(value), attr_type=A.INT)
    if want == A.FLOATS:
        return helper.make_attribute(key, [float(x) for x in value], attr_type=A.FLOATS)
    if want == A.INTS:
        return helper.make_attribute(key, [int(x) for x in value], attr_type=A.INTS)
    if isinstance(value, tuple) and len(value) == 0:
        return helper.make_attribute(key, [], attr_type=want or A.INTS)
    if isinstance(value, tuple) and isinstance(value[0], np.ndarray):
        return helper.make_attribute(key, [numpy_helper.from_array(x) for x in value])
    return helper.make_attribute(key, list(value) if isinstance(value, tuple) else value)


def output_names(node: Node, graph: Graph) -> list[str]:
    """Output names; an unused optional trailing output of a known op is omitted ("")."""
    names = []
    for v in node.outputs:
        omit = (v.index > 0 and schema(node) is not None and not v.uses()
                and v not in graph.outputs)
        names.append("" if omit else v.name)
    while names and names[-1] == "" and len(names) > 1:
        names.pop()
    return names
