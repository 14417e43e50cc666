"""``cleanup``: remove Identity / inference Dropout, fold constant-only subgraphs, drop dead code.

1. ``Identity(x)`` and ``Dropout(x)`` in inference (no training_mode, mask unused) are the
   identity map: uses of the output are redirected to ``x``.
2. A node whose inputs are all constants and whose op is in ``FOLDERS`` is evaluated with numpy
   (exact ONNX semantics for these ops) and replaced by a constant.
3. Nodes that do not reach a graph output, and constants nobody uses, are removed.

Declines are counted: an Identity between a graph input and a graph output stays (removing it
would rename a public tensor); constant ops without a numpy folder stay.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from qcompile.ir import Graph, Node, TensorType, live_nodes
from qcompile.passes.base import Pass, PassContext, PassResult, Stats


def _reshape(x: np.ndarray, shape: np.ndarray, allowzero: int = 0) -> np.ndarray:
    shape = [int(d) for d in shape]
    if not allowzero:
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return x.reshape(shape)


def _unsqueeze(x: np.ndarray, axes: np.ndarray) -> np.ndarray:
    out_rank = x.ndim + len(axes)
    for a in sorted(int(a) % out_rank for a in axes):
        x = np.expand_dims(x, a)
    return x


def _slice(x, starts, ends, axes=None, steps=None):
    axes = range(len(starts)) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    idx = [slice(None)] * x.ndim
    for s, e, a, st in zip(starts, ends, axes, steps):
        idx[int(a)] = slice(int(s), int(e), int(st))
    return x[tuple(idx)]


def _int_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """ONNX integer Div truncates toward zero (C semantics); numpy's ``//`` floors."""
    q = np.abs(a) // np.abs(b)
    return np.where((a < 0) != (b < 0), -q, q)


def _same_dtype(fn: Callable) -> Callable:
    def run(*args, **attrs):
        return np.asarray(fn(*args, **attrs)).astype(args[0].dtype)
    return run


FOLDERS: dict[str, Callable[..., np.ndarray]] = {
    "Add": _same_dtype(np.add),
    "Sub": _same_dtype(np.subtract),
    "Mul": _same_dtype(np.multiply),
    "Div": _same_dtype(lambda a, b: _int_div(a, b) if np.issubdtype(a.dtype, np.integer) else a / b),
    "Neg": np.negative,
    "Sqrt": np.sqrt,
    "Reshape": lambda x, s, allowzero=0: _reshape(x, s, allowzero),
    "Flatten": lambda x, axis=1: x.reshape(int(np.prod(x.shape[:axis])), -1),
    "Transpose": lambda x, perm=None: np.transpose(x, perm),
    "Unsqueeze": lambda x, axes: _unsqueeze(x, axes),
    "Squeeze": lambda x, axes=None: np.squeeze(x, None if axes is None else tuple(int(a) for a in axes)),
    "Concat": lambda *xs, axis: np.concatenate(xs, axis=axis),
    "Shape": lambda x, start=0, end=None: np.array(x.shape[start:end], np.int64),
    "Slice": _slice,
}
FOLD_ATTRS = {"Reshape": ("allowzero",), "Flatten": ("axis",), "Transpose": ("perm",),
              "Concat": ("axis",), "Shape": ("start", "end"), "Squeeze": (), "Unsqueeze": ()}


@dataclass(frozen=True)
class Cleanup(Pass):
    """Identity/Dropout removal, constant folding and dead-code elimination."""

    name = "cleanup"
    summary = "remove Identity/Dropout, fold constant subgraphs, drop dead nodes and constants"
    fold_constants: bool = True

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        st = Stats()
        for node in graph.nodes:
            if node.domain != "":
                continue
            if node.op in ("Identity", "Dropout"):
                self._bypass(graph, node, st)
            elif self.fold_constants and node.inputs and all(
                    v is not None and v.is_const for v in node.inputs):
                self._fold(graph, node, st)
        live = live_nodes(graph)
        for node in reversed(graph.nodes):
            if node not in live:
                graph.remove(node, safe=False)
                st.count("dead_nodes")
        for v in list(graph.initializers.values()):
            if not v.uses() and v not in graph.outputs:
                graph.remove_const(v)
                st.count("dead_constants")
        return st.result(graph, any(not k.startswith("skipped_") for k in st.counts))

    def _bypass(self, graph: Graph, node: Node, st: Stats) -> None:
        x = node.inputs[0]
        where = f"{node.op} {node.name!r}"
        if node.op == "Dropout":
            tm = node.inputs[2] if len(node.inputs) > 2 else None
            if tm is not None and not (tm.is_const and not bool(np.asarray(tm.const))):
                st.skip("dropout_training", where, "training_mode is not a constant false")
                return
            if any(o.uses() or o in graph.outputs for o in node.outputs[1:]):
                st.skip("dropout_mask_used", where, "its mask output is used")
                return
        out = node.outputs[0]
        if out in graph.outputs and (x.producer is None or x in graph.outputs):
            st.skip("public_identity", where, "connects a graph input/constant to an output")
            return
        graph.replace_value(out, x)
        graph.remove(node)
        st.count(f"removed_{node.op.lower()}")

    def _fold(self, graph: Graph, node: Node, st: Stats) -> None:
        fn = FOLDERS.get(node.op)
        if fn is None or len(node.outputs) != 1:
            st.skip("no_folder", f"{node.op} {node.name!r}", "constant inputs but no numpy folder")
            return
        if node.outputs[0] in graph.outputs:
            st.skip("public_constant", f"{node.op} {node.name!r}", "its output is a graph output")
            return
        args = [v.const for v in node.inputs]
        attrs = {k: v for k, v in node.attrs.items() if k in FOLD_ATTRS.get(node.op, ())}
        if node.op in ("Squeeze", "Unsqueeze") and "axes" in node.attrs:  # opset < 13 form
            attrs["axes"] = np.array(node.attrs["axes"])
        value = np.asarray(fn(*args, **attrs))
        out = node.outputs[0]
        if out.type.dtype.value and value.dtype != out.type.dtype.to_numpy():
            value = value.astype(out.type.dtype.to_numpy())
        const = graph.add_const(out.name + "_folded", value)
        const.type = TensorType(const.type.dtype, tuple(value.shape))
        graph.replace_value(out, const)
        graph.remove(node)
        st.count("folded_constants")
