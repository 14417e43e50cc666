"""Deterministic text form of a graph, for golden tests, ``--print-after`` and error messages.

Format (one statement a line)::

    graph mini (opset ai.onnx=17)
      input %input: f32[N,3,16,16]
      const %conv.weight: f32[8,3,3,3] #3f2a1c
      %conv_out: f32[N,8,16,16] = Conv(%input, %conv.weight) {pads=[1,1,1,1]}  # conv
      output %logits

Constants are shown as type plus a short digest of their bytes (``digests=False`` omits it, for
goldens that must not depend on last-bit arithmetic).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # annotations only: core calls the printer for str(graph)
    from qcompile.ir.core import Graph, Node, Value


def digest(array: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(array).tobytes()).hexdigest()[:6]


def format_attr(value: Any) -> str:
    if isinstance(value, np.ndarray):
        if value.size <= 8:
            return f"tensor({value.dtype}, {value.tolist()})"
        return f"tensor({value.dtype}{list(value.shape)}#{digest(value)})"
    if isinstance(value, (tuple, list)):
        return "[" + ",".join(format_attr(v) for v in value) + "]"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if isinstance(value, str):
        return repr(value)
    return str(value)


def format_node(node: Node) -> str:
    outs = ", ".join(f"%{o.name}: {o.type}" for o in node.outputs)
    args = ", ".join("_" if v is None else f"%{v.name}" for v in node.inputs)
    attrs = ""
    if node.attrs:
        attrs = " {" + ", ".join(f"{k}={format_attr(node.attrs[k])}" for k in sorted(node.attrs)) + "}"
    return f"{outs} = {node.qualified_op}({args}){attrs}  # {node.name}"


def format_const(v: Value, digests: bool = True) -> str:
    assert v.const is not None
    tail = ""
    if digests:
        tail = f" #{digest(v.const)}" if v.const.size > 4 else f" = {v.const.tolist()}"
    return f"const %{v.name}: {v.type}{tail}"


def format_graph(graph: Graph, *, digests: bool = True) -> str:
    opsets = ", ".join(f"{d or 'ai.onnx'}={ver}" for d, ver in sorted(graph.opsets.items()))
    lines = [f"graph {graph.name} (opset {opsets})"]
    lines += [f"  input %{v.name}: {v.type}" for v in graph.inputs]
    lines += [f"  {format_const(v, digests)}" for v in graph.initializers.values()]
    lines += [f"  {format_node(n)}" for n in graph.nodes]
    lines += [f"  output %{v.name}" for v in graph.outputs]
    return "\n".join(lines) + "\n"
