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

Fast and exact (:func:`fq_round`): the format's family (:mod:`qcompile.numerics.formats`) rounds:
``round_fast`` when ``s == 1``, else ``div_fast``, which rounds the exact quotient of two
binary64 values once (floats: ``fastfp.div``, correct in every mode; posits: a round-to-odd
50-bit quotient, see :mod:`qcompile.numerics.posit`). Nothing here knows which family it is
handed: a new family plugs in by registering.
"""

from __future__ import annotations

import numpy as np

from qcompile.numerics.format_protocol import NumberFormat
from qcompile.numerics.formats import FormatError, Rounding, family_of, parse_fq

__all__ = ["fq_format", "amax_scale", "fq_round", "format_max", "FQFormat"]

FQFormat = NumberFormat  # a format of a family with ``fq=True`` (float, posit, ...)


def fq_format(spec: str, *, saturate: bool = True) -> FQFormat:
    """The FQ format named ``spec`` (float, posit or any registered FQ family; FormatError
    otherwise). ``saturate``: overflow gives +-max finite (posits always saturate)."""
    return parse_fq(spec, saturate=saturate)


def format_max(fmt: FQFormat) -> float:
    """Largest finite magnitude of ``fmt`` (maxpos for a posit)."""
    m = fmt.max_finite
    if m is None:
        raise FormatError(f"format {fmt} has no finite maximum in binary64; amax scaling needs one")
    return m


def amax_scale(amax, fmt: FQFormat) -> np.ndarray:
    """``amax / max_finite(F)`` elementwise (1 where amax is 0 or not finite; 1 for a family
    that is not amax-scaled, e.g. posits)."""
    a = np.abs(np.asarray(amax, np.float64))
    if not family_of(fmt).amax_scaled:
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
    fam = family_of(fmt)
    if bool(np.all(sb == 1.0)):
        return fam.round_fast(fmt, x, mode)
    return fam.div_fast(fmt, x, np.broadcast_to(sb, x.shape), mode)


def fq_bits(fmt: FQFormat) -> int | None:
    """Storage width in bits (None for a custom float format without an IEEE-like encoding)."""
    return fmt.bits


def spec_of(fmt: FQFormat) -> str:
    return fmt.name or fmt.spec()
