"""Exact quantisation arithmetic: round half to even of an exact rational, saturation, types.

The ONNX operators define (QuantizeLinear, QLinearConv, ... with real-valued scales)::

    q = saturate(round_half_even(v) + z)      v = exact real value in quantisation steps

where ``v`` is e.g. ``x / s`` (QuantizeLinear) or ``acc * s_x s_w / s_y`` (QLinearConv).
Every scale is a float32 (a dyadic rational), every integer exact, so ``v`` is a rational
number and the rounding is well defined.  This module computes it **exactly**, once:

* reference: :func:`rhe` on :class:`fractions.Fraction` values (``round half to even`` of
  ``n/d``: ``q, r = divmod(n, d)``; round up when ``2r > d``, or ``2r == d`` and ``q`` odd);
* fast: :func:`round_exact` takes a binary64 approximation ``t`` of ``v`` and an upper bound
  ``err`` on ``|t - v|``.  Where ``t`` is farther than ``err`` from every half-integer
  (``k + 1/2``) and finite, ``rint(t) == round_half_even(v)``: both lie strictly inside the
  same interval ``(k - 1/2, k + 1/2)``.  The other elements (near ties, exact ties, huge or
  non-finite values) are recomputed with the caller's exact function: never silently wrong.
  The callers derive ``err`` from the number of binary64 roundings in ``t`` (each at most
  ``2^-53`` relative to its own result; we use ``2^-50`` per rounding as a margin).

Saturation clamps to ``[qmin, qmax]`` of the type; NaN quantises to the zero point (as
:func:`qcompile.numerics.quant.quantize` does; ONNX leaves it undefined).  int4/uint4 values
are stored widened to int8/uint8.
"""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction

import numpy as np

from qcompile.numerics.quant import QType

__all__ = ["EPS", "ONNX_QTYPES", "qtype_of_array", "rhe", "round_exact", "saturate",
           "frac", "bcast", "finish_codes", "quantize_exact", "quantize_exact_ref"]

EPS = 2.0 ** -50  # per binary64 rounding, relative (true bound 2^-53: a margin of 8)

# ONNX TensorProto element type -> QType (the integer types QuantizeLinear may produce)
ONNX_QTYPES: dict[int, QType] = {2: QType(8, False), 3: QType(8, True), 4: QType(16, False),
                                 5: QType(16, True), 6: QType(32, True), 21: QType(4, False),
                                 22: QType(4, True)}
_BY_DTYPE = {np.dtype(np.uint8): QType(8, False), np.dtype(np.int8): QType(8, True),
             np.dtype(np.uint16): QType(16, False), np.dtype(np.int16): QType(16, True),
             np.dtype(np.int32): QType(32, True)}


def qtype_of_array(zero_point: np.ndarray | None, output_dtype: int | None = None) -> QType:
    """The quantised type: ``output_dtype`` (ONNX code, e.g. 22 = int4) if given, else the
    zero point's numpy dtype (uint8 when absent, as ONNX says)."""
    if output_dtype:
        try:
            return ONNX_QTYPES[int(output_dtype)]
        except KeyError:
            raise ValueError(f"output_dtype {output_dtype} is not an integer quantised type") \
                from None
    if zero_point is None:
        return QType(8, False)
    dt = np.asarray(zero_point).dtype
    try:
        return _BY_DTYPE[dt]
    except KeyError:
        raise ValueError(f"zero point of dtype {dt} is not a quantised integer type") from None


def frac(x) -> Fraction:
    """Exact Fraction of a float/int/numpy scalar/gmpy2 mpfr or mpq."""
    if isinstance(x, Fraction):
        return x
    if isinstance(x, (int, np.integer)):
        return Fraction(int(x))
    if isinstance(x, (float, np.floating)):
        return Fraction(float(x))
    try:  # gmpy2 mpfr / mpq: as_integer_ratio is exact
        n, d = x.as_integer_ratio()
        return Fraction(int(n), int(d))
    except (AttributeError, TypeError):
        return Fraction(x)


def rhe(v: Fraction) -> int:
    """round half to even of an exact rational."""
    q, r = divmod(v.numerator, v.denominator)  # floor division: 0 <= r < d
    twice = 2 * r
    if twice > v.denominator or (twice == v.denominator and q % 2):
        q += 1
    return q


def saturate(q: np.ndarray, qt: QType) -> np.ndarray:
    """Clamp integers to the type's range and store them in ``qt.storage``."""
    return np.clip(q, qt.qmin, qt.qmax).astype(qt.storage)


def bcast(p, ndim: int, axis: int | None) -> np.ndarray:
    """A per-axis parameter shaped to broadcast along ``axis`` of an ``ndim`` tensor (a scalar
    or one-element parameter stays a scalar)."""
    p = np.asarray(p)
    if axis is None or p.size == 1 or ndim == 0:
        return p.reshape(()) if p.size == 1 else p
    shape = [1] * ndim
    shape[int(axis) % ndim] = -1
    return p.reshape(shape)


def round_exact(t: np.ndarray, err: np.ndarray | float,
                exact: Callable[[tuple[np.ndarray, ...]], list[Fraction]]) -> np.ndarray:
    """``round_half_even(v)`` as float64 integers (may exceed any type: saturate after).

    ``t``: binary64 approximation of ``v``; ``err``: bound on ``|t - v|`` (array or scalar);
    ``exact(idx)``: the exact ``v`` (Fractions) at the index tuple ``idx`` (np.nonzero form)
    for the elements that cannot be decided from ``t``.  NaN ``t`` with a NaN ``v`` is the
    caller's business (``exact`` may return None: the result is then NaN).
    """
    t = np.asarray(t, np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        r = np.rint(t)
        dist = np.abs(np.abs(t - np.floor(t)) - 0.5)  # distance to the nearest k + 1/2
        bad = ~(dist > np.abs(err)) | ~np.isfinite(t) | (np.abs(t) >= 2.0 ** 51)
    if np.any(bad):
        idx = np.nonzero(bad)
        vals = exact(idx)
        r[idx] = [np.nan if v is None else float(_clamp_int(rhe(v))) for v in vals]
    return r


def _clamp_int(q: int) -> int:
    """Keep huge exact results finite and saturating (every type's range is inside +-2^62)."""
    return max(-(1 << 62), min(1 << 62, q))


def finish_codes(r: np.ndarray, z: np.ndarray, qt: QType) -> np.ndarray:
    """``saturate(r + z)``; NaN (from a NaN input) becomes the zero point."""
    zf = np.broadcast_to(np.asarray(z, np.float64), r.shape)
    s = np.where(np.isnan(r), zf, r + zf)
    return saturate(s, qt)


def quantize_exact(x: np.ndarray, scale, zero_point, qt: QType,
                   axis: int | None = None) -> np.ndarray:
    """QuantizeLinear of the exact values ``x`` (binary64 numbers): ``saturate(rhe(x/s) + z)``.

    ``t = x / s`` in binary64 is one rounding, so ``|t - x/s| <= 2^-53 |t|``; +-inf saturate.
    """
    x = np.asarray(x, np.float64)
    s = bcast(np.asarray(scale, np.float64), x.ndim, axis)
    z = bcast(np.asarray(zero_point).astype(np.int64), x.ndim, axis)
    sb = np.broadcast_to(s, x.shape)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        t = x / s

    def exact(idx):
        out = []
        for xv, sv in zip(x[idx].tolist(), sb[idx].tolist()):
            if xv != xv:
                out.append(None)
            elif xv in (np.inf, -np.inf):
                out.append(Fraction(1 << 62) * (1 if xv > 0 else -1))
            else:
                out.append(Fraction(xv) / Fraction(sv))
        return out

    r = round_exact(t, EPS * np.abs(t), exact)
    return finish_codes(r, z, qt)


def quantize_exact_ref(x, scale, zero_point, qt: QType) -> int:
    """One element, plain Python (the reference engine and the tests): exact ``x`` (any number
    :func:`frac` accepts, or NaN/inf floats)."""
    z = int(zero_point)
    try:
        xf = float(x)
    except (TypeError, ValueError):
        xf = 0.0
    if xf != xf:
        return max(qt.qmin, min(qt.qmax, z))
    if xf in (np.inf, -np.inf):
        return qt.qmax if xf > 0 else qt.qmin
    q = rhe(frac(x) / frac(scale)) + z
    return max(qt.qmin, min(qt.qmax, q))
