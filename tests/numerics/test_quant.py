"""quant.py against ONNX's reference QuantizeLinear/DequantizeLinear, plus qparams properties."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from qcompile.numerics import quant
from qcompile.numerics.error import sqnr_db

_ONNX_TYPE = {"int8": TensorProto.INT8, "uint8": TensorProto.UINT8, "int16": TensorProto.INT16,
              "uint16": TensorProto.UINT16, "int4": TensorProto.INT4, "uint4": TensorProto.UINT4}


def _ref_qdq(x, scale, zp, name, axis):
    """Run QuantizeLinear -> DequantizeLinear in onnx.reference (opset 21)."""
    t = _ONNX_TYPE[name]
    zp_t = helper.make_tensor("zp", t, list(np.shape(zp)), np.asarray(zp).ravel().tolist())
    s_t = onnx.numpy_helper.from_array(np.asarray(scale, np.float32), "s")
    kw = {} if axis is None else {"axis": axis}
    g = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], **kw),
         helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"], **kw)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("q", t, list(x.shape)),
         helper.make_tensor_value_info("y", TensorProto.FLOAT, list(x.shape))],
        initializer=[s_t, zp_t])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    q, y = ReferenceEvaluator(m).run(None, {"x": x})
    return q.astype(np.int64), y


floats = st.floats(-1e3, 1e3, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(x=hnp.arrays(np.float32, st.tuples(st.integers(1, 4), st.integers(1, 6)), elements=floats),
       name=st.sampled_from(sorted(_ONNX_TYPE)),
       lo=st.floats(-100, 0), hi=st.floats(0, 100), symmetric=st.booleans())
def test_per_tensor_matches_onnx_reference(x, name, lo, hi, symmetric):
    qt = quant.qtype(name)
    scale, zp = quant.qparams(lo, hi, qt, symmetric=symmetric)
    # onnx.reference casts rint(x / s) to int32 before clipping (overflows beyond 2**31)
    assume(float(np.abs(x).max()) / float(scale) < 2**30)
    q = quant.quantize(x, scale, zp, qt)
    y = quant.dequantize(q, scale, zp)
    rq, ry = _ref_qdq(x, scale, zp, name, None)
    np.testing.assert_array_equal(q.astype(np.int64), rq)
    np.testing.assert_array_equal(y, ry)


@settings(max_examples=30, deadline=None)
@given(x=hnp.arrays(np.float32, (2, 3, 4), elements=floats), name=st.sampled_from(["int8", "uint8"]))
def test_per_axis_matches_onnx_reference(x, name):
    qt = quant.qtype(name)
    lo, hi = quant.channel_minmax(x, axis=1)
    scale, zp = quant.qparams(lo, hi, qt, symmetric=qt.signed)
    q = quant.quantize(x, scale, zp, qt, axis=1)
    rq, ry = _ref_qdq(x, scale, zp, name, 1)
    np.testing.assert_array_equal(q.astype(np.int64), rq)
    np.testing.assert_array_equal(quant.dequantize(q, scale, zp, axis=1), ry)


@settings(max_examples=60, deadline=None)
@given(lo=st.floats(-1e4, 0), hi=st.floats(0, 1e4),
       name=st.sampled_from(["int8", "uint8", "int16", "uint16", "int4", "uint4"]),
       symmetric=st.booleans(), reduce_range=st.booleans())
def test_range_is_representable(lo, hi, name, symmetric, reduce_range):
    """Zero is exact; every value in [lo, hi] is within half a step (no clipping)."""
    qt = quant.qtype(name)
    scale, zp = quant.qparams(lo, hi, qt, symmetric=symmetric, reduce_range=reduce_range)
    assert quant.fake_quant(np.zeros(1, np.float32), scale, zp, qt)[0] == 0.0
    qmin, qmax = quant.qrange(qt, symmetric=symmetric, reduce_range=reduce_range)
    assert qmin <= int(zp) <= qmax
    xs = np.linspace(lo, hi, 101).astype(np.float32)
    err = np.abs(quant.fake_quant(xs, scale, zp, qt) - xs)
    assert err.max() <= 0.5 * float(scale) * (1 + 1e-5) + 1e-6 * max(abs(lo), abs(hi))


def test_relu_range_has_zero_point_at_qmin():
    for name in ("uint8", "int8"):
        qt = quant.qtype(name)
        _, zp = quant.qparams(0.0, 6.0, qt)
        assert int(zp) == qt.qmin


def test_round_half_to_even_and_saturation():
    qt = quant.qtype("int8")
    q = quant.quantize(np.array([0.5, 1.5, 2.5, -0.5, -2.5, 1e9, -1e9], np.float32),
                       np.float32(1.0), np.int8(0), qt)
    assert q.tolist() == [0, 2, 2, 0, -2, 127, -128]


def test_symmetric_narrow_and_reduce_range():
    qt = quant.qtype("int8")
    s, z = quant.qparams(-1.0, 2.0, qt, symmetric=True)
    assert float(s) == np.float32(2.0 / 127) and int(z) == 0
    s, _ = quant.qparams(-1.0, 2.0, qt, symmetric=True, reduce_range=True)
    assert float(s) == np.float32(2.0 / 64)
    assert quant.qrange(quant.qtype("uint8"), reduce_range=True) == (0, 127)


def test_int32_bias_and_int4_storage():
    s, z = quant.bias_qparams(np.float32(0.02), np.array([0.001, 0.002], np.float32))
    assert s.dtype == np.float32 and z.dtype == np.int32
    b = np.array([1.0, -3.0], np.float32)
    qb = quant.quantize(b, s, z, quant.qtype("int32"), axis=0)
    assert qb.dtype == np.int32 and qb.tolist() == [50000, -75000]
    q4 = quant.quantize(np.array([100.0, -100.0], np.float32), np.float32(1), np.int8(0),
                        quant.qtype("int4"))
    assert q4.tolist() == [7, -8] and q4.dtype == np.int8


def test_zero_range_and_fit_within_clip():
    s, z = quant.qparams(0.0, 0.0, quant.qtype("uint8"))
    assert float(s) == 1.0 and int(z) == 0
    qt = quant.qtype("uint8")
    s, z = quant.qparams(0.0, 6.0, qt)
    s2 = quant.fit_scale_within(s, z, qt, 0.0, 6.0)
    assert np.float32(255 - int(z)) * s2 <= np.float32(6.0)
    assert s2 <= s and s - s2 <= 4 * np.spacing(s)


def test_unknown_type():
    with pytest.raises(ValueError, match="unknown quantised type"):
        quant.qtype("fp8")


def test_sqnr():
    x = np.array([1.0, 2.0, 3.0])
    assert sqnr_db(x, x) == float("inf")
    assert abs(sqnr_db(x, x * 1.1) - 20.0) < 1e-9
