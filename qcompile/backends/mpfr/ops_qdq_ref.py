"""Quantised kernels of the reference engine: plain Python integers and Fractions, one element at
a time (the semantics are in :mod:`qcompile.backends.mpfr.ops_qdq`; the fast engine must agree
bit for bit).  Float tensors are object arrays of gmpy2 mpfr, integer tensors numpy arrays.
``sample`` (a list of output indices) returns only those elements of the first output."""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from qcompile.backends.base import OpTable
from qcompile.backends.mpfr import common as cm
from qcompile.numerics.qdq_exact import frac, qtype_of_array, quantize_exact_ref, rhe

MS = "com.microsoft"


def _pick(out, sample):
    """The kernel result, or the ``sample`` elements (integers as exact mpfr, as the
    ``--verify`` listener compares every layer through binary64)."""
    if sample is None:
        return (out,)
    vals = [out[tuple(i)] for i in sample]
    if out.dtype != object:
        from qcompile.backends.mpfr.ref import exact

        vals = [exact(int(v)) for v in vals]
    return vals


def _par(p, i, axis):
    """Element of a per-axis (or per-tensor) parameter for output index ``i``."""
    p = np.asarray(p)
    if p.size == 1:
        return p.reshape(-1)[0]
    return p.reshape(-1)[i[axis]]


def _axis(axis, ndim):
    return int(axis) % ndim if ndim else 0


def dequantize(E, q, s, z=None, *, axis=1, block_size=0, sample=None):
    from qcompile.backends.mpfr.ref import exact, exact_mul

    q = np.asarray(q)
    ax = _axis(axis, q.ndim)
    out = np.empty(q.shape, object)
    for i in np.ndindex(*q.shape):
        zi = 0 if z is None else int(_par(z, i, ax))
        out[i] = E.A.round(exact_mul(exact(int(q[i]) - zi), exact(_par(s, i, ax))))
    return _pick(out, sample)


def quantize(E, x, s, z=None, *, axis=1, saturate=1, output_dtype=0, block_size=0,
             sample=None):
    qt = qtype_of_array(z, output_dtype)
    ax = _axis(axis, np.ndim(x))
    out = np.empty(np.shape(x), qt.storage)
    for i in np.ndindex(*np.shape(x)):
        zi = 0 if z is None else int(_par(z, i, ax))
        out[i] = quantize_exact_ref(x[i], _par(s, i, ax), zi, qt)
    return _pick(out, sample)


def qdq(E, x, s, z, *, bits, signed, axis=None, sample=None):
    from qcompile.numerics.quant import QType

    qt = QType(int(bits), bool(signed))
    ax = 0 if axis is None else _axis(axis, np.ndim(x))
    q = np.empty(np.shape(x), np.int64)
    for i in np.ndindex(*np.shape(x)):
        q[i] = quantize_exact_ref(x[i], _par(s, i, ax), int(_par(z, i, ax)), qt)
    return dequantize(E, q, s, z, axis=ax, sample=sample)


def _requant(v: Fraction, yz: int, qt, clamp) -> int:
    q = max(qt.qmin, min(qt.qmax, rhe(v) + yz))
    return q if clamp is None else max(int(clamp[0]), min(int(clamp[1]), q))


def _conv_acc(x, xz, w, wz, i, geo, group):
    """sum (x - zx)(w - zw) for output index i = (n, oc, oy, ox), padding skipped."""
    (sh, sw), (dh, dw), (pt, pl, _, _), _ = geo
    n, oc, oy, ox = i
    _, C, H, W = x.shape
    OC, Cg, KH, KW = w.shape
    g = oc // (OC // group)
    acc = 0
    for c in range(Cg):
        for ky in range(KH):
            iy = oy * sh - pt + ky * dh
            for kx in range(KW):
                ix = ox * sw - pl + kx * dw
                if 0 <= iy < H and 0 <= ix < W:
                    acc += (int(x[n, g * Cg + c, iy, ix]) - xz) * (int(w[oc, c, ky, kx]) - wz)
    return acc


def _conv_out(x, w, kw):
    geo = cm.conv_geometry(x.shape, w.shape[2:], strides=kw.get("strides"),
                           pads=kw.get("pads"), dilations=kw.get("dilations"),
                           auto_pad=kw.get("auto_pad", "NOTSET"))
    return geo, (x.shape[0], w.shape[0]) + geo[3]


def qlinear_conv(E, x, xs, xz, w, ws, wz, ys, yz, B=None, B_scale=None, *, group=1,
                 qc_clamp=None, qc_output_dtype=0, sample=None, **kw):
    geo, shape = _conv_out(x, w, kw)
    qt = qtype_of_array(yz, qc_output_dtype)
    out = np.empty(shape, qt.storage)
    for i in np.ndindex(*shape):
        oc = i[1]
        acc = _conv_acc(x, int(np.asarray(xz).reshape(-1)[0]), w, int(_par(wz, i, 1)), i, geo,
                        int(group))
        v = frac(_par(xs, i, 1)) * frac(_par(ws, i, 1))
        if B is not None and B_scale is None:
            v *= acc + int(np.asarray(B).reshape(-1)[oc])
        else:
            v *= acc
            if B is not None:
                v += frac(_par(B_scale, i, 1)) * int(np.asarray(B).reshape(-1)[oc])
        out[i] = _requant(v / frac(_par(ys, i, 1)), int(np.asarray(yz).reshape(-1)[0]), qt,
                          qc_clamp)
    return _pick(out, sample)


def conv_integer(E, x, w, xz=None, wz=None, *, group=1, sample=None, **kw):
    geo, shape = _conv_out(x, w, kw)
    out = np.empty(shape, np.int32)
    for i in np.ndindex(*shape):
        out[i] = _conv_acc(x, 0 if xz is None else int(np.asarray(xz).reshape(-1)[0]), w,
                           0 if wz is None else int(_par(wz, i, 1)), i, geo, int(group))
    return _pick(out, sample)


def _mm_acc(a, az, b, bz, i):
    """(a - za)(b - zb) at output index i (2-D b, a (..., M, K)); zb per column."""
    row = a[i[:-1]]
    k_n = b.shape[0]
    j = i[-1]
    zb = int(_par(bz, (j,), 0)) if bz is not None else 0
    za = 0 if az is None else int(_par(az, (i[-2],), 0))
    return sum((int(row[k]) - za) * (int(b[k, j]) - zb) for k in range(k_n))


def qlinear_matmul(E, a, as_, az, b, bs, bz, ys=None, yz=None, B=None, B_scale=None, *,
                   qc_clamp=None, qc_float_out=0, qc_output_dtype=0, sample=None):
    shape = a.shape[:-1] + (b.shape[-1],)
    qt = None if qc_float_out else qtype_of_array(yz, qc_output_dtype)
    out = np.empty(shape, object if qc_float_out else qt.storage)
    for i in np.ndindex(*shape):
        j = (i[-1],)
        v = frac(_par(as_, (0,), 0)) * frac(_par(bs, j, 0)) * _mm_acc(a, az, b, bz, i)
        if B is not None:
            v += frac(_par(B_scale, j, 0)) * int(_par(B, j, 0))
        if qc_float_out:  # exact value -> binary64 (correctly rounded) -> the format
            out[i] = E.A.round(float(v))
        else:
            out[i] = _requant(v / frac(_par(ys, j, 0)), int(np.asarray(yz).reshape(-1)[0]),
                              qt, qc_clamp)
    return _pick(out, sample)


def matmul_integer(E, a, b, az=None, bz=None, *, sample=None):
    shape = a.shape[:-1] + (b.shape[-1],)
    out = np.empty(shape, np.int32)
    for i in np.ndindex(*shape):
        out[i] = _mm_acc(a, az, b, bz, i)
    return _pick(out, sample)


def qlinear_add(E, a, as_, az, b, bs, bz, cs, cz=None, *, qc_clamp=None, qc_output_dtype=0,
                sample=None):
    shape = np.broadcast_shapes(np.shape(a), np.shape(b))
    A, Bb = np.broadcast_to(a, shape), np.broadcast_to(b, shape)
    qt = qtype_of_array(cz, qc_output_dtype)
    za, zb = int(np.asarray(az).reshape(-1)[0]), int(np.asarray(bz).reshape(-1)[0])
    zc = 0 if cz is None else int(np.asarray(cz).reshape(-1)[0])
    sa, sb, sc = (frac(np.asarray(p).reshape(-1)[0]) for p in (as_, bs, cs))
    out = np.empty(shape, qt.storage)
    for i in np.ndindex(*shape):
        v = sa * (int(A[i]) - za) + sb * (int(Bb[i]) - zb)
        out[i] = _requant(v / sc, zc, qt, qc_clamp)
    return _pick(out, sample)


def qlinear_gap(E, x, xs, xz, ys, yz, *, channels_last=0, qc_output_dtype=0, sample=None):
    x = np.asarray(x)
    if channels_last:
        x = np.moveaxis(x, -1, 1)
    N, C = x.shape[:2]
    flat = x.reshape(N, C, -1)
    qt = qtype_of_array(yz, qc_output_dtype)
    zx = int(np.asarray(xz).reshape(-1)[0])
    sx, sy = frac(np.asarray(xs).reshape(-1)[0]), frac(np.asarray(ys).reshape(-1)[0])
    out = np.empty((N, C), qt.storage)
    for n in range(N):
        for c in range(C):
            tot = sum(int(v) - zx for v in flat[n, c].tolist())
            out[n, c] = _requant(sx * tot / (sy * flat.shape[2]),
                                 int(np.asarray(yz).reshape(-1)[0]), qt, None)
    shape = (N, C) + (1,) * (x.ndim - 2)
    out = out.reshape(shape)
    return _pick(np.moveaxis(out, 1, -1) if channels_last else out, sample)


def register(table: OpTable) -> None:
    """Register the reference quantised kernels into ``table`` (the REF op table)."""
    table.register("QDQ", "qcompile")(qdq)
    table.register("ConvInteger")(conv_integer)
    table.register("MatMulInteger")(matmul_integer)
    for op, fn in (("QLinearConv", qlinear_conv), ("QLinearMatMul", qlinear_matmul),
                   ("DequantizeLinear", dequantize), ("QuantizeLinear", quantize)):
        table.register(op)(fn)
        table.register(op, MS)(fn)
    table.register("QLinearAdd", MS)(qlinear_add)
    table.register("QLinearGlobalAveragePool", MS)(qlinear_gap)
