"""``absorb``: high-bias absorption (Nagel et al., "Data-Free Quantization", ICCV 2019, sec. 4.2).

For ``h = W1 x + b1 -> Relu -> g* -> sink`` where ``h_c >= c_c >= 0`` for every input,
``relu(h_c) = relu(h_c - c_c) + c_c``; each ``g`` (MaxPool, GlobalAveragePool, Flatten of a 1x1
map) commutes with subtracting a per-channel constant, and the sink is linear, so

    b1'_c = b1_c - c_c,     b2'_o = b2_o + sum_{c, k} W2[o, c, k] * c_c

leaves the function unchanged. This shrinks the range of the Relu output (better activation
quantisation). The paper derives ``c_c = max(0, beta_c - 3 gamma_c)`` from BatchNorm statistics;
after folding we measure instead: ``c_c = max(0, min h_c)`` over the calibration images (so
the identity is exact on that data). A sink with zero padding is declined: padded zeros of the
shifted activation would stand for ``c_c``, not 0, at the borders.

Through ReLU6: for an activation ``clip(h, 0, B_c)`` (``Clip(0, M)``, or ``Relu -> Min(x, B)`` as
``cle{clip=scale}`` writes it) and ``h_c >= c_c >= 0``, with ``c'_c = min(c_c, B_c)``,
``clip(h, 0, B) = clip(h - c', 0, B - c') + c'``: the bias moves as above and the bound becomes
``B - c'`` per channel (a Clip is rewritten ``Relu -> Min``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qcompile.ir import RANGE, Graph, Node
from qcompile.passes import checks
from qcompile.passes._feeds import feeds_of, model_data
from qcompile.passes.base import Pass, PassContext, PassResult, Stats
from qcompile.passes.cle import LINEAR, exclusive_weight, sink_slices

COMMUTE = ("MaxPool", "GlobalAveragePool", "Flatten", "Identity")


@dataclass(frozen=True)
class AbsorbHighBias(Pass):
    """Move the always-positive part of a Relu's input into the next layer's bias."""

    name = "absorb"
    needs_data = "optional"
    summary = "high-bias absorption into the next layer (exact on the calibration data)"
    requires = (checks.bn_folded,)
    images: int = 64

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        st = Stats()
        regions = [r for n in graph.nodes if n.domain == "" and n.op in LINEAR
                   for r in [_match(n, st)] if r is not None]
        if not regions:
            return st.result(graph, False)
        if ctx.executor is None or ctx.calib_data is None:
            for src, _, _ in regions:
                st.skip("no_data", f"{src.op} {src.name!r}",
                        "needs calibration data to measure the Relu input minimum (give --calib)")
            return st.result(graph, False)
        values = [src.outputs[0] for src, _, _ in regions]
        lows = {v: None for v in values}
        data = model_data(graph, ctx.calib_data, ctx.log)  # as the model input declares
        for batch in data.batches(16, limit=self.images):
            out = ctx.executor.run(graph, feeds_of(graph, batch.x), values)
            for v in values:
                a = out[v]
                m = a.min(axis=0) if a.ndim == 2 else a.min(axis=(0,) + tuple(range(2, a.ndim)))
                lows[v] = m if lows[v] is None else np.minimum(lows[v], m)
        modified = False
        for src, sink, act in regions:
            c = np.maximum(lows[src.outputs[0]].astype(np.float64), 0.0)
            bound = _bound(act)
            if bound is not None:
                c = np.minimum(c, np.broadcast_to(bound.reshape(-1), c.shape))
            if not np.any(c > 0):
                st.skip("nothing_to_absorb", f"{src.op} {src.name!r}",
                        "its output goes negative in every channel on the calibration data")
                continue
            if bound is not None:
                _lower_bound(graph, act, bound, c)
                st.count("through_relu6")
            _absorb(graph, src, sink, c)
            st.count("absorbed")
            st.count("channels", int(np.count_nonzero(c)))
            modified = True
        return st.result(graph, modified)


def _clip_hi(n: Node) -> float | None:
    """M of a ``Clip(0, M)`` with constant bounds (None: not such a Clip)."""
    def val(i: int, attr: str):
        if len(n.inputs) > i and n.inputs[i] is not None:
            return float(n.inputs[i].const) if n.inputs[i].is_const else None
        return n.attrs.get(attr)

    lo, hi = val(1, "min"), val(2, "max")
    return hi if lo == 0.0 and hi is not None else None


def _bound(act: list[Node]) -> np.ndarray | None:
    """The activation's upper bound ``B`` (scalar or per channel), None for a plain Relu."""
    for n in act:
        if n.op == "Clip":
            return np.asarray(_clip_hi(n), np.float64)
        if n.op == "Min":
            return n.inputs[1].const.astype(np.float64)
    return None


def _lower_bound(graph: Graph, act: list[Node], bound: np.ndarray, c: np.ndarray) -> None:
    """Bound ``B -> B - c`` per channel; a Clip becomes ``Relu -> Min``."""
    n = act[-1]
    rank = len(n.inputs[0].type.shape or (0, 0))
    new = (np.broadcast_to(bound.reshape(-1), c.shape) - c).astype(np.float32)
    new = new.reshape((-1,) + (1,) * (rank - 2))
    if n.op == "Min":
        n.inputs[1].const = new.astype(n.inputs[1].const.dtype)
        return
    old = n.outputs[0]
    relu = Node("Relu", [n.inputs[0]], [old.type], name=n.name + "_relu")
    graph.insert_after(n, relu)
    mn = Node("Min", [relu.outputs[0], graph.add_const(graph.unique_name(n.name + ".bound"), new)],
              [old.type], name=n.name + "_min")
    graph.insert_after(relu, mn)
    graph.replace_value(old, mn.outputs[0])
    public = old.name
    graph.remove(n, drop_dead_consts=True)
    if mn.outputs[0].name != public:
        mn.outputs[0].name = graph.unique_name(public)


def _match(src: Node, st: Stats) -> tuple[Node, Node, list[Node]] | None:
    where = f"{src.op} {src.name!r}"
    if not exclusive_weight(src):
        return None
    v = src.outputs[0]
    seen_relu = False
    act: list[Node] = []
    while True:
        uses = v.uses()
        if len(uses) != 1 or (src.graph is not None and v in src.graph.outputs):
            return None
        n, idx = uses[0]
        if n.domain != "" or idx != 0:
            return None
        if (n.op == "Relu" or (n.op == "Clip" and _clip_hi(n) is not None)) and not seen_relu:
            seen_relu = True
            act.append(n)
        elif (n.op == "Min" and act and act[-1].op == "Relu" and len(act) == 1
              and n.inputs[1].is_const and len(n.inputs[1].uses()) == 1
              and (n.inputs[1].const.size == 1
                   or n.inputs[1].const.shape[0] == n.inputs[1].const.size)):
            act.append(n)  # Relu -> Min(x, B): a per-channel ReLU6 (cle{clip=scale})
        elif n.op in LINEAR and seen_relu:
            if not exclusive_weight(n):
                st.skip("shared_weight", where, f"sink {n.name!r} has a shared weight")
                return None
            if n.op == "Conv" and (any(n.attrs.get("pads", ())) or
                                   n.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID")):
                st.skip("padding", where, f"sink {n.name!r} pads with zeros (borders would change)")
                return None
            if n.op == "Gemm":
                bias = n.inputs[2] if len(n.inputs) > 2 else None
                if (n.attrs.get("transA", 0) or n.attrs.get("alpha", 1.0) != 1.0
                        or n.attrs.get("beta", 1.0) != 1.0
                        or (bias is not None and bias.const.ndim == 2 and bias.const.shape[0] != 1)):
                    st.skip("gemm_form", where, f"Gemm {n.name!r} has transA, alpha/beta != 1 "
                            "or a full bias")
                    return None
            return src, n, act
        elif not (seen_relu and n.op in COMMUTE):
            return None
        if n.op == "Flatten":
            shape = n.inputs[0].type.shape
            if shape is None or any(d != 1 for d in shape[2:]):
                return None
        v = n.outputs[0]


def _absorb(graph: Graph, src: Node, sink: Node, c: np.ndarray) -> None:
    b1 = src.inputs[2] if len(src.inputs) > 2 else None
    dtype = src.inputs[1].const.dtype
    if b1 is None:
        b1 = graph.add_const(f"{src.name}.bias", np.zeros(len(c), dtype))
        src.add_input(b1)
    b1.const = (b1.const.astype(np.float64).reshape(-1) - c).astype(b1.const.dtype).reshape(b1.const.shape)
    w2 = sink.inputs[1].const.astype(np.float64)
    n_out = w2.shape[0] if sink.op == "Conv" or sink.attrs.get("transB", 0) else w2.shape[1]
    shift = np.zeros(n_out)
    for ch, idx in enumerate(sink_slices(sink, len(c))):
        if c[ch] == 0:
            continue
        part = w2[idx]  # [outputs of this channel's group, kernel...] or a 1-D Gemm slice
        contrib = part.reshape(part.shape[0], -1).sum(axis=1) if part.ndim > 1 else part
        rows = idx[0]
        if isinstance(rows, slice):
            shift[rows] += contrib * c[ch]
        else:
            shift += contrib * c[ch]
    b2 = sink.inputs[2] if len(sink.inputs) > 2 else None
    if b2 is None:
        b2 = graph.add_const(f"{sink.name}.bias", np.zeros(n_out, w2.dtype).astype(dtype))
        sink.add_input(b2)
    b2.const = (b2.const.astype(np.float64).reshape(-1) + shift).astype(b2.const.dtype).reshape(b2.const.shape)
    v = src.outputs[0]
    while v is not sink.inputs[0]:  # ranges between src and sink shifted: drop them
        v.meta.pop(RANGE, None)
        v = v.uses()[0].node.outputs[0]
    v.meta.pop(RANGE, None)
