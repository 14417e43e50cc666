"""Quantised kernels of the MPFR backend (issue 7), property-tested (hypothesis):

* against ``onnx.reference.ReferenceEvaluator`` (QuantizeLinear/DequantizeLinear per tensor and
  per axis, all integer types incl. int4, QLinearConv, QLinearMatMul, ConvInteger,
  MatMulInteger).  ONNX's reference divides/multiplies in float32 before rounding; our
  kernels round the exact rational, so codes may differ only where the exact value lies
  within float32 rounding of a tie -- the tests check exactly that;
* against plain-Fraction formulas (QLinearAdd, QLinearGlobalAveragePool, the rounding core);
* fast engine == reference engine, bit for bit, for every kernel.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from qcompile.backends.mpfr import make_config
from qcompile.backends.mpfr import ops_qdq as F
from qcompile.backends.mpfr import ops_qdq_ref as R
from qcompile.backends.mpfr.interpreter import make_engine
from qcompile.numerics import qdq_exact as qx
from qcompile.numerics.quant import QType

SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FP32 = make_config(format="fp32")
EF, ER = make_engine(FP32, "fast"), make_engine(FP32, "reference")
TYPES = {"uint8": (QType(8, False), TensorProto.UINT8), "int8": (QType(8, True), TensorProto.INT8),
         "uint16": (QType(16, False), TensorProto.UINT16),
         "int16": (QType(16, True), TensorProto.INT16),
         "uint4": (QType(4, False), TensorProto.UINT4), "int4": (QType(4, True), TensorProto.INT4)}


def _run_onnx(op, inputs, attrs=None, opset=21, out_type=TensorProto.FLOAT):
    """One node; every input an initializer (4-bit types need ONNX's packed storage)."""
    names = [f"i{k}" if v is not None else "" for k, v in enumerate(inputs)]
    node = helper.make_node(op, names, ["y"], **(attrs or {}))
    inits = []
    for name, v in zip(names, inputs):
        if v is None:
            continue
        v, t = v if isinstance(v, tuple) else (v, None)
        v = np.asarray(v)
        code = t or helper.np_dtype_to_tensor_dtype(v.dtype)
        vals = v.reshape(-1).tolist()
        inits.append(helper.make_tensor(name, code, v.shape, vals))
    g = helper.make_graph([node], "g", [], [helper.make_tensor_value_info("y", out_type, None)],
                          inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    return np.asarray(ReferenceEvaluator(m).run(None, {})[0])


def _scales(rng, n):
    return (rng.uniform(0.5, 2.0, n) * np.exp2(rng.integers(-10, 2, n))).astype(np.float32)


def _near_tie(v: np.ndarray) -> np.ndarray:
    """Where the (float64-estimated) exact value is within float32 rounding of k + 1/2."""
    return np.abs(np.abs(v - np.floor(v)) - 0.5) <= 4e-7 * np.maximum(np.abs(v), 1)


# ----------------------------------------------------------------------------- rounding core
@given(st.integers(-10**12, 10**12), st.integers(1, 10**6))
@SETTINGS
def test_rhe_is_round_half_even(n, d):
    v = Fraction(n, d)
    q = qx.rhe(v)
    assert abs(v - q) <= Fraction(1, 2)
    if abs(v - q) == Fraction(1, 2):
        assert q % 2 == 0
    assert q == round(v)  # Python's round of a Fraction is half-to-even


@given(st.integers(0, 2**31), st.sampled_from(list(TYPES)), st.booleans())
@SETTINGS
def test_quantize_exact_ties_and_saturation(seed, tname, per_axis):
    rng = np.random.default_rng(seed)
    qt = TYPES[tname][0]
    s = _scales(rng, 3 if per_axis else 1)
    z = rng.integers(qt.qmin, qt.qmax + 1, s.size).astype(qt.storage)
    k = rng.integers(-3 * 2 ** qt.bits, 3 * 2 ** qt.bits, (2, 3, 4))
    half = rng.random((2, 3, 4)) < 0.5  # exact ties k + 1/2 (the binary64 value is exact)
    sb = s.reshape(1, -1, 1) if per_axis else s.reshape(())
    x = ((k + np.where(half, 0.5, rng.uniform(-0.5, 0.5, k.shape))) * sb).astype(np.float64)
    got = qx.quantize_exact(x, s, z, qt, 1 if per_axis else None)
    zb = z.reshape(1, -1, 1) if per_axis else z.reshape(())
    for i in np.ndindex(*x.shape):
        want = qx.rhe(Fraction(float(x[i])) / Fraction(float(np.broadcast_to(sb, x.shape)[i])))
        want = min(qt.qmax, max(qt.qmin, want + int(np.broadcast_to(zb, x.shape)[i])))
        assert got[i] == want
    assert got.dtype == qt.storage


# ----------------------------------------------------------------------------- Q / DQ vs ONNX
@given(st.integers(0, 2**31), st.sampled_from(list(TYPES)), st.booleans())
@SETTINGS
def test_quantize_linear_vs_onnx_reference(seed, tname, per_axis):
    rng = np.random.default_rng(seed)
    qt, code = TYPES[tname]
    s = _scales(rng, 4 if per_axis else 1)
    z = rng.integers(qt.qmin, qt.qmax + 1, s.size).astype(qt.storage)
    x = (rng.normal(size=(2, 4, 3)) * 2 ** qt.bits * float(s.max()) / 3).astype(np.float32)
    x.reshape(-1)[:3] = (np.array([0.5, 1.5, -2.5]) * s.reshape(-1)[0]).astype(np.float32)
    sp, zp = (s, z) if per_axis else (s.reshape(()), z.reshape(()))
    attrs = {"axis": 1} if per_axis else {}
    want = _run_onnx("QuantizeLinear", [x, sp, (zp, code)], attrs, out_type=code)
    got = F.quantize(EF, EF.convert(x), EF.convert(sp), zp, axis=1,
                     output_dtype=code if qt.bits == 4 else 0)[0]
    ref = R.quantize(ER, ER.convert(x), ER.convert(sp), zp, axis=1,
                     output_dtype=code if qt.bits == 4 else 0)[0]
    np.testing.assert_array_equal(got, ref)
    v = x.astype(np.float64) / (sp.reshape(1, -1, 1) if per_axis else sp).astype(np.float64)
    ok = ~_near_tie(v)
    np.testing.assert_array_equal(got[ok], np.asarray(want).astype(np.int64)[ok])


@given(st.integers(0, 2**31), st.sampled_from(list(TYPES) + ["int32"]), st.booleans())
@SETTINGS
def test_dequantize_linear_vs_onnx_reference(seed, tname, per_axis):
    rng = np.random.default_rng(seed)
    qt, code = TYPES.get(tname, (QType(32, True), TensorProto.INT32))
    s = _scales(rng, 4 if per_axis else 1)
    z = (np.zeros(s.size) if qt.bits == 32 else rng.integers(qt.qmin, qt.qmax + 1, s.size)
         ).astype(qt.storage)
    lo, hi = (-2**20, 2**20) if qt.bits == 32 else (qt.qmin, qt.qmax + 1)
    q = rng.integers(lo, hi, (2, 4, 3)).astype(qt.storage)
    sp, zp = (s, z) if per_axis else (s.reshape(()), z.reshape(()))
    attrs = {"axis": 1} if per_axis else {}
    want = _run_onnx("DequantizeLinear", [(q, code), sp, (zp, code)], attrs)
    got = F.dequantize(EF, q, EF.convert(sp), zp, axis=1)[0]
    ref = ER.to_numpy(R.dequantize(ER, q, ER.convert(sp), zp, axis=1)[0])
    np.testing.assert_array_equal(got, ref)
    # fp32 format: the exact (q - z) s rounded once == float32 multiply of exact operands
    np.testing.assert_array_equal(got.astype(np.float32), want)


def test_qdq_op_is_exact_quantize_then_dequantize():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 3, 4, 4)) * 3
    s, z = np.float32([0.02, 0.05, 0.1]), np.zeros(3, np.int8)
    y = F.qdq(EF, EF.convert(x), EF.convert(s), z, bits=8, signed=1, axis=1)[0]
    q = qx.quantize_exact(EF.convert(x), s, z, QType(8, True), 1)
    np.testing.assert_array_equal(y, (q * s.reshape(1, 3, 1, 1).astype(np.float64))
                                  .astype(np.float32))
    yr = ER.to_numpy(R.qdq(ER, ER.convert(x), ER.convert(s), z, bits=8, signed=1, axis=1)[0])
    np.testing.assert_array_equal(y, yr)


# ----------------------------------------------------------------------------- integer ops
def _qconv_case(rng, per_channel, bias):
    N, C, H, W, OC = 1, int(rng.integers(1, 4)), int(rng.integers(3, 6)), 4, int(rng.integers(1, 4))
    x = rng.integers(0, 256, (N, C, H, W)).astype(np.uint8)
    w = rng.integers(-127, 128, (OC, C, 3, 3)).astype(np.int8)
    xs, ys = _scales(rng, 1).reshape(()), _scales(rng, 1).reshape(())
    ws = _scales(rng, OC) if per_channel else _scales(rng, 1).reshape(())
    xz = np.uint8(rng.integers(0, 256))
    wz = np.zeros(OC, np.int8) if per_channel else np.int8(0)
    yz = np.uint8(rng.integers(0, 256))
    B = rng.integers(-5000, 5000, OC).astype(np.int32) if bias else None
    return x, xs, xz, w, ws, wz, ys, yz, B


@given(st.integers(0, 2**31), st.booleans(), st.booleans(), st.sampled_from([1, 2]))
@SETTINGS
def test_qlinear_conv_vs_onnx_reference(seed, per_channel, bias, stride):
    rng = np.random.default_rng(seed)
    x, xs, xz, w, ws, wz, ys, yz, B = _qconv_case(rng, per_channel, bias)
    attrs = {"pads": [1, 1, 1, 1], "strides": [stride, stride]}
    want = _run_onnx("QLinearConv", [x, xs, np.asarray(xz), w, ws, np.asarray(wz), ys,
                                     np.asarray(yz), B], attrs, out_type=TensorProto.UINT8)
    args = (x, EF.convert(xs), xz, w, EF.convert(ws), wz, EF.convert(ys), yz, B)
    got = F.qlinear_conv(EF, *args, **attrs)[0]
    ref = R.qlinear_conv(ER, x, ER.convert(xs), xz, w, ER.convert(ws), wz, ER.convert(ys), yz,
                         B, **attrs)[0]
    np.testing.assert_array_equal(got, ref)
    # exact pre-rounding value, to excuse ONNX's float32 rounding only next to ties
    acc = F.int_conv(x.astype(np.int64) - int(xz), w.astype(np.int64), pads=[1, 1, 1, 1],
                     strides=[stride, stride])
    if B is not None:
        acc = acc + B.reshape(1, -1, 1, 1)
    v = acc * (np.float64(xs) * np.asarray(ws, np.float64).reshape(1, -1, 1, 1)) / float(ys)
    ok = ~_near_tie(v) & (v + int(yz) > -0.5) & (v + int(yz) < 255.5)
    np.testing.assert_array_equal(got[ok], want[ok])
    assert np.abs(got.astype(int) - want.astype(int)).max(initial=0) <= 1


@given(st.integers(0, 2**31), st.booleans())
@SETTINGS
def test_qlinear_matmul_and_integer_ops_vs_onnx_reference(seed, per_column):
    rng = np.random.default_rng(seed)
    M, K, N = int(rng.integers(1, 5)), int(rng.integers(1, 40)), int(rng.integers(1, 5))
    a = rng.integers(0, 256, (M, K)).astype(np.uint8)
    b = rng.integers(-128, 128, (K, N)).astype(np.int8)
    as_, ys = _scales(rng, 1).reshape(()), _scales(rng, 1).reshape(())
    bs = _scales(rng, N) if per_column else _scales(rng, 1).reshape(())
    az, bz, yz = np.uint8(rng.integers(0, 256)), np.int8(0), np.uint8(rng.integers(0, 256))
    want = _run_onnx("QLinearMatMul", [a, as_, np.asarray(az), b, bs, np.asarray(bz), ys,
                                       np.asarray(yz)], out_type=TensorProto.UINT8)
    got = F.qlinear_matmul(EF, a, EF.convert(as_), az, b, EF.convert(bs), bz, EF.convert(ys),
                           yz)[0]
    ref = R.qlinear_matmul(ER, a, ER.convert(as_), az, b, ER.convert(bs), bz, ER.convert(ys),
                           yz)[0]
    np.testing.assert_array_equal(got, ref)
    acc = (a.astype(np.int64) - int(az)) @ b.astype(np.int64)
    v = acc * (np.float64(as_) * np.asarray(bs, np.float64)) / float(ys)
    ok = ~_near_tie(v)
    np.testing.assert_array_equal(got[ok], want[ok])
    mi = _run_onnx("MatMulInteger", [a, b, np.asarray(az)], opset=17, out_type=TensorProto.INT32)
    np.testing.assert_array_equal(F.matmul_integer(EF, a, b, az)[0], mi)
    np.testing.assert_array_equal(R.matmul_integer(ER, a, b, az)[0], mi)


@given(st.integers(0, 2**31))
@SETTINGS
def test_conv_integer_vs_onnx_reference(seed):
    rng = np.random.default_rng(seed)
    x, _, xz, w, *_ = _qconv_case(rng, False, False)
    w = w.astype(np.uint8) if False else w
    want = _run_onnx("ConvInteger", [x, w, np.asarray(xz)], {"pads": [1, 0, 1, 0]}, opset=17,
                     out_type=TensorProto.INT32)
    np.testing.assert_array_equal(F.conv_integer(EF, x, w, xz, pads=[1, 0, 1, 0])[0], want)
    np.testing.assert_array_equal(R.conv_integer(ER, x, w, xz, pads=[1, 0, 1, 0])[0], want)


@given(st.integers(0, 2**31), st.booleans())
@SETTINGS
def test_qlinear_add_and_gap_vs_fractions(seed, relu):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (2, 3, 4, 4)).astype(np.uint8)
    b = rng.integers(0, 256, (2, 3, 4, 4)).astype(np.uint8)
    sa, sb, sc = (_scales(rng, 1).reshape(()) for _ in range(3))
    za, zb, zc = (np.uint8(rng.integers(0, 256)) for _ in range(3))
    clamp = (int(zc), 255) if relu else None
    got = F.qlinear_add(EF, a, sa, za, b, sb, zb, sc, zc, qc_clamp=clamp)[0]
    ref = R.qlinear_add(ER, a, ER.convert(sa), za, b, ER.convert(sb), zb, ER.convert(sc), zc,
                        qc_clamp=clamp)[0]
    np.testing.assert_array_equal(got, ref)
    for i in [(0, 0, 0, 0), (1, 2, 3, 3)]:
        v = (Fraction(float(sa)) * (int(a[i]) - int(za)) + Fraction(float(sb)) *
             (int(b[i]) - int(zb))) / Fraction(float(sc))
        want = min(255, max(0, qx.rhe(v) + int(zc)))
        assert got[i] == (max(want, clamp[0]) if relu else want)
    g = F.qlinear_gap(EF, a, sa, za, sc, zc)[0]
    np.testing.assert_array_equal(g, R.qlinear_gap(ER, a, ER.convert(sa), za, ER.convert(sc),
                                                   zc)[0])
    tot = int((a[1, 2].astype(int) - int(za)).sum())
    v = Fraction(float(sa)) * tot / (Fraction(float(sc)) * 16)
    assert g[1, 2, 0, 0] == min(255, max(0, qx.rhe(v) + int(zc)))


def test_fused_graph_of_a_tiny_qdq_model_matches_the_unfused_exact_kernels(tmp_path):
    """The fused exact graph and the unfused graph with binary64 float ops agree (the Conv
    sums of this tiny model are exact in binary64, so the unfused path is exact too)."""
    from qcompile.backends.mpfr import Interpreter
    from qcompile.backends.mpfr.ops_qdq_fuse import exact_integer_graph
    from qcompile.frontend import lift

    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, (4, 2, 3, 3)).astype(np.int8)
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "ws"], ["wd"], axis=0),
             helper.make_node("Conv", ["xd", "wd"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("QuantizeLinear", ["r", "ys", "yz"], ["y"])]
    inits = [helper.make_tensor("s", TensorProto.FLOAT, [], [0.03]),
             helper.make_tensor("z", TensorProto.UINT8, [], [120]),
             helper.make_tensor("w", TensorProto.INT8, w.shape, w.reshape(-1).tolist()),
             helper.make_tensor("ws", TensorProto.FLOAT, [4], [0.01, 0.02, 0.005, 0.04]),
             helper.make_tensor("ys", TensorProto.FLOAT, [], [0.07]),
             helper.make_tensor("yz", TensorProto.UINT8, [], [0])]
    g = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", 1, [1, 2, 5, 5])],
                          [helper.make_tensor_value_info("y", TensorProto.UINT8, [1, 4, 5, 5])],
                          inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(m, tmp_path / "t.onnx")
    graph = lift(tmp_path / "t.onnx")
    fused, stats = exact_integer_graph(graph)
    assert stats["fused"] == {"QLinearConv": 1} and not stats["float_ops"]
    x = {"x": (rng.normal(size=(1, 2, 5, 5)) * 2).astype(np.float32)}
    cfg = make_config(bits=64, exp_bits=11)
    a = Interpreter(fused, cfg).run(x)["y"]
    b = Interpreter(graph, cfg).run(x)["y"]
    c = Interpreter(fused, cfg, "reference").run(x)["y"]
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    assert a.dtype == np.uint8 and a.min() >= 0
    # the emulate --verify listener re-checks the unfused Q/DQ kernels element by element
    from qcompile.backends.mpfr.listeners import Verifier

    v = Verifier(FP32, 6)
    Interpreter(graph, FP32, listeners=[v]).run(x)
    assert v.report()["layers"] >= 4 and v.report()["mismatches"] == 0


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, "-q"])
