"""The split kernels of ``_nb_simd`` (Veltkamp's splitting for round to nearest, taken where
``conv_bound`` shows no step can overflow): the rounding against ``rnd_n`` on tie-heavy values
for every precision they serve, the conv against the reference, and the guard's necessity."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numba import njit

from qcompile.backends.mpfr import _nb_simd, fast_lanes
from qcompile.backends.mpfr._nb import rnd_n
from qcompile.backends.mpfr.interpreter import FastEngine, RefEngine
from qcompile.backends.mpfr.listeners import same_bits
from qcompile.backends.mpfr.ops_ref import REF
from qcompile.numerics.formats import parse_format
from tests.backends.mpfr_helpers import cfg, rand
from tests.backends.test_mpfr_native import _check

SETTINGS = settings(max_examples=20, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FORMATS = ["b15e4", "bf16", "fp16", "e4m3", "e5m2", "p=2,emin=-3,emax=4",
           "p=26,emin=-20,emax=20"]


@njit(cache=False)
def _both(v, K, C, thr, pm, qb):
    """(the split rounding in v's lane type, ``rnd_n`` in binary64) of every element."""
    a = np.empty(v.size)
    b = np.empty(v.size)
    for i in range(v.size):
        a[i] = _nb_simd._rprod(v[i], K, C, thr)
        b[i] = rnd_n(np.float64(v[i]), pm, qb, np.inf, np.inf, -np.inf, np.inf, -np.inf)
    return a, b


@pytest.mark.parametrize("binary32", [False, True])
@pytest.mark.parametrize("p", [2, 3, 4, 5, 8, 11, 15, 16, 24, 26])
def test_split_rounding_is_round_to_nearest_even(p, binary32):
    """m * 2**e with m of p+1..p+3 bits: every tie and near-tie of p bits, across the normal
    and the subnormal range of a format with emin = -14, both signs; binary64 lanes, and
    binary32 lanes where ``split_params`` chooses them (p <= 11)."""
    fmt = parse_format(f"p={p},emin=-14,emax=15")
    F = FastEngine(cfg(f"p={p},emin=-14,emax=15"))
    dt, K, C, thr = fast_lanes.split_params(fmt, F.A.plan, binary32)[0][:4]
    assert dt == (np.float32 if binary32 and p <= 11 else np.float64)
    rng = np.random.default_rng(p)
    m = rng.integers(1, 2 ** (p + 3), 400_000).astype(np.float64)
    e = rng.integers(-14 - p - 6, 14, m.size).astype(np.float64)
    v = m * np.exp2(e) * rng.choice([-1.0, 1.0], m.size)
    t = float(thr)
    v = np.concatenate([v, [0.0, -0.0, t, -t, np.nextafter(t, 0), -np.nextafter(t, 0)]])
    if dt == np.float32:
        v = v[(v.astype(dt) == v)]  # nextafter(thr) is not a binary32 value
    got, want = _both(v.astype(dt), K, C, thr, F.A.plan.pm, F.A.plan.qmin_bits)
    bad = ~same_bits(got, want)
    assert not bad.any(), f"p={p}: {int(bad.sum())} differ, e.g. {v[bad][:3]}"


@pytest.mark.parametrize("fmt, lanes", [("fp16", "f4, f8"), ("b15e4", "f4, f8"),
                                        ("e4m3", "f4, f8"), ("e5m2", "f4, f8"),
                                        ("bf16", "f4 lo, f8"), ("p=12,emin=-14,emax=15", "f8"),
                                        ("p=26,emin=-20,emax=20", "f8")])
def test_split_lane_types(fmt, lanes):
    """binary32 lanes exactly where their products and double-rounded sums are exact (bf16:
    only while no product falls below 2**-126; p = 12: 24 < 2p + 1), binary64 after them."""
    got = [("f4" if c[0] is np.float32 else "f8") + (" lo" if c[5] else "")
           for c in FastEngine(cfg(fmt)).A.split]
    assert ", ".join(got) == lanes


def test_bf16_products_below_binary32_normals_take_binary64_lanes():
    """bf16 products under 2**-126 would be rounded by binary32 first: those convs go to the
    binary64 lanes (still split), the others to binary32; both give the reference's bits."""
    rng = np.random.default_rng(5)
    w = rand(rng, (4, 8, 3, 3), spread=1) / 8
    for scale, lanes in ((1.0, np.float32), (2.0 ** -120, np.float64)):
        x = rand(rng, (1, 8, 6, 7), spread=2) * scale
        stats = _check("Conv", cfg("bf16"), [x, w, None], dict(pads=(1, 1, 1, 1)))
        assert stats["split"] == 1
        A = FastEngine(cfg("bf16")).A
        sp, checked = fast_lanes.split_choice(_nb_simd, A.split, A.round(x), w, 1)
        assert sp[0] == lanes and not checked


@SETTINGS
@given(fmt=st.sampled_from(FORMATS), seed=st.integers(0, 2**31 - 1),
       k=st.sampled_from([(1, 1), (3, 3), (2, 3)]), stride=st.integers(1, 2),
       pad=st.integers(0, 2), group=st.sampled_from([1, 4]), bias=st.booleans(),
       tiny=st.booleans(), relu=st.booleans())
def test_split_conv_matches_reference(fmt, seed, k, stride, pad, group, bias, tiny, relu):
    """In-range operands (tiny: scaled so that most products fall below 2**emin, where the
    fixed-quantum branch rounds them) take the split kernel and give the reference's bits."""
    rng = np.random.default_rng(seed)
    f = parse_format(fmt)
    top = float(f.max_finite_exact)  # in range: sums of 72 taps stay below max (p=2: 12)
    scale = (2.0 ** (f.emin + 1) if tiny else 1.0) * min(1.0, 2.0 ** np.floor(np.log2(top / 256)))
    x = rand(rng, (2, 8, 6, 7), spread=2) * scale
    if relu:
        x[x < 0] = 0.0
    w = rand(rng, (4, 8 // group) + k, spread=1) / 8
    b = rand(rng, (4,)) if bias else None
    attrs = dict(strides=(stride, stride), pads=(pad, pad // 2, pad - pad // 2, pad),
                 group=group, kernel_shape=k)
    stats = _check("Conv", cfg(fmt), [x, w, b], attrs)
    assert stats["split"] == 1


def _overflowing(fmt):
    """A 3x3 conv whose partial sums pass maxf on the way and come back below it."""
    f = parse_format(fmt)
    mx = float(f.max_finite_exact)
    x = np.full((1, 1, 3, 3), mx / 2)
    w = np.ones((1, 1, 3, 3))
    w[0, 0, 2, :] = -1.0  # +,+,+ ... then -,-,-: the exact sum is 0 but the steps overflow
    return x, w


@pytest.mark.parametrize("fmt", ["e4m3", "b15e4", "bf16"])
def test_overflowing_sums_are_redone_by_the_checked_kernel(fmt):
    """Where a partial sum overflows, the watched split kernel marks the job and the checked
    kernel redoes it (result = the reference); the split kernel unwatched would differ: the
    guard is what makes it exact."""
    x, w = _overflowing(fmt)
    stats = _check("Conv", cfg(fmt), [x, w, None], dict(pads=(0, 0, 0, 0)))
    assert stats["split"] == 1 and stats["split_redone"] == 1
    F, R = FastEngine(cfg(fmt)), RefEngine(cfg(fmt))
    xs, ws = F.convert(x), F.convert(w)
    want = R.to_numpy(REF._rules[("", "Conv")](R, R.from_numpy(xs), R.from_numpy(ws))[0])
    A = F.A
    xp, Wq, offs = fast_lanes.phase_planes(xs, 3, 3, 1, (0, 0, 0, 0), (1, 1), 1, 1, np.float64)
    out = np.empty((1, 1, 1, 1))
    ints, flts, _ = A.nb
    lt, K, C, thr, cap = A.split[0][:5]
    _nb_simd.conv2d_split(xp.astype(lt), Wq, offs, ws.astype(lt), out, np.zeros(0), 1,
                          K, C, thr, lt(cap), np.zeros((0, 0), np.bool_), ints[0], ints[1],
                          *flts[:5])
    assert not same_bits(out, want).all()


def test_bound_is_exact_at_the_edge():
    """e4m3: the bound is the rounded running sum (nine unit taps of 48 end at 448 = maxf:
    split unwatched; of 64, above: the sums watched; products above maxf: not split)."""
    f = parse_format("e4m3")
    A = FastEngine(cfg("e4m3")).A
    w = np.ones((1, 1, 3, 3))
    assert float(f.max_finite_exact) == A.split[0][4] == 448.0
    # 9*48 = 432 -> 448 (p=4): unwatched; 64: the sums watched; 512: products beyond 448
    for X, want in ((32.0, False), (48.0, False), (64.0, True), (512.0, None)):
        sp, checked = fast_lanes.split_choice(_nb_simd, A.split, np.full((1, 1, 3, 3), X), w, 1)
        assert (None if sp is None else checked) is want, X
    assert fast_lanes.split_choice(_nb_simd, A.split, np.full((1, 1, 3, 3), np.nan), w,
                                   1) == (None, False)


def _bound_reference(X, w, group, pm, qb):
    """conv_bound's definition, one output channel at a time with ``rnd_n`` (no overflow)."""
    OC, Cg, KH, KW = w.shape
    out, top = np.zeros(OC), np.zeros(OC)
    inf = np.inf
    for oc in range(OC):
        a = 0.0
        for c in range(Cg):
            xv = X[(oc // (OC // group)) * Cg + c]
            for v in np.abs(w[oc, c]).reshape(-1):
                ph = rnd_n(v * xv, pm, qb, inf, inf, -inf, inf, -inf)
                a = rnd_n(a + ph, pm, qb, inf, inf, -inf, inf, -inf)
                top[oc] = max(top[oc], ph)
        out[oc] = a
    return out, top


@pytest.mark.parametrize("fmt", ["b15e4", "bf16", "e4m3", "p=2,emin=-3,emax=4", "p=26,emin=-20,emax=20"])
@pytest.mark.parametrize("group, cin", [(1, 8), (4, 8), (1, 64)])
def test_conv_bound_is_the_rounded_magnitude_sum(fmt, group, cin):
    """The vectorised bound (and product maximum) equals the sequential simulation with the
    checked rounding, down in the subnormal range too (X scaled to 2**emin)."""
    F = FastEngine(cfg(fmt))
    A = F.A
    K, C, thr = A.split[-1][1:4]
    rng = np.random.default_rng(group)
    for scale in (1.0, float(thr)):
        X = F.convert(np.abs(rand(rng, (cin,), spread=2)) * scale)
        # 72 channels: blocks of 32 + 8; 64 x 9 taps: chunks of 512 + 64
        w = F.convert(rand(rng, (72, cin // group, 3, 3), spread=2))
        w = np.clip(w, -A.plan.maxf, A.plan.maxf)  # finite weights, as the lane path requires
        got, gotp, gotw = _nb_simd.conv_bound(X, w, group, K, C, thr)
        want, wantp = _bound_reference(X, w, group, A.plan.pm, A.plan.qmin_bits)
        assert same_bits(got, want).all() and same_bits(gotp, wantp).all()
        aw = np.abs(w)
        assert gotw.min() == aw[aw > 0].min() and gotw.size == 3  # blocks of 32: 72 = 3


@pytest.mark.parametrize("mode", ["nearest", "up", "down"])
def test_infinite_sum_of_a_two_bit_format(mode):
    """p = 2: the inverse quantum of inf is 2**-(emax_64 - 1) * 2 = 0 in binary64's bits, so
    the rounding's inf * 0 was NaN where the reference (and IEEE) give inf; the exact-infinity
    case is now decided after the overflow case, in the lane kernels of every mode."""
    x = np.ones((1, 1, 3, 3))
    w = np.full((1, 1, 3, 3), 0.5)
    b = np.array([np.inf])
    _check("Conv", cfg("p=2,emin=-3,emax=4", mode), [x, w, b], dict(pads=(1, 1, 1, 1)))


def test_only_the_jobs_whose_sums_overflow_are_redone():
    """Two images x four channels, one channel of one image overflowing on the way (the
    static bound fails for the whole conv, products stay in range): one job redone, the
    others kept from the split kernel, together the reference's bits; a conv whose bound
    fails but whose sums stay in range redoes nothing."""
    x1, w1 = _overflowing("e4m3")
    x = np.concatenate([x1, x1 / 64], axis=1)  # input channel 1: small
    x = np.concatenate([x, x / 4], axis=0)  # image 1: nothing overflows
    w = np.zeros((4, 2, 3, 3))
    w[0, 0] = w1[0, 0]  # overflowing in image 0: 224 * (+6 taps, -3 taps)
    w[1:, 1] = np.linspace(-1, 1, 27).reshape(3, 3, 3)
    b = np.array([0.0, 1.0, -2.0, 0.5])
    A = FastEngine(cfg("e4m3")).A
    sp, checked = fast_lanes.split_choice(_nb_simd, A.split, A.round(x), A.round(w), 1)
    assert sp is not None and checked
    stats = _check("Conv", cfg("e4m3"), [x, w, b], dict(pads=(1, 1, 1, 1)))
    assert stats["split"] == 1 and stats["split_redone"] == 1
    w2 = w.copy()  # alternating signs: partial sums 112, 0, 112, ... but the bound is 9 * 112
    w2[0, 0] = 0.5 * np.array([[1, -1, 1], [-1, 1, -1], [1, -1, 1]])
    sp, checked = fast_lanes.split_choice(_nb_simd, A.split, A.round(x), A.round(w2), 1)
    assert sp is not None and checked
    stats = _check("Conv", cfg("e4m3"), [x, w2, b], dict(pads=(1, 1, 1, 1)))
    assert stats["split"] == 1 and stats["split_redone"] == 0


def test_infinite_inputs_raise_no_numpy_warnings():
    """An infinite activation times a zero weight makes the product bound NaN (never split);
    that must not reach the user as a RuntimeWarning."""
    import warnings

    F = FastEngine(cfg("b15e4"))
    x = np.zeros((1, 2, 4, 4))
    x[0, 0, 1, 1] = np.inf
    w = np.zeros((2, 2, 3, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        F.A.conv2d(F.convert(x), w, None, (1, 1), (1, 1, 1, 1), (1, 1), 1)
    assert F.A.kernel_stats["split"] == 0
