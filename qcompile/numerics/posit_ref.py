"""Exact posit reference in rational arithmetic (gmpy2 ``mpq``): the oracle for ``posit.py``.

``round_exact(x, fmt)`` takes any rational x and returns the n-bit pattern by the definition,
with no floating point anywhere: find the scale ``s = floor(log2 |x|)`` exactly, form the
unbounded bit string ``T = (R << es | e) + (|x| / 2**s - 1)`` (regime R, exponent e, fraction as
a rational in [0, 1)), scale it so that its integer part is the ``n-1`` bits that fit,
``T * 2**(n-1 - rlen - es)``, and round that rational to the nearest integer, ties to even;
then ``|x| >= maxpos -> maxpos``, ``0 < |x| <= minpos -> minpos``, sign by two's complement.
``decode_exact(p, fmt)`` returns the pattern's value as an ``mpq``; ``div_exact(x, s, fmt)`` is
``decode(round(x / s))`` of the exact rational quotient of two binary values, as a float.

The oracle depends on nothing of :mod:`qcompile.numerics.posit` (the engine it checks): ``fmt``
is anything with the integer attributes ``n`` and ``es`` (a ``PositFormat``).
"""

from __future__ import annotations

from fractions import Fraction
from typing import Protocol

import gmpy2
from gmpy2 import mpq

__all__ = ["round_exact", "decode_exact", "div_exact"]


class _Posit(Protocol):
    n: int
    es: int


def _floor_log2(a: mpq) -> int:
    num, den = int(a.numerator), int(a.denominator)
    s = num.bit_length() - den.bit_length()
    if s >= 0:
        if num < (den << s):
            s -= 1
    elif (num << -s) < den:
        s -= 1
    return s


def _round_half_even(t: mpq) -> int:
    fl = int(gmpy2.floor(t))
    rest = t - fl
    if rest > mpq(1, 2) or (rest == mpq(1, 2) and fl % 2 == 1):
        return fl + 1
    return fl


def round_exact(x, fmt: _Posit) -> int:
    """Pattern (non-negative int < 2**n) of the posit nearest to the rational ``x``."""
    if not isinstance(x, type(mpq(0))):
        fx = Fraction(x)
        x = mpq(fx.numerator, fx.denominator)
    n, es, nb = fmt.n, fmt.es, fmt.n - 1
    if x == 0:
        return 0
    a = abs(x)
    maxp = (1 << nb) - 1
    top = (n - 2) << es  # maxpos = 2**top
    if a >= mpq(2) ** top:
        q = maxp
    elif a <= mpq(1, 2 ** top):
        q = 1
    else:
        s = _floor_log2(a)
        k, e = s >> es, s - ((s >> es) << es)
        if k >= 0:
            rlen, reg = k + 2, ((1 << (k + 1)) - 1) << 1
        else:
            rlen, reg = 1 - k, 1
        frac = a / (mpq(2) ** s) - 1
        t = (mpq((reg << es) | e) + frac) * (mpq(2) ** (nb - rlen - es))
        q = min(max(_round_half_even(t), 1), maxp)
    return q if x > 0 else (-q) & ((1 << n) - 1)


def decode_exact(p: int, fmt: _Posit):
    """The value of pattern ``p`` as an ``mpq`` (NaR raises ValueError)."""
    n, es, nb = fmt.n, fmt.es, fmt.n - 1
    p &= (1 << n) - 1
    if p == 0:
        return mpq(0)
    if p == 1 << nb:
        raise ValueError("NaR has no value")
    neg = p >> nb
    mag = (-p) & ((1 << n) - 1) if neg else p
    bits = [(mag >> (nb - 1 - i)) & 1 for i in range(nb)]
    r0, m = bits[0], 1
    while m < nb and bits[m] == r0:
        m += 1
    k = m - 1 if r0 else -m
    rest = bits[m + 1:]
    ebits = rest[:es] + [0] * (es - len(rest[:es]))
    e = int("".join(map(str, ebits)) or "0", 2)
    fbits = rest[es:]
    f = mpq(int("".join(map(str, fbits)) or "0", 2), 1 << len(fbits))
    v = (1 + f) * mpq(2) ** ((k << es) + e)
    return -v if neg else v


def div_exact(x, s, fmt: _Posit) -> float:
    """``round(x / s)`` of the exact quotient of two binary values (float or ``gmpy2.mpfr``),
    decoded to a float: NaR (nan) for a nan or infinite ``x``, +0 for ``x == 0``."""
    if gmpy2.is_nan(x) or gmpy2.is_infinite(x):
        return float("nan")
    if x == 0:
        return 0.0
    z = mpq(x) / mpq(s)
    return float(decode_exact(round_exact(z, fmt), fmt))
