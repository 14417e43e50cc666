"""The fast numpy engine must be bit-identical to the gmpy2 reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qcompile.numerics import fastfp as ff
from qcompile.numerics import mpfr_ref as R
from qcompile.numerics.formats import FloatFormat, Rounding, parse_format

MODES = list(Rounding)
HC = list(HealthCheck)
NAMED = ["fp16", "bf16", "e4m3", "e5m2", "e2m1", "fp32"]


def assert_same(got, want, ctx=""):
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    ok = (got.view(np.int64) == want.view(np.int64)) | (np.isnan(got) & np.isnan(want))
    if not ok.all():
        i = np.flatnonzero(~ok.reshape(-1))[:5]
        raise AssertionError(f"{ctx}: mismatch at {i}: got {got.reshape(-1)[i]!r}, "
                             f"want {want.reshape(-1)[i]!r}")


def ref_map(fn, fmt, mode, *arrays):
    arrays = np.broadcast_arrays(*[np.asarray(a, dtype=np.float64) for a in arrays])
    out = np.empty(arrays[0].shape)
    flat = [a.reshape(-1) for a in arrays]
    of = out.reshape(-1)
    for k in range(of.size):
        of[k] = float(fn(*(float(a[k]) for a in flat), fmt, mode))
    return out


# ----------------------------------------------------------------------------- strategies
@st.composite
def formats(draw, max_p=26):
    kind = draw(st.sampled_from(["named", "ieee", "ieee", "custom", "custom", "custom"]))
    if kind == "named":
        return parse_format(draw(st.sampled_from(NAMED)))
    if kind == "ieee":
        eb = draw(st.integers(2, 9))
        p = draw(st.integers(2, max_p))
        return FloatFormat.ieee(p + eb, eb)
    p = draw(st.integers(2, max_p))
    sub = draw(st.booleans())
    emin = draw(st.integers(-60, 6))
    emax = emin + (p - 1 if sub else 0) + draw(st.sampled_from([0, 1, 2, 5, 20, 60]))
    has_inf = draw(st.booleans())
    has_nan = True if has_inf else draw(st.booleans())
    sat = draw(st.booleans()) if has_nan else True
    return FloatFormat(p, emin, emax, subnormal=sub, saturate=sat, has_inf=has_inf,
                       has_nan=has_nan)


def _interesting(fmt):
    """Boundary values of a bounded format (as floats)."""
    p, maxf, mn, mnorm = fmt.p, fmt.max_finite, fmt.min_subnormal, fmt.min_normal
    ulp_top = 2.0 ** (fmt.emax - p)
    v = [0.0, -0.0, math.inf, -math.inf, math.nan, maxf, maxf - ulp_top, maxf + ulp_top / 2,
         maxf + ulp_top, maxf * 2, mn, mn / 2, mn * 1.5, mn / 4, mn * 0.75, mnorm,
         mnorm - mn / 2, mnorm - mn, 1.0, 1.0 + 2.0 ** (1 - p), 1.0 + 2.0**-p, 3.0 * 2.0 ** -p]
    return [x for x in v if math.isnan(x) or x == x] + [-x for x in v]


@st.composite
def arrays_for(draw, fmt, n, in_format):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return make_array(rng, fmt, n, in_format, draw(st.booleans()))


def make_array(rng, fmt, n, in_format, nonfinite=True):
    """Values stressing the format: ties, boundaries, zeros, inf/nan, random."""
    p = fmt.p
    lo = (fmt.emin - 2) if fmt.emin is not None else -60
    hi = (fmt.emax + 1) if fmt.emax is not None else 60
    e = rng.integers(max(lo, -1000), min(hi, 1000) + 1, n)
    m = rng.integers(2 ** (p - 1), 2 ** (p + 1), n).astype(np.float64)
    x = m * np.exp2(e - p)  # p+1 bit numbers: half of them are exact midpoints
    sign = rng.choice([-1.0, 1.0], n)
    x *= sign
    kind = rng.integers(0, 10, n)
    # full binary64 noise
    noisy = kind == 0
    x[noisy] = rng.standard_normal(noisy.sum()) * np.exp2(rng.integers(lo, hi + 1, noisy.sum()))
    # one binary64 ulp away from a midpoint
    nudge = kind == 1
    x[nudge] = np.nextafter(x[nudge], rng.choice([-np.inf, np.inf], nudge.sum()))
    if fmt.emin is not None:
        special = np.array(_interesting(fmt))
        sp = kind == 2
        x[sp] = rng.choice(special, sp.sum())
    z = kind == 3
    x[z] = rng.choice([0.0, -0.0], z.sum())
    if nonfinite:
        nf = rng.random(n) < 0.03
        x[nf] = rng.choice([np.inf, -np.inf, np.nan], nf.sum())
    if in_format:
        x = ff.round_to(x, fmt, Rounding.NEAREST)
    return x


N = 40


# ----------------------------------------------------------------------------- round_to
@settings(max_examples=200, deadline=None, suppress_health_check=HC)
@given(data=st.data())
def test_round_to_matches_reference(data):
    fmt = data.draw(formats(max_p=53))
    mode = data.draw(st.sampled_from(MODES))
    x = data.draw(arrays_for(fmt, N, False))
    assert_same(ff.round_to(x, fmt, mode), ref_map(R.ref_round, fmt, mode, x), f"{fmt} {mode}")


def test_round_to_exhaustive_small_formats():
    """Every binary64 value near every code of the small formats, every mode."""
    rng = np.random.default_rng(7)
    for name in ("e2m1", "e4m3", "e5m2", "b6e3", "p=3,emin=-2,emax=3,subnormal=off"):
        fmt = parse_format(name)
        grid = np.array(sorted({R.ref_round(float(v), fmt, "nearest")
                                for v in np.linspace(-2 * fmt.max_finite, 2 * fmt.max_finite, 4001)}))
        grid = grid[np.isfinite(grid)]
        mids = (grid[1:] + grid[:-1]) / 2
        pts = np.concatenate([grid, mids, np.nextafter(mids, np.inf), np.nextafter(mids, -np.inf),
                              rng.uniform(-2 * fmt.max_finite, 2 * fmt.max_finite, 500),
                              [2 * fmt.max_finite, -3 * fmt.max_finite, fmt.min_subnormal / 2,
                               -fmt.min_subnormal / 2, 1e-300, -1e-300, 5e-324]])
        for mode in MODES:
            assert_same(ff.round_to(pts, fmt, mode), ref_map(R.ref_round, fmt, mode, pts),
                        f"{name} {mode}")


def test_round_to_fp16_fp32_match_numpy():
    rng = np.random.default_rng(3)
    x = rng.standard_normal(200_000) * np.exp2(rng.integers(-30, 20, 200_000))
    x = np.concatenate([x, [0.0, -0.0, np.inf, -np.inf, 65519.99, 65520.0, 2.0**-25, 3 * 2.0**-26]])
    with np.errstate(over="ignore"):
        assert_same(ff.round_to(x, "fp16"), x.astype(np.float16).astype(np.float64))
        y = x * 1e20
        assert_same(ff.round_to(y, "fp32"), y.astype(np.float32).astype(np.float64))
        t = rng.standard_normal(1000) * 2.0**-140
        assert_same(ff.round_to(t, "fp32"), t.astype(np.float32).astype(np.float64))


# ----------------------------------------------------------------------------- arithmetic
OPS = {
    "add": (ff.add, R.ref_add, 2),
    "sub": (ff.sub, R.ref_sub, 2),
    "mul": (ff.mul, R.ref_mul, 2),
    "div": (ff.div, R.ref_div, 2),
    "sqrt": (ff.sqrt, R.ref_sqrt, 1),
    "fma": (ff.fma, R.ref_fma, 3),
}


def _check_op(name, fmt, mode, args, in_fmt):
    fop, rop, _ = OPS[name]
    got = fop(*args, fmt, mode, assume_in_format=in_fmt)
    assert_same(got, ref_map(rop, fmt, mode, *args), f"{name} {fmt} {mode} in_fmt={in_fmt}")


@pytest.mark.parametrize("name", list(OPS))
@settings(max_examples=70, deadline=None, suppress_health_check=HC)
@given(data=st.data())
def test_ops_in_format_operands(name, data):
    fmt = data.draw(formats())
    mode = data.draw(st.sampled_from(MODES))
    k = OPS[name][2]
    args = [data.draw(arrays_for(fmt, N, True)) for _ in range(k)]
    if name == "sqrt":
        args[0] = np.where(data.draw(st.booleans()), np.abs(args[0]), args[0])
    if name == "fma" and data.draw(st.booleans()):
        # catastrophic cancellation: c = -RN(a*b) rounded into the format
        with np.errstate(all="ignore"):
            args[2] = ff.round_to(-(args[0] * args[1]), fmt, mode)
    _check_op(name, fmt, mode, args, in_fmt=data.draw(st.booleans()))


@pytest.mark.parametrize("name", list(OPS))
@settings(max_examples=50, deadline=None, suppress_health_check=HC)
@given(data=st.data())
def test_ops_arbitrary_binary64_operands(name, data):
    fmt = data.draw(formats(max_p=51))
    mode = data.draw(st.sampled_from(MODES))
    k = OPS[name][2]
    args = [data.draw(arrays_for(fmt, N, False)) for _ in range(k)]
    if name == "sqrt":
        args[0] = np.abs(args[0])
    if name == "fma" and data.draw(st.booleans()):
        with np.errstate(all="ignore"):
            args[2] = -(args[0] * args[1])
    _check_op(name, fmt, mode, args, in_fmt=False)


def test_ops_fallback_ranges():
    """Operands whose residuals do not fit binary64 go through the reference."""
    fmt = parse_format("p=20,emin=-1000,emax=1000,subnormal=on")
    a = np.array([2.0**1000, 2.0**-1000, 3.0 * 2**-600, 1.5, 2.0**-1050, -(2.0**996), 2.0**500])
    b = np.array([2.0**-990, 2.0**-30, 3.0 * 2**-450, 2.0**1010, 3.0, 1.25, 2.0**520])
    c = np.array([1.0, -(2.0**-1030), 2.0**-1060, 0.0, -1.0, 2.0**1000, -(2.0**1020)])
    for mode in MODES:
        for name in OPS:
            _, _, k = OPS[name]
            args = [a, b, c][:k]
            if name == "sqrt":
                args = [np.abs(a)]
            _check_op(name, fmt, mode, args, in_fmt=False)


def test_ops_wide_precision_uses_reference():
    for fmt in (parse_format("p=52,emin=-100,emax=100"), parse_format("p=40,emin=-100,emax=100")):
        a = np.array([1.0 + 2.0**-40, 3.0, -7.5])
        b = np.array([3.0, 1e-10, 2.0**-45])
        for mode in MODES:
            for name in ("add", "mul", "div", "fma"):
                args = [a, b, a][: OPS[name][2]]
                _check_op(name, fmt, mode, args, in_fmt=False)
    wide = parse_format("b64e8")  # p = 56: products/sums do not fit binary64
    with pytest.raises(ff.NotExact):
        ff.mul(np.array([1.0 + 2.0**-27]), np.array([1.0 + 2.0**-27]), wide)
    # round_to stays exact for any p
    x = np.array([1.0 + 2.0**-52, 1e300, 5e-324])
    assert_same(ff.round_to(x, wide, "up"), ref_map(R.ref_round, wide, "up", x))


def test_unbounded_format():
    fmt = parse_format("p=11")
    x = np.array([1e300, -1e-300, 5e-324, 2.0**-1070 * 3, 1.0 + 2.0**-11, np.inf, np.nan])
    for mode in MODES:
        assert_same(ff.round_to(x, fmt, mode), ref_map(R.ref_round, fmt, mode, x))
    a = ff.round_to(np.array([1.5, -3.25, 1e-100, 1e-160]), fmt)
    assert_same(ff.mul(a, a, fmt, "up"), ref_map(R.ref_mul, fmt, "up", a, a))
    with pytest.raises(ff.NotExact):
        ff.mul(np.array([1e300]), np.array([1e300]), fmt)
    with pytest.raises(ff.NotExact):
        ff.round_to(np.array([1.7976931348623157e308]), fmt, "up")


@pytest.mark.parametrize("fmt_name,dtype", [("fp16", np.float16), ("fp32", np.float32)])
def test_nearest_matches_numpy_arithmetic(fmt_name, dtype):
    rng = np.random.default_rng(11)
    n = 50_000
    a = (rng.standard_normal(n) * np.exp2(rng.integers(-12, 12, n))).astype(dtype)
    b = (rng.standard_normal(n) * np.exp2(rng.integers(-12, 12, n))).astype(dtype)
    a[:10] = [0, -0.0, np.inf, -np.inf, np.nan, 1, -1, 2, 3, 4]
    b[:10] = [-0.0, -0.0, 1, np.inf, 1, 0, 0, -2, 3, 1e-7]
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    with np.errstate(all="ignore"):
        for op, nop in ((ff.add, np.add), (ff.sub, np.subtract), (ff.mul, np.multiply),
                        (ff.div, np.divide)):
            want = nop(a, b).astype(np.float64)
            assert_same(op(a64, b64, fmt_name), want, op.__name__)
            assert_same(op(a64, b64, fmt_name, assume_in_format=True), want, op.__name__)
        want = np.sqrt(np.abs(a)).astype(np.float64)
        assert_same(ff.sqrt(np.abs(a64), fmt_name), want)


def test_out_aliasing_and_broadcasting():
    fmt = parse_format("bf16")
    rng = np.random.default_rng(5)
    a = ff.round_to(rng.standard_normal((7, 5)), fmt)
    b = ff.round_to(rng.standard_normal((1, 5)), fmt)
    want = ref_map(R.ref_add, fmt, Rounding.DOWN, a, b)
    acc = a.copy()
    ff.accumulate_step(acc, b, fmt, "down", out=acc)
    assert_same(acc, want)
    x = rng.standard_normal(100_000)  # several blocks
    y = x.copy()
    ff.round_to(y, fmt, "up", out=y)
    assert_same(y, ff.round_to(x, fmt, "up"))
    a2 = a.copy()
    assert ff.mul(a2, a2, fmt, out=a2) is a2
    assert_same(a2, ref_map(R.ref_mul, fmt, Rounding.NEAREST, a, a))
    assert ff.round_to(1.0, fmt).shape == ()


def test_is_representable():
    assert ff.is_representable([1.0, 1.0 + 2.0**-7, 1.0 + 2.0**-8, np.nan, np.inf], "bf16").tolist() == [
        True, True, False, True, True]
    assert ff.is_representable([448.0, 480.0, np.inf], "e4m3").tolist() == [True, False, False]
    assert not ff.is_representable([np.nan], "e2m1")[0]


# ----------------------------------------------------------------------------- accumulation
@settings(max_examples=120, deadline=None, suppress_health_check=HC)
@given(data=st.data())
def test_accumulate_and_mac_step(data):
    fmt = data.draw(formats())
    mode = data.draw(st.sampled_from(MODES))
    acc = data.draw(arrays_for(fmt, N, True))
    x = data.draw(arrays_for(fmt, N, True))
    w = data.draw(arrays_for(fmt, N, True))
    prod = x * w  # exact when products of format values fit binary64
    term_is_rounded = data.draw(st.booleans())
    term = ff.round_to(prod, fmt, mode) if term_is_rounded else prod
    assert_same(ff.accumulate_step(acc, term, fmt, mode, term_in_format=term_is_rounded),
                ref_map(R.ref_add, fmt, mode, acc, term), "accumulate_step")
    seq = ref_map(R.ref_add, fmt, mode, acc, ref_map(R.ref_mul, fmt, mode, x, w))
    assert_same(ff.mac_step(acc, x, w, fmt, mode, "sequential"), seq, "mac_step seq")
    fused = ref_map(lambda a_, x_, w_, f_, m_: R.ref_fma(x_, w_, a_, f_, m_), fmt, mode, acc, x, w)
    assert_same(ff.mac_step(acc, x, w, fmt, mode, "fma"), fused, "mac_step fma")


def _ref_dot_matrix(x, w, fmt, mode, acc, bias, bias_first):
    M, N_ = x.shape[0], w.shape[1]
    out = np.empty((M, N_))
    for i in range(M):
        for j in range(N_):
            b = None if bias is None else float(bias[j])
            out[i, j] = float(R.ref_dot(x[i].tolist(), w[:, j].tolist(), fmt, mode, acc, bias=b,
                                        bias_first=bias_first))
    return out


@pytest.mark.parametrize("accumulate", ["sequential", "fma", "exact"])
@settings(max_examples=60, deadline=None, suppress_health_check=HC)
@given(data=st.data())
def test_dot_matches_reference(accumulate, data):
    fmt = data.draw(formats())
    mode = data.draw(st.sampled_from(MODES))
    M = data.draw(st.integers(1, 4))
    K = data.draw(st.integers(0, 12))
    Nn = data.draw(st.integers(1, 4))
    x = data.draw(arrays_for(fmt, M * K, True)).reshape(M, K)
    w = data.draw(arrays_for(fmt, K * Nn, True)).reshape(K, Nn)
    if data.draw(st.booleans()):
        # mostly small magnitudes: long exact chains with cancellation and ties
        rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
        x = ff.round_to(rng.integers(-8, 9, (M, K)) * 0.25, fmt)
        w = ff.round_to(rng.integers(-8, 9, (K, Nn)) * 0.5, fmt)
    bias = data.draw(st.none() | arrays_for(fmt, Nn, True))
    bias_first = data.draw(st.booleans())
    got = ff.dot(x, w, fmt, mode, accumulate, bias=bias, bias_first=bias_first)
    want = _ref_dot_matrix(x, w, fmt, mode, accumulate, bias, bias_first)
    assert_same(got, want, f"dot {accumulate} {fmt} {mode}")


def test_dot_shapes_and_input_check():
    fmt = "fp16"
    rng = np.random.default_rng(2)
    x = ff.round_to(rng.standard_normal((3, 6)), fmt)
    w = ff.round_to(rng.standard_normal((6, 2)), fmt)
    assert ff.dot(x, w, fmt).shape == (3, 2)
    assert ff.dot(x, w[:, 0], fmt).shape == (3,)
    assert ff.dot(x[0], w, fmt).shape == (2,)
    r = ff.dot(x[0], w[:, 0], fmt, "up", "exact", bias=1.0)
    assert r.shape == ()
    assert float(r) == R.ref_dot(x[0].tolist(), w[:, 0].tolist(), fmt, "up", "exact", bias=1.0)
    with pytest.raises(ValueError):
        ff.dot(x + 1e-9, w, fmt)
    with pytest.raises(ValueError):
        ff.dot(x, w.T, fmt)


def test_dot_large_blocks():
    """Several blocks, fp16 and bf16, all accumulate modes (checked on a sample)."""
    rng = np.random.default_rng(9)
    for fmt in ("fp16", "bf16", "e4m3"):
        x = ff.round_to(rng.standard_normal((300, 20)), fmt)
        w = ff.round_to(rng.standard_normal((20, 130)), fmt)
        b = ff.round_to(rng.standard_normal(130), fmt)
        for acc in ("sequential", "fma", "exact"):
            for mode in ("nearest", "down"):
                got = ff.dot(x, w, fmt, mode, acc, bias=b)
                for i, j in ((0, 0), (299, 129), (150, 64), (17, 3)):
                    want = R.ref_dot(x[i].tolist(), w[:, j].tolist(), fmt, mode, acc, bias=float(b[j]))
                    assert_same(got[i, j], want, f"{fmt} {acc} {mode} ({i},{j})")
