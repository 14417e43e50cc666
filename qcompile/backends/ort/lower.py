"""Lowering: qcompile Graph -> ONNX ModelProto, through the per-op table in ``rules.py``.

Every node is lowered by its rule (a default-domain op passes through as it is; qcompile ops
have explicit rules). Unsupported ops are reported all at once before anything is built. The
result passes ``onnx.checker``; ``save_model`` writes atomically (temp file, then rename).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from qcompile.backends.ort.rules import LOWER, LoweringContext
from qcompile.errors import QCompileError
from qcompile.files import atomic_write
from qcompile.frontend.onnx_import import OpaqueAttr, skeleton
from qcompile.ir import DType, Graph, Node, TensorType, Value, schema

A = onnx.AttributeProto


def lower(graph: Graph, *, check: bool = True) -> onnx.ModelProto:
    """Build a ModelProto from ``graph``; raise UnsupportedOpError listing every unlowerable op."""
    from qcompile.backends.ort.rules import refuse_float_formats

    refuse_float_formats(graph)
    LOWER.check(graph.nodes)
    ctx = LoweringContext(graph)
    for node in graph.nodes:
        LOWER.lookup(node)(node, ctx)
    g = helper.make_graph(
        ctx.nodes,
        graph.name,
        [_value_info(v) for v in graph.inputs],
        [_value_info(v) for v in graph.outputs],
        initializer=[_tensor(v) for v in graph.initializers.values()
                     if v.name not in ctx.skip_initializers] + ctx.initializers,
        doc_string=graph.doc_string or None,
        value_info=[_value_info(v) for n in graph.nodes for v in n.outputs
                    if v.type.dtype != DType.UNDEFINED and v not in graph.outputs
                    and v.uses()],
    )
    opsets = dict(graph.opsets)
    opsets.update(ctx.extra_opsets)
    opsets.pop(_QC, None)  # qcompile-domain ops never survive lowering
    model = helper.make_model(
        g, opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(opsets.items())],
        functions=[_function(b) for b in graph.functions],
    )
    props = graph.model_props
    model.ir_version = _ir_version(props.get("ir_version"), opsets.get("", 17))
    model.producer_name = "qcompile"
    model.producer_version = _version()
    if props.get("doc_string"):
        model.doc_string = props["doc_string"]
    if props.get("domain"):
        model.domain = props["domain"]
    if props.get("model_version", "0") not in ("", "0"):
        model.model_version = int(props["model_version"])
    helper.set_model_props(model, dict(graph.metadata))
    if check:
        try:
            onnx.checker.check_model(skeleton(model))  # structure only: weights need no check
        except onnx.checker.ValidationError as e:
            raise QCompileError(f"lowering produced an invalid model: {str(e).splitlines()[0]}") from None
    return model


_QC = "qcompile"


def _version() -> str:
    from qcompile._version import __version__

    return __version__


def _ir_version(orig: str | None, opset: int) -> int:
    # Keep the source's IR version when it is new enough for the opset; ORT reads IR <= 10.
    need = 8 if opset <= 18 else (9 if opset <= 20 else 10)
    try:
        return max(int(orig or 0), need)
    except ValueError:
        return need


def _function(data: bytes) -> onnx.FunctionProto:
    f = onnx.FunctionProto()
    f.ParseFromString(data)
    return f


def _tensor(v: Value) -> onnx.TensorProto:
    assert v.const is not None
    return to_tensor(v.const, v.name, v.type.dtype)


def to_tensor(array: np.ndarray, name: str, dtype: DType | None = None) -> onnx.TensorProto:
    if dtype in (DType.INT4, DType.UINT4):
        return helper.make_tensor(name, dtype.value, array.shape, array.flatten().tolist())
    return numpy_helper.from_array(np.asarray(array), name)


def _value_info(v: Value) -> onnx.ValueInfoProto:
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
        n.attribute.append(_attribute(key, value, schema_attrs.get(key)))
    return n


def _attribute(key: str, value: Any, spec) -> onnx.AttributeProto:
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


def save_model(model: onnx.ModelProto, path: str | os.PathLike) -> Path:
    """Write ``model`` atomically (:func:`qcompile.files.atomic_write`: a temp file in the
    target folder, then rename over ``path``)."""
    return atomic_write(path, model.SerializeToString(), "output")
