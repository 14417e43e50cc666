"""Format quantisation ("FQ"): round a tensor into a float or posit format under a scale.

The maths behind the IR op ``qcompile.FQ(x, scale){format, rounding, saturate, axis}``::

    q = round_F(x / s)        # the exact quotient, rounded once into F (mode ``rounding``)
    y = round_A(q * s)        # back to the running scale, rounded into the arithmetic format A

``F`` is a :class:`~qcompile.numerics.formats.FloatFormat` (``e4m3``, ``bf16``, ``b12e4``,
``p=..,emin=..,emax=..``) or a :class:`~qcompile.numerics.posit.PositFormat` (``posit8_1``).
With ``saturate`` (the default, as FP8 PTQ does) a float overflow gives +-max finite instead of
inf; posits always saturate at +-maxpos and never round a nonzero value to 0. ``s`` is a positive
binary64 scale, one per tensor or one per channel along ``axis``.

**amax scaling** (:func:`amax_scale`): ``s = amax / max_finite(F)``, so the largest magnitude seen
(weights: per output channel; activations: the calibrated range, per tensor) maps onto the
format's largest finite value. Posits are left unscaled (``s = 1``): their precision is tapered
around +-1, where trained weights and activations already live, and ``maxpos`` is far above any
useful amax, so mapping amax onto it would spend the whole tensor in the low-precision regime.

Fast and exact (:func:`fq_round`): for float ``F``, ``fastfp.div`` rounds the exact quotient of two
binary64 values correctly in every mode. For posits, the quotient is first rounded *to odd* at
50 bits (``RO50(z)`` = ``RZ50(z)`` if that is exact or odd, else ``RA50(z)``), which keeps the
sign, the binade and the stickiness of the exact quotient; posit rounding then only looks at the
first ``n - 1 <= 31`` bits of the regime/exponent/fraction string plus a sticky bit, so
``posit(RO50(z)) == posit(z)`` (Boldo & Melquiond's round-to-odd argument with 50 >= 31 + 2).
Quotients below ``2**-601`` round (to odd) away from 0 and give +-minpos, as the exact posit
rounding does.
"""

from __future__ import annotations

import numpy as np

from qcompile.numerics import fastfp
from qcompile.numerics.formats import FloatFormat, FormatError, Rounding, parse_format
from qcompile.numerics.posit import PositFormat, is_posit_spec, parse_posit, round_to

__all__ = ["fq_format", "amax_scale", "fq_round", "format_max", "FQFormat"]

FQFormat = FloatFormat | PositFormat
# 50-bit helper format for the round-to-odd quotient (range far beyond any posit(<=32, <=3)).
_RO = FloatFormat(p=50, emin=-600, emax=600, subnormal=False, name="ro50")


def fq_format(spec: str, *, saturate: bool = True) -> FQFormat:
    """The float or posit format named ``spec`` (FormatError naming the families otherwise)."""
    s = str(spec).strip()
    if is_posit_spec(s):
        try:
            return parse_posit(s)
        except ValueError as e:
            raise FormatError(str(e)) from None
    fmt = parse_format(s)
    if saturate and fmt.bounded and not fmt.saturate:
        from dataclasses import replace

        fmt = replace(fmt, saturate=True)
    return fmt


def format_max(fmt: FQFormat) -> float:
    """Largest finite magnitude of ``fmt`` (maxpos for a posit)."""
    if isinstance(fmt, PositFormat):
        return fmt.maxpos
    m = fmt.max_finite
    if m is None:
        raise FormatError(f"format {fmt} has no finite maximum in binary64; amax scaling needs one")
    return m


def amax_scale(amax, fmt: FQFormat) -> np.ndarray:
    """``amax / max_finite(F)`` elementwise (1 where amax is 0 or not finite; 1 for posits)."""
    a = np.abs(np.asarray(amax, np.float64))
    if isinstance(fmt, PositFormat):
        return np.ones_like(a)
    s = a / format_max(fmt)
    return np.where(np.isfinite(s) & (s > 0), s, 1.0)


def _broadcast_scale(x: np.ndarray, s, axis: int | None) -> np.ndarray:
    s = np.asarray(s, np.float64)
    if s.size == 1:
        return s.reshape(())
    if s.ndim == x.ndim:  # already shaped to broadcast
        return s
    if axis is None:
        raise FormatError(f"a scale of {s.size} values needs an axis")
    ax = axis % x.ndim
    if x.shape[ax] != s.size:
        raise FormatError(f"scale has {s.size} values, axis {axis} of the tensor has "
                          f"{x.shape[ax]}")
    shp = [1] * x.ndim
    shp[ax] = s.size
    return s.reshape(shp)


def check_scale(s) -> None:
    s = np.asarray(s, np.float64)
    if not np.all(np.isfinite(s) & (s > 0)):
        raise FormatError("FQ scales must be positive and finite")


def fq_round(x, s, fmt: FQFormat, mode: Rounding | str = Rounding.NEAREST,
             axis: int | None = None) -> np.ndarray:
    """``round_F(x / s)`` of the exact quotient, as float64 values of ``F`` (exact, vectorised)."""
    x = np.asarray(x, np.float64)
    mode = Rounding.parse(mode)
    sb = _broadcast_scale(x, s, axis)
    check_scale(sb)
    unit = bool(np.all(sb == 1.0))
    if isinstance(fmt, PositFormat):
        if mode is not Rounding.NEAREST:
            raise FormatError(f"{fmt}: posits round to nearest (ties to even pattern) only")
        if unit:
            return round_to(x, fmt)
        sf = np.broadcast_to(sb, x.shape)
        lo = fastfp.div(x, sf, _RO, Rounding.ZERO)
        hi = fastfp.div(x, sf, _RO, Rounding.AWAY)
        return round_to(np.where((lo == hi) | _odd50(lo), lo, hi), fmt)
    if unit:
        return fastfp.round_to(x, fmt, mode)
    return fastfp.div(x, np.broadcast_to(sb, x.shape), fmt, mode)


def _odd50(v: np.ndarray) -> np.ndarray:
    """Whether the 50-bit significand of each (finite, nonzero) v is odd."""
    fin = np.isfinite(v) & (v != 0)
    m, _ = np.frexp(np.where(fin, v, 1.0))
    return fin & ((np.ldexp(np.abs(m), 50).astype(np.int64) & 1) == 1)


def fq_bits(fmt: FQFormat) -> int | None:
    """Storage width in bits (None for a custom float format without an IEEE-like encoding)."""
    return fmt.bits


def spec_of(fmt: FQFormat) -> str:
    return fmt.name if isinstance(fmt, PositFormat) else (fmt.name or fmt.spec())
