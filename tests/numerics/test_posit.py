"""Posit numerics: the vectorised engine against the exact mpq reference (and SoftPosit)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcompile.numerics.posit import (
    PositFormat,
    decode,
    parse_posit,
    quire_dot,
    round_pattern,
    round_to,
)
from qcompile.numerics.posit_ref import decode_exact, round_exact

FORMATS = [PositFormat(n, es) for n, es in
           [(2, 0), (3, 0), (4, 0), (5, 1), (6, 2), (8, 0), (8, 1), (8, 2), (10, 3), (12, 1),
            (16, 1), (16, 2), (24, 1), (32, 2)]]
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f.n <= 12], ids=str)
def test_decode_every_pattern_matches_exact(fmt):
    pats = np.arange(1 << fmt.n)
    fast = decode(pats, fmt)
    for p in range(1 << fmt.n):
        if p == fmt.nar:
            assert np.isnan(fast[p])
        else:
            assert Fraction(float(fast[p])) == Fraction(decode_exact(p, fmt))


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f.n <= 12], ids=str)
def test_midpoints_and_neighbours_round_like_reference(fmt):
    vals = np.unique(decode(np.arange(1 << fmt.n), fmt))
    vals = vals[np.isfinite(vals)]
    mids = (vals[:-1] + vals[1:]) / 2  # exact in binary64 for these formats
    xs = np.concatenate([vals, mids, np.nextafter(mids, np.inf), np.nextafter(mids, -np.inf),
                         [fmt.maxpos * 3, -fmt.maxpos * 3, fmt.minpos / 7, -fmt.minpos / 7]])
    got = round_pattern(xs, fmt)
    want = [round_exact(Fraction(float(x)), fmt) for x in xs]
    assert got.tolist() == want


@settings(max_examples=300, deadline=None)
@given(x=finite, i=st.integers(0, len(FORMATS) - 1))
def test_round_matches_exact_reference(x, i):
    fmt = FORMATS[i]
    assert int(round_pattern(np.array([x]), fmt)[0]) == round_exact(Fraction(x), fmt)


@settings(max_examples=100, deadline=None)
@given(x=finite.filter(lambda v: v != 0), i=st.integers(0, len(FORMATS) - 1))
def test_no_underflow_no_nar_and_saturation(x, i):
    fmt = FORMATS[i]
    y = float(round_to(np.array([x]), fmt)[0])
    assert y != 0 and np.isfinite(y) and np.sign(y) == np.sign(x)
    assert fmt.minpos <= abs(y) <= fmt.maxpos


@settings(max_examples=100, deadline=None)
@given(xs=st.lists(finite, min_size=2, max_size=30), i=st.integers(0, len(FORMATS) - 1))
def test_rounding_is_monotone(xs, i):
    x = np.sort(np.array(xs))
    y = round_to(x, FORMATS[i])
    assert np.all(np.diff(y) >= 0)


def test_specials_and_parse():
    f = parse_posit("posit(8,1)")
    assert f == parse_posit("posit8_1") and f.name == "posit8_1"
    p = round_pattern(np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 1.0, -1.0]), f)
    assert p.tolist() == [0, 0, 128, 128, 128, 64, 192]
    with pytest.raises(ValueError):
        parse_posit("posit8")
    with pytest.raises(ValueError):
        PositFormat(40, 1)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 255), st.integers(0, 255)), min_size=1, max_size=40))
def test_quire_dot_is_exact_sum_rounded_once(pairs):
    f = PositFormat(8, 1)
    pats = [p for p in pairs if f.nar not in p]
    if not pats:
        return
    a = decode(np.array([p[0] for p in pats]), f)
    b = decode(np.array([p[1] for p in pats]), f)
    exact = sum(Fraction(decode_exact(p, f)) * Fraction(decode_exact(q, f)) for p, q in pats)
    want = 0.0 if exact == 0 else float(Fraction(decode_exact(round_exact(exact, f), f)))
    assert quire_dot(a, b, f) == want


@pytest.mark.parametrize("name,n,es", [("posit8", 8, 0), ("posit16", 16, 1), ("posit32", 32, 2)])
def test_softposit_oracle(name, n, es):
    sp = pytest.importorskip("softposit")
    cls = getattr(sp, name)
    f = PositFormat(n, es)
    rng = np.random.default_rng(1)
    xs = rng.standard_normal(3000) * 10.0 ** rng.uniform(-10, 10, 3000)
    step = max(1, (1 << (n - 1)) // 2000)
    v = decode(np.arange(1, 1 << (n - 1), step), f)
    xs = np.concatenate([xs, v, (v[:-1] + v[1:]) / 2])
    mine = round_pattern(xs, f)
    theirs = [int(cls(float(x)).v.v) for x in xs]
    assert mine.tolist() == theirs
