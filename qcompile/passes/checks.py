"""Named graph predicates used as pass ``requires``/``ensures``. None = holds; str = why not."""

from __future__ import annotations

from qcompile.ir import QCOMPILE_DOMAIN, RANGE, Graph, Node, Value
from qcompile.passes.base import Check

FOLDABLE_PRODUCERS = ("Conv", "ConvTranspose", "Gemm")


def exclusive_const(v: Value | None, node: Node) -> bool:
    """``v`` is a constant that only ``node`` reads (so a pass may rewrite it in place)."""
    return v is not None and v.is_const and all(u.node is node for u in v.uses())


def _bn_folded(graph: Graph) -> str | None:
    # Same predicate the fold pass uses, so a BN that fold declines (shared weight...) does not
    # count as unfolded: later passes treat it as an ordinary op.
    from qcompile.passes.fold import fold_blocker

    left = [n.name for n in graph.nodes if n.op == "BatchNormalization" and n.domain == ""
            and fold_blocker(n) is None]
    if left:
        return f"{len(left)} foldable BatchNormalization node(s) remain, e.g. {left[0]!r}"
    return None


def _static_shapes(graph: Graph) -> str | None:
    for n in graph.nodes:
        for v in n.outputs:
            shape = v.type.shape
            if shape is None or any(not isinstance(d, int) for d in shape[1:]):
                return f"%{v.name} ({n.qualified_op} {n.name!r}) has shape {v.type}"
    return None


def _quantized(graph: Graph) -> str | None:
    if any(n.domain == QCOMPILE_DOMAIN and n.op == "QDQ" for n in graph.nodes):
        return None
    return "the graph has no qcompile.QDQ node"


bn_folded = Check("bn_folded", _bn_folded, "no foldable BatchNormalization remains")
static_shapes = Check("static_shapes", _static_shapes, "every non-batch dimension is static")
quantized = Check("quantized", _quantized, "QDQ nodes are present")


QUANTISABLE_OPS = ("Conv", "Gemm", "MatMul", "Add")
FUSED_ACTIVATIONS = ("Relu", "Clip")


def fused_activation(v: Value) -> Node | None:
    """The Relu/Clip that ``v`` feeds as its only use (fused into the producer when quantised)."""
    uses = v.uses()
    if len(uses) == 1 and uses[0].index == 0:
        n = uses[0].node
        if n.domain == "" and n.op in FUSED_ACTIVATIONS:
            return n
    return None


def activation_inputs(graph: Graph) -> list[Value]:
    """Float, non-constant inputs of the ops ``quantize`` can quantise."""
    out: dict[Value, None] = {}
    for n in graph.nodes:
        if n.domain == "" and n.op in QUANTISABLE_OPS:
            for v in n.inputs:
                if v is not None and not v.is_const and v.type.dtype.is_float:
                    out[v] = None
    return list(out)


def _calibrated(graph: Graph) -> str | None:
    missing = [v for v in activation_inputs(graph) if RANGE not in v.meta]
    if missing:
        return (f"{len(missing)} activation(s) feeding quantisable ops have no range, "
                f"e.g. %{missing[0].name}")
    return None


calibrated = Check("calibrated", _calibrated,
                   "every activation feeding a Conv/Gemm/MatMul/Add has a calibrated range")
