"""Uniform affine quantisation: the single source of truth (pure numpy).

A real value ``r`` is represented by an integer ``q`` of type ``QType(bits, signed)``::

    q = clamp(round_half_even(r / s) + z, qmin, qmax)        # quantize  (ONNX QuantizeLinear)
    r' = (q - z) * s                                          # dequantize (ONNX DequantizeLinear)

``r / s`` is evaluated in float32 (as ONNX and ONNX Runtime do) for types up to 16 bits, in
float64 for int32 (bias, which is pre-quantised offline and never goes through QuantizeLinear).
Per-axis ("per-channel") parameters broadcast along ``axis``.

Parameters from a range ``[lo, hi]`` (zero is always made representable, ``lo <= 0 <= hi``):

* asymmetric: ``s = (hi - lo) / (qmax - qmin)``, ``z = clamp(round(qmin - lo / s), qmin, qmax)``;
  a non-negative range (ReLU output) gives ``z = qmin`` exactly.
* symmetric, signed: ``s = max(|lo|, |hi|) / Q`` with the narrow range ``[-Q, Q]``,
  ``Q = 2**(bits-1) - 1`` (127 for int8), ``z = 0``.
* symmetric, unsigned: ``s = 2 max(|lo|, |hi|) / (qmax - qmin)``, ``z = 2**(bits-1)``.
* ``reduce_range`` drops one bit (int8 symmetric: ``Q = 64``; uint8: ``[0, 127]``), the x86
  AVX2 remedy against int16 saturation in ``vpmaddubsw`` (u8 x s8 pair sums).
* an empty range (``lo == hi == 0``) gets ``s = 1``.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import ClassVar

import numpy as np

from qcompile.numerics.float_format import Rounding
from qcompile.numerics.format_protocol import Family

__all__ = [
    "QType", "QTYPES", "qtype", "qrange", "qparams", "quantize", "dequantize", "fake_quant",
    "bias_qparams", "channel_minmax", "fit_scale_within",
]


@dataclass(frozen=True)
class QType:
    """An integer quantised type: ``bits`` in {2, 4, 8, 16, 32}, ``signed`` (2 bits: weights
    only, symmetric ``[-1, 1]``: ternary; stored in 4-bit containers)."""

    bits: int
    signed: bool
    family: ClassVar[str] = "int"
    group: ClassVar[str] = "int"

    def __post_init__(self) -> None:
        if self.bits not in (2, 4, 8, 16, 32):
            raise ValueError(f"unsupported bit width {self.bits}; use 2, 4, 8, 16 or 32")

    @property
    def name(self) -> str:
        return ("int" if self.signed else "uint") + str(self.bits)

    @property
    def qmin(self) -> int:
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    @property
    def storage(self) -> np.dtype:
        """The numpy dtype that holds the integers (4-bit types widen to 8 bits)."""
        b = max(self.bits, 8)
        return np.dtype(f"{'int' if self.signed else 'uint'}{b}")

    @property
    def max_finite(self) -> float:
        """The largest magnitude, ``max(|qmin|, qmax)`` (the integer grid at scale 1)."""
        return float(max(-self.qmin, self.qmax))

    def spec(self) -> str:
        return self.name

    def __str__(self) -> str:
        return self.name


QTYPES: dict[str, QType] = {q.name: q for q in (
    QType(2, True), QType(4, True), QType(4, False), QType(8, True), QType(8, False),
    QType(16, True), QType(16, False), QType(32, True))}


def qtype(name: str) -> QType:
    """``'int8'`` -> QType(8, True); ValueError listing the valid names otherwise."""
    try:
        return QTYPES[name]
    except KeyError:
        raise ValueError(f"unknown quantised type {name!r}; use one of "
                         f"{', '.join(QTYPES)}") from None


def qrange(qt: QType, *, symmetric: bool = False, reduce_range: bool = False) -> tuple[int, int]:
    """The integer interval the parameters target (see module docstring)."""
    if qt.signed and symmetric:
        q = (1 << (qt.bits - 2)) if reduce_range else qt.qmax
        return -q, q
    if reduce_range:
        if qt.signed:
            return -(1 << (qt.bits - 2)), (1 << (qt.bits - 2)) - 1
        return 0, (1 << (qt.bits - 1)) - 1
    return qt.qmin, qt.qmax


def qparams(lo: np.ndarray | float, hi: np.ndarray | float, qt: QType, *,
            symmetric: bool = False, reduce_range: bool = False
            ) -> tuple[np.ndarray, np.ndarray]:
    """Scale (float32) and zero point (``qt.storage``) for the range ``[lo, hi]``.

    ``lo``/``hi`` may be arrays (one entry per channel); results have their shape.
    """
    lo64 = np.minimum(np.asarray(lo, np.float64), 0.0)
    hi64 = np.maximum(np.asarray(hi, np.float64), 0.0)
    if not (np.all(np.isfinite(lo64)) and np.all(np.isfinite(hi64))):
        raise ValueError("qparams: the range is not finite")
    qmin, qmax = qrange(qt, symmetric=symmetric, reduce_range=reduce_range)
    if symmetric:
        amax = np.maximum(-lo64, hi64)
        if qt.signed:
            scale = amax / qmax
            zp = np.zeros_like(amax)
        else:
            scale = 2.0 * amax / (qmax - qmin)
            zp = np.full_like(amax, float((qmax + qmin + 1) // 2))
        scale32 = _safe_scale(scale)
    else:
        scale32 = _safe_scale((hi64 - lo64) / (qmax - qmin))
        zp = np.clip(np.rint(qmin - lo64 / scale32.astype(np.float64)), qmin, qmax)
    return scale32, zp.astype(qt.storage)


def _safe_scale(scale: np.ndarray) -> np.ndarray:
    s = np.asarray(scale, np.float64)
    s = np.where(s > 0, s, 1.0)  # an all-zero range: any scale represents it exactly
    s = np.maximum(s, float(np.finfo(np.float32).tiny))
    return s.astype(np.float32)


def _bcast(p: np.ndarray, ndim: int, axis: int | None) -> np.ndarray:
    p = np.asarray(p)
    if axis is None or p.ndim == 0:
        return p
    shape = [1] * ndim
    shape[axis % ndim] = -1
    return p.reshape(shape)


def quantize(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, qt: QType,
             axis: int | None = None) -> np.ndarray:
    """``clamp(round_half_even(x / scale) + zp, qmin, qmax)`` as ``qt.storage`` integers."""
    x = np.asarray(x)
    ftype = np.float64 if qt.bits > 16 else np.float32
    s = _bcast(np.asarray(scale, ftype), x.ndim, axis)
    z = _bcast(np.asarray(zero_point, np.float64), x.ndim, axis)
    with np.errstate(over="ignore", invalid="ignore"):
        r = np.rint(x.astype(ftype) / s).astype(np.float64) + z
    r = np.nan_to_num(r, nan=0.0)
    return np.clip(r, qt.qmin, qt.qmax).astype(qt.storage)


def dequantize(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray,
               axis: int | None = None) -> np.ndarray:
    """``(q - zp) * scale`` in float32 (ONNX DequantizeLinear)."""
    q = np.asarray(q)
    s = _bcast(np.asarray(scale, np.float32), q.ndim, axis)
    z = _bcast(np.asarray(zero_point).astype(np.float32), q.ndim, axis)
    return ((q.astype(np.float32) - z) * s).astype(np.float32)


def fake_quant(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, qt: QType,
               axis: int | None = None) -> np.ndarray:
    """``dequantize(quantize(x))``: what a ``qcompile.QDQ`` node computes."""
    return dequantize(quantize(x, scale, zero_point, qt, axis), scale, zero_point, axis)


def bias_qparams(input_scale: np.ndarray | float, weight_scale: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """int32 bias parameters: ``s_b = s_in * s_w`` (float32 product, per channel), ``z_b = 0``.

    With these the integer accumulator ``sum(q_in q_w) + q_b`` is in units of ``s_in s_w``, so
    a QLinearConv adds the bias without rescaling.
    """
    s = (np.asarray(input_scale, np.float32) * np.asarray(weight_scale, np.float32))
    s = np.asarray(np.maximum(s, np.finfo(np.float32).tiny), np.float32)
    return s, np.zeros(s.shape, np.int32)


def channel_minmax(w: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Min and max of ``w`` over all axes but ``axis`` (whole tensor when ``axis`` is None)."""
    w = np.asarray(w, np.float64)
    if axis is None:
        return np.asarray(w.min() if w.size else 0.0), np.asarray(w.max() if w.size else 0.0)
    axes = tuple(i for i in range(w.ndim) if i != axis % w.ndim)
    return w.min(axis=axes), w.max(axis=axes)


def fit_scale_within(scale: np.ndarray, zero_point: np.ndarray, qt: QType,
                     lo: float, hi: float) -> np.ndarray:
    """Shrink ``scale`` (by float32 ulps) until ``[(qmin-z)s, (qmax-z)s]`` lies in ``[lo, hi]``.

    ONNX Runtime removes a Clip(lo, hi) in front of a QuantizeLinear only when the quantised
    range, computed in float32, is inside the clip interval; a range calibrated to exactly
    ``hi`` can overshoot by one rounding.
    """
    s = np.array(scale, np.float32, copy=True)
    z = np.asarray(zero_point, np.float32)
    for _ in range(64):
        top = (np.float32(qt.qmax) - z) * s
        bot = (np.float32(qt.qmin) - z) * s
        bad = (top > np.float32(hi)) | (bot < np.float32(lo))
        if not np.any(bad):
            break
        s = np.where(bad, np.nextafter(s, np.float32(0)), s).astype(np.float32)
    return s


# ------------------------------------------------------------------ the registry entry
def _round_fast(qt: QType, x, mode: Rounding = Rounding.NEAREST) -> np.ndarray:
    """``clamp(round_half_even(x), qmin, qmax)`` elementwise, as float64."""
    return np.clip(np.rint(np.asarray(x, np.float64)), qt.qmin, qt.qmax)


def _round_exact(qt: QType, x, mode: Rounding = Rounding.NEAREST) -> float:
    """``clamp(round_half_even(x), qmin, qmax)`` of one exact rational ``x``."""
    return float(min(max(round(Fraction(x)), qt.qmin), qt.qmax))


def _parse(text: str) -> QType | None:
    return QTYPES.get(text.strip().lower())


# Integer types are quantised by QuantizeLinear/DequantizeLinear (quantize, assign), not by
# qcompile.FQ, so the family has no FQ engines.
FAMILY = Family(
    name="int", spellings=("int2/int4/int8/int16 (uint4/uint8/uint16)",), parse=_parse,
    examples=("int2", "int4", "uint4", "int8", "uint8", "int16", "uint16", "int32"),
    fq=False, roundings=frozenset({Rounding.NEAREST}), round_fast=_round_fast,
    round_exact=_round_exact)
