"""``exact_integer_graph``: rewrite a QDQ graph so the MPFR backend computes *the exact quantised
network*.

Definition (what ``qcompile verify`` compares ONNX Runtime against): every integer tensor (the
output of a QuantizeLinear) is ``saturate(round_half_even(v) + z)`` where ``v`` is the EXACT
real value of the float subgraph between the quantised tensors it reads, in steps of its
scale.  The float ops in between are not rounded at all: only the final quantisation rounds,
once.  That is what an integer kernel with an exact requantiser computes, and what ONNX
Runtime's float32 QDQ path and its fused QLinear kernels approximate.

To evaluate it with exact integer kernels (:mod:`ops_qdq`) each arithmetic pattern that ends
in a QuantizeLinear is replaced by one fused node (names of the integer tensors are kept):

* ``Q([Relu|Clip](Conv(DQ x, DQ w [, DQ b])))`` -> ``QLinearConv`` with the bias in its own
  scale (input 10, ``B_scale``: the QDQ graph's bias scale is the float32 product
  ``s_x s_w`` rounded, not the exact product ORT's fused kernel assumes) and ``qc_clamp``;
* ``Q([Relu|Clip](MatMul|Gemm(DQ a, DQ w [, DQ b])))`` -> ``QLinearMatMul`` (+ bias inputs);
* ``Q([Relu|Clip](Add(DQ a, DQ b)))`` -> ``QLinearAdd``;  ``Q(GlobalAveragePool(DQ x))``
  -> ``QLinearGlobalAveragePool``.

A Relu is exact in the integer domain because rounding is monotone:
``Q(max(v, 0)) = max(Q(v), Q(0))`` (``Q(0) = z`` saturated); Clip likewise with ``Q(lo)``,
``Q(hi)``.  Everything else is left as it is: DQ, data movement (MaxPool, Flatten, Pad ...),
and float ops outside these patterns (the float logits' Gemm) run with the float kernels in
the interpreter's format; with binary64 the DQ values and data movement are exact, so only
unmatched *arithmetic* rounds (reported in ``stats['float_ops']``).  A DQ -> Gemm/MatMul whose
output stays float (logits) becomes ``QLinearMatMul{qc_float_out}``: the exact value, rounded
to binary64 once.  QuantizeLinear nodes with a 4-bit zero point get ONNX's ``output_dtype``
(the IR widens 4-bit constants to 8 bits), fused nodes ``qc_output_dtype``, so they saturate
to the 4-bit range.
"""

from __future__ import annotations

import numpy as np

from qcompile.ir import Graph, Node, Value
from qcompile.numerics.qdq_exact import qtype_of_array, quantize_exact_ref

MS = "com.microsoft"


def _const(v: Value | None):
    return None if v is None or v.const is None else np.asarray(v.const)


def _dq(v: Value | None, *, per_tensor: bool = False):
    """(q, scale, zp-or-None, axis) when ``v`` is a DequantizeLinear output with constant
    parameters (and a per-tensor scale when asked), else None."""
    n = v.producer if v is not None else None
    if n is None or n.op != "DequantizeLinear":
        return None
    ins = list(n.inputs) + [None] * (3 - len(n.inputs))
    q, s, z = ins[:3]
    if _const(s) is None or (z is not None and _const(z) is None):
        return None
    if per_tensor and _const(s).size != 1:
        return None
    return q, s, z, n.attrs.get("axis", 1)


def _single(v: Value, g: Graph) -> Node | None:
    """The producer of ``v`` when ``v`` has exactly one use and is no graph output."""
    if v.producer is None or len(v.uses()) != 1 or v in g.outputs:
        return None
    return v.producer


class _Fuser:
    def __init__(self, g: Graph) -> None:
        self.g = g
        self.stats = {"fused": {}, "float_ops": {}}

    def zp(self, z: Value | None) -> Value:
        return z if z is not None else self.g.add_const("qc_zero_u8", np.zeros((), np.uint8))

    def clamp_of(self, act: Node | None, ys, yz, qn: Node) -> tuple[int, int] | None:
        qt = qtype_of_array(_const(yz) if yz is not None else None,
                            qn.attrs.get("output_dtype"))
        z = 0 if yz is None else int(_const(yz).reshape(-1)[0])
        s = _const(ys).reshape(-1)[0]
        if act is None:
            return None
        if act.op == "Relu":
            return (max(qt.qmin, min(qt.qmax, z)), qt.qmax)
        extra = list(act.inputs[1:]) + [None, None]
        lo = -np.inf if extra[0] is None else float(_const(extra[0]).reshape(-1)[0])
        hi = np.inf if extra[1] is None else float(_const(extra[1]).reshape(-1)[0])
        lo = float(act.attrs.get("min", lo))
        hi = float(act.attrs.get("max", hi))
        return (quantize_exact_ref(lo, s, z, qt), quantize_exact_ref(hi, s, z, qt))

    def fuse(self, qn: Node) -> bool:
        g = self.g
        ins = list(qn.inputs) + [None] * (3 - len(qn.inputs))
        y, ys, yz = ins[:3]
        if _const(ys) is None or _const(ys).size != 1 or (yz is not None and _const(yz) is None):
            return False
        if yz is None:
            return False
        core = _single(y, g)
        act = None
        if core is not None and core.op in ("Relu", "Clip") and not any(
                v is not None and v.const is None for v in core.inputs[1:]):
            act, core = core, _single(core.inputs[0], g)
        if core is None:
            return False
        clamp = self.clamp_of(act, ys, yz, qn)
        if act is not None and clamp is None:
            return False
        attrs = {} if clamp is None else {"qc_clamp": clamp}
        if qn.attrs.get("output_dtype"):
            attrs["qc_output_dtype"] = int(qn.attrs["output_dtype"])
        if core.op == "Conv" and len(core.inputs) >= 2:
            x, w = _dq(core.inputs[0], per_tensor=True), _dq(core.inputs[1])
            b = _dq(core.inputs[2]) if len(core.inputs) > 2 and core.inputs[2] else None
            if x is None or w is None or w[0].const is None or (
                    len(core.inputs) > 2 and core.inputs[2] is not None and b is None):
                return False
            inputs = [x[0], x[1], self.zp(x[2]), w[0], w[1], self.zp(w[2]), ys, yz]
            if b is not None:
                inputs += [b[0], b[1]]
            node = Node("QLinearConv", inputs, [qn.output.type], attrs={**core.attrs, **attrs},
                        domain=MS, name=f"{qn.name}_exact")
        elif core.op in ("MatMul", "Gemm"):
            got = self._matmul_inputs(core)
            if got is None:
                return False
            node = Node("QLinearMatMul", got[0] + [ys, yz] + got[1], [qn.output.type],
                        attrs=attrs, domain=MS, name=f"{qn.name}_exact")
        elif core.op == "Add":
            a, b = (_dq(v, per_tensor=True) for v in core.inputs)
            if a is None or b is None:
                return False
            node = Node("QLinearAdd", [a[0], a[1], self.zp(a[2]), b[0], b[1], self.zp(b[2]),
                                       ys, yz], [qn.output.type], attrs=attrs, domain=MS,
                        name=f"{qn.name}_exact")
        elif core.op == "GlobalAveragePool" and act is None:
            x = _dq(core.inputs[0], per_tensor=True)
            if x is None:
                return False
            node = Node("QLinearGlobalAveragePool", [x[0], x[1], self.zp(x[2]), ys, yz],
                        [qn.output.type], domain=MS, name=f"{qn.name}_exact")
        else:
            return False
        name = qn.output.name
        g.insert_before(qn, node)
        g.replace_value(qn.output, node.output)
        for dead in (qn, act, core):
            if dead is not None:
                g.remove(dead, drop_dead_consts=True)
        self._drop_dead()  # the DQ nodes that fed only this pattern
        node.output.name = name
        key = node.op
        self.stats["fused"][key] = self.stats["fused"].get(key, 0) + 1
        return True

    def _matmul_inputs(self, core: Node):
        """[a, sa, za, w, sw, zw] and the bias pair, or None (DQ inputs, constant weight)."""
        a = core.attrs
        if core.op == "Gemm" and (int(a.get("transA", 0)) or float(a.get("alpha", 1)) != 1
                                  or float(a.get("beta", 1)) != 1):
            return None
        x, w = _dq(core.inputs[0], per_tensor=True), _dq(core.inputs[1])
        b = _dq(core.inputs[2]) if len(core.inputs) > 2 and core.inputs[2] else None
        if x is None or w is None or w[0].const is None or w[0].const.ndim != 2 or (
                len(core.inputs) > 2 and core.inputs[2] is not None and b is None):
            return None
        wq = w[0]
        if core.op == "Gemm" and int(a.get("transB", 0)):
            wq = self.g.add_const(w[0].name + "_T", np.ascontiguousarray(w[0].const.T))
        return [x[0], x[1], self.zp(x[2]), wq, w[1], self.zp(w[2])], (
            [] if b is None else [b[0], b[1]])

    def fuse_float_matmul(self, core: Node) -> bool:
        """DQ -> Gemm/MatMul with a float output (e.g. logits): the exact value, rounded to
        binary64 once (QLinearMatMul with ``qc_float_out``)."""
        got = self._matmul_inputs(core)
        if got is None:
            return False
        ins, bias = got
        node = Node("QLinearMatMul", ins + [None, None] + bias, [core.output.type],
                    attrs={"qc_float_out": 1}, domain=MS, name=f"{core.name}_exact")
        name = core.output.name
        self.g.insert_before(core, node)
        self.g.replace_value(core.output, node.output)
        self.g.remove(core, drop_dead_consts=True)
        self._drop_dead()
        node.output.name = name
        self.stats["fused"]["QLinearMatMul(float)"] = \
            self.stats["fused"].get("QLinearMatMul(float)", 0) + 1
        return True

    def _drop_dead(self) -> None:
        g = self.g
        changed = True
        while changed:
            changed = False
            for n in reversed(g.nodes):
                if all(not o.uses() and o not in g.outputs for o in n.outputs):
                    g.remove(n, drop_dead_consts=True)
                    changed = True


def annotate_4bit(g: Graph) -> None:
    """The IR stores int4/uint4 zero points widened to int8/uint8: give each QuantizeLinear
    with a 4-bit zero point (by its value type) ONNX's ``output_dtype`` so the kernels
    saturate to the 4-bit range."""
    for n in g.nodes:
        if n.op == "QuantizeLinear" and len(n.inputs) > 2 and n.inputs[2] is not None:
            code = int(n.inputs[2].type.dtype.value)
            if code in (21, 22) and not n.attrs.get("output_dtype"):
                n.attrs["output_dtype"] = code


_ARITH = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Sub", "Mul", "Div",
          "GlobalAveragePool", "AveragePool", "BatchNormalization", "Sigmoid", "Tanh",
          "Softmax", "LeakyRelu", "Sqrt", "Exp", "InstanceNormalization")


def exact_integer_graph(graph: Graph) -> tuple[Graph, dict]:
    """A copy of ``graph`` with the QDQ patterns fused into exact integer ops (see module doc).
    Returns (graph, stats): ``stats['fused']`` {op: count}, ``stats['float_ops']`` {op: count}
    of the float arithmetic left (rounded in the interpreter's format)."""
    g = graph.clone()
    annotate_4bit(g)
    f = _Fuser(g)
    for qn in [n for n in g.nodes if n.op == "QuantizeLinear"]:
        if qn.graph is g:
            f.fuse(qn)
    for mm in [n for n in g.nodes if n.op in ("Gemm", "MatMul")]:
        f.fuse_float_matmul(mm)
    for n in g.nodes:
        if n.op in _ARITH:
            f.stats["float_ops"][n.op] = f.stats["float_ops"].get(n.op, 0) + 1
    return g, f.stats
