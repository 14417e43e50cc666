"""Posit(n, es) arithmetic, vectorised (numpy int64/float64), bit-identical to ``posit_ref``.

Encoding (Gustafson & Yonemoto 2017; the 2022 standard fixes es=2, here es is free). An n-bit
pattern ``P``: ``0`` is zero, ``1 << (n-1)`` is NaR. A negative posit is the two's complement of
its magnitude's pattern. For ``0 < P < 2**(n-1)`` the ``n-1`` bits after the sign are

    regime  r r ... r r'   (m equal bits, ended by the opposite bit or by the end of the word)
    exponent e             (es bits; bits cut off by the end of the word are 0)
    fraction f             (the remaining F bits)

    k = m - 1 if r == 1 else -m,     value = 2**(k 2**es + e) * (1 + f / 2**F)

so ``useed = 2**(2**es)``, ``maxpos = useed**(n-2)``, ``minpos = useed**-(n-2)``.

Rounding (the standard's): the exact value ``x`` is written as the infinite bit string above
and rounded at ``n-1`` bits to nearest, ties to the even *pattern* (when exponent bits are cut
the "midpoint" is therefore geometric, e.g. between 2**a and 2**(a+2) it is 2**(a+1)); a nonzero
``x`` never rounds to 0 (``|x| < minpos`` gives +-minpos) and never to NaR (``|x| > maxpos``
gives +-maxpos). NaN and +-inf give NaR (``nan`` as a float).

Here the string is built from the binary64 operand: ``|x| = M 2**(s-52)``, ``M`` in
``[2**52, 2**53)``, ``s = k 2**es + e`` (``k = s >> es``); the pattern is the integer
``(R << es | e) << F | (M - 2**52) >> (52 - F)`` rounded with the dropped bits (a shift right
when ``F < 0``), all in int64, which is exact for n <= 32. Decoding a pattern of n <= 32 bits
gives a float64 exactly (at most 29 fraction bits, scale within +-2**(30 2**es)) for es <= 3.

``quire_dot`` is the exact dot product (the quire): products and sums in Python integers at
the scale of ``minpos**2``, then one posit rounding.

:data:`FAMILY` is the posit entry of the format registry (:mod:`qcompile.numerics.formats`).
Its fast quotient ``round(x / s)`` first rounds the quotient *to odd* at 50 bits
(``RO50(z)`` = ``RZ50(z)`` if that is exact or odd, else ``RA50(z)``), which keeps the sign, the
binade and the stickiness of the exact quotient; posit rounding only looks at the first
``n - 1 <= 31`` bits of the regime/exponent/fraction string plus a sticky bit, so
``posit(RO50(z)) == posit(z)`` (Boldo & Melquiond's round-to-odd argument with 50 >= 31 + 2).
Quotients below ``2**-601`` round (to odd) away from 0 and give +-minpos, as the exact posit
rounding does. Posits round to nearest only, always saturate, and FQ leaves them unscaled.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from typing import ClassVar

import numpy as np

from qcompile.numerics import fastfp
from qcompile.numerics.float_format import FloatFormat, FormatError, Rounding
from qcompile.numerics.format_protocol import Family
from qcompile.numerics.posit_ref import decode_exact, div_exact, round_exact

__all__ = ["PositFormat", "parse_posit", "round_pattern", "decode", "round_to", "quire_dot",
           "is_posit_spec", "FAMILY"]

_SPEC = re.compile(r"^posit(\d+)_(\d+)$|^posit\((\d+),\s*(\d+)\)$")


@dataclass(frozen=True)
class PositFormat:
    """``posit(n, es)``: n in 2..32, es in 0..3."""

    n: int
    es: int
    family: ClassVar[str] = "posit"

    def __post_init__(self) -> None:
        if not 2 <= self.n <= 32 or not 0 <= self.es <= 3:
            raise ValueError(f"posit({self.n},{self.es}): need 2 <= n <= 32 and 0 <= es <= 3")

    @property
    def name(self) -> str:
        return f"posit{self.n}_{self.es}"

    @property
    def bits(self) -> int:
        return self.n

    @property
    def max_scale(self) -> int:
        return (self.n - 2) << self.es

    @property
    def maxpos(self) -> float:
        return float(2.0 ** self.max_scale)

    @property
    def minpos(self) -> float:
        return float(2.0 ** -self.max_scale)

    @property
    def max_finite(self) -> float:
        """maxpos (the largest posit; posits always saturate there)."""
        return self.maxpos

    @property
    def nar(self) -> int:
        return 1 << (self.n - 1)

    @property
    def group(self) -> str:
        return f"posit es={self.es}"

    def spec(self) -> str:
        return self.name

    def __str__(self) -> str:
        return self.name


def is_posit_spec(spec: str) -> bool:
    return bool(_SPEC.match(spec.strip().lower()))


def parse_posit(spec: str) -> PositFormat:
    """``posit8_1`` or ``posit(8,1)`` -> PositFormat(8, 1); ValueError otherwise."""
    m = _SPEC.match(spec.strip().lower())
    if not m:
        raise ValueError(f"not a posit format: {spec!r}; write posit8_1 or posit(8,1)")
    n, es = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    return PositFormat(int(n), int(es))


def round_pattern(x, fmt: PositFormat) -> np.ndarray:
    """The n-bit pattern (int64, two's complement in the low n bits) nearest to each x."""
    x = np.asarray(x, np.float64)
    n, es = fmt.n, fmt.es
    nb = n - 1
    a = np.abs(x)
    finite = np.isfinite(x)
    safe = np.where(finite & (a > 0), a, 1.0)
    m, ex = np.frexp(safe)                      # safe = m 2**ex, m in [0.5, 1)
    s = ex.astype(np.int64) - 1                 # floor(log2 |x|)
    M = np.ldexp(m, 53).astype(np.int64)        # 53-bit significand
    fr = M - (np.int64(1) << 52)                # fraction bits (52)
    k = s >> es
    e = s - (k << es)
    pos = k >= 0
    rlen = np.where(pos, k + 2, 1 - k)
    rlen_c = np.clip(rlen, 2, nb)               # in range after the saturation below
    R = np.where(pos, ((np.int64(1) << np.clip(k + 1, 0, 62)) - 1) << 1, np.int64(1))
    head = (R << es) | e                        # regime and exponent bits (rlen + es bits)
    F = nb - rlen_c - es                        # fraction bits that fit (< 0: exponent cut)
    # F >= 0: keep F fraction bits, the other 52 - F are dropped (52 - F >= 52 - nb > 0)
    Fp = np.clip(F, 0, 52)
    sh = 52 - Fp
    q_hi = (head << Fp) | (fr >> sh)
    rem = fr & ((np.int64(1) << sh) - 1)
    half = np.int64(1) << (sh - 1)
    up_hi = (rem > half) | ((rem == half) & ((q_hi & 1) == 1))
    # F < 0: -F exponent bits are dropped as well as all 52 fraction bits
    Fn = np.clip(-F, 1, 62)
    q_lo = head >> Fn
    rh = head & ((np.int64(1) << Fn) - 1)
    hh = np.int64(1) << (Fn - 1)
    up_lo = (rh > hh) | ((rh == hh) & ((fr > 0) | ((q_lo & 1) == 1)))
    q = np.where(F >= 0, q_hi + up_hi, q_lo + up_lo)
    maxp = (np.int64(1) << nb) - 1
    q = np.where(s >= fmt.max_scale, maxp, q)    # |x| >= maxpos
    q = np.where(s < -fmt.max_scale, 1, q)       # |x| < minpos
    q = np.clip(q, 1, maxp)
    mask = (np.int64(1) << n) - 1
    p = np.where(x < 0, (-q) & mask, q)
    p = np.where(a == 0, 0, p)
    return np.where(finite, p, np.int64(fmt.nar)).astype(np.int64)


def decode(p, fmt: PositFormat) -> np.ndarray:
    """Float64 value of each n-bit pattern (NaR -> nan); exact for n <= 32."""
    p = np.asarray(p, np.int64) & ((np.int64(1) << fmt.n) - 1)
    n, es, nb = fmt.n, fmt.es, fmt.n - 1
    neg = (p >> nb) & 1 == 1
    mag = np.where(neg, (-p) & ((np.int64(1) << n) - 1), p)
    r0 = (mag >> (nb - 1)) & 1
    body = mag & ((np.int64(1) << nb) - 1)
    inv = np.where(r0 == 1, (~body) & ((np.int64(1) << nb) - 1), body)
    bitlen = np.where(inv > 0, np.frexp(inv.astype(np.float64))[1], 0)
    m = nb - bitlen                              # regime run length
    k = np.where(r0 == 1, m - 1, -m)
    rb = np.maximum(nb - m - 1, 0)               # bits after the regime terminator
    eb = np.minimum(rb, es)
    fb = rb - eb
    e = ((mag >> fb) & ((np.int64(1) << eb) - 1)) << (es - eb)
    f = mag & ((np.int64(1) << fb) - 1)
    sig = 1.0 + np.ldexp(f.astype(np.float64), -fb)
    val = np.ldexp(sig, (k << es) + e)
    val = np.where(neg, -val, val)
    val = np.where(p == 0, 0.0, val)
    return np.where(p == fmt.nar, np.nan, val)


_NB_MIN = 4096  # below this many elements the numpy form is as fast (and never compiles)


def _import_nb():
    from qcompile.numerics import _posit_nb

    return _posit_nb


def _load_nb():
    """The numba form (:mod:`qcompile.numerics._posit_nb`), or None without numba."""
    from qcompile.numerics._numba import load_kernels

    return load_kernels(_import_nb)


_NB: list = []  # loaded on the first large call: importing numba costs ~0.3 s


def round_to(x, fmt: PositFormat, *, use_numba: bool = True) -> np.ndarray:
    """``decode(round_pattern(x))``: x rounded to the posit format, as float64; arrays of
    ``_NB_MIN`` elements or more take the numba form, the same steps per element."""
    x = np.asarray(x, np.float64)
    if use_numba and x.size >= _NB_MIN:
        if not _NB:
            _NB.append(_load_nb())
        if _NB[0] is not None:
            flat = np.ascontiguousarray(x).reshape(-1)
            return _NB[0].round_to(flat, fmt.n, fmt.es, fmt.max_scale, fmt.nar).reshape(x.shape)
    return decode(round_pattern(x, fmt), fmt)


def quire_dot(a, b, fmt: PositFormat) -> float:
    """``round(sum_i a_i b_i)`` with the sum exact (a quire), a/b posit values (float64)."""
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    total = Fraction(0)
    for x, y in zip(a.tolist(), b.tolist(), strict=True):
        total += Fraction(x) * Fraction(y)
    if total == 0:
        return 0.0
    return float(decode_exact(round_exact(total, fmt), fmt))


# ------------------------------------------------------------------ the registry entry
# 50-bit helper format for the round-to-odd quotient (range far beyond any posit(<=32, <=3)).
_RO = FloatFormat(p=50, emin=-600, emax=600, subnormal=False, name="ro50")


def _nearest_only(fmt: PositFormat, mode: Rounding) -> None:
    if mode is not Rounding.NEAREST:
        raise FormatError(f"{fmt}: posits round to nearest (ties to even pattern) only")


def _odd50(v: np.ndarray) -> np.ndarray:
    """Whether the 50-bit significand of each (finite, nonzero) v is odd."""
    fin = np.isfinite(v) & (v != 0)
    m, _ = np.frexp(np.where(fin, v, 1.0))
    return fin & ((np.ldexp(np.abs(m), 50).astype(np.int64) & 1) == 1)


def _round_fast(fmt: PositFormat, x, mode: Rounding = Rounding.NEAREST) -> np.ndarray:
    _nearest_only(fmt, mode)
    return round_to(x, fmt)


def _div_ro50(fmt: PositFormat, x, s) -> np.ndarray:
    """``round(x / s)`` via the 50-bit round-to-odd quotient (module docstring)."""
    lo = fastfp.div(x, s, _RO, Rounding.ZERO)
    hi = fastfp.div(x, s, _RO, Rounding.AWAY)
    return round_to(np.where((lo == hi) | _odd50(lo), lo, hi), fmt)


def _div_fast(fmt: PositFormat, x, s, mode: Rounding = Rounding.NEAREST) -> np.ndarray:
    """``round(z)``, ``z = x / s`` exact, from the binary64 quotient ``d = fl(x / s)``.

    ``z`` lies strictly between ``d-`` and ``d+``, the binary64 neighbours of ``d`` (the
    rounding error is at most half the spacing on either side, also at a binade edge and in
    the subnormal range); posit rounding is non-decreasing, so ``round(d-) == round(d+)`` is
    ``round(z)``.  Where they differ (``d`` at or next to a rounding breakpoint), or binary64
    under/overflowed the quotient, the round-to-odd quotient decides (:func:`_div_ro50`).
    Zero, infinite and NaN ``x`` give ``z == d``.  Two posit roundings of binary64 values
    instead of two exact quotients per element (posit8 FQ ~120 -> ~50 ns per element)."""
    _nearest_only(fmt, mode)
    x = np.asarray(x, np.float64)
    s = np.broadcast_to(np.asarray(s, np.float64), x.shape)
    with np.errstate(all="ignore"):
        d = x / s
    same = (x == 0) | ~np.isfinite(x)
    edge = ~same & ((d == 0) | ~np.isfinite(d))
    keep = same | edge
    b = d.view(np.int64)  # neighbours by the bits: np.nextafter costs ~13 ns per element
    step = np.where(d > 0, np.int64(1), np.int64(-1))
    lo = round_to(np.where(keep, d, (b - step).view(np.float64)), fmt)
    hi = round_to(np.where(keep, d, (b + step).view(np.float64)), fmt)
    bad = np.flatnonzero((lo.view(np.int64) != hi.view(np.int64)) | edge.reshape(lo.shape))
    if bad.size:
        lo = np.array(lo, np.float64)
        lo.reshape(-1)[bad] = _div_ro50(fmt, x.reshape(-1)[bad], s.reshape(-1)[bad])
    return lo


def _round_exact(fmt: PositFormat, x, mode: Rounding = Rounding.NEAREST) -> float:
    _nearest_only(fmt, mode)
    return div_exact(x, 1, fmt)


def _div_exact(fmt: PositFormat, x, s, mode: Rounding = Rounding.NEAREST) -> float:
    _nearest_only(fmt, mode)
    return div_exact(x, s, fmt)


def _parse(text: str) -> PositFormat | None:
    if not is_posit_spec(text):
        return None
    try:
        return parse_posit(text)
    except ValueError as e:
        raise FormatError(str(e)) from None


FAMILY = Family(
    name="posit", spellings=("positN_ES (e.g. posit8_1, posit(16,1))",), parse=_parse,
    examples=("posit8_1", "posit(16,1)", "posit4_0", "posit12_2", "posit32_3"),
    roundings=frozenset({Rounding.NEAREST}), amax_scaled=False,
    round_fast=_round_fast, round_exact=_round_exact, div_fast=_div_fast, div_exact=_div_exact)
