"""InstanceNormalization and ConvTranspose in the MPFR backend.

* fast engine == reference engine bit for bit (hypothesis over formats, rounding modes,
  accumulation rules and small shapes/attributes, numba and numpy paths);
* float64 (b64e11) / fp32 emulation agrees with onnx.reference and ONNX Runtime, which
  checks the geometry (pads, output_padding, output_shape, auto_pad, groups, dilations);
* a small graph with both ops through the Interpreter, both engines.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from qcompile.backends.mpfr.config import make_config
from qcompile.backends.mpfr.interpreter import FastEngine, Interpreter, RefEngine
from qcompile.backends.mpfr.listeners import same_bits
from qcompile.backends.mpfr.ops_fast import FAST
from qcompile.backends.mpfr.ops_ref import REF
from qcompile.frontend import lift
from qcompile.numerics.formats import Rounding
from tests.backends.mpfr_helpers import cfg as _cfg
from tests.backends.mpfr_helpers import rand

FORMATS = ["b15e4", "fp16", "bf16", "e4m3", "p=11,emin=-8,emax=7,subnormal=off", "qresnet"]
MODES = [m.value for m in Rounding]
ACCS = ["sequential", "fma", "exact"]
SETTINGS = settings(max_examples=30, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
F64 = "b64e11"  # IEEE binary64: with --accumulate exact the result is the rounded exact value


def _rand(rng, shape, special=False, spread=3):
    return rand(rng, shape, special, spread=spread, special_every=10)


def _both(op, cfg, inputs, attrs, *, use_numba=True):
    """(fast result, reference result) as float64 from the same converted inputs."""
    F, R = FastEngine(cfg, use_numba=use_numba), RefEngine(cfg)
    xs = [None if a is None else F.convert(a) for a in inputs]
    while xs and xs[-1] is None:
        xs.pop()
    got = FAST._rules[("", op)](F, *xs, **attrs)[0]
    rx = [None if a is None else R.from_numpy(a) for a in xs]
    want = R.to_numpy(REF._rules[("", op)](R, *rx, **attrs)[0])
    return got, want


def _check(op, cfg, inputs, attrs, **kw):
    got, want = _both(op, cfg, inputs, attrs, **kw)
    assert got.shape == want.shape
    bad = ~same_bits(got, want)
    assert not bad.any(), (f"{op} {cfg.describe()}: {int(bad.sum())} mismatches, e.g. fast "
                           f"{got[bad][:3]} vs reference {want[bad][:3]}")
    return got


# ----------------------------------------------------------------------------- fast == reference
convt_st = dict(stride=st.integers(1, 2), dil=st.integers(1, 2), pad=st.integers(0, 2),
                group=st.sampled_from([1, 2]), ocg=st.sampled_from([1, 3]),
                outpad=st.integers(0, 1), bias=st.booleans(), special=st.booleans())


def _convt_case(rng, stride, dil, pad, group, ocg, outpad, bias, special):
    x = _rand(rng, (2, 4, 3, 4), special)
    w = _rand(rng, (4, ocg, 2, 3))
    b = _rand(rng, (ocg * group,)) if bias else None
    attrs = dict(strides=[stride, stride], dilations=[dil, 1], group=group,
                 pads=[pad, pad // 2, pad - pad // 2, 0],
                 output_padding=[min(outpad, max(stride, dil) - 1), 0])
    return [x, w, b], attrs


@SETTINGS
@given(fmt=st.sampled_from(FORMATS), mode=st.sampled_from(MODES), acc=st.sampled_from(ACCS),
       seed=st.integers(0, 2**31 - 1), **convt_st)
def test_conv_transpose_fast_equals_reference(fmt, mode, acc, seed, **case):
    inputs, attrs = _convt_case(np.random.default_rng(seed), **case)
    _check("ConvTranspose", _cfg(fmt, mode, acc), inputs, attrs)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fmt=st.sampled_from(FORMATS), mode=st.sampled_from(MODES), acc=st.sampled_from(ACCS),
       seed=st.integers(0, 2**31 - 1), **convt_st)
def test_conv_transpose_numpy_path(fmt, mode, acc, seed, **case):
    """The numpy fallback (no numba; also the path of flagged planes) is exact as well."""
    inputs, attrs = _convt_case(np.random.default_rng(seed), **case)
    _check("ConvTranspose", _cfg(fmt, mode, acc), inputs, attrs, use_numba=False)


@pytest.mark.parametrize("mode", MODES)
def test_conv_transpose_flagged_planes_recomputed(mode):
    """Tiny values in a subnormal=off format: the numba kernel flags planes it cannot round
    (MPFR-style underflow) and they are recomputed exactly by the numpy path."""
    rng = np.random.default_rng(4)
    cfg = _cfg("p=11,emin=-8,emax=7,subnormal=off", mode)
    x, w = rng.normal(size=(1, 2, 3, 3)) * 2.0**-5, rng.normal(size=(2, 2, 2, 2)) * 2.0**-5
    F = FastEngine(cfg)
    FAST._rules[("", "ConvTranspose")](F, F.convert(x), F.convert(w), strides=[2, 2])
    assert F.A.kernel_stats["flagged_planes"] > 0
    _check("ConvTranspose", cfg, [x, w], dict(strides=[2, 2]))


@SETTINGS
@given(fmt=st.sampled_from(FORMATS), mode=st.sampled_from(MODES), acc=st.sampled_from(ACCS),
       seed=st.integers(0, 2**31 - 1), special=st.booleans(),
       shape=st.sampled_from([(1, 2, 3, 3), (2, 3, 2, 4), (1, 2, 5)]))
def test_instance_norm_fast_equals_reference(fmt, mode, acc, seed, special, shape):
    rng = np.random.default_rng(seed)
    x = _rand(rng, shape, special, spread=2) + rng.normal(size=(1, shape[1]) + (1,) *
                                                           (len(shape) - 2))
    sc, bi = rng.uniform(0.5, 1.5, shape[1]), _rand(rng, (shape[1],))
    _check("InstanceNormalization", _cfg(fmt, mode, acc), [x, sc, bi], dict(epsilon=1e-3))


def test_instance_norm_sequential_order_matters():
    """The documented order, written out with the scalar ops: fp16 nearest, sequential."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1, 1, 3, 3)).astype(np.float16).astype(np.float64)
    got = _check("InstanceNormalization", _cfg("fp16"), [x, np.ones(1), np.zeros(1)],
                 dict(epsilon=1e-2))
    h = np.float16
    flat = x.reshape(-1).astype(h)
    acc = h(0)
    for v in flat:
        acc = h(acc + v)
    mean = h(acc / h(9))
    ss = h(0)
    for v in flat:
        d = h(v - mean)
        ss = h(ss + h(d * d))
    sd = h(np.sqrt(h(h(ss / h(9)) + h(1e-2))))
    want = np.array([h(h(h(h(v - mean) / sd) * h(1)) + h(0)) for v in flat], np.float64)
    assert same_bits(got.reshape(-1), want).all(), (got, want)


# ----------------------------------------------------------------------------- vs ONNX runtimes
def _model(op, x_shape, inits, attrs, opset=17):
    X = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))
    Y = helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                      [f"d{i}" for i in range(len(x_shape))])
    names = ["x"] + [f"i{k}" for k in range(len(inits))]
    node = helper.make_node(op, names, ["y"], name=op.lower(), **attrs)
    g = helper.make_graph([node], "g", [X], [Y], initializer=[
        onnx.numpy_helper.from_array(a.astype(np.float32), f"i{k}") for k, a in enumerate(inits)])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _emulate(m, x, cfg, engine="fast"):
    g = lift(m)
    return Interpreter(g, cfg, engine).run_numpy({"x": x})["y"]


def _ort(m, x):
    import onnxruntime as ort

    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x.astype(np.float32)})[0]


CONVT_ATTRS = [
    dict(strides=[2, 2]),
    dict(strides=[2, 1], pads=[1, 0, 0, 1], dilations=[1, 2], output_padding=[1, 0]),
    dict(strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1], group=2),
    dict(strides=[1, 2], dilations=[2, 2], pads=[2, 1, 0, 0], group=2),
    dict(strides=[2, 2], output_shape=[8, 9]),
    dict(strides=[2, 2], auto_pad="SAME_UPPER"),
    dict(strides=[2, 2], auto_pad="SAME_LOWER"),
    dict(strides=[2, 2], auto_pad="VALID"),
]


@pytest.mark.parametrize("attrs", CONVT_ATTRS, ids=lambda a: ",".join(f"{k}={v}" for k, v in
                                                                       a.items()))
def test_conv_transpose_matches_ort_and_onnx_reference(attrs):
    from onnx.reference import ReferenceEvaluator

    rng = np.random.default_rng(1)
    group = attrs.get("group", 1)
    x = rng.normal(size=(1, 4, 3, 4)).astype(np.float32)
    w = rng.normal(size=(4, 3, 3, 2)).astype(np.float32)
    b = rng.normal(size=(3 * group,)).astype(np.float32)
    m = _model("ConvTranspose", x.shape, [w, b], attrs)
    ours64 = _emulate(m, x, _cfg(F64, acc="exact"))
    ours32 = _emulate(m, x, _cfg("fp32"))
    want = _ort(m, x)
    assert ours64.shape == want.shape
    np.testing.assert_allclose(ours64, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours32, want, rtol=1e-4, atol=1e-4)
    if group == 1 and "auto_pad" not in attrs:  # onnx.reference's group>1 path is not ONNX's
        ref = ReferenceEvaluator(m).run(None, {"x": x})[0]
        np.testing.assert_allclose(ours64, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 2, 7)])
def test_instance_norm_matches_ort_and_onnx_reference(shape):
    from onnx.reference import ReferenceEvaluator

    rng = np.random.default_rng(2)
    x = (rng.normal(size=shape) * 3 + 1).astype(np.float32)
    sc = rng.uniform(0.5, 1.5, shape[1])
    bi = rng.normal(size=shape[1])
    m = _model("InstanceNormalization", shape, [sc, bi], dict(epsilon=1e-5))
    ours64 = _emulate(m, x, _cfg(F64, acc="exact"))
    ours32 = _emulate(m, x, _cfg("fp32"))
    want = _ort(m, x)
    ref = ReferenceEvaluator(m).run(None, {"x": x})[0]
    np.testing.assert_allclose(ours64, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours64, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ours32, want, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- whole graph
def _graph_model():
    """Conv 3->4 -> InstanceNorm -> Relu -> ConvTranspose 4->4 (k3 s2 p1 op1, group 2) ->
    InstanceNorm -> Relu -> ConvTranspose 4->2 (k2 s2, bias) on a 1x3x4x4 input."""
    rng = np.random.default_rng(5)
    f = np.float32
    inits = {"cw": rng.normal(0, 0.4, (4, 3, 3, 3)), "s1": rng.uniform(0.5, 1.5, 4),
             "b1": rng.normal(0, 0.1, 4), "tw1": rng.normal(0, 0.4, (4, 2, 3, 3)),
             "s2": rng.uniform(0.5, 1.5, 4), "b2": rng.normal(0, 0.1, 4),
             "tw2": rng.normal(0, 0.4, (4, 2, 2, 2)), "tb2": rng.normal(0, 0.1, 2)}
    n = helper.make_node
    nodes = [n("Conv", ["x", "cw"], ["c"], name="conv", pads=[1] * 4),
             n("InstanceNormalization", ["c", "s1", "b1"], ["in1"], name="in1", epsilon=1e-5),
             n("Relu", ["in1"], ["r1"], name="r1"),
             n("ConvTranspose", ["r1", "tw1"], ["t1"], name="deconv1", strides=[2, 2],
               pads=[1, 1, 1, 1], output_padding=[1, 1], group=2),
             n("InstanceNormalization", ["t1", "s2", "b2"], ["in2"], name="in2", epsilon=1e-5),
             n("Relu", ["in2"], ["r2"], name="r2"),
             n("ConvTranspose", ["r2", "tw2", "tb2"], ["y"], name="deconv2", strides=[2, 2])]
    X = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])
    Y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "c", "h", "w"])
    g = helper.make_graph(nodes, "g", [X], [Y], initializer=[
        onnx.numpy_helper.from_array(v.astype(f), k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(m)
    return m


@pytest.mark.parametrize("kw", [dict(bits=15, exp_bits=4), dict(format="bf16", accumulate="fma"),
                                dict(compat="qresnet"), dict(format="e4m3", rounding="zero")],
                         ids=["b15e4", "bf16-fma", "qresnet", "e4m3-zero"])
def test_graph_fast_equals_reference(kw):
    m = _graph_model()
    x = np.random.default_rng(0).normal(size=(1, 3, 4, 4)).astype(np.float32)
    cfg = make_config(**kw)
    a = _emulate(m, x, cfg, "fast")
    b = _emulate(m, x, cfg, "reference")
    assert a.shape == (1, 2, 16, 16)
    assert same_bits(a, b).all()


def test_graph_verify_listener_finds_no_mismatch():
    """``--verify``: the reference recomputes sampled elements of both new ops."""
    from qcompile.backends.mpfr.listeners import Verifier

    m = _graph_model()
    x = np.random.default_rng(1).normal(size=(1, 3, 4, 4)).astype(np.float32)
    cfg = make_config(format="p=11,emin=-8,emax=7,subnormal=off", rounding="down")
    v = Verifier(cfg, 6)
    Interpreter(lift(m), cfg, "fast", listeners=[v]).run({"x": x})
    rep = v.report()
    assert rep["mismatches"] == 0 and rep["layers"] >= 6, rep


def test_graph_fp32_matches_ort_and_is_supported():
    m = _graph_model()
    x = np.random.default_rng(0).normal(size=(1, 3, 4, 4)).astype(np.float32)
    g = lift(m)
    it = Interpreter(g, make_config(format="fp32"), "fast")
    assert it.unsupported() == {}
    ours = it.run_numpy({"x": x})["y"]
    np.testing.assert_allclose(ours, _ort(m, x), rtol=1e-4, atol=1e-4)
