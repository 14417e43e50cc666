"""Quantised (QDQ / QLinear / integer) kernels of the fast engine, evaluated exactly.

Semantics (the reference engine, :mod:`ops_qdq_ref`, computes the same with Fractions):

* ``DequantizeLinear(q, s, z)``: the exact ``(q - z) * s`` rounded once into the emulation
  format (a float op like any other).  ``(q - z)`` has <= 17 bits for <= 16-bit types and a
  float32 scale 24, so the binary64 product is exact; int32 inputs beyond 2^29 go to gmpy2.
* ``QuantizeLinear(x, s, z)``: ``saturate(round_half_even(x / s) + z)`` of the *exact*
  quotient (:func:`qcompile.numerics.qdq_exact.quantize_exact`): the binary64 quotient decides
  every element farther than its error bound from a tie; the rest are recomputed exactly.
  (ONNX Runtime and :mod:`qcompile.numerics.quant` divide in float32 first: they can differ
  in near-ties, which is what ``qcompile verify`` reports.)  ``qcompile.QDQ`` is both in turn.
* ``QLinearConv`` / ``QLinearMatMul`` / ``ConvInteger`` / ``MatMulInteger``: integer
  accumulation ``acc = sum (x - zx)(w - zw)`` is exact.  It runs as a binary64 BLAS product
  when ``K max|x - zx| max|w - zw| < 2^53``: then every product and partial sum is an integer
  below 2^53, exactly representable, so the result is exact in any summation order (else an
  int64 product).  Requantisation rounds ``acc s_x s_w / s_y`` once, exactly (as above).
  Extensions used by :mod:`ops_qdq_fuse` (never emitted to ONNX Runtime): QLinearConv's 10th
  input ``B_scale`` (bias in its own scale: ``v = (s_x s_w acc + s_b B) / s_y``, what the QDQ
  graph computes), QLinearMatMul's inputs 9/10 (bias, bias scale), and the attribute
  ``qc_clamp = (lo, hi)``: a fused Relu/Clip, exact because rounding is monotone
  (``Q(max(v, 0)) = max(Q(v), Q(0))``).
* ``QLinearAdd`` (com.microsoft): ``(s_a (a - z_a) + s_b (b - z_b)) / s_c`` rounded once;
  ``QLinearGlobalAveragePool``: ``s_x sum(x - z_x) / (HW s_y)`` rounded once.

Integer tensors travel as numpy integer arrays (int4 widened to int8); float tensors as the
engine's float64 format values.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from qcompile.backends.base import OpTable
from qcompile.backends.mpfr import common as cm
from qcompile.numerics.qdq_exact import (
    EPS,
    bcast,
    finish_codes,
    qtype_of_array,
    quantize_exact,
    round_exact,
)

MS = "com.microsoft"
_F64 = np.float64
_EXACT53 = float(2 ** 53)


def _i64(a) -> np.ndarray:
    return np.asarray(a).astype(np.int64)


def _zp(z, like):
    return np.zeros((), np.int64) if z is None else _i64(z)


# ----------------------------------------------------------------------------- Q / DQ
def _axis(a, ndim):
    return None if a is None else int(a) % max(ndim, 1)


def dequantize_exact_f64(q, s, z, axis):
    """The exact ``(q - z) * s`` as binary64 where that is exact; a mask of the elements
    that are not (|q - z| >= 2^29 with a scale of more than 24 significant bits is possible
    only for int32)."""
    q = _i64(q)
    d = q - bcast(_zp(z, q), q.ndim, axis)
    sv = bcast(np.asarray(s, _F64), q.ndim, axis)
    val = d.astype(_F64) * sv
    bad = np.abs(d) >= (1 << 29)
    return val, bad, d, np.broadcast_to(sv, val.shape)


def dequantize(E, q, s, z=None, *, axis=1, block_size=0):
    ax = _axis(axis, np.ndim(q)) if np.ndim(s) else None
    val, bad, d, sv = dequantize_exact_f64(q, s, z, ax)
    if np.any(bad):  # int32 beyond 2^29: the exact product through gmpy2
        from qcompile.backends.mpfr.ref import exact, exact_mul

        R = E.ref_arith()
        idx = np.nonzero(bad)
        val[idx] = [float(R.round(exact_mul(exact(int(a)), exact(float(b)))))
                    for a, b in zip(d[idx].tolist(), sv[idx].tolist())]
        rest = ~bad
        val[rest] = E.A.round(val[rest])
        return (val,)
    return (E.A.round(val),)


def quantize(E, x, s, z=None, *, axis=1, saturate=1, output_dtype=0, block_size=0):
    qt = qtype_of_array(z, output_dtype)
    ax = _axis(axis, np.ndim(x)) if np.ndim(s) else None
    zz = _zp(z, x) if z is not None else np.zeros(np.shape(s), np.int64)
    return (quantize_exact(np.asarray(x, _F64), s, zz, qt, ax),)


def qdq(E, x, s, z, *, bits, signed, axis=None):
    from qcompile.numerics.quant import QType

    qt = QType(int(bits), bool(signed))
    ax = None if axis is None or np.ndim(s) == 0 else int(axis) % np.ndim(x)
    q = quantize_exact(np.asarray(x, _F64), s, _i64(z), qt, ax)
    return dequantize(E, q, s, _i64(z), axis=ax if ax is not None else 1)


# ----------------------------------------------------------------------------- integer products
def _exact_dtype(k: int, a: np.ndarray, b: np.ndarray):
    """The narrowest type in which ``a @ b`` (inner size ``k``) is exact: every product and
    partial sum is an integer of magnitude <= k max|a| max|b|, exact in binary32 below 2^24
    and in binary64 below 2^53, whatever the BLAS summation order (else int64)."""
    bound = k * int(np.abs(a).max(initial=0)) * int(np.abs(b).max(initial=0))
    return np.float32 if bound < (1 << 24) else _F64 if bound < (1 << 53) else np.int64


def _matmul_exact(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact int64 ``a @ b`` (2-D, int64 inputs): float BLAS when provably exact."""
    dt = _exact_dtype(a.shape[-1], a, b)
    return (a.astype(dt) @ b.astype(dt)).astype(np.int64)


def int_conv(xd, wd, *, strides=None, pads=None, dilations=None, group=1, auto_pad="NOTSET"):
    """Exact ``sum (x - zx)(w - zw)`` over (channel, ky, kx): ``xd``/``wd`` already offset
    int64 tensors; padded positions contribute 0 (the real value of the zero point).
    im2col + one matrix product per group, in the type :func:`_exact_dtype` proves exact."""
    N, C, H, W = xd.shape
    OC, Cg, KH, KW = wd.shape
    (sh, sw), (dh, dw), (pt, pl, pb, pr), (OH, OW) = cm.conv_geometry(
        xd.shape, (KH, KW), strides=strides, pads=pads, dilations=dilations, auto_pad=auto_pad)
    dt = _exact_dtype(Cg * KH * KW, xd, wd)
    xp = np.pad(xd.astype(dt), ((0, 0), (0, 0), (pt, max(pb, 0)), (pl, max(pr, 0))))
    cols = np.empty((C, KH, KW, N, OH, OW), dt)
    for ky in range(KH):
        for kx in range(KW):
            y0, x0 = ky * dh, kx * dw
            tap = xp[:, :, y0:y0 + (OH - 1) * sh + 1:sh, x0:x0 + (OW - 1) * sw + 1:sw]
            cols[:, ky, kx] = tap.transpose(1, 0, 2, 3)
    g = int(group)
    ocg = OC // g
    out = np.empty((OC, N, OH, OW), np.int64)
    wdt = wd.astype(dt)
    for gi in range(g):
        a = wdt[gi * ocg:(gi + 1) * ocg].reshape(ocg, -1)
        b = cols[gi * Cg:(gi + 1) * Cg].reshape(Cg * KH * KW, -1)
        out[gi * ocg:(gi + 1) * ocg] = (a @ b).reshape(ocg, N, OH, OW)
    return out.transpose(1, 0, 2, 3)


def int_matmul(ad, bd):
    """Exact int64 MatMul with numpy broadcasting of leading dimensions (b 2-D or batched)."""
    if bd.ndim == 2:
        lead = ad.shape[:-1]
        return _matmul_exact(ad.reshape(-1, ad.shape[-1]), bd).reshape(lead + (bd.shape[1],))
    shape = np.broadcast_shapes(ad.shape[:-2], bd.shape[:-2])
    a = np.broadcast_to(ad, shape + ad.shape[-2:])
    b = np.broadcast_to(bd, shape + bd.shape[-2:])
    out = np.empty(shape + (ad.shape[-2], bd.shape[-1]), np.int64)
    for i in np.ndindex(*shape):
        out[i] = _matmul_exact(a[i], b[i])
    return out


# ----------------------------------------------------------------------------- requantisation
def _prod(factors, shp):
    out = np.ones(shp)
    for f in factors:
        out = out * np.asarray(f, _F64)
    return np.broadcast_to(out, shp)


def _fprod(factors, i):
    v = Fraction(1)
    for f in factors:
        f = np.asarray(f, _F64)
        v *= Fraction(float(f[tuple(min(k, d - 1) for k, d in zip(i[-f.ndim:], f.shape))]
                            if f.ndim else f))
    return v


def requant(acc, a_scales, y_scales, y_zp, qt, *, bias=None, b_scales=None, clamp=None):
    """``saturate(rhe((prod(a_scales) acc + prod(b_scales) bias) / prod(y_scales)) + y_zp)``,
    then ``clamp`` (a fused Relu/Clip in the integer domain).

    Scales are lists of factors that broadcast against ``acc`` (int64); ``bias`` None: no
    separate bias term (ORT's B is already in ``acc``).  The binary64 estimate carries a
    bound of 4 roundings per term (a handful happen), undecided elements are recomputed
    with exact Fractions of the factors."""
    acc = np.asarray(acc, np.int64)
    shp = acc.shape
    A, Y = _prod(a_scales, shp), _prod(y_scales, shp)
    Bi = None if bias is None else np.broadcast_to(_i64(bias), shp)
    with np.errstate(over="ignore", invalid="ignore"):
        p = A * acc.astype(_F64)
        p2 = np.zeros(shp) if Bi is None else _prod(b_scales, shp) * Bi.astype(_F64)
        t = (p + p2) / Y
        err = 4 * EPS * (np.abs(p) + np.abs(p2)) / np.abs(Y) + EPS * np.abs(t)

    def exact(idx):
        out = []
        for k in range(len(idx[0])):
            i = tuple(int(ix[k]) for ix in idx)
            v = _fprod(a_scales, i) * int(acc[i])
            if Bi is not None:
                v += _fprod(b_scales, i) * int(Bi[i])
            out.append(v / _fprod(y_scales, i))
        return out

    q = finish_codes(round_exact(t, err, exact), np.broadcast_to(_i64(y_zp), shp), qt)
    if clamp is not None:
        q = np.clip(q, int(clamp[0]), int(clamp[1])).astype(q.dtype)
    return q


def _ch(p, ndim, axis=1):
    """A per-channel (or scalar) parameter broadcast along ``axis``."""
    p = np.asarray(p)
    return p.reshape(()) if p.size == 1 else bcast(p, ndim, axis)


def qlinear_conv(E, x, xs, xz, w, ws, wz, ys, yz, B=None, B_scale=None, *, strides=None,
                 pads=None, dilations=None, group=1, kernel_shape=None, auto_pad="NOTSET",
                 qc_clamp=None, qc_output_dtype=0):
    xd = _i64(x) - _i64(xz).reshape(())
    wd = _i64(w) - _ch(_i64(wz), 4, 0)
    acc = int_conv(xd, wd, strides=strides, pads=pads, dilations=dilations, group=group,
                   auto_pad=auto_pad)
    a_scales = [_ch(np.asarray(xs, _F64), 4), _ch(np.asarray(ws, _F64), 4)]
    qt = qtype_of_array(yz, qc_output_dtype)
    if B is not None and B_scale is None:  # ORT's definition: B in units of s_x s_w
        acc = acc + _ch(_i64(B), 4)
        B = None
    return (requant(acc, a_scales, [ys], yz, qt, bias=None if B is None else _ch(_i64(B), 4),
                    b_scales=None if B is None else [_ch(np.asarray(B_scale, _F64), 4)],
                    clamp=qc_clamp),)


def qlinear_matmul(E, a, as_, az, b, bs, bz, ys=None, yz=None, B=None, B_scale=None, *,
                   qc_clamp=None, qc_float_out=0, qc_output_dtype=0):
    ad = _i64(a) - _i64(az).reshape(())
    bd = _i64(b) - _ch(_i64(bz), _i64(b).ndim, -1)
    acc = int_matmul(ad, bd)
    a_scales = [np.asarray(as_, _F64).reshape(()), _ch(np.asarray(bs, _F64), acc.ndim, -1)]
    if qc_float_out:
        return (E.A.round(float_out(acc, a_scales, B, B_scale)),)
    qt = qtype_of_array(yz, qc_output_dtype)
    return (requant(acc, a_scales, [ys], yz, qt, bias=None if B is None else _i64(B),
                    b_scales=None if B is None else [np.asarray(B_scale, _F64)],
                    clamp=qc_clamp),)


def float_out(acc, a_scales, B=None, B_scale=None) -> np.ndarray:
    """The exact ``prod(a_scales) acc + B_scale B`` correctly rounded to binary64 (Fractions
    per element: a fused float-output Gemm, e.g. logits, is small)."""
    out = np.empty(acc.shape, _F64)
    Bi = None if B is None else np.broadcast_to(_i64(B), acc.shape)
    Bs = None if B is None else [np.asarray(B_scale, _F64)]
    for i in np.ndindex(*acc.shape):
        v = _fprod(a_scales, i) * int(acc[i])
        if Bi is not None:
            v += _fprod(Bs, i) * int(Bi[i])
        out[i] = float(v)  # int/int true division: correctly rounded
    return out


def conv_integer(E, x, w, xz=None, wz=None, **kw):
    kw.pop("kernel_shape", None)
    xd = _i64(x) - (0 if xz is None else _i64(xz).reshape(()))
    wd = _i64(w) - (0 if wz is None else _ch(_i64(wz), 4, 0))
    return (int_conv(xd, wd, **kw).astype(np.int32),)


def matmul_integer(E, a, b, az=None, bz=None):
    ad = _i64(a) - (0 if az is None else _i64(az).reshape(-1, 1) if np.size(az) > 1
                    else _i64(az).reshape(()))
    bd = _i64(b) - (0 if bz is None else _ch(_i64(bz), _i64(b).ndim, -1))
    return (int_matmul(ad, bd).astype(np.int32),)


def qlinear_add(E, a, as_, az, b, bs, bz, cs, cz=None, *, qc_clamp=None, qc_output_dtype=0):
    ad, bd = _i64(a) - _i64(az), _i64(b) - _i64(bz)
    shp = np.broadcast_shapes(ad.shape, bd.shape)
    ad, bd = np.broadcast_to(ad, shp), np.broadcast_to(bd, shp)
    one = np.ones((), np.int64)
    qt = qtype_of_array(cz, qc_output_dtype)
    # (s_a a + s_b b) / s_c  ==  requant with acc = a, A = s_a, bias b with scale s_b
    return (requant(ad, [np.asarray(as_, _F64)], [cs], cz if cz is not None else 0 * one, qt,
                    bias=bd, b_scales=[np.asarray(bs, _F64)], clamp=qc_clamp),)


def qlinear_gap(E, x, xs, xz, ys, yz, *, channels_last=0, qc_output_dtype=0):
    xd = _i64(x) - _i64(xz)
    axes = tuple(range(1, xd.ndim - 1)) if channels_last else tuple(range(2, xd.ndim))
    n = int(np.prod([xd.shape[a] for a in axes]))
    s = xd.sum(axis=axes, keepdims=True)
    qt = qtype_of_array(yz, qc_output_dtype)
    return (requant(s, [np.asarray(xs, _F64)], [np.asarray(ys, _F64), float(n)], yz, qt),)


def register(table: OpTable) -> None:
    """Register the fast quantised kernels into ``table`` (the FAST op table)."""
    table.register("DequantizeLinear")(dequantize)
    table.register("QuantizeLinear")(quantize)
    table.register("QDQ", "qcompile")(qdq)
    table.register("QLinearConv")(qlinear_conv)
    table.register("QLinearMatMul")(qlinear_matmul)
    table.register("ConvInteger")(conv_integer)
    table.register("MatMulInteger")(matmul_integer)
    for op, fn in (("QLinearConv", qlinear_conv), ("QLinearAdd", qlinear_add),
                   ("QLinearGlobalAveragePool", qlinear_gap), ("QLinearMatMul", qlinear_matmul),
                   ("DequantizeLinear", dequantize), ("QuantizeLinear", quantize)):
        table.register(op, MS)(fn)
