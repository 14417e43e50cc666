"""qcompile.FQ: format rounding with scales, fast == reference bit for bit, amax scaling, parsing,
and the ORT backend's refusal."""

from __future__ import annotations

import math

import gmpy2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcompile.backends.mpfr import Interpreter, make_config
from qcompile.errors import QCompileError
from qcompile.ir import QCOMPILE_DOMAIN, Graph, Node, TensorType
from qcompile.numerics import mpfr_ref
from qcompile.numerics.formats import FormatError, Rounding, parse_any
from qcompile.numerics.fq import amax_scale, format_max, fq_format, fq_round
from qcompile.numerics.posit import PositFormat, round_to
from qcompile.numerics.posit_ref import decode_exact, round_exact

FLOATS = ["e4m3", "e5m2", "bf16", "fp16", "e2m1", "b12e4", "b6e3"]
POSITS = ["posit8_1", "posit16_1", "posit4_0", "posit8_0", "posit12_2"]


def _bits(a):
    a = np.asarray(a, np.float64)
    return np.where(np.isnan(a), 0x7FF8000000000000, a.view(np.int64))


def _ref_q(x: float, s: float, fmt, mode: Rounding) -> float:
    """Independent oracle: the exact quotient x / s rounded by gmpy2 (floats) or mpq (posits)."""
    if isinstance(fmt, PositFormat):
        if math.isnan(x) or math.isinf(x):
            return math.nan
        if x == 0:
            return 0.0
        return float(decode_exact(round_exact(gmpy2.mpq(x) / gmpy2.mpq(s), fmt), fmt))
    if x == 0 or math.isnan(x) or math.isinf(x):  # signed zeros and specials: MPFR division
        return float(mpfr_ref.ref_div(x, s, fmt, mode))
    z = gmpy2.mpq(x) / gmpy2.mpq(s)
    return float(mpfr_ref.ref_round_rational(int(z.numerator), int(z.denominator), fmt, mode))


finite = st.floats(allow_nan=False, allow_infinity=False, width=64,
                   min_value=-1e30, max_value=1e30)
scales = st.floats(min_value=1e-12, max_value=1e12, allow_nan=False, allow_infinity=False)


def _check_fast_equals_exact(xs, s, spec, mode):
    fmt = fq_format(spec)
    if isinstance(fmt, PositFormat):
        mode = Rounding.NEAREST
    got = fq_round(np.array(xs), s, fmt, mode)
    want = np.array([_ref_q(x, s, fmt, mode) for x in xs])
    np.testing.assert_array_equal(_bits(got), _bits(want))


_ARGS = dict(xs=st.lists(finite, min_size=1, max_size=8), s=scales,
             spec=st.sampled_from(FLOATS + POSITS), mode=st.sampled_from(list(Rounding)))


@settings(max_examples=60, deadline=None)
@given(**_ARGS)
def test_fq_round_fast_equals_exact(xs, s, spec, mode):
    _check_fast_equals_exact(xs, s, spec, mode)


@pytest.mark.slow
@settings(max_examples=500, deadline=None)
@given(**_ARGS)
def test_fq_round_fast_equals_exact_many(xs, s, spec, mode):
    _check_fast_equals_exact(xs, s, spec, mode)


@settings(max_examples=40, deadline=None)
@given(xs=st.lists(finite, min_size=1, max_size=8), spec=st.sampled_from(POSITS))
def test_unit_scale_posit_is_plain_posit_rounding(xs, spec):
    fmt = fq_format(spec)
    np.testing.assert_array_equal(_bits(fq_round(np.array(xs), 1.0, fmt)),
                                  _bits(round_to(np.array(xs), fmt)))


def test_specials_and_saturation():
    e4 = fq_format("e4m3")
    got = fq_round(np.array([np.nan, np.inf, -np.inf, 1e9, -0.0]), 1.0, e4)
    assert np.isnan(got[0]) and got[1] == 448 and got[2] == -448 and got[3] == 448
    assert got[4] == 0 and math.copysign(1, got[4]) < 0
    p8 = fq_format("posit8_1")
    got = fq_round(np.array([np.nan, np.inf, 1e-30, -1e30]), 3.0, p8)
    assert np.isnan(got[0]) and np.isnan(got[1])
    assert got[2] == p8.minpos and got[3] == -p8.maxpos  # posits never underflow to 0
    # without saturation an e5m2 overflow is inf (MPFR semantics)
    assert fq_round(np.array([1e6]), 1.0, fq_format("e5m2", saturate=False))[0] == np.inf


def test_amax_scaling_maps_amax_to_max_finite():
    w = np.random.default_rng(0).standard_normal((4, 3, 3, 3))
    for spec in ("e4m3", "e5m2", "e2m1", "bf16"):
        f = fq_format(spec)
        amax = np.abs(w.reshape(4, -1)).max(1)
        s = amax_scale(amax, f)
        q = fq_round(w, s.reshape(4, 1, 1, 1), f)
        assert np.all(np.abs(q).reshape(4, -1).max(1) == format_max(f))
    assert np.all(amax_scale([2.0, 0.0], fq_format("posit8_1")) == 1.0)  # posits: unscaled
    assert amax_scale([0.0, np.inf], fq_format("e4m3")).tolist() == [1.0, 1.0]


def test_parse_any_one_parser_for_all_families():
    assert parse_any("int4").bits == 4 and parse_any("uint8").bits == 8
    assert parse_any("e4m3").bits == 8 and parse_any("b12e4").bits == 12
    assert parse_any("posit(16,1)") == parse_any("posit16_1")
    with pytest.raises(FormatError, match="valid families: int2.*posit"):
        parse_any("e9m9x")


# ----------------------------------------------------------------------------- the IR op
def fq_graph(spec: str, shape=(2, 3, 4, 5), axis: int | None = 1, seed: int = 0,
             **attrs) -> Graph:
    rng = np.random.default_rng(seed)
    g = Graph()
    x = g.add_input("x", TensorType.of(np.zeros(shape, np.float32)))
    inputs = [x]
    if axis is not None:
        inputs.append(g.add_const("s", (rng.random(shape[axis]) * 0.05 + 1e-3).astype(
            np.float32)))
    n = Node("FQ", inputs, [x.type], attrs={"format": spec, **({"axis": axis} if axis is not
                                                               None else {}), **attrs},
             domain=QCOMPILE_DOMAIN, name="fq", output_names=["y"])
    g.append(n)
    g.outputs.append(n.output)
    return g


@pytest.mark.parametrize("spec", ["e4m3", "e5m2", "bf16", "e2m1", "posit8_1", "posit16_1"])
@pytest.mark.parametrize("arith", ["fp32", "bf16"])
def test_fq_node_fast_equals_reference(spec, arith):
    g = fq_graph(spec)
    x = (np.random.default_rng(1).standard_normal((2, 3, 4, 5)) * 0.3).astype(np.float32)
    x[0, 0, 0, :3] = [0.0, np.inf, np.nan]
    cfg = make_config(format=arith)
    a = Interpreter(g, cfg, "fast").run_numpy({"x": x})["y"]
    b = Interpreter(g, cfg, "reference").run_numpy({"x": x})["y"]
    np.testing.assert_array_equal(_bits(a), _bits(b))
    assert not np.array_equal(a, x.astype(np.float64))  # it did round


def test_fq_without_scale_and_directed_rounding():
    x = np.random.default_rng(2).standard_normal((2, 3)).astype(np.float32)
    for mode in ("up", "down", "zero"):
        g = fq_graph("b10e4", shape=(2, 3), axis=None, rounding=mode)
        cfg = make_config(format="fp32")
        a = Interpreter(g, cfg, "fast").run_numpy({"x": x})["y"]
        b = Interpreter(g, cfg, "reference").run_numpy({"x": x})["y"]
        np.testing.assert_array_equal(_bits(a), _bits(b))
        want = fq_round(x.astype(np.float64), 1.0, fq_format("b10e4"), mode)
        np.testing.assert_array_equal(_bits(a), _bits(want))


def test_fq_bad_attributes_are_one_line_errors():
    from qcompile.errors import UnsupportedOpError  # noqa: F401  (kernel errors name the node)

    x = np.ones((2, 3, 4, 5), np.float32)
    with pytest.raises(Exception, match="unknown float format"):
        Interpreter(fq_graph("e9m9"), make_config(format="fp32")).run({"x": x})
    with pytest.raises(Exception, match="nearest only"):
        Interpreter(fq_graph("posit8_1", rounding="up"), make_config(format="fp32")).run(
            {"x": x})


def test_ort_refuses_fq_naming_nodes_and_formats():
    from qcompile.backends.ort import lower
    from qcompile.backends.ort.rules import FloatFormatError

    with pytest.raises(FloatFormatError) as e:
        lower(fq_graph("e4m3"))
    msg = str(e.value)
    assert "\n" not in msg and "fq (e4m3)" in msg and "qcompile emulate" in msg
    assert isinstance(e.value, QCompileError)


@pytest.mark.parametrize("spec", ["e4m3", "e5m2", "posit16_1", "b20e6"])
@pytest.mark.parametrize("arith", ["fp32", "bf16", "b64e11"])
def test_fq_exact_product_shortcut_equals_fastfp_mul(spec, arith):
    """round_A(q s) through the exact binary64 product (formats of <= 29 bits, binary32 scales)
    is fastfp.mul bit for bit; the shortcut declines where it could be inexact."""
    from qcompile.backends.mpfr.ops_formats import _exact_product
    from qcompile.numerics import fastfp
    from qcompile.numerics.float_format import parse_format

    rng = np.random.default_rng(5)
    fmt = fq_format(spec)
    x = rng.standard_normal((64, 9)) * np.exp2(rng.integers(-20, 20, (64, 1)))
    s = (rng.random((64, 1)) * 0.05 + 1e-3).astype(np.float32).astype(np.float64)
    q = fq_round(x, s, fmt, "nearest")
    p = _exact_product(q, s, fmt)
    assert p is not None
    A = parse_format(arith)
    want = fastfp.mul(q, np.broadcast_to(s, q.shape), A, "nearest")
    np.testing.assert_array_equal(_bits(fastfp.round_to(p, A, "nearest")), _bits(want))
    assert _exact_product(q, s + 1e-12, fmt) is None  # a scale of more than 24 bits
    assert _exact_product(q, s, fq_format("fp32")) is None  # 32 + 24 bits > 53


def test_fq_of_a_constant_weight_is_computed_once_and_listeners_still_see_it():
    """The FQ of a constant (a weight) is the same every run: the interpreter computes it on
    the first run only; later runs give the same bits and listeners see the node every run
    (with the very outputs of the first run); an FQ of an activation is computed each run."""
    from qcompile.backends.mpfr.interpreter import _FOLD_OPS

    assert "FQ" in _FOLD_OPS
    g = Graph()
    x = g.add_input("x", TensorType.of(np.zeros((2, 5), np.float32)))
    w = g.add_const("w", np.linspace(-1, 1, 5).astype(np.float32))
    s = g.add_const("s", np.full(5, 0.01, np.float32))
    wfq = Node("FQ", [w, s], [w.type], attrs={"format": "e4m3", "axis": 0},
               domain=QCOMPILE_DOMAIN, name="wfq", output_names=["wq"])
    xfq = Node("FQ", [x, s], [x.type], attrs={"format": "e4m3", "axis": 1},
               domain=QCOMPILE_DOMAIN, name="xfq", output_names=["xq"])
    add = Node("Add", [xfq.output, wfq.output], [x.type], name="add", output_names=["y"])
    for n in (wfq, xfq, add):
        g.append(n)
    g.outputs.append(add.output)
    seen: dict[str, list] = {}
    it = Interpreter(g, make_config(format="fp32"), "fast",
                     listeners=[lambda n, a, o: seen.setdefault(n.name, []).append(o[0])])
    x0 = np.random.default_rng(1).standard_normal((2, 5)).astype(np.float32)
    first = it.run_numpy({"x": x0})["y"]
    again = it.run_numpy({"x": x0})["y"]
    np.testing.assert_array_equal(_bits(first), _bits(again))
    assert len(seen["wfq"]) == 2 and seen["wfq"][1] is seen["wfq"][0]  # computed once
    assert seen["xfq"][1] is not seen["xfq"][0]  # activations: every run
    assert set(it._folded) == {wfq}
