"""Named graph predicates used as pass ``requires``/``ensures``. None = holds; str = why not."""

from __future__ import annotations

from qcompile.ir import QCOMPILE_DOMAIN, Graph
from qcompile.passes.base import Check

FOLDABLE_PRODUCERS = ("Conv", "ConvTranspose", "Gemm")


def _bn_folded(graph: Graph) -> str | None:
    # Same predicate the fold pass uses, so a BN that fold declines (shared weight...) does not
    # count as unfolded: later passes treat it as an ordinary op.
    from qcompile.passes.fold_bn import fold_blocker

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
