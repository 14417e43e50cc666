"""The numba form of posit rounding (numerics/_posit_nb.py) equals the numpy form bit for bit
(and both equal the exact reference on a sample): random magnitudes over the whole binary64
range, values at and around every posit and every midpoint (ties), +-0, subnormal doubles,
+-inf and NaN, for posit(n, es) over n in 2..32 and es in 0..3."""

from __future__ import annotations

import numpy as np
import pytest

from qcompile.numerics import posit as P
from qcompile.numerics.posit_ref import decode_exact, round_exact

FORMATS = [(2, 0), (3, 1), (5, 2), (8, 0), (8, 1), (8, 2), (10, 3), (12, 1), (16, 1), (16, 2),
           (20, 3), (24, 0), (31, 2), (32, 2), (32, 3)]


def _inputs(fmt, rng):
    n = fmt.n
    pats = np.arange(1 << n, dtype=np.int64) if n <= 12 else rng.integers(0, 1 << n, 3000)
    vals = P.decode(pats, fmt)
    vals = vals[np.isfinite(vals)]
    srt = np.unique(vals)
    mids = (srt[:-1] + srt[1:]) / 2  # arithmetic midpoints (binary64 may round them)
    near = np.concatenate([np.nextafter(vals, np.inf), np.nextafter(vals, -np.inf),
                           np.nextafter(mids, np.inf), np.nextafter(mids, -np.inf)])
    wild = np.ldexp(rng.uniform(0.5, 1.0, 4000) * rng.choice([-1, 1], 4000),
                    rng.integers(-1074, 1024, 4000))
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 5e-324, -5e-324, 2.2e-308,
                        1.7976931348623157e308, -1.7976931348623157e308, fmt.maxpos,
                        fmt.minpos, -fmt.maxpos, -fmt.minpos, fmt.maxpos * 2, fmt.minpos / 2])
    x = np.concatenate([vals, mids, near, wild, special, rng.standard_normal(2000)])
    return np.concatenate([x, np.zeros(max(0, P._NB_MIN - x.size))])  # the numba form's size


@pytest.mark.parametrize("n,es", FORMATS)
def test_numba_form_equals_numpy_form(n, es):
    fmt = P.PositFormat(n, es)
    x = _inputs(fmt, np.random.default_rng(n * 10 + es))
    assert x.size >= P._NB_MIN
    fast = P.round_to(x, fmt)
    slow = P.round_to(x, fmt, use_numba=False)
    same = (fast.view(np.int64) == slow.view(np.int64)) | (np.isnan(fast) & np.isnan(slow))
    assert same.all(), (x[~same][:5], fast[~same][:5], slow[~same][:5])


@pytest.mark.parametrize("n,es", [(8, 1), (16, 1), (5, 2)])
def test_numba_form_equals_reference(n, es):
    fmt = P.PositFormat(n, es)
    x = _inputs(fmt, np.random.default_rng(7))
    got = P.round_to(x, fmt)
    pick = np.random.default_rng(1).choice(x.size, 300, replace=False)
    for i in pick:
        if np.isnan(x[i]) or np.isinf(x[i]):
            assert np.isnan(got[i])
            continue
        want = float(decode_exact(round_exact(x[i], fmt), fmt)) if x[i] != 0 else 0.0
        assert got[i] == want and np.signbit(got[i]) == np.signbit(want), (x[i], got[i], want)


def test_shape_and_small_arrays_keep_the_numpy_form():
    fmt = P.PositFormat(8, 1)
    x = np.random.default_rng(3).standard_normal((3, 4096 // 3 + 5))
    y = P.round_to(x, fmt)
    assert y.shape == x.shape
    small = x[:1, :10]
    assert (P.round_to(small, fmt) == P.round_to(small, fmt, use_numba=False)).all()


def test_scaled_division_at_breakpoints_equals_reference(monkeypatch):
    """x / s next to posit rounding breakpoints (arithmetic and geometric midpoints, times s):
    the neighbour shortcut of posit._div_fast hands those to the round-to-odd quotient, and
    every element equals the exact rational rounding."""
    from qcompile.numerics.posit_ref import div_exact

    fmt = P.PositFormat(8, 1)
    vals = np.unique(np.abs(P.decode(np.arange(1, 1 << 7, dtype=np.int64), fmt)))
    mids = np.concatenate([(vals[:-1] + vals[1:]) / 2, np.sqrt(vals[:-1] * vals[1:])])
    calls = []
    real = P._div_ro50
    monkeypatch.setattr(P, "_div_ro50", lambda f, x, s: calls.append(x.size) or real(f, x, s))
    for s in (3.0, 0.1, 1 / 3, 7.0, 2.0 ** -30):
        base = np.concatenate([mids, -mids]) * s
        x = np.concatenate([base, np.nextafter(base, np.inf), np.nextafter(base, -np.inf)])
        got = P._div_fast(fmt, x, s)
        want = np.array([float(div_exact(v, s, fmt)) for v in x])
        np.testing.assert_array_equal(got.view(np.int64), want.view(np.int64))
    assert sum(calls) > 0  # the breakpoint cases did take the exact quotient
