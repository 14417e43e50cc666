"""``quantize``: insert ``qcompile.QDQ`` nodes where ONNX Runtime forms integer kernels.

A ``QDQ(x, s, z){bits, signed, axis}`` node computes ``(clamp(round(x/s) + z) - z) * s``
(:mod:`qcompile.numerics.quant`). Placement (QDQ "format" as ORT's CPU EP fuses it):

* Conv / Gemm / MatMul with a constant weight: the activation input gets a QDQ; the weight a
  QDQ per output channel (``per_channel``, axis 0 for Conv, Gemm ``transB=1``; axis 1 for Gemm
  ``transB=0`` and MatMul) or per tensor, symmetric (``z = 0``, narrow ``[-127, 127]``; 7 bits
  with ``reduce_range``); the bias an int32 QDQ with ``s_b = s_in * s_w`` and ``z_b = 0``.
* Add of two activations: both inputs get a QDQ (-> QLinearAdd).
* Outputs: a Conv's or Add's output always gets a QDQ (QLinearConv/QLinearAdd need one), after
  the Relu / Clip that is its only consumer (the activation is then fused: ``[lo, hi]`` is
  clipped to the activation's range so ``z = qmin`` and, for Clip, ``(qmax - z) s <= max``,
  which is what ORT checks before removing it). A Gemm/MatMul output is quantised only when a
  quantised op consumes it (else QGemm gives float logits).
* Scale-transparent ops (MaxPool, GlobalAveragePool, AveragePool, Flatten, Reshape, Slice, Pad
  with a zero constant or edge/reflect mode, Transpose, Squeeze, Unsqueeze, Identity, nearest
  Resize, every output of Split) between quantised values share their input's scale and zero
  point, so ORT runs them on integers.
* QLinear ops (Concat, Mul of two activations, Sigmoid, LeakyRelu; tables and reasons in
  :mod:`qcompile.passes._qplacement`): every activation input and the output get a QDQ, so ORT
  fuses them into QLinearConcat / QLinearMul / QLinearSigmoid / QLinearLeakyRelu.
* Everything else stays float and is listed in one note ``kept in float: Softmax x1 (before
  the output), ...`` and in the stats as ``float_<op>``.
* Activations are asymmetric: ``s = (hi - lo)/(qmax - qmin)``, ``z = round(qmin - lo/s)``,
  from ``meta[RANGE]`` written by ``calibrate``.

Declines (counted, explained): a non-constant weight or bias, a constant Add operand, nodes in
``keep_float`` (``first``/``last`` = first/last Conv/Gemm/MatMul, or node names), nodes whose
inputs are already quantised. A graph with nothing to quantise is returned unmodified.

``keep_8bit`` (``first``/``last``/node names, for the low-bit budgets): those layers get 8-bit
weights and 8-bit input activations (``int8``/``uint8`` of the same signedness), the usual
choice for the first and last layer at W4A4/W2A4; the 8-bit requirement follows the shared
parameters back through scale-transparent ops (GlobalAveragePool, Flatten ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from qcompile.errors import OptionError, QCompileError
from qcompile.ir import QCOMPILE_DOMAIN, RANGE, Graph, Node, Value
from qcompile.numerics import quant
from qcompile.passes import checks
from qcompile.passes._qplacement import float_summary, resize_is_nearest, select_qlinear
from qcompile.passes.base import Pass, PassContext, PassResult, Stats

WEIGHTED = ("Conv", "Gemm", "MatMul")
TRANSPARENT = ("MaxPool", "GlobalAveragePool", "AveragePool", "Flatten", "Reshape", "Slice",
               "Pad", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Resize", "Split")


@dataclass(frozen=True)
class QParams:
    scale: np.ndarray
    zero_point: np.ndarray
    qt: quant.QType
    axis: int | None = None


@dataclass(frozen=True)
class Quantize(Pass):
    """Insert QDQ nodes for int8 (or int4/16) execution with ORT's fusable placement."""

    name = "quantize"
    target_options = frozenset({"activations", "weights", "reduce_range"})
    summary = "insert qcompile.QDQ nodes (weights per channel, activations, int32 bias)"
    requires = (checks.bn_folded, checks.calibrated)

    weights: Literal["int8", "int4", "int2"] = "int8"
    activations: Literal["uint8", "int8", "uint16", "int16", "uint4", "int4"] = "uint8"
    per_channel: bool = True
    symmetric_weights: bool = True
    reduce_range: bool = False
    keep_float: tuple[str, ...] = ()
    keep_8bit: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.per_channel and not self.symmetric_weights:
            raise OptionError("pass 'quantize': per_channel=true needs symmetric_weights=true "
                              "(QLinearConv rejects per-channel weight zero points)")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        st = Stats()
        act_qt, w_qt = quant.qtype(self.activations), quant.qtype(self.weights)
        declined: dict[Node, str] = {}
        compute = [n for n in graph.nodes if n.domain == "" and n.op in checks.QUANTISABLE_OPS
                   and self._accept(n, st, declined)]
        keep = self._select(graph, compute, self.keep_float, "keep_float")
        for n in keep:
            st.skip("keep_float", f"{n.op} {n.name!r}", "kept in float (keep_float)")
            declined[n] = "keep_float"
        compute = [n for n in compute if n not in keep]
        if not compute:
            st.skip("no_quantisable_op", f"graph {graph.name!r}",
                    "no Conv/Gemm/MatMul with a constant weight or Add of two activations")
            return st.result(graph, False)

        need: dict[Value, None] = {}
        consumers: dict[Value, set[Node]] = {}
        anchors: set[Value] = set()
        clip: dict[Value, tuple[float, float]] = {}

        def want(v: Value, by: Node) -> None:
            need[v] = None
            consumers.setdefault(v, set()).add(by)

        int8: set[Node] = set(compute)
        for n in compute:
            for v in _activation_inputs(n):
                want(v, n)
            if n.op in ("Conv", "Add"):
                out = n.output
                act = checks.fused_activation(out)
                if act is not None and (bounds := activation_bounds(act)) is not None:
                    out = act.output
                    clip[out] = bounds
                    int8.add(act)
                need[out] = None
                anchors.add(out)
        qlinear = select_qlinear(graph, keep, st, declined)
        for n in qlinear:
            for v in n.inputs:
                if v is not None and not v.is_const:
                    want(v, n)
            need[n.output] = None
            anchors.add(n.output)
        int8.update(qlinear)

        inherit = self._propagate(need, consumers)
        int8.update(v.producer for v in inherit if v.producer is not None)
        wide = self._select(graph, compute, self.keep_8bit, "keep_8bit")
        act8 = quant.qtype(("int8" if act_qt.signed else "uint8") if act_qt.bits < 8
                           else act_qt.name)
        wide_values: set[Value] = set()
        for n in wide:
            for v in _activation_inputs(n):
                while v is not None and v not in wide_values:
                    wide_values.add(v)
                    v = inherit.get(v)
        params = self._params(graph, need, inherit, clip, act_qt, st, wide_values, act8)
        p_in = {n: params[n.inputs[0]] for n in compute if n.op in WEIGHTED}  # type: ignore
        for v in sorted(need, key=lambda v: _order(graph, v)):
            targets = {u.node for u in v.uses()} if v in anchors else consumers.get(v, set())
            if not targets:
                continue
            out = _insert_qdq(graph, v, params[v], after=True)
            for use in v.uses():
                if use.node in targets and use.node is not out.producer:
                    use.node.replace_input(use.index, out)
            st.count("qdq_activations")
            if v in inherit:
                st.count("shared_scale")
        for n in compute:
            st.count(f"quantized_{n.op.lower()}")
            if n.op in WEIGHTED:
                wide_w = quant.qtype("int8") if n in wide and w_qt.bits < 8 else w_qt
                self._weights(graph, n, p_in[n], wide_w, st)
        for n in qlinear:
            st.count(f"quantized_{n.op.lower()}")
        floats, note = float_summary(graph, int8, declined, TRANSPARENT)
        for op, k in floats.items():
            st.count(f"float_{op.lower()}", k)
        if note:
            st.notes.insert(0, note)
        return st.result(graph, True)

    # -- selection ----------------------------------------------------------------------
    def _accept(self, n: Node, st: Stats, declined: dict[Node, str] | None = None) -> bool:
        before = len(st.notes)
        ok = self._accept_node(n, st)
        if not ok and declined is not None and len(st.notes) > before:
            declined[n] = st.notes[-1].split(": ", 1)[-1]
        return ok

    def _accept_node(self, n: Node, st: Stats) -> bool:
        where = f"{n.op} {n.name!r}"
        ins = n.inputs
        if any(v is not None and v.producer is not None and v.producer.domain == QCOMPILE_DOMAIN
               for v in ins):
            st.skip("already_quantized", where, "an input is already quantised")
            return False
        if n.op == "Add":
            if any(v is None or v.is_const for v in ins):
                st.skip("const_operand", where, "adds a constant (fold it into the producer)")
                return False
            if not all(v.type.dtype.is_float for v in ins):  # type: ignore[union-attr]
                st.skip("not_float", where, "operands are not floating point")
                return False
            return True
        x, w = ins[0], ins[1]
        if x is None or x.is_const or not x.type.dtype.is_float:
            st.skip("input_not_activation", where, "input 0 is not a float activation")
            return False
        if w is None or not w.is_const or not np.issubdtype(w.const.dtype, np.floating):
            st.skip("weight_not_constant", where, "the weight is not a float constant")
            return False
        b = ins[2] if len(ins) > 2 else None
        if b is not None and not b.is_const:
            st.skip("bias_not_constant", where, "the bias is not a constant")
            return False
        if n.op == "MatMul" and w.const.ndim != 2:
            st.skip("weight_rank", where, "MatMul weight is not 2-D")
            return False
        if n.op == "Gemm":
            if n.attrs.get("transA", 0):
                st.skip("gemm_trans_a", where, "transA=1 is not fused by ORT")
                return False
            if b is not None and b.const.ndim > 1 and b.const.shape[0] != 1:
                st.skip("full_gemm_bias", where, "has a full [M, N] bias")
                return False
        return True

    def _select(self, graph: Graph, compute: list[Node], tokens: tuple[str, ...],
                option: str) -> set[Node]:
        weighted = [n for n in compute if n.op in WEIGHTED]
        keep: set[Node] = set()
        for token in tokens:
            if token == "first":
                keep.update(weighted[:1])
            elif token == "last":
                keep.update(weighted[-1:])
            else:
                node = graph.find_node(token)
                if node is None:
                    names = ", ".join(n.name for n in weighted[:5])
                    raise OptionError(f"pass 'quantize': {option} names no node {token!r}; "
                                      f"use first, last or node names such as {names}")
                keep.add(node)
        return keep

    def _propagate(self, need: dict[Value, None], consumers: dict[Value, set[Node]]
                   ) -> dict[Value, Value]:
        """Backwards through scale-transparent producers: their input shares the params."""
        inherit: dict[Value, Value] = {}
        work = list(need)
        while work:
            v = work.pop()
            p = v.producer
            if p is None or p.domain != "" or p.op not in TRANSPARENT \
                    or (v.index != 0 and p.op != "Split"):
                continue
            u = p.inputs[0]
            if u is None or u.is_const or not u.type.dtype.is_float or RANGE not in u.meta:
                continue
            if (p.op == "Pad" and not _pad_exact(p)) or \
                    (p.op == "Resize" and not resize_is_nearest(p)):
                continue
            inherit[v] = u
            consumers.setdefault(u, set()).add(p)
            if u not in need:
                need[u] = None
                work.append(u)
        return inherit

    def _params(self, graph: Graph, need: dict[Value, None], inherit: dict[Value, Value],
                clip: dict[Value, tuple[float, float]], qt: quant.QType,
                st: Stats, wide: set[Value] | None = None,
                qt8: quant.QType | None = None) -> dict[Value, QParams]:
        params: dict[Value, QParams] = {}
        for v in sorted(need, key=lambda v: _order(graph, v)):
            if v in inherit:
                params[v] = params[inherit[v]]
                continue
            r = v.meta.get(RANGE)
            if r is None:
                raise QCompileError(f"%{v.name} has no calibrated range; run "
                                    "'calibrate' after the passes that change the graph")
            lo, hi = r.lo, r.hi
            if v in clip:
                lo, hi = max(lo, clip[v][0]), min(hi, clip[v][1])
            vqt = qt8 if wide and qt8 is not None and v in wide else qt
            scale, zp = quant.qparams(lo, hi, vqt)
            if v in clip:
                scale = quant.fit_scale_within(scale, zp, vqt, *clip[v])
            params[v] = QParams(scale, zp, vqt)
        return params

    # -- weights and bias ---------------------------------------------------------------
    def _weights(self, graph: Graph, n: Node, p_in: QParams, w_qt: quant.QType,
                 st: Stats) -> None:
        w = n.inputs[1]
        assert w is not None and w.const is not None
        if n.op == "Conv":
            axis = 0
        elif n.op == "Gemm":
            axis = 0 if n.attrs.get("transB", 0) else 1
        else:
            axis = w.const.ndim - 1
        axis_or_none = axis if self.per_channel else None
        lo, hi = quant.channel_minmax(w.const, axis_or_none)
        sym = self.symmetric_weights or self.per_channel
        scale, zp = quant.qparams(lo, hi, w_qt, symmetric=sym, reduce_range=self.reduce_range)
        pw = QParams(scale, zp, w_qt, axis_or_none)
        n.replace_input(1, _insert_qdq(graph, w, pw, before=n))
        st.count("qdq_weights")
        b = n.inputs[2] if len(n.inputs) > 2 else None
        if b is None:
            return
        assert b.const is not None
        s_b, z_b = quant.bias_qparams(p_in.scale, scale)
        cout = w.const.shape[axis]
        if b.const.size != cout or b.const.ndim != 1:  # e.g. a Gemm bias of shape [1] or [1, N]
            b = graph.add_const(f"{b.name}_expanded", np.broadcast_to(
                b.const.reshape(-1), (cout,)).astype(b.const.dtype).copy())
        pb = QParams(s_b, z_b, quant.qtype("int32"), 0 if s_b.ndim else None)
        n.replace_input(2, _insert_qdq(graph, b, pb, before=n))
        st.count("qdq_bias")


def quantisable_nodes(graph: Graph) -> list[Node]:
    """Nodes ``quantize`` would quantise with default options (declines not recorded)."""
    q = Quantize()
    return [n for n in graph.nodes if n.domain == "" and n.op in checks.QUANTISABLE_OPS
            and q._accept(n, Stats())]


def _activation_inputs(n: Node) -> list[Value]:
    if n.op == "Add":
        return [v for v in n.inputs if v is not None]
    return [n.inputs[0]]  # type: ignore[list-item]


def activation_bounds(act: Node) -> tuple[float, float] | None:
    """``(lo, hi)`` the fused activation clamps to, or None when it cannot be fused."""
    if act.op == "Relu":
        return 0.0, float("inf")
    lo, hi = -float("inf"), float("inf")
    if "min" in act.attrs or "max" in act.attrs:  # Clip-6 attributes
        lo, hi = float(act.attrs.get("min", lo)), float(act.attrs.get("max", hi))
    for i, v in enumerate(act.inputs[1:3], start=1):
        if v is None:
            continue
        if not v.is_const:
            return None
        if i == 1:
            lo = float(v.const)
        else:
            hi = float(v.const)
    if lo > 0:  # zero must stay representable; ORT only removes Clip(lo <= 0, ...)
        return None
    return lo, hi


def _pad_exact(p: Node) -> bool:
    mode = p.attrs.get("mode", "constant")
    if isinstance(mode, bytes):
        mode = mode.decode()
    if mode != "constant":
        return True
    cv = p.inputs[2] if len(p.inputs) > 2 else None
    if cv is None:
        return float(p.attrs.get("value", 0.0)) == 0.0
    return cv.is_const and bool(np.all(np.asarray(cv.const) == 0))


def _order(graph: Graph, v: Value) -> int:
    return -1 if v.producer is None else graph.position(v.producer)


def _insert_qdq(graph: Graph, x: Value, p: QParams, *, after: bool = False,
                before: Node | None = None) -> Value:
    """Create ``QDQ(x, scale, zero_point)``; place it after x's producer or before ``before``."""
    base = x.name
    s = graph.add_const(f"{base}.scale", np.asarray(p.scale, np.float32))
    z = graph.add_const(f"{base}.zero_point", np.asarray(p.zero_point, p.qt.storage))
    attrs: dict[str, int] = {"bits": p.qt.bits, "signed": int(p.qt.signed)}
    if p.axis is not None:
        attrs["axis"] = int(p.axis)
    node = Node("QDQ", [x, s, z], [x.type], attrs=attrs, domain=QCOMPILE_DOMAIN,
                name=f"{base}_qdq", output_names=[f"{base}_dq"])
    if before is not None:
        graph.insert_before(before, node)
    elif x.producer is not None:
        graph.insert_after(x.producer, node)
    else:
        graph.insert_before(graph.nodes[0], node)
    return node.output
