"""Where ``quantize`` may place QDQ beyond Conv/Gemm/MatMul/Add, and what stays float.

The tables follow what ONNX Runtime's CPU EP does with ``DQ -> op -> Q`` (checked on the
optimised graph in ``tests/passes/test_quantize_exporter_ops.py``):

* ``QLINEAR``: fused into an integer kernel with its own output scale - Concat ->
  QLinearConcat, Mul of two activations -> QLinearMul, Sigmoid -> QLinearSigmoid, LeakyRelu
  -> QLinearLeakyRelu. Every activation input gets a QDQ and the output gets one (its own
  calibrated range), as for a Conv.
* ``TRANSPARENT`` (in :mod:`qcompile.passes.quantize`): the Q/DQ pair around it is dropped and
  the op runs on the integers, so its input and output must share one scale and zero point
  (no requantisation). Resize only in ``nearest`` mode (linear Resize keeps its Q/DQ and runs
  in float); Split on every output.
* Everything else runs in float and is listed once in the pass's notes (``kept in float: op xN
  (why), ...``) and counted in its stats (``float_<op>``): HardSigmoid / HardSwish (ORT has no
  integer kernel: HardSwish becomes HardSigmoid + Mul in float), Softmax (kept float before
  the output: probabilities want float; QLinearSoftmax exists but would quantise them),
  LRN, BatchNormalization that was not folded, a Relu/Clip whose producer is not quantised, a
  Mul/Add with a constant operand, ...
"""

from __future__ import annotations

from collections import Counter

from qcompile.ir import QCOMPILE_DOMAIN, RANGE, Graph, Node, Value
from qcompile.passes.base import Stats

#: ops ORT fuses into QLinear kernels with their own output scale (DQ -> op -> Q)
QLINEAR = ("Concat", "Mul", "Sigmoid", "LeakyRelu")
#: data movement: exact in float, never worth a note when it runs there
_MOVEMENT = frozenset({"Flatten", "Reshape", "Slice", "Pad", "Transpose", "Squeeze", "Unsqueeze",
                       "Identity", "Split", "Dropout", "Gather", "Expand", "Tile", "Cast"})
_POOLS = frozenset({"MaxPool", "AveragePool", "GlobalAveragePool", "Resize"})


def resize_is_nearest(node: Node) -> bool:
    """A Resize whose output values are copies of input values (``mode=nearest``)."""
    mode = node.attrs.get("mode", "nearest")
    return (mode.decode() if isinstance(mode, bytes) else str(mode)) == "nearest"


def select_qlinear(graph: Graph, keep: set[Node], st: Stats,
                   declined: dict[Node, str]) -> list[Node]:
    """The ``QLINEAR`` nodes to quantise; each decline is counted and noted in ``st`` and its
    reason kept in ``declined`` (``keep``: the ``keep_float`` nodes, already noted)."""
    out = []
    for n in graph.nodes:
        if n.domain != "" or n.op not in QLINEAR or n in keep:
            continue
        if any(v is not None and v.producer is not None and v.producer.domain == QCOMPILE_DOMAIN
               for v in n.inputs):
            why: tuple[str, str] | None = ("already_quantized", "an input is already quantised")
        else:
            why = qlinear_decline(n)
        if why is not None:
            st.skip(why[0], f"{n.op} {n.name!r}", why[1])
            declined[n] = why[1]
            continue
        out.append(n)
    return out


def qlinear_decline(node: Node) -> tuple[str, str] | None:
    """``(reason key, detail)`` when a ``QLINEAR`` node cannot be quantised, else None."""
    acts = [v for v in node.inputs if v is not None and not v.is_const]
    if (node.op == "Mul" and len(acts) < 2) or \
            (node.op == "Concat" and len(acts) < len(node.inputs)):
        return "const_operand", "a constant operand (ORT fuses activations only)"
    if node.op == "LeakyRelu" and len(acts) != 1:
        return "input_not_activation", "input 0 is not an activation"
    if not all(v.type.dtype.is_float for v in acts):
        return "not_float", "operands are not floating point"
    if not node.output.uses():
        return "output_unused", "its output is only a graph output (no consumer to fuse)"
    missing = [v for v in (*acts, node.output) if RANGE not in v.meta]
    if missing:
        return "no_range", f"%{missing[0].name} has no calibrated range"
    return None


def float_summary(graph: Graph, int8: set[Node], declined: dict[Node, str],
                  transparent: tuple[str, ...]) -> tuple[Counter, str | None]:
    """Counts ``{op: n}`` of the nodes that run in float and one note ``kept in float: ...``.

    A node counts when it computes on a float activation (a float, non-constant input and a
    float output) and is neither in ``int8`` nor pure data movement. ``declined`` gives the
    reason for nodes the pass declined; other reasons come from the op (see module doc)."""
    groups: Counter = Counter()
    ops: Counter = Counter()
    outputs = set(graph.outputs)
    for n in graph.nodes:
        if n.domain != "" or n in int8 or n.op in _MOVEMENT:
            continue
        if not any(v is not None and not v.is_const and v.type.dtype.is_float for v in n.inputs):
            continue
        if not any(v.type.dtype.is_float for v in n.outputs):
            continue
        why = declined.get(n) or _why(n, outputs, transparent)
        groups[(n.op, why)] += 1
        ops[n.op] += 1
    if not groups:
        return ops, None
    parts = [f"{op} x{k} ({why})" for (op, why), k in groups.items()]
    return ops, "kept in float: " + ", ".join(parts)


def _why(n: Node, outputs: set[Value], transparent: tuple[str, ...]) -> str:
    if n.op == "Softmax":
        return "before the output" if any(v in outputs for v in n.outputs) \
            else "no int8 placement for Softmax"
    if n.op in ("HardSigmoid", "HardSwish"):
        return "no int8 kernel in ONNX Runtime"
    if n.op in ("Relu", "Clip"):
        return "not after a quantised Conv/Add"
    if n.op == "BatchNormalization":
        return "not folded into a Conv"
    if n.op == "Resize" and not resize_is_nearest(n):
        return "only nearest Resize runs on integers"
    if n.op in _POOLS or n.op in transparent:
        return "input and consumers in float"
    return "no int8 kernel"
