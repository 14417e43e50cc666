"""The quantised ops other tools emit that :mod:`ops_qdq` lacked, fast engine, evaluated exactly
(the reference engine, :mod:`ops_qdq_ms_ref`, computes the same element by element).

Semantics (``v`` exact, one rounding ``saturate(rhe(v / s_y) + z_y)`` per output element):

* ``QGemm`` (com.microsoft; A, s_a, z_a, B, s_b, z_b [, C] [, s_y, z_y]; alpha, transA,
  transB): ``acc = sum (a - z_a)(b - z_b)`` exact; C is int32 in units of ``alpha s_a s_b``
  (zero point 0), so ``v = alpha s_a s_b (acc + C)``.  Without ``s_y`` the output is float:
  ``v`` correctly rounded to binary64, then into the format.  ``s_b``/``z_b`` per tensor or
  per output column.
* ``QLinearMul`` (com.microsoft): ``v = s_a s_b (a - z_a)(b - z_b)``, broadcasting.
* ``QLinearConcat`` (com.microsoft; s_y, z_y, then (x, s, z) per input; axis): every input
  requantised, ``v = s_i (x_i - z_i)``, then concatenated (equal parameters: a copy).
* ``QLinearSigmoid`` (com.microsoft): ``v = sigmoid(s_x (x - z_x))``.  The value is
  transcendental except at 0, so it is never a tie there; :func:`sigmoid_code` decides
  ``rhe(v / s_y)`` from MPFR enclosures (directed roundings) at growing precision and
  gives the exact rational ``1 / 2`` at ``x = z_x``.  The fast engine tabulates the
  (<= 65536) codes, the reference evaluates each element.
* ``DynamicQuantizeLinear`` (uint8): ``r_min = min(0, min x)``, ``r_max = max(0, max x)``;
  ``s = (r_max - r_min) / 255`` exact, rounded once to binary32 (its declared type);
  ``z = saturate(rhe(-r_min / s))``; ``y = saturate(rhe(x / s) + z)``.  All-zero ``x``:
  ``s = 0``, ``z = 0``, ``y = 0`` (ONNX Runtime's choice; ONNX leaves it undefined).
"""

from __future__ import annotations

from fractions import Fraction

import gmpy2
import numpy as np

from qcompile.backends.base import OpTable
from qcompile.backends.mpfr import ops_qdq as Q
from qcompile.numerics.qdq_exact import frac, qtype_of_array, quantize_exact, rhe
from qcompile.numerics.quant import QType

MS = "com.microsoft"
_F64 = np.float64
U8 = QType(8, False)


def _i64(a) -> np.ndarray:
    return np.asarray(a).astype(np.int64)


def _scalar(p) -> np.ndarray:
    return np.asarray(p).reshape(-1)[:1].reshape(())


# ----------------------------------------------------------------------------- shared maths
def float32_of(v: Fraction) -> float:
    """The exact rational ``v`` rounded once to binary32 (nearest-even; normal range)."""
    if v == 0:
        return 0.0
    with gmpy2.context(gmpy2.ieee(32)) as ctx:
        ctx.round = gmpy2.RoundToNearest
        return float(gmpy2.mpfr(gmpy2.mpq(v.numerator, v.denominator)))


def dynamic_params(lo: Fraction, hi: Fraction) -> tuple[float, int]:
    """(scale, zero point) of DynamicQuantizeLinear from the exact min/max of x."""
    rmin, rmax = min(Fraction(0), lo), max(Fraction(0), hi)
    s = float32_of((rmax - rmin) / 255)
    if s == 0:
        return 0.0, 0
    return s, max(0, min(255, rhe(-rmin / Fraction(s))))


def sigmoid_code(d: int, xs, ys, yz: int, qt: QType) -> int:
    """``saturate(rhe(sigmoid(s_x d) / s_y) + z_y)``, decided exactly (see module doc)."""
    xs, ys = (np.asarray(p).reshape(-1)[0] if isinstance(p, np.ndarray) else p for p in (xs, ys))
    if d == 0:
        return max(qt.qmin, min(qt.qmax, rhe(Fraction(1, 2) / frac(ys)) + yz))
    a = frac(xs) * d
    sy = frac(ys)
    prec = 64
    while True:
        bounds = []
        for rnd_e, rnd in ((gmpy2.RoundUp, gmpy2.RoundDown), (gmpy2.RoundDown, gmpy2.RoundUp)):
            with gmpy2.context(precision=prec) as ctx:
                ctx.round = rnd_e  # exp(-a) bounded one way gives sigmoid bounded the other
                e = gmpy2.exp(-gmpy2.mpq(a.numerator, a.denominator))
                ctx.round = rnd
                t = gmpy2.div(gmpy2.mpfr(1), gmpy2.add(gmpy2.mpfr(1), e))
                t = gmpy2.div(t, gmpy2.mpq(sy.numerator, sy.denominator))
                bounds.append(frac(t))
        lo, hi = bounds
        r_lo, r_hi = rhe(lo), rhe(hi)
        # sigmoid(a) / s_y with a != 0 is transcendental: never a half-integer, so once both
        # ends of the enclosure round alike the exact value rounds the same way
        if r_lo == r_hi:
            return max(qt.qmin, min(qt.qmax, r_lo + yz))
        prec *= 2
        if prec > 1 << 16:  # pragma: no cover - would need a value within 2^-65536 of a tie
            raise ArithmeticError("QLinearSigmoid: cannot decide the rounding")


# ----------------------------------------------------------------------------- kernels
def qgemm(E, a, as_, az, b, bs, bz, C=None, ys=None, yz=None, *, alpha=1.0, transA=0,
          transB=0):
    A = _i64(a).T if int(transA) else _i64(a)
    Bm = _i64(b).T if int(transB) else _i64(b)
    bzv = _i64(bz).reshape(-1)
    bd = Bm - (bzv.reshape(1, -1) if bzv.size > 1 else bzv.reshape(()))
    acc = Q.int_matmul(A - _i64(az).reshape(()), bd)
    if C is not None:
        acc = acc + _i64(C)
    bsv = np.asarray(bs, _F64).reshape(-1)
    scales = [np.asarray(as_, _F64).reshape(()), bsv.reshape(1, -1) if bsv.size > 1
              else bsv.reshape(()), np.asarray(np.float32(alpha), _F64)]
    if ys is None:
        return (E.A.round(Q.float_out(acc, scales)),)
    qt = qtype_of_array(yz)
    return (Q.requant(acc, scales, [np.asarray(ys, _F64)], yz, qt),)


def qlinear_mul(E, a, as_, az, b, bs, bz, cs, cz=None, *, qc_output_dtype=0):
    prod = (_i64(a) - _i64(az)) * (_i64(b) - _i64(bz))
    qt = qtype_of_array(cz, qc_output_dtype)
    return (Q.requant(prod, [np.asarray(as_, _F64), np.asarray(bs, _F64)], [cs],
                      np.zeros((), np.int64) if cz is None else cz, qt),)


def qlinear_concat(E, ys, yz, *rest, axis=1):
    qt = qtype_of_array(yz)
    parts = []
    for k in range(0, len(rest), 3):
        x, s, z = rest[k:k + 3]
        parts.append(Q.requant(_i64(x) - _i64(z), [np.asarray(s, _F64)], [ys], yz, qt))
    return (np.concatenate(parts, axis=int(axis)).astype(qt.storage),)


def qlinear_sigmoid(E, x, xs, xz, ys, yz):
    qt = qtype_of_array(yz)
    zx, zy = int(_scalar(xz)), int(_scalar(yz))
    src = qtype_of_array(xz)
    codes = np.arange(src.qmin, src.qmax + 1)
    lut = np.array([sigmoid_code(int(c) - zx, _scalar(xs), _scalar(ys), zy, qt) for c in codes],
                   qt.storage)
    return (lut[_i64(x) - src.qmin],)


def dynamic_quantize(E, x):
    x = np.asarray(x, _F64)
    lo = Fraction(float(x.min(initial=0.0)))
    hi = Fraction(float(x.max(initial=0.0)))
    s, z = dynamic_params(lo, hi)
    if s == 0:
        y = np.zeros(x.shape, np.uint8)
    else:
        y = quantize_exact(x, np.float64(s), np.int64(z), U8, None)
    return y, E.A.round(np.asarray(s, _F64)), np.asarray(z, np.uint8)


def register(table: OpTable) -> None:
    """Register into the FAST table (called from :func:`ops_qdq.register`)."""
    table.register("DynamicQuantizeLinear")(dynamic_quantize)
    for op, fn in (("QGemm", qgemm), ("QLinearMul", qlinear_mul),
                   ("QLinearConcat", qlinear_concat), ("QLinearSigmoid", qlinear_sigmoid)):
        table.register(op, MS)(fn)
