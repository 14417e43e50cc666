"""Per-op lowering rules for the ONNX Runtime backend.

Default-domain and foreign-domain ops pass through unchanged (the fallback rule). qcompile-domain
ops need an explicit rule registered with ``@LOWER.register(op, "qcompile")``; one without a rule
is reported by ``LOWER.check`` before lowering starts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import onnx

from qcompile.backends.base import OpTable
from qcompile.backends.ort.proto import make_node, output_names
from qcompile.errors import QCompileError
from qcompile.ir import QCOMPILE_DOMAIN, Graph, Node, is_op


@dataclass
class LoweringContext:
    graph: Graph
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    extra_opsets: dict[str, int] = field(default_factory=dict)
    skip_initializers: set[str] = field(default_factory=set)  # replaced by a rule (e.g. int8)
    #: default-domain opset the lowered model must be converted up to, and why (first reason)
    upgrade: tuple[int, str] | None = None

    @property
    def opset(self) -> int:
        return self.graph.opset

    def require_opset(self, opset: int, why: str) -> None:
        """The lowered model needs default-domain ``opset`` (converted, not relabelled)."""
        if self.graph.opset < opset and (self.upgrade is None or self.upgrade[0] < opset):
            self.upgrade = (opset, why)


Rule = Callable[[Node, LoweringContext], None]


def passthrough(node: Node, ctx: LoweringContext) -> None:
    """Lower an ONNX op as it is (attributes typed by the op's schema)."""
    ctx.nodes.append(make_node(
        node, ["" if v is None else v.name for v in node.inputs],
        output_names(node, ctx.graph),
        opset=ctx.graph.opsets.get(node.domain, ctx.opset)))


def _fallback(node: Node) -> Rule | None:
    return None if node.domain == QCOMPILE_DOMAIN else passthrough


LOWER: OpTable[Rule] = OpTable("ort", fallback=_fallback)


class FloatFormatError(QCompileError):
    """The graph rounds tensors into float/posit formats (``qcompile.FQ``) ONNX Runtime lacks."""


def refuse_float_formats(graph: Graph) -> None:
    """One-line error naming every ``qcompile.FQ`` node and its format, before any lowering:
    ONNX Runtime runs integer formats (QDQ) only; float/posit formats run on the MPFR backend."""
    fq = [n for n in graph.nodes if is_op(n, "FQ")]
    if not fq:
        return
    fmts = sorted({str(n.attrs.get("format", "?")) for n in fq})
    shown = ", ".join(f"{n.name} ({n.attrs.get('format', '?')})" for n in fq[:4])
    more = f" and {len(fq) - 4} more" if len(fq) > 4 else ""
    raise FloatFormatError(
        f"the ORT backend runs integer formats only; {len(fq)} node(s) round into float/posit "
        f"format(s) {', '.join(fmts)}: {shown}{more}; run the model with `qcompile emulate` "
        "(the MPFR backend) or choose int4/int8 formats")
