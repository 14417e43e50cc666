"""numba kernels for formats that *are* the machine's: IEEE binary32 (fp32) and binary64 (b64e11),
round to nearest, sequential accumulation.

Why it is exact
---------------
With round-to-nearest-even and gradual underflow, the emulated step
``acc = round(acc + round(x*w))`` is literally the IEEE float32 (float64) multiply followed by
the IEEE add, so these kernels run the hardware operations in the reference's summation order:
per output element, acc = +0, then the taps in (input channel, kernel row, kernel column) order,
bias added last.  Three points keep it bit-identical:

* no FMA contraction: numba compiles without fast-math flags, so LLVM may not fuse ``a + w*x``
  (``tests/backends/test_mpfr_native.py`` inspects the generated assembly for ``vfmadd``);
* vectorisation runs across *output* elements (positions of the output plane), never across
  the reduction: each SIMD lane is one output's sequential sum;
* padded taps are added as zero products instead of being skipped.  That is the same result:
  acc starts at +0 and, in round-to-nearest with gradual underflow, a sum is zero only by exact
  cancellation, which gives +0, so acc is never -0; adding ``round(w*0) = +-0`` (w finite, which
  the caller checks) to acc leaves acc unchanged (+0 + -0 = +0, NaN and inf stay).

Layout: the caller pads the input with zeros and splits it into the ``s x s`` phases of the
stride (``x'[c, py, px, i, j] = xpad[c, s*i + py, s*j + px]``), flat per channel.  Output
position (oy, ox) is lane ``p = oy*Wq + ox`` and tap (ky, kx) reads lane ``p + off[ky, kx]``
(``off`` = phase plane of ``(ky*dh % s, kx*dw % s)`` plus ``(ky*dh // s)*Wq + kx*dw // s``), so
every tap is one long contiguous loop whatever the stride; lanes ``ox >= OW`` are computed from
in-bounds data and dropped.  3x3 kernels fuse their nine taps per lane (one load/store of acc
per nine multiply-adds), 1x1 kernels fuse four input channels; both keep each lane's order.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True)
def _tap(acc, x, off, wv, n):
    xs = x[off:]  # a slice, so that the index is the (non-negative) lane: no wraparound test
    for p in range(n):
        acc[p] = acc[p] + wv * xs[p]


@njit(cache=True)
def _nine(acc, x, w, o, n):
    """The nine taps of a 3x3 kernel in (ky, kx) order; o: their lane offsets."""
    w00, w01, w02 = w[0, 0], w[0, 1], w[0, 2]
    w10, w11, w12 = w[1, 0], w[1, 1], w[1, 2]
    w20, w21, w22 = w[2, 0], w[2, 1], w[2, 2]
    x0, x1, x2 = x[o[0]:], x[o[1]:], x[o[2]:]
    x3, x4, x5 = x[o[3]:], x[o[4]:], x[o[5]:]
    x6, x7, x8 = x[o[6]:], x[o[7]:], x[o[8]:]
    for p in range(n):
        a = acc[p]
        a = a + w00 * x0[p]
        a = a + w01 * x1[p]
        a = a + w02 * x2[p]
        a = a + w10 * x3[p]
        a = a + w11 * x4[p]
        a = a + w12 * x5[p]
        a = a + w20 * x6[p]
        a = a + w21 * x7[p]
        a = a + w22 * x8[p]
        acc[p] = a


@njit(cache=True)
def _four(acc, x0, x1, x2, x3, off, w0, w1, w2, w3, n):
    """Four consecutive input channels of a 1x1 kernel, in channel order."""
    y0, y1, y2, y3 = x0[off:], x1[off:], x2[off:], x3[off:]
    for p in range(n):
        acc[p] = (((acc[p] + w0 * y0[p]) + w1 * y1[p]) + w2 * y2[p]) + w3 * y3[p]


@njit(parallel=True, cache=True)
def conv2d(xp, Wq, offs, w, out, bias, group):
    """xp [N, C, L] phase-split zero-padded planes with lane width Wq, offs [KH*KW] the taps'
    lane offsets (see the module docstring), w [OC, C/g, KH, KW], out [N, OC, OH, OW],
    bias [OC] or empty."""
    N = xp.shape[0]
    OC, Cg, KH, KW = w.shape
    OH, OW = out.shape[2], out.shape[3]
    n = OH * Wq
    ocg = OC // group
    for job in prange(N * OC):
        b = job // OC
        oc = job % OC
        g = oc // ocg
        acc = np.zeros(n, out.dtype)
        c = 0
        while c < Cg:
            ci = g * Cg + c
            if KH == 1 and KW == 1 and c + 4 <= Cg:
                _four(acc, xp[b, ci], xp[b, ci + 1], xp[b, ci + 2], xp[b, ci + 3], offs[0],
                      w[oc, c, 0, 0], w[oc, c + 1, 0, 0], w[oc, c + 2, 0, 0], w[oc, c + 3, 0, 0],
                      n)
                c += 4
                continue
            if KH == 3 and KW == 3:
                _nine(acc, xp[b, ci], w[oc, c], offs, n)
            else:
                for t in range(KH * KW):
                    _tap(acc, xp[b, ci], offs[t], w[oc, c, t // KW, t % KW], n)
            c += 1
        o = out[b, oc]
        if bias.size > 0:
            bv = bias[oc]
            for oy in range(OH):
                for ox in range(OW):
                    o[oy, ox] = acc[oy * Wq + ox] + bv
        else:
            for oy in range(OH):
                for ox in range(OW):
                    o[oy, ox] = acc[oy * Wq + ox]


@njit(cache=True)
def _four_k(acc, b0, b1, b2, b3, a0, a1, a2, a3, n):
    for j in range(n):
        acc[j] = (((acc[j] + a0 * b0[j]) + a1 * b1[j]) + a2 * b2[j]) + a3 * b3[j]


@njit(cache=True)
def _one_k(acc, b0, a0, n):
    for j in range(n):
        acc[j] = acc[j] + a0 * b0[j]


@njit(parallel=True, cache=True)
def gemm(a, b, out, bias, bias_first):
    """out[m, :] = bias (first) or +0, then + a[m, k]*b[k, :] for k in order, then bias (last)."""
    M, K = a.shape
    N = b.shape[1]
    for m in prange(M):
        acc = out[m]
        for j in range(N):
            acc[j] = bias[m, j] if bias_first else 0.0
        k = 0
        while k + 4 <= K:
            _four_k(acc, b[k], b[k + 1], b[k + 2], b[k + 3], a[m, k], a[m, k + 1], a[m, k + 2],
                    a[m, k + 3], N)
            k += 4
        while k < K:
            _one_k(acc, b[k], a[m, k], N)
            k += 1
        if not bias_first and bias.shape[0] > 0:
            for j in range(N):
                acc[j] = acc[j] + bias[m, j]


@njit(parallel=True, cache=True)
def relu(x, out, keep_nan):
    """out = x where x > 0 (or x is NaN and ``keep_nan``), else +0: a selection, exact in
    every format (flat contiguous arrays; one pass instead of numpy's four)."""
    n = x.size
    for j in prange((n + 8191) // 8192):
        for i in range(j * 8192, min(n, j * 8192 + 8192)):
            v = x[i]
            out[i] = v if (v > 0.0) | (keep_nan & (v != v)) else 0.0
    return out


@njit(cache=True, error_model="numpy")
def _affine_plane(buf, mv, dv, kv, cv, n):
    for i in range(n):
        buf[i] = ((buf[i] - mv) / dv) * kv + cv


@njit(parallel=True, cache=True, error_model="numpy")
def affine4(x, m, d, k, c, out):
    """BatchNormalization in the native dtype of ``m`` (float32/float64): per (n, c) plane of
    ``x`` (float64 values of the format, shape (N, C, HW)), ``((x - m) / d) * k + c`` with one
    IEEE rounding per step, left to right (no FMA: no fast-math flags), into ``out``."""
    N, C, HW = x.shape
    for j in prange(N * C):
        n, ch = j // C, j % C
        buf = np.empty(HW, m.dtype)
        buf[:] = x[n, ch]  # exact: the values are the format's
        _affine_plane(buf, m[ch], d[ch], k[ch], c[ch], HW)
        out[n, ch] = buf
    return out
