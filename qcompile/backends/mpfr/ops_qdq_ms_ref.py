"""Reference-engine kernels of the ops in :mod:`ops_qdq_ms` (semantics there): plain Python
integers and Fractions, one output element at a time; the fast engine must agree bit for bit.
``sample`` (output indices) returns only those elements of the first output."""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from qcompile.backends.base import OpTable
from qcompile.backends.mpfr.ops_qdq_ms import U8, dynamic_params, sigmoid_code
from qcompile.numerics.qdq_exact import frac, qtype_of_array, quantize_exact_ref, rhe

MS = "com.microsoft"


def _pick(out, sample):
    """The kernel result, or its ``sample`` elements (integers as exact mpfr)."""
    if sample is None:
        return (out,)
    from qcompile.backends.mpfr.ref import exact

    return [out[tuple(i)] if out.dtype == object else exact(int(out[tuple(i)]))
            for i in sample]


def _first(p) -> int:
    return int(np.asarray(p).reshape(-1)[0])


def _per(p, j):
    p = np.asarray(p).reshape(-1)
    return p[0] if p.size == 1 else p[j]


def _sat(v: Fraction, z: int, qt) -> int:
    return max(qt.qmin, min(qt.qmax, rhe(v) + z))


def qgemm(E, a, as_, az, b, bs, bz, C=None, ys=None, yz=None, *, alpha=1.0, transA=0,
          transB=0, sample=None):
    A = np.asarray(a).T if int(transA) else np.asarray(a)
    B = np.asarray(b).T if int(transB) else np.asarray(b)
    M, K = A.shape
    N = B.shape[1]
    za = _first(az)
    al = Fraction(float(np.float32(alpha)))
    qt = None if ys is None else qtype_of_array(yz)
    out = np.empty((M, N), object if ys is None else qt.storage)
    for m in range(M):
        for n in range(N):
            zb = int(_per(bz, n))
            acc = sum((int(A[m, k]) - za) * (int(B[k, n]) - zb) for k in range(K))
            if C is not None:
                acc += int(np.broadcast_to(np.asarray(C), (M, N))[m, n])
            v = al * frac(_per(as_, 0)) * frac(_per(bs, n)) * acc
            out[m, n] = E.A.round(float(v)) if ys is None else \
                _sat(v / frac(_per(ys, 0)), _first(yz), qt)
    return _pick(out, sample)


def qlinear_mul(E, a, as_, az, b, bs, bz, cs, cz=None, *, qc_output_dtype=0, sample=None):
    shape = np.broadcast_shapes(np.shape(a), np.shape(b))
    A, B = np.broadcast_to(a, shape), np.broadcast_to(b, shape)
    qt = qtype_of_array(cz, qc_output_dtype)
    za, zb, zc = _first(az), _first(bz), 0 if cz is None else _first(cz)
    k = frac(_per(as_, 0)) * frac(_per(bs, 0)) / frac(_per(cs, 0))
    out = np.empty(shape, qt.storage)
    for i in np.ndindex(*shape):
        out[i] = _sat(k * (int(A[i]) - za) * (int(B[i]) - zb), zc, qt)
    return _pick(out, sample)


def qlinear_concat(E, ys, yz, *rest, axis=1, sample=None):
    qt = qtype_of_array(yz)
    zy, sy = _first(yz), frac(_per(ys, 0))
    parts = []
    for k in range(0, len(rest), 3):
        x, s, z = np.asarray(rest[k]), frac(_per(rest[k + 1], 0)), _first(rest[k + 2])
        p = np.empty(x.shape, qt.storage)
        for i in np.ndindex(*x.shape):
            p[i] = _sat(s * (int(x[i]) - z) / sy, zy, qt)
        parts.append(p)
    return _pick(np.concatenate(parts, axis=int(axis)), sample)


def qlinear_sigmoid(E, x, xs, xz, ys, yz, sample=None):
    x = np.asarray(x)
    qt = qtype_of_array(yz)
    zx, zy = _first(xz), _first(yz)
    out = np.empty(x.shape, qt.storage)
    for i in np.ndindex(*x.shape):
        out[i] = sigmoid_code(int(x[i]) - zx, _per(xs, 0), _per(ys, 0), zy, qt)
    return _pick(out, sample)


def dynamic_quantize(E, x, sample=None):
    x = np.asarray(x)
    vals = [frac(v) for v in x.reshape(-1).tolist()]
    s, z = dynamic_params(min(vals, default=Fraction(0)), max(vals, default=Fraction(0)))
    y = np.zeros(x.shape, np.uint8)
    if s != 0:
        for i in np.ndindex(*x.shape):
            y[i] = quantize_exact_ref(x[i], s, z, U8)
    if sample is not None:
        return _pick(y, sample)
    return y, E.convert(np.asarray(s, np.float64)), np.asarray(z, np.uint8)


def register(table: OpTable) -> None:
    """Register into the REF table (called from :func:`ops_qdq_ref.register`)."""
    table.register("DynamicQuantizeLinear")(dynamic_quantize)
    for op, fn in (("QGemm", qgemm), ("QLinearMul", qlinear_mul),
                   ("QLinearConcat", qlinear_concat), ("QLinearSigmoid", qlinear_sigmoid)):
        table.register(op, MS)(fn)
