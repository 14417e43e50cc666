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
    a = np.empty_like(v)
    b = np.empty_like(v)
    for i in range(v.size):
        a[i] = _nb_simd._rprod(v[i], K, C, thr)
        b[i] = rnd_n(v[i], pm, qb, np.inf, np.inf, -np.inf, np.inf, -np.inf)
    return a, b


@pytest.mark.parametrize("p", [2, 3, 4, 5, 8, 11, 15, 16, 24, 26])
def test_split_rounding_is_round_to_nearest_even(p):
    """m * 2**e with m of p+1..p+3 bits: every tie and near-tie of p bits, across the normal
    and the subnormal range of a format with emin = -14, both signs."""
    fmt = parse_format(f"p={p},emin=-14,emax=15")
    F = FastEngine(cfg(f"p={p},emin=-14,emax=15"))
    K, C, thr = fast_lanes.split_params(fmt, F.A.plan)
    rng = np.random.default_rng(p)
    m = rng.integers(1, 2 ** (p + 3), 400_000).astype(np.float64)
    e = rng.integers(-14 - p - 6, 14, m.size).astype(np.float64)
    v = m * np.exp2(e) * rng.choice([-1.0, 1.0], m.size)
    v = np.concatenate([v, [0.0, -0.0, thr, -thr, np.nextafter(thr, 0), -np.nextafter(thr, 0)]])
    got, want = _both(v, K, C, thr, F.A.plan.pm, F.A.plan.qmin_bits)
    bad = ~same_bits(got, want)
    assert not bad.any(), f"p={p}: {int(bad.sum())} differ, e.g. {v[bad][:3]}"


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
    scale = 2.0 ** (f.emin + 1) if tiny else 1.0
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
def test_bound_keeps_overflowing_convs_on_the_checked_kernel(fmt):
    """Where a step overflows, the bound sends the conv to the checked kernel (result = the
    reference), and the split kernel, forced, would differ: the guard is what makes it exact."""
    x, w = _overflowing(fmt)
    stats = _check("Conv", cfg(fmt), [x, w, None], dict(pads=(0, 0, 0, 0)))
    assert stats["split"] == 0 and stats["lanes"] == 0 and stats["numba"] == 1
    F, R = FastEngine(cfg(fmt)), RefEngine(cfg(fmt))
    xs, ws = F.convert(x), F.convert(w)
    want = R.to_numpy(REF._rules[("", "Conv")](R, R.from_numpy(xs), R.from_numpy(ws))[0])
    A = F.A
    xp, Wq, offs = fast_lanes.phase_planes(xs, 3, 3, 1, (0, 0, 0, 0), (1, 1), 1, 1, np.float64)
    out = np.empty((1, 1, 1, 1))
    ints, flts, _ = A.nb
    _nb_simd.conv2d_split(xp, Wq, offs, ws, out, np.zeros(0), 1, *A.split, ints[0], ints[1],
                          *flts[:5])
    assert not same_bits(out, want).all()


def test_bound_is_exact_at_the_edge():
    """e4m3: the bound of x = 448/9 summed over nine unit taps is the rounded running sum;
    at maxf it still takes the split kernel, one step more and it does not."""
    f = parse_format("e4m3")
    A = FastEngine(cfg("e4m3")).A
    ints = A.nb[0]
    w = np.ones((1, 1, 3, 3))
    for X, ok in ((32.0, True), (48.0, True), (64.0, False)):  # 9*48 = 432 -> 448 (p=4)
        got = fast_lanes.split_ok(_nb_simd, np.full((1, 1, 3, 3), X), w, 1, ints[0], ints[1],
                                  float(f.max_finite_exact))
        assert got is ok, X
    assert not fast_lanes.split_ok(_nb_simd, np.full((1, 1, 3, 3), np.nan), w, 1, ints[0],
                                   ints[1], 448.0)
