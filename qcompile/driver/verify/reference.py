"""``qcompile verify --reference FORMAT``: the quantised model against the float model.

The float model is ``--float MODEL`` (the FP32 original) or, by default, the QDQ model with its
Q/DQ pairs removed: activations flow unquantised, weights and biases are the *dequantised
quantised* weights (the original float weights are not in a QDQ file), so the comparison
isolates activation quantisation plus the weights' rounding only where ``--float`` is given.

It runs on the MPFR backend in FORMAT (any ``--format`` name or spec ``qcompile emulate``
accepts, e.g. ``fp32``, ``bf16``, ``p=11,emin=-14,emax=15``), or ``fp64``: IEEE binary64 with
numpy/BLAS (every operation rounded to binary64, BLAS summation order: the MPFR engines would
delegate binary64 products element by element to gmpy2, far too slow for a network; the
order changes results by ~1e-16 relative, nothing an SQNR can see).

Reported: SQNR of the quantised model's logits (ONNX Runtime) against the float model's and
top-1 agreement; with ``--layers`` the SQNR of every quantised tensor (dequantised) against
the float value it quantises, as a :class:`qcompile.driver.report.SqnrReport` (markdown / PNG).
"""

from __future__ import annotations

import numpy as np

from qcompile.backends.mpfr import Interpreter, make_config
from qcompile.driver.report import SqnrReport
from qcompile.errors import OptionError
from qcompile.ir import Graph
from qcompile.numerics import quant
from qcompile.numerics.error import SqnrAccumulator

FP64 = ("fp64", "binary64", "double", "float64")


def strip_qdq(graph: Graph) -> Graph:
    """A float copy of a QDQ graph: constant DQ -> its float32 value; Q -> DQ -> identity."""
    g = graph.clone()
    for n in list(g.nodes):
        if n.op == "DequantizeLinear" and n.inputs[0] is not None and n.inputs[0].is_const:
            s = np.asarray(n.inputs[1].const)
            z = None if len(n.inputs) < 3 or n.inputs[2] is None else n.inputs[2].const
            z = np.zeros(s.shape, np.int64) if z is None else np.asarray(z)
            axis = int(n.attrs.get("axis", 1)) if s.size > 1 else None
            c = g.add_const(n.output.name + "_float",
                            quant.dequantize(n.inputs[0].const, s, z, axis))
            g.replace_value(n.output, c)
            g.remove(n, drop_dead_consts=True)
    for n in list(g.nodes):
        if n.op == "QuantizeLinear" and all(u.node.op == "DequantizeLinear"
                                            for u in n.output.uses()):
            for dq in n.output.consumers():
                g.replace_value(dq.output, n.inputs[0])
                g.remove(dq, drop_dead_consts=True)
            if not n.output.uses() and n.output not in g.outputs:
                g.remove(n, drop_dead_consts=True)
    return g


class _F64:
    """Native binary64 arithmetic with the FastArith interface the fast kernels call."""

    def round(self, x):
        return np.asarray(x, np.float64)

    def add(self, a, b):
        return np.add(a, b)

    def sub(self, a, b):
        return np.subtract(a, b)

    def mul(self, a, b):
        return np.multiply(a, b)

    def div(self, a, b):
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.divide(a, b)

    def sqrt(self, a):
        return np.sqrt(a)

    def gemm(self, a, b, bias=None, bias_first=False):
        r = a @ b
        return r if bias is None else r + bias

    def conv2d(self, x, w, b, strides, pads, dilations, group):
        N, C, H, W = x.shape
        OC, Cg, KH, KW = w.shape
        (sh, sw), (dh, dw) = strides, dilations
        pt, pl, pb, pr = pads
        OH = (H + pt + pb - (KH - 1) * dh - 1) // sh + 1
        OW = (W + pl + pr - (KW - 1) * dw - 1) // sw + 1
        xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
        cols = np.empty((C, KH, KW, N, OH, OW))
        for ky in range(KH):
            for kx in range(KW):
                tap = xp[:, :, ky * dh:ky * dh + (OH - 1) * sh + 1:sh,
                         kx * dw:kx * dw + (OW - 1) * sw + 1:sw]
                cols[:, ky, kx] = tap.transpose(1, 0, 2, 3)
        ocg = OC // group
        out = np.empty((OC, N, OH, OW))
        for g in range(group):
            a = w[g * ocg:(g + 1) * ocg].reshape(ocg, -1)
            out[g * ocg:(g + 1) * ocg] = (a @ cols[g * Cg:(g + 1) * Cg].reshape(a.shape[1], -1)
                                          ).reshape(ocg, N, OH, OW)
        out = out.transpose(1, 0, 2, 3)
        return out if b is None else out + b.reshape(1, -1, 1, 1)


def float_interpreter(graph: Graph, spec: str, engine: str = "fast") -> Interpreter:
    """An interpreter of the float ``graph`` in format ``spec`` (``fp64``: native binary64)."""
    if spec.strip().lower() in FP64:
        it = Interpreter(graph, make_config(bits=64, exp_bits=11), "fast")
        it.engine.A = it.engine.C = _F64()
        it.engine.cfg = it.cfg
        return it
    try:
        cfg = make_config(format=spec)
    except OptionError as e:
        raise OptionError(f"--reference: {e}") from None
    return Interpreter(graph, cfg, engine)


class ReferenceCompare:
    """Accumulates logits SQNR / top-1 agreement and per-layer SQNR over batches."""

    def __init__(self, graph: Graph, spec: str, tensors, *, engine: str = "fast") -> None:
        self.spec = spec
        self.interp = float_interpreter(graph, spec, engine)
        self.input = graph.inputs[0].name
        names = {v.name for v in graph.values()} | {v.name for v in graph.inputs}
        self.layers = [t for t in tensors if t.source in names]
        self.missing = [t.name for t in tensors if t.source not in names]
        self._want = {t.source for t in self.layers}
        self._cap: dict[str, np.ndarray] = {}
        self.interp.listeners.append(self._capture)
        self.acc = SqnrAccumulator()
        self.agree = self.rows = 0
        self.interp.prepare()

    def _capture(self, node, args, outs) -> None:
        for v, t in zip(node.outputs, outs):
            if v.name in self._want:
                self._cap[v.name] = self.interp.engine.to_numpy(t)

    def add(self, x: np.ndarray, ort: dict, outputs: list[str]) -> None:
        self._cap = {}
        ref = list(self.interp.run_numpy({self.input: np.asarray(x, np.float32)}).values())
        for name, r in zip(outputs, ref):  # graph outputs by position (names may differ)
            q = ort[name]
            self.acc.add("output:" + name, r, q)
            if np.ndim(q) == 2 and np.shape(q)[1] > 1:
                self.agree += int((np.argmax(r, 1) == np.argmax(q, 1)).sum())
                self.rows += len(q)
        self._cap.setdefault(self.input, np.asarray(x, np.float64))
        for t in self.layers:
            if t.source in self._cap:
                axis = t.axis
                deq = quant.dequantize(ort[t.name], t.scale, t.zero_point, axis)
                self.acc.add(t.name, self._cap[t.source], deq)

    def report(self, model: str) -> SqnrReport:
        rep = SqnrReport(f"{model}: quantised (ONNX Runtime) vs float ({self.spec})",
                         [t.name for t in self.layers], [t.producer for t in self.layers])
        rep.add_series(f"int vs {self.spec}", {t.name: self.acc.sqnr(t.name)
                                                for t in self.layers if t.name in self.acc.signal})
        return rep

    def to_json(self, outputs: list[str]) -> dict:
        return {"format": self.spec,
                "logits_sqnr_db": {o: _num(self.acc.sqnr("output:" + o)) for o in outputs
                                   if "output:" + o in self.acc.signal},
                "top1_agreement": self.agree / self.rows if self.rows else None,
                "layers_sqnr_db": {t.name: _num(self.acc.sqnr(t.name)) for t in self.layers
                                   if t.name in self.acc.signal},
                "layers_not_in_float_model": self.missing}


def _num(v: float):
    return None if v != v else ("inf" if v == float("inf") else round(float(v), 3))



def reference_compare(vs, spec: str, float_model: str | None, engine: str = "fast"
                      ) -> ReferenceCompare:
    """The comparison against ``float_model`` (a path) or the QDQ-stripped ``vs.graph``."""
    from qcompile.frontend import lift

    graph = lift(float_model) if float_model else strip_qdq(vs.graph)
    return ReferenceCompare(graph, spec, vs.runner.tensors, engine=engine)
