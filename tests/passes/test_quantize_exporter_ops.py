"""quantize on exporter ops: QLinear placement (Concat, Mul, Sigmoid), shared scales (Split,
nearest Resize), the float list, and the placement tables checked against what ONNX Runtime's
CPU EP actually fuses (its optimised graph), not assumed."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcompile.backends.ort import lower
from qcompile.backends.ort.measure import optimized_op_counts
from qcompile.backends.ort.runtime import run
from qcompile.ir import format_graph, is_op
from qcompile.numerics.error import sqnr_db
from qcompile.passes._qplacement import QLINEAR
from qcompile.passes.quantize import TRANSPARENT
from tests.passes.int8_helpers import compile_graph, tiny_npz

PIPE = "fold,calibrate,quantize"


@pytest.fixture
def data(tmp_path):
    return tiny_npz(tmp_path / "tiny.npz", n=32, size=8)


class _B:
    def __init__(self, opset: int = 13) -> None:
        self.rng, self.opset = np.random.default_rng(0), opset
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def c(self, name, a, dtype=np.float32) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(a, dtype), name))
        return name

    def n(self, op, ins, out, **attrs) -> str:
        self.nodes.append(helper.make_node(op, ins, [out] if isinstance(out, str) else out,
                                           name=f"{op.lower()}_{out if isinstance(out, str) else out[0]}",
                                           **attrs))
        return out

    def conv(self, x, cin, cout, out) -> str:
        w = self.c(f"{out}.w", self.rng.normal(0, np.sqrt(2 / (9 * cin)), (cout, cin, 3, 3)))
        return self.n("Conv", [x, w, self.c(f"{out}.b", self.rng.normal(0, .1, cout))], out,
                      pads=[1] * 4)

    def head(self, x, c, out="logits") -> str:
        g = self.n("Flatten", [self.n("GlobalAveragePool", [x], "gap")], "flat")
        w, b = self.c("fc.w", self.rng.normal(0, .3, (5, c))), self.c("fc.b", np.zeros(5))
        return self.n("Gemm", [g, w, b], out, transB=1)

    def model(self, out="logits", out_shape=("N", 5)) -> onnx.ModelProto:
        g = helper.make_graph(
            self.nodes, "m", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                            ["N", 3, 8, 8])],
            [helper.make_tensor_value_info(out, TensorProto.FLOAT, list(out_shape))], self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", self.opset)])
        m.ir_version = 8
        onnx.checker.check_model(m)
        return m


def swish_split_concat_resize() -> onnx.ModelProto:
    """Conv -> Swish (Sigmoid, Mul) -> Split -> {Conv, id} -> Concat -> nearest Resize x2 ->
    Conv -> Relu -> GAP -> Flatten -> Gemm."""
    b = _B()
    c1 = b.conv("input", 3, 8, "c1")
    m = b.n("Mul", [c1, b.n("Sigmoid", [c1], "sig")], "swish")
    b.n("Split", [m, b.c("split", [4, 4], np.int64)], ["sa", "sb"], axis=1)
    cat = b.n("Concat", [b.conv("sa", 4, 4, "c2"), "sb"], "cat", axis=1)
    up = b.n("Resize", [cat, b.c("roi", np.zeros(0)), b.c("scales", [1, 1, 2, 2])], "up",
             mode="nearest")
    b.head(b.n("Relu", [b.conv(up, 8, 8, "c3")], "r3"), 8)
    return b.model()


def float_ops_model() -> onnx.ModelProto:
    """Conv -> HardSigmoid -> Conv -> linear Resize -> Conv -> Mul(const) -> head -> Softmax."""
    b = _B()
    h = b.n("HardSigmoid", [b.conv("input", 3, 8, "c1")], "hs", alpha=0.2, beta=0.5)
    r = b.n("Resize", [b.conv(h, 8, 8, "c2"), b.c("roi", np.zeros(0)),
                       b.c("scales", [1, 1, 2, 2])], "up", mode="linear")
    m = b.n("Mul", [b.conv(r, 8, 8, "c3"), b.c("k", 0.5)], "scaled")
    b.n("Softmax", [b.head(m, 8, "fc")], "prob", axis=1)
    return b.model("prob")


def _qdq_of(g, name):
    return next(n for n in g.nodes if is_op(n, "QDQ") and n.inputs[0].name == name)


def test_qlinear_ops_and_shared_scales_golden(data, golden, check):
    model = swish_split_concat_resize()
    g, results = compile_graph(model, data, PIPE)
    check(g)
    golden("quantize/swish_split_concat_resize.after", format_graph(g, digests=False))
    st = results[-1][1].stats
    assert (st["quantized_sigmoid"], st["quantized_mul"], st["quantized_concat"]) == (1, 1, 1)
    assert not [k for k in st if k.startswith("float_")]
    # Split (both outputs) and the nearest Resize share their input's scale and zero point
    for a, b in (("swish", "sa"), ("swish", "sb"), ("cat", "up")):
        qa, qb = _qdq_of(g, a), _qdq_of(g, b)
        assert qa.inputs[1].const == qb.inputs[1].const
        assert qa.inputs[2].const == qb.inputs[2].const
    # Sigmoid, Mul and Concat requantise: their outputs have their own calibrated scale
    assert _qdq_of(g, "sig").inputs[1].const != _qdq_of(g, "c1").inputs[1].const


def test_qlinear_ops_fuse_in_ort_and_stay_close(data):
    model = swish_split_concat_resize()
    g, _ = compile_graph(model, data, PIPE)
    m = lower(g)
    ops = optimized_op_counts(m)
    for op in ("QLinearSigmoid", "QLinearMul", "QLinearConcat"):
        assert ops[f"com.microsoft.{op}"] == 1, ops
    assert ops["com.microsoft.QLinearConv"] == 3 and ops["com.microsoft.QGemm"] == 1
    # nothing between the first QuantizeLinear and the float logits runs dequantised
    assert ops["DequantizeLinear"] == 0 and ops["QuantizeLinear"] == 1, ops
    x = np.random.default_rng(1).integers(0, 256, (4, 3, 8, 8)).astype(np.float32)
    assert sqnr_db(run(model, {"input": x})["logits"], run(m, {"input": x})["logits"]) > 20


def test_float_ops_are_listed_with_reasons(data):
    g, results = compile_graph(float_ops_model(), data, PIPE)
    r = results[-1][1]
    assert r.notes[0] == ("kept in float: HardSigmoid x1 (no int8 kernel in ONNX Runtime), "
                          "Resize x1 (only nearest Resize runs on integers), "
                          "Mul x1 (a constant operand (ORT fuses activations only)), "
                          "Softmax x1 (before the output)")
    for op in ("hardsigmoid", "resize", "mul", "softmax"):
        assert r.stats[f"float_{op}"] == 1
    assert r.stats["quantized_conv"] == 3
    # the linear Resize does not share its input's scale: the next Conv requantises
    assert _qdq_of(g, "up").inputs[1].const != _qdq_of(g, "c2").inputs[1].const
    assert not any(is_op(n, "QDQ") and n.inputs[0].name in ("prob", "fc") for n in g.nodes)


def test_no_compute_op_is_a_noop(data):
    b = _B()
    s = b.n("Sigmoid", ["input"], "s")
    b.n("Concat", [s, "input"], "out", axis=1)
    g, results = compile_graph(b.model("out", ("N", 6, 8, 8)), data, "calibrate,quantize")
    r = results[-1][1]
    assert not r.modified and "skipped_no_quantisable_op" in r.stats
    assert not any(is_op(n, "QDQ") for n in g.nodes)


# -- the tables against ORT's optimised graph -------------------------------------------------
def _dq_op_q(op: str, n_in: int = 1, opset: int = 13, extra=(), n_out: int = 1, **attrs):
    """Q -> DQ -> op -> Q -> DQ for each output; returns the optimised op counts."""
    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "s"),
             numpy_helper.from_array(np.array(128, np.uint8), "z")]
    nodes, ins = [], []
    for i in range(n_in):
        nodes += [helper.make_node("QuantizeLinear", [f"x{i}", "s", "z"], [f"q{i}"]),
                  helper.make_node("DequantizeLinear", [f"q{i}", "s", "z"], [f"d{i}"])]
        ins.append(f"d{i}")
    for name, arr in extra:
        inits.append(numpy_helper.from_array(arr, name))
        ins.append(name)
    outs = [f"y{k}" for k in range(n_out)]
    nodes.append(helper.make_node(op, ins, outs, **attrs))
    for y in outs:
        nodes += [helper.make_node("QuantizeLinear", [y, "s", "z"], [f"{y}q"]),
                  helper.make_node("DequantizeLinear", [f"{y}q", "s", "z"], [f"{y}o"])]
    g = helper.make_graph(
        nodes, "probe", [helper.make_tensor_value_info(f"x{i}", TensorProto.FLOAT, [1, 8, 8, 8])
                         for i in range(n_in)],
        [helper.make_tensor_value_info(f"{y}o", TensorProto.FLOAT, None) for y in outs], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return optimized_op_counts(m)


_SCALES = [("roi", np.zeros(0, np.float32)), ("scales", np.array([1, 1, 2, 2], np.float32))]
PROBES = {
    "Concat": dict(n_in=2, axis=1), "Mul": dict(n_in=2), "Sigmoid": {}, "LeakyRelu": {},
    "MaxPool": dict(kernel_shape=[2, 2], strides=[2, 2]),
    "AveragePool": dict(kernel_shape=[2, 2], strides=[2, 2]), "GlobalAveragePool": {},
    "Resize": dict(extra=_SCALES, mode="nearest"), "Flatten": {},
    "Reshape": dict(extra=[("shape", np.array([1, -1], np.int64))]),
    "Transpose": dict(perm=[0, 2, 3, 1]),
    "Squeeze": dict(extra=[("axes", np.array([0], np.int64))]),
    "Unsqueeze": dict(extra=[("axes", np.array([0], np.int64))]),
    "Split": dict(extra=[("split", np.array([4, 4], np.int64))], n_out=2, axis=1),
}
FLOAT_PROBES = {
    "HardSigmoid": {}, "HardSwish": dict(opset=14), "LRN": dict(size=3),
    "Resize-linear": dict(extra=_SCALES, mode="linear"),
}


@pytest.mark.parametrize("op", sorted(set(QLINEAR) | {"AveragePool", "GlobalAveragePool"}))
def test_ort_fuses_every_qlinear_op(op):
    ops = _dq_op_q(op, **PROBES[op])
    assert ops[f"com.microsoft.QLinear{op}"] == 1 and op not in ops, ops


@pytest.mark.parametrize("op", sorted(set(TRANSPARENT) & set(PROBES) - {"AveragePool",
                                                                         "GlobalAveragePool"}))
def test_ort_runs_every_scale_sharing_op_on_integers(op):
    kw = PROBES[op]
    ops = _dq_op_q(op, **kw)
    # the DQ before the op and the Q after it are gone: only the outer Q and final DQs stay
    assert ops["QuantizeLinear"] == 1 and ops["DequantizeLinear"] == kw.get("n_out", 1), ops


@pytest.mark.parametrize("probe", sorted(FLOAT_PROBES))
def test_ort_has_no_int8_kernel_for_the_float_ops(probe):
    op = probe.split("-")[0]
    ops = _dq_op_q(op, **FLOAT_PROBES[probe])
    assert ops["QuantizeLinear"] == 2 and ops["DequantizeLinear"] == 2, ops
    # so the placement tables leave it out (Resize is shared only in nearest mode)
    assert op not in QLINEAR and (op not in TRANSPARENT or probe == "Resize-linear")
