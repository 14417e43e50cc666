"""``dequantize``: turn a quantised graph back into its float equivalent, so it can be
re-quantised with our passes (``-p dequantize,fold,calibrate,quantize``, issue 13).

The float equivalent keeps every weight at its dequantised value and drops every activation
rounding: for a code tensor ``q`` with scale ``s`` and zero point ``z`` (per tensor or per
axis) the float constant is ``DQ(q) = (q - z) * s`` in float32 (ONNX DequantizeLinear,
:func:`qcompile.numerics.quant.dequantize`).  The forms, matched in this order:

1. **QOperator** ops are first written as QDQ: each code input ``(q, s, z)`` becomes
   ``DequantizeLinear(q, s, z)`` (a constant ``q`` becomes the float constant ``DQ(q)``), the
   float op runs, and ``QuantizeLinear(., s_y, z_y)`` restores the code output.  Float ops:
   QLinearConv -> Conv (bias ``B`` int32 in units of ``s_x s_w``: ``DQ(B; s_x s_w, 0)``),
   QLinearMatMul -> MatMul, com.microsoft QGemm -> Gemm (``C`` in units of
   ``alpha s_a s_b``, beta 1; without ``s_y`` the output is float and no Q is added),
   QLinearAdd/QLinearMul -> Add/Mul, QLinearGlobalAveragePool (channels_last 0) ->
   GlobalAveragePool, QLinearConcat -> Concat, QLinearSigmoid -> Sigmoid.
2. **Dynamic**: ``DynamicQuantizeLinear(x) -> (y, s_x, z_x)``, ``ConvInteger(y, W, z_x, z_w)``
   (or MatMulInteger) ``-> Cast(float) -> Mul(., s_x * s_w)`` is ``Conv(x, DQ(W))``
   (MatMul): ``s_x s_w (y - z_x)(W - z_w) = (x rounded) * DQ(W)``; the rounding of ``x`` is
   what the float equivalent drops.  Any later bias Add stays.
3. **Weights**: ``DequantizeLinear`` of a constant becomes the float constant ``DQ(q)``.
4. **Activation pairs**: ``Q -> L -> DQ`` with ``L`` a layout op or MaxPool (per-tensor DQ
   commutes with it) becomes ``Q -> DQ -> L``; then a ``QuantizeLinear`` whose users are all
   ``DequantizeLinear`` is removed with them and their users read the Q's float input.  A Q
   with ``z = qmin`` clamps at exactly 0, which is how ORT writes a Relu it removed: the pair
   becomes ``Relu`` (unless its input is already a Relu output, pooled or reshaped).  The
   upper saturation is dropped with the rounding (it is the calibrated range).

Declines (counted, with a note): QOperator ops without a float rewrite here, channels_last
pooling, DQ with ``block_size``, a dynamic chain whose rescale is not ``Cast -> Mul(s_x s_w)``,
a Q whose output also reaches a non-DQ user or a graph output (the codes are observable).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qcompile.ir import DType, Graph, Node, TensorType, Value
from qcompile.numerics.quant import dequantize
from qcompile.passes.base import Pass, PassContext, PassResult, Stats

MS = "com.microsoft"
QOPERATOR = ("QLinearConv", "QLinearMatMul", "QGemm", "QLinearAdd", "QLinearMul",
             "QLinearGlobalAveragePool", "QLinearConcat", "QLinearSigmoid",
             "QLinearAveragePool", "QLinearLeakyRelu", "QLinearSoftmax", "QLinearReduceMean",
             "QLinearWhere", "QAttention")
DYNAMIC = ("DynamicQuantizeLinear", "ConvInteger", "MatMulInteger")


def quantised_ops(graph: Graph) -> int:
    """How many QuantizeLinear, QOperator and dynamic-quantisation ops ``graph`` holds (what
    ``run`` refuses to re-quantise without ``dequantize``)."""
    return sum(n.op == "QuantizeLinear" or n.op in QOPERATOR or n.op in DYNAMIC
               for n in graph.nodes)


def _f32(v: Value) -> TensorType:
    # an unknown shape stays unknown (as lift leaves it): lowering then lets ONNX infer it
    return TensorType(DType.FLOAT if v.type.shape is not None else DType.UNDEFINED,
                      v.type.shape)


def _qmin(t: DType) -> int:
    if t in (DType.INT4, DType.UINT4):
        return -8 if t == DType.INT4 else 0
    return int(np.iinfo(t.to_numpy()).min)


def _shape(fop: str, args: list[Value], attrs: dict, known: tuple | None) -> tuple | None:
    """The float op's output shape when the QOperator output had none (com.microsoft ops are
    not shape-inferred): elementwise ops keep their input's, pooling keeps N, C."""
    if known is not None:
        return known
    shapes = [a.type.shape for a in args]
    if any(s is None for s in shapes):
        return None
    if fop in ("Sigmoid",):
        return shapes[0]
    if fop == "GlobalAveragePool":
        return tuple(shapes[0][:2]) + (1,) * (len(shapes[0]) - 2)
    if fop in ("Add", "Mul"):
        r = max(len(s) for s in shapes)
        pad = [(1,) * (r - len(s)) + tuple(s) for s in shapes]
        return tuple(next((d for d in ds if d != 1), 1) for ds in zip(*pad))
    if fop == "Concat":
        ax = attrs["axis"] % len(shapes[0])
        if not all(isinstance(s[ax], int) for s in shapes):
            return None
        return tuple(shapes[0][:ax]) + (sum(s[ax] for s in shapes),) + tuple(shapes[0][ax + 1:])
    return None


def _const(v: Value | None) -> np.ndarray | None:
    return None if v is None or not v.is_const else np.asarray(v.const)


def _float_input(g: Graph, at: Node, q: Value, s: Value, z: Value | None,
                 axis: int | None = None) -> Value:
    """``DQ(q; s, z)``: a float constant when ``q`` is constant, else a DequantizeLinear."""
    if q.is_const:
        sc = np.asarray(s.const, np.float32)
        zp = np.zeros(1, np.int32) if z is None else np.asarray(z.const)
        ax = None if sc.size == 1 and zp.size == 1 else axis
        shape = (-1,) if ax is not None else ()
        arr = dequantize(np.asarray(q.const), sc.reshape(shape), zp.reshape(shape), ax)
        return g.add_const(q.name + "_dequantized", arr)
    dq = Node("DequantizeLinear", [q, s] + ([z] if z is not None else []), [_f32(q)],
              name=q.name + "_dq")
    g.insert_before(at, dq)
    return dq.output


def _qoperator(g: Graph, n: Node) -> str | None:
    """Write QOperator ``n`` as DQ -> float op -> Q (module doc, 1); None, or why not."""
    op, ins, a = n.op, list(n.inputs) + [None] * 9, n.attrs
    fin = lambda q, s, z, ax=None: _float_input(g, n, q, s, z, ax)  # noqa: E731
    out_q: tuple[Value, Value | None] | None
    if op in ("QLinearConv", "QLinearMatMul", "QGemm"):
        if any(v is None or not v.is_const for v in (ins[1], ins[4])):
            return "a scale is not a constant"
        x = fin(ins[0], ins[1], ins[2])
        sx, sw = np.asarray(ins[1].const, np.float32), np.asarray(ins[4].const, np.float32)
        if op == "QLinearConv":
            w = fin(ins[3], ins[4], ins[5], 0)
            bias = ins[8]
            out_q = (ins[6], ins[7])
            fop, attrs, unit = "Conv", dict(a), (sx * sw).astype(np.float32)
        elif op == "QLinearMatMul":
            w = fin(ins[3], ins[4], ins[5], 1 if ins[3].is_const and ins[3].const.ndim == 2
                    else -1)
            bias, out_q, fop, attrs, unit = None, (ins[6], ins[7]), "MatMul", {}, None
        else:
            alpha = float(a.get("alpha", 1.0))
            w = fin(ins[3], ins[4], ins[5], 0 if a.get("transB", 0) else 1)
            bias = ins[6]
            out_q = (ins[7], ins[8]) if ins[7] is not None else None
            attrs = {k: a[k] for k in ("alpha", "transA", "transB") if k in a}
            fop, unit = "Gemm", (np.float32(alpha) * sx * sw).astype(np.float32)
        args = [x, w]
        if bias is not None:
            if not bias.is_const:
                return "the bias is not a constant"
            b = dequantize(np.asarray(bias.const), unit.reshape(-1) if unit.size > 1
                           else unit.reshape(()), np.zeros(1, np.int32).reshape(()),
                           0 if unit.size > 1 else None)
            args.append(g.add_const(bias.name + "_dequantized", b))
    elif op in ("QLinearAdd", "QLinearMul"):
        args = [fin(ins[0], ins[1], ins[2]), fin(ins[3], ins[4], ins[5])]
        out_q, fop, attrs = (ins[6], ins[7]), op[len("QLinear"):], {}
    elif op in ("QLinearGlobalAveragePool", "QLinearSigmoid"):
        if int(a.get("channels_last", 0)):
            return "channels_last pooling (NHWC) has no float GlobalAveragePool"
        args = [fin(ins[0], ins[1], ins[2])]
        out_q, fop, attrs = (ins[3], ins[4]), op[len("QLinear"):], {}
    elif op == "QLinearConcat":
        rest = list(n.inputs)[2:]
        if len(rest) % 3:
            return f"{len(rest)} inputs after y_scale, y_zero_point (not triples)"
        args = [fin(rest[i], rest[i + 1], rest[i + 2]) for i in range(0, len(rest), 3)]
        out_q, fop, attrs = (ins[0], ins[1]), "Concat", {"axis": int(a["axis"])}
    else:
        return f"no float rewrite for {n.qualified_op}"
    y = n.outputs[0]
    shape = _shape(fop, args, attrs, y.type.shape)
    dt = y.type.dtype
    if dt == DType.UNDEFINED and out_q is not None and shape is not None:
        dt = out_q[1].type.dtype if out_q[1] is not None else DType.UINT8  # com.microsoft
    y.type = TensorType(dt, shape)
    f = Node(fop, args, [_f32(y)], attrs=attrs, name=n.name + "_float")
    g.insert_before(n, f)
    new = f.output
    if out_q is not None:
        q = Node("QuantizeLinear", [new, out_q[0]] + ([out_q[1]] if out_q[1] is not None else []),
                 [y.type], name=n.name + "_q")
        g.insert_before(n, q)
        new = q.output
    g.replace_value(y, new)
    g.remove(n, drop_dead_consts=True)
    return None


def _dynamic(g: Graph, n: Node) -> str | None:
    """``DQL -> ConvInteger/MatMulInteger -> Cast -> Mul(s_x s_w)`` as a float Conv/MatMul."""
    y, w, zx = n.inputs[0], n.inputs[1], n.inputs[2] if len(n.inputs) > 2 else None
    dql = y.producer if y is not None else None
    if dql is None or dql.op != "DynamicQuantizeLinear" or y is not dql.outputs[0] \
            or (zx is not None and zx is not dql.outputs[2]):
        return "the activation input is not a DynamicQuantizeLinear output"
    if not w.is_const:
        return "the weight is not a constant"
    cast = n.output.consumers()
    if len(cast) != 1 or cast[0].op != "Cast" or int(cast[0].attrs.get("to", 0)) != DType.FLOAT \
            or n.output in g.outputs:
        return "the accumulator is not cast to float once"
    mul = cast[0].output.consumers()
    if len(mul) != 1 or mul[0].op != "Mul" or cast[0].output in g.outputs:
        return "the cast accumulator is not rescaled by one Mul"
    sv = [v for v in mul[0].inputs if v is not cast[0].output][0]
    sm = sv.producer
    ws = None
    if sm is not None and sm.op == "Mul" and dql.outputs[1] in sm.inputs:
        ws = _const([v for v in sm.inputs if v is not dql.outputs[1]][0])
    if ws is None:
        return "the rescale is not Mul(s_x, constant s_w)"
    zw = _const(n.inputs[3]) if len(n.inputs) > 3 and n.inputs[3] is not None else None
    zw = np.zeros(1, np.int32) if zw is None else zw
    ws = np.asarray(ws, np.float32)
    # per output channel: Conv weight axis 0, MatMul weight's last axis (columns)
    axis = (0 if n.op == "ConvInteger" else w.const.ndim - 1) \
        if ws.size > 1 or zw.size > 1 else None
    shape = (-1,) if axis is not None else ()
    wf = dequantize(np.asarray(w.const), ws.reshape(shape), zw.reshape(shape), axis)
    fop = "Conv" if n.op == "ConvInteger" else "MatMul"
    out = mul[0].output
    f = Node(fop, [dql.inputs[0], g.add_const(w.name + "_dequantized", wf)], [_f32(out)],
             attrs=dict(n.attrs), name=n.name + "_float")
    g.insert_before(mul[0], f)
    g.replace_value(out, f.output)
    for dead in (mul[0], cast[0], n):
        g.remove(dead, drop_dead_consts=True)
    if sm is not None and sm.graph is g and not sm.output.uses() and sm.output not in g.outputs:
        g.remove(sm, drop_dead_consts=True)
    if all(not o.uses() and o not in g.outputs for o in dql.outputs):
        g.remove(dql)
    return None


def _nonnegative(v: Value, depth: int = 0) -> bool:
    """``v`` is a Relu output, or pooled, sliced, zero-padded or reshaped from one (another
    Relu would be redundant)."""
    n = v.producer
    if n is None or depth > 8:
        return False
    if n.op == "Relu":
        return True
    if n.op == "Pad":  # zero padding keeps the sign
        c = n.inputs[2] if len(n.inputs) > 2 else None
        if n.attrs.get("mode", "constant") not in ("constant", b"constant") or (
                c is not None and not (c.is_const and np.all(np.asarray(c.const) == 0))):
            return False
    elif n.op not in ("GlobalAveragePool", "AveragePool", "MaxPool", "Flatten", "Reshape",
                      "Slice", "Transpose", "Squeeze", "Unsqueeze", "Identity"):
        return False
    return _nonnegative(n.inputs[0], depth + 1)


LAYOUT = ("Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "MaxPool")


def _hoist(g: Graph, d: Node) -> bool:
    """``Q -> L -> DQ`` with L a layout op (or MaxPool: monotone) and per-tensor parameters is
    ``Q -> DQ -> L`` (L moves codes, DQ is elementwise and increasing): rewrite it so, making
    the Q/DQ pair adjacent."""
    lay = d.inputs[0].producer
    if lay is None or lay.op not in LAYOUT or lay.domain != "" or len(lay.outputs) != 1:
        return False
    src = lay.inputs[0]
    if src.producer is None or src.producer.op != "QuantizeLinear" or \
            any(u.op != "DequantizeLinear" for u in lay.output.consumers()) or \
            not d.inputs[1].is_const or np.asarray(d.inputs[1].const).size != 1:
        return False
    dq = Node("DequantizeLinear", [src] + list(d.inputs[1:]), [_f32(src)], name=d.name + "_pre")
    g.insert_before(lay, dq)
    fl = Node(lay.op, [dq.output] + list(lay.inputs[1:]), [_f32(lay.output)],
              attrs=dict(lay.attrs), name=lay.name + "_float")
    g.insert_before(lay, fl)
    if d.output in g.outputs and fl.output.type.shape is None:
        fl.output.type = d.output.type
    g.replace_value(d.output, fl.output)
    g.remove(d)
    if not lay.output.uses() and lay.output not in g.outputs:
        g.remove(lay)
    return True


@dataclass(frozen=True)
class Dequantize(Pass):
    """Turn a quantised graph (QDQ, QOperator, dynamic) back into its float equivalent."""

    name = "dequantize"
    summary = "quantised graph -> float graph with the dequantised weights (to re-quantise)"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        st = Stats()
        modified = False
        for n in list(graph.nodes):
            if n.op in QOPERATOR and n.domain in ("", MS):
                why = _qoperator(graph, n)
                if why is None:
                    st.count("qoperator_rewritten")
                    modified = True
                else:
                    st.skip("qoperator", f"{n.qualified_op} {n.name!r}", why)
        for n in list(graph.nodes):
            if n.op in ("ConvInteger", "MatMulInteger") and n.domain == "":
                why = _dynamic(graph, n)
                if why is None:
                    st.count("dynamic_rewritten")
                    modified = True
                else:
                    st.skip("dynamic", f"{n.op} {n.name!r}", why)
        for n in list(graph.nodes):
            if n.op != "DequantizeLinear" or not n.inputs[0].is_const:
                continue
            if "block_size" in n.attrs and int(n.attrs["block_size"]):
                st.skip("blocked", f"DequantizeLinear {n.name!r}", "blocked quantisation "
                        "(block_size) is not dequantised here")
                continue
            z = n.inputs[2] if len(n.inputs) > 2 else None
            if not n.inputs[1].is_const or (z is not None and not z.is_const):
                st.skip("params", f"DequantizeLinear {n.name!r}", "scale or zero point is not "
                        "a constant")
                continue
            ndim = n.inputs[0].const.ndim
            c = _float_input(graph, n, n.inputs[0], n.inputs[1], z,
                             int(n.attrs.get("axis", 1)) % max(ndim, 1))
            graph.replace_value(n.output, c)
            graph.remove(n, drop_dead_consts=True)
            st.count("weights_dequantized")
            modified = True
        for d in list(graph.nodes):
            if d.op == "DequantizeLinear" and _hoist(graph, d):
                st.count("layout_hoisted")
        for q in list(graph.nodes):
            if q.op != "QuantizeLinear":
                continue
            users = q.output.consumers()
            if q.output in graph.outputs or any(u.op != "DequantizeLinear" for u in users):
                st.skip("codes_used", f"QuantizeLinear {q.name!r}", "its codes reach "
                        + ("a graph output" if q.output in graph.outputs else
                           ", ".join(sorted({u.qualified_op for u in users
                                             if u.op != "DequantizeLinear"}))))
                continue
            x = q.inputs[0]
            z = q.inputs[2] if len(q.inputs) > 2 else None
            zp = np.zeros(1, np.uint8) if z is None else np.asarray(z.const) if z.is_const \
                else None
            low = zp is not None and bool(np.all(zp == _qmin(
                z.type.dtype if z is not None else DType.UINT8)))
            if low and not _nonnegative(x):
                # z = qmin: the Q clamps at exactly 0 (ORT drops the Relu it replaces)
                relu = Node("Relu", [x], [x.type], name=q.name + "_relu")
                graph.insert_before(q, relu)
                x = relu.output
                st.count("relu_restored")
            for dq in users:
                if dq.output in graph.outputs and x.type.shape is None:
                    x.type = dq.output.type  # keep the declared output type
                graph.replace_value(dq.output, x)
                graph.remove(dq, drop_dead_consts=True)
            graph.remove(q, drop_dead_consts=True)
            st.count("pairs_removed")
            modified = True
        return st.result(graph, modified)
