"""Quantised forms other tools write, brought into the IR's explicit QDQ form at lift (#13).

* **Computed quantisation parameters** (torch exports compute zero points as
  ``ConstantOfShape -> Cast``): a scale or zero-point input of a QuantizeLinear /
  DequantizeLinear / QLinear* / QGemm node whose producers are all constant and among
  :data:`FOLDABLE` is replaced by its value (a constant), so every consumer sees constant
  parameters.  Producers left without users are removed.
* **Q -> Cast -> DQ** (torch QAT exports): a Cast whose input is a QuantizeLinear output and
  whose target type is that output's own type is the identity; it is removed, so the DQ reads
  the Q directly (a pair the fuser and the passes recognise).  A Cast that changes the type is
  kept (it is arithmetic on codes).

Ops that the MPFR engines already run exactly (QOperator, dynamic) stay as they are.
"""

from __future__ import annotations

import numpy as np

from qcompile.ir import DType, Graph, Node, Value

FOLDABLE = ("ConstantOfShape", "Cast", "Identity", "Reshape", "Unsqueeze", "Squeeze",
            "Mul", "Div", "Add", "Sub")
# parameter inputs (scales and zero points) of the quantised ops
PARAMS = {"QuantizeLinear": (1, 2), "DequantizeLinear": (1, 2),
          "QLinearConv": (1, 2, 4, 5, 6, 7), "QLinearMatMul": (1, 2, 4, 5, 6, 7),
          "QLinearAdd": (1, 2, 4, 5, 6, 7), "QLinearMul": (1, 2, 4, 5, 6, 7),
          "QLinearGlobalAveragePool": (1, 2, 3, 4), "QLinearSigmoid": (1, 2, 3, 4),
          "QGemm": (1, 2, 4, 5, 7, 8), "ConvInteger": (2, 3), "MatMulInteger": (2, 3)}


def _eval(node: Node, args: list[np.ndarray]) -> np.ndarray | None:
    op = node.op
    if op == "ConstantOfShape":
        fill = node.attrs.get("value")
        fill = np.zeros(1, np.float32) if fill is None else np.asarray(fill).reshape(-1)
        return np.full(tuple(int(d) for d in args[0].reshape(-1)), fill[0], fill.dtype)
    if op == "Cast":
        return args[0].astype(DType(int(node.attrs["to"])).to_numpy())
    if op == "Identity":
        return args[0]
    if op == "Reshape":
        shape = [int(d) for d in args[1].reshape(-1)]
        shape = [args[0].shape[i] if d == 0 else d for i, d in enumerate(shape)]
        return args[0].reshape(shape)
    if op in ("Unsqueeze", "Squeeze"):
        axes = node.attrs.get("axes")
        if axes is None and len(args) > 1:
            axes = [int(a) for a in args[1].reshape(-1)]
        if op == "Squeeze":
            return np.squeeze(args[0], axis=None if axes is None else tuple(axes))
        out = args[0]
        for a in sorted(int(a) % (out.ndim + len(axes)) for a in axes):
            out = np.expand_dims(out, a)
        return out
    a, b = args
    if op == "Div" and np.issubdtype(a.dtype, np.integer):
        return None  # integer division rules differ; not in parameter chains we know
    return {"Mul": np.multiply, "Div": np.divide, "Add": np.add, "Sub": np.subtract}[op](
        a, b).astype(a.dtype)


def _value_of(v: Value | None, memo: dict, depth: int = 0) -> np.ndarray | None:
    if v is None:
        return None
    if v.is_const:
        return np.asarray(v.const)
    if v in memo:
        return memo[v]
    n = v.producer
    out = None
    if n is not None and n.op in FOLDABLE and n.domain == "" and depth < 16 and \
            len(n.outputs) == 1:
        args = [_value_of(i, memo, depth + 1) for i in n.inputs if i is not None]
        if all(a is not None for a in args) and len(args) == len(
                [i for i in n.inputs if i is not None]):
            try:
                out = _eval(n, args)
            except (ValueError, KeyError, TypeError, IndexError):
                out = None
    memo[v] = out
    return out


def normalize_quant_forms(g: Graph) -> dict[str, int]:
    """Rewrite ``g`` in place (see module doc); returns {"folded_params", "casts_removed"}."""
    memo: dict = {}
    stats = {"folded_params": 0, "casts_removed": 0}
    for node in list(g.nodes):
        for i in PARAMS.get(node.op, ()):
            if i >= len(node.inputs):
                continue
            v = node.inputs[i]
            if v is None or v.is_const:
                continue
            arr = _value_of(v, memo)
            if arr is None:
                continue
            c = g.add_const(g.unique_name(v.name + "_folded"), arr)
            node.replace_input(i, c)
            stats["folded_params"] += 1
    for node in list(g.nodes):
        if node.op != "Cast" or node.domain != "" or node.inputs[0] is None:
            continue
        src = node.inputs[0]
        if src.producer is None or src.producer.op != "QuantizeLinear":
            continue
        if int(node.attrs.get("to", 0)) != int(src.type.dtype.value) or node.output in g.outputs:
            continue
        g.replace_value(node.output, src)
        g.remove(node)
        stats["casts_removed"] += 1
    if stats["folded_params"]:
        _drop_dead(g)
    return stats


def _drop_dead(g: Graph) -> None:
    changed = True
    while changed:
        changed = False
        for n in reversed(g.nodes):
            if n.op in FOLDABLE and all(not o.uses() and o not in g.outputs for o in n.outputs):
                g.remove(n, drop_dead_consts=True)
                changed = True
