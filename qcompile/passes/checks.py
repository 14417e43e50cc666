"""Named graph predicates used as pass ``requires``/``ensures``. None = holds; str = why not."""

from __future__ import annotations

from qcompile.ir import RANGE, Graph, Node, Value, is_op
from qcompile.passes.base import Check

FOLDABLE_PRODUCERS = ("Conv", "ConvTranspose", "Gemm")


def exclusive_const(v: Value | None, node: Node) -> bool:
    """``v`` is a constant that only ``node`` reads (so a pass may rewrite it in place)."""
    return v is not None and v.is_const and all(u.node is node for u in v.uses())


def _bn_folded(graph: Graph) -> str | None:
    # Same predicate the fold pass uses, so a BN that fold declines (shared weight...) does not
    # count as unfolded: later passes treat it as an ordinary op.
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
    if any(is_op(n, "QDQ") for n in graph.nodes):
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


def fold_blocker(bn: Node) -> tuple[str, str] | None:
    """None when ``bn`` can be folded, else (stat key, human reason)."""
    x = bn.inputs[0]
    prod = x.producer if x is not None else None
    if prod is None or prod.op not in FOLDABLE_PRODUCERS or prod.domain != "":
        what = "a graph input" if prod is None else f"{prod.op} {prod.name!r}"
        return "not_after_linear", f"follows {what}, not a Conv/ConvTranspose/Gemm"
    if bn.attrs.get("training_mode", 0) or any(o.uses() for o in bn.outputs[1:]):
        return "training_mode", "is in training mode (uses batch statistics)"
    if len(x.uses()) != 1 or x in (prod.graph.outputs if prod.graph else ()):
        return "shared_output", f"the output of {prod.name!r} is also used elsewhere"
    if not all(v is not None and v.is_const for v in bn.inputs[1:5]):
        return "params_not_constant", "scale/bias/mean/var are not all constants"
    w = prod.inputs[1]
    if w is None or not w.is_const:
        return "weight_not_constant", f"the weight of {prod.name!r} is not a constant"
    if not exclusive_const(w, prod):
        return "shared_weight", f"the weight %{w.name} of {prod.name!r} is shared with another node"
    b = prod.inputs[2] if len(prod.inputs) > 2 else None
    if b is not None and not exclusive_const(b, prod):
        return "shared_bias", f"the bias %{b.name} of {prod.name!r} is shared or not constant"
    cout = bn.inputs[1].const.size  # type: ignore[union-attr]
    if prod.op == "Gemm":
        if b is not None and b.const is not None and b.const.size not in (1, cout):
            return "full_gemm_bias", f"Gemm {prod.name!r} has a full [M, N] bias"
        if x.type.rank != 2:
            return "not_after_linear", "Gemm output is not 2-D"
    return None
