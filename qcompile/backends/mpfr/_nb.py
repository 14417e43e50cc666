"""numba kernels of the fast engine: Conv and Gemm multiply-accumulate loops.

Every scalar step is the fastfp method written out per element (see ``fast.py`` for the
proof sketch): a binary64 value ``v`` is rounded into the format by scaling with its quantum
``q = 2**max(e_v - p + 1, qmin)`` (built on the int64 bit pattern), rounding the integer part
(``(t + 2**52) - 2**52`` is round-half-even for ``0 <= t < 2**51``; directed modes step it by
one), scaling back and restoring the sign; overflow and exact infinities get the format's
MPFR table values.  Sums use TwoSum + round-to-odd when double rounding is not innocuous.

The kernels are exact only under preconditions checked by the caller (``fast.nb_params``:
p <= 26, products of operands exact in binary64) and *at run time* here: any step whose
binary64 proxy falls into a zone the main path cannot round (below ``low``: binary64
subnormal quanta or MPFR-style underflow of ``subnormal=off`` formats; an unexpected binary64
overflow) sets the output plane's ``bad`` flag and the caller recomputes that plane with the
general numpy path.  Nothing is approximated.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

EXP = np.int64(0x7FF0000000000000)
SIGN = np.int64(-0x8000000000000000)
INV = np.int64(2046 << 52)
TWO52 = 4503599627370496.0
INF = np.inf


@intrinsic
def _f2i(typingctx, x):
    if x != types.float64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return types.int64(types.float64), codegen


@intrinsic
def _i2f(typingctx, x):
    if x != types.int64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen


# ip (int64 params): pm, qmin_bits, mag-mode for positive, mag-mode for negative (0 nearest,
#   1 toward zero, 2 away), use_odd, is_down, fma
# fp (float params): maxf, overflow value +, overflow value -, exact inf +, exact inf -, low
@njit(inline="always", cache=True)
def _rnd(v, pm, qmin_bits, mpos, mneg, maxf, ovp, ovn, exip, exin, low):
    b = _f2i(v)
    neg = b < 0
    qb = (b & EXP) - pm
    if qb < qmin_bits:
        qb = qmin_bits
    q = _i2f(qb)
    iq = _i2f(INV - qb)
    a = abs(v)
    t = a * iq
    rn = (t + TWO52) - TWO52
    mm = mneg if neg else mpos
    rm = rn
    if mm == 1:
        if rn > t:
            rm = rn - 1.0
    elif mm == 2:
        if rn < t:
            rm = rn + 1.0
    r = _i2f(_f2i(rm * q) | (b & SIGN))
    ra = abs(r)
    isinf_v = a == INF
    if ra > maxf and not isinf_v:
        r = ovn if neg else ovp
    if isinf_v:
        r = exin if neg else exip
    bad = (a < low and v != 0.0) or (ra == INF and not isinf_v and maxf == INF)
    return r, bad


@njit(inline="always", cache=True)
def _rnd_n(v, pm, qmin_bits, maxf, ovp, ovn, exip, exin):
    """_rnd for round-to-nearest formats whose main path needs no zone check (low == 0)."""
    b = _f2i(v)
    neg = b < 0
    qb = (b & EXP) - pm
    if qb < qmin_bits:
        qb = qmin_bits
    a = abs(v)
    t = a * _i2f(INV - qb)
    rn = (t + TWO52) - TWO52
    r = _i2f(_f2i(rn * _i2f(qb)) | (b & SIGN))
    if abs(r) > maxf:
        r = ovn if neg else ovp
    if a == INF:  # not nested: for p = 2, inf * 2**-q is inf * 0 = NaN above
        r = exin if neg else exip
    return r


@njit(inline="always", cache=True)
def _sum(acc, term, use_odd, is_down):
    """Binary64 proxy of acc + term (round-to-odd when use_odd)."""
    s = acc + term
    if use_odd:
        bb = s - acc
        e = (acc - (s - bb)) + (term - bb)
        if e != 0.0 and abs(s) < INF:
            sb = _f2i(s)
            if (_f2i(e) ^ sb) < 0:
                sb -= 1
            s = _i2f(sb | 1)
    if is_down and s == 0.0:
        if _f2i(acc) < 0 or _f2i(term) < 0:
            s = -0.0
        else:
            s = 0.0
    return s


@njit(inline="always", cache=True)
def _mac(acc, x, w, fma, pm, qb, mpos, mneg, use_odd, is_down, maxf, ovp, ovn, exip, exin, low):
    ph = x * w
    bad = False
    if not fma:  # sequential: acc + round(x*w)
        ph, bad = _rnd(ph, pm, qb, mpos, mneg, maxf, ovp, ovn, exip, exin, low)
    s = _sum(acc, ph, use_odd, is_down)
    r, bad2 = _rnd(s, pm, qb, mpos, mneg, maxf, ovp, ovn, exip, exin, low)
    return r, bad or bad2


@njit(cache=True)
def _row(acc, xrow, x0, xs, wv, n, fma, pm, qb, mpos, mneg, use_odd, is_down, maxf, ovp, ovn,
         exip, exin, low):
    """acc[i] <- mac(acc[i], xrow[x0 + i*xs], wv) for i < n; returns the bad flag.

    ``low < 0`` selects the round-to-nearest variant without zone checks (the caller
    guarantees low == 0, a finite maxf and an innocuous double rounding of the sum).
    """
    flag = False
    if low < 0.0 and not fma:
        for i in range(n):
            ph = _rnd_n(xrow[x0 + i * xs] * wv, pm, qb, maxf, ovp, ovn, exip, exin)
            acc[i] = _rnd_n(acc[i] + ph, pm, qb, maxf, ovp, ovn, exip, exin)
    elif low < 0.0:
        for i in range(n):
            acc[i] = _rnd_n(_sum(acc[i], xrow[x0 + i * xs] * wv, use_odd, False), pm, qb, maxf,
                            ovp, ovn, exip, exin)
    elif xs == 1:
        for i in range(n):
            r, b = _mac(acc[i], xrow[x0 + i], wv, fma, pm, qb, mpos, mneg, use_odd, is_down,
                        maxf, ovp, ovn, exip, exin, low)
            acc[i] = r
            flag |= b
    else:
        for i in range(n):
            r, b = _mac(acc[i], xrow[x0 + i * xs], wv, fma, pm, qb, mpos, mneg, use_odd,
                        is_down, maxf, ovp, ovn, exip, exin, low)
            acc[i] = r
            flag |= b
    return flag


@njit(cache=True)
def _add_row(acc, bv, n, pm, qb, mpos, mneg, use_odd, is_down, maxf, ovp, ovn, exip, exin, low):
    flag = False
    low = max(low, 0.0)
    for i in range(n):
        s = _sum(acc[i], bv, use_odd, is_down)
        r, b = _rnd(s, pm, qb, mpos, mneg, maxf, ovp, ovn, exip, exin, low)
        acc[i] = r
        flag |= b
    return flag


@njit(parallel=True, cache=True)
def conv2d(x, w, out, bias, bias_first, sh, sw, pt, pl, dh, dw, group, ip, fp, bad):
    """out[n, oc] = sum over (c, ky, kx) in order, padding skipped; bias added last."""
    pm, qb, mpos, mneg = ip[0], ip[1], ip[2], ip[3]
    use_odd, is_down, fma = ip[4] != 0, ip[5] != 0, ip[6] != 0
    maxf, ovp, ovn, exip, exin, low = fp[0], fp[1], fp[2], fp[3], fp[4], fp[5]
    N, C, H, W = x.shape
    OC, Cg, KH, KW = w.shape
    OH, OW = out.shape[2], out.shape[3]
    ocg = OC // group
    for job in prange(N * OC):
        n = job // OC
        oc = job % OC
        g = oc // ocg
        acc = out[n, oc]
        init = bias[oc] if bias_first else 0.0
        for oy in range(OH):
            for ox in range(OW):
                acc[oy, ox] = init
        flag = False
        for c in range(Cg):
            ci = g * Cg + c
            for ky in range(KH):
                for kx in range(KW):
                    wv = w[oc, c, ky, kx]
                    off = kx * dw - pl
                    ox0 = 0
                    if off < 0:
                        ox0 = (-off + sw - 1) // sw
                    ox1 = (W - 1 - off) // sw + 1 if W - 1 - off >= 0 else 0
                    if ox1 > OW:
                        ox1 = OW
                    if ox1 <= ox0:
                        continue
                    for oy in range(OH):
                        iy = oy * sh - pt + ky * dh
                        if iy < 0 or iy >= H:
                            continue
                        flag |= _row(acc[oy, ox0:], x[n, ci, iy], ox0 * sw + off, sw, wv,
                                     ox1 - ox0, fma, pm, qb, mpos, mneg, use_odd, is_down,
                                     maxf, ovp, ovn, exip, exin, low)
        if not bias_first and bias.size > 0:
            for oy in range(OH):
                flag |= _add_row(acc[oy], bias[oc], OW, pm, qb, mpos, mneg, use_odd, is_down,
                                 maxf, ovp, ovn, exip, exin, low)
        bad[n, oc] = flag


@njit(parallel=True, cache=True)
def conv2d_t(x, wt, out, bias, sh, sw, pt, pl, dh, dw, KH, KW, group, ip, fp, bad):
    """Same as conv2d, vectorised over output channels: wt [C/g*KH*KW, OC] (k-major)."""
    pm, qb, mpos, mneg = ip[0], ip[1], ip[2], ip[3]
    use_odd, is_down, fma = ip[4] != 0, ip[5] != 0, ip[6] != 0
    maxf, ovp, ovn, exip, exin, low = fp[0], fp[1], fp[2], fp[3], fp[4], fp[5]
    N, C, H, W = x.shape
    OC = wt.shape[1]
    OH, OW = out.shape[2], out.shape[3]
    Cg = C // group
    ocg = OC // group
    P = OH * OW
    for job in prange(N * P):
        n = job // P
        p = job % P
        oy = p // OW
        ox = p % OW
        acc = np.zeros(OC)
        flag = False
        for g in range(group):
            o0 = g * ocg
            for c in range(Cg):
                ci = g * Cg + c
                for ky in range(KH):
                    iy = oy * sh - pt + ky * dh
                    if iy < 0 or iy >= H:
                        continue
                    for kx in range(KW):
                        ix = ox * sw - pl + kx * dw
                        if ix < 0 or ix >= W:
                            continue
                        flag |= _row(acc[o0:o0 + ocg], wt[(c * KH + ky) * KW + kx], o0, 1,
                                     x[n, ci, iy, ix], ocg, fma, pm, qb, mpos, mneg, use_odd,
                                     is_down, maxf, ovp, ovn, exip, exin, low)
        if bias.size > 0:
            flag |= _add_vec(acc, bias, OC, pm, qb, mpos, mneg, use_odd, is_down, maxf, ovp,
                             ovn, exip, exin, low)
        for oc in range(OC):
            out[n, oc, oy, ox] = acc[oc]
        bad[n, p] = flag


@njit(cache=True)
def _add_vec(acc, b, n, pm, qb, mpos, mneg, use_odd, is_down, maxf, ovp, ovn, exip, exin, low):
    flag = False
    low = max(low, 0.0)
    for i in range(n):
        s = _sum(acc[i], b[i], use_odd, is_down)
        r, bd = _rnd(s, pm, qb, mpos, mneg, maxf, ovp, ovn, exip, exin, low)
        acc[i] = r
        flag |= bd
    return flag


@njit(parallel=True, cache=True)
def gemm(a, b, out, bias, bias_first, ip, fp, bad):
    """out[m, n] = sum_k a[m, k] * b[k, n] in k order; bias [M, N] first or last (or none)."""
    pm, qb, mpos, mneg = ip[0], ip[1], ip[2], ip[3]
    use_odd, is_down, fma = ip[4] != 0, ip[5] != 0, ip[6] != 0
    maxf, ovp, ovn, exip, exin, low = fp[0], fp[1], fp[2], fp[3], fp[4], fp[5]
    M, K = a.shape
    N = b.shape[1]
    for m in prange(M):
        acc = out[m]
        for j in range(N):
            acc[j] = bias[m, j] if bias_first else 0.0
        flag = False
        for k in range(K):
            flag |= _row(acc, b[k], 0, 1, a[m, k], N, fma, pm, qb, mpos, mneg, use_odd, is_down,
                         maxf, ovp, ovn, exip, exin, low)
        if not bias_first and bias.size > 0:
            for j in range(N):
                s = _sum(acc[j], bias[m, j], use_odd, is_down)
                low = max(low, 0.0)
                r, bd = _rnd(s, pm, qb, mpos, mneg, maxf, ovp, ovn, exip, exin, low)
                acc[j] = r
                flag |= bd
        bad[m] = flag


@njit(parallel=True, cache=True)
def conv_transpose2d(x, w, out, bias, sh, sw, pt, pl, dh, dw, group, ip, fp, bad):
    """ConvTranspose in gather form: out[n, oc, oy, ox] = sum over the contributing
    (c, ky, kx) in lexicographic order (oy = iy*sh + ky*dh - pt, likewise for x; positions
    that do not contribute skipped) of x*w, from +0, bias added last.  w [C, OC/g, KH, KW]."""
    pm, qb, mpos, mneg = ip[0], ip[1], ip[2], ip[3]
    use_odd, is_down, fma = ip[4] != 0, ip[5] != 0, ip[6] != 0
    maxf, ovp, ovn, exip, exin = fp[0], fp[1], fp[2], fp[3], fp[4]
    low = max(fp[5], 0.0)  # the check-free variant's marker (-1) means 0 here
    N, C, H, W = x.shape
    ocg, KH, KW = w.shape[1], w.shape[2], w.shape[3]
    OC, OH, OW = out.shape[1], out.shape[2], out.shape[3]
    Cg = C // group
    for job in prange(N * OC):
        n = job // OC
        oc = job % OC
        g = oc // ocg
        j = oc % ocg
        flag = False
        for oy in range(OH):
            for ox in range(OW):
                acc = 0.0
                for c in range(Cg):
                    ci = g * Cg + c
                    for ky in range(KH):
                        ty = oy + pt - ky * dh
                        if ty < 0 or ty % sh != 0 or ty // sh >= H:
                            continue
                        iy = ty // sh
                        for kx in range(KW):
                            tx = ox + pl - kx * dw
                            if tx < 0 or tx % sw != 0 or tx // sw >= W:
                                continue
                            acc, b = _mac(acc, x[n, ci, iy, tx // sw], w[ci, j, ky, kx], fma,
                                          pm, qb, mpos, mneg, use_odd, is_down, maxf, ovp, ovn,
                                          exip, exin, low)
                            flag |= b
                if bias.size > 0:
                    s = _sum(acc, bias[oc], use_odd, is_down)
                    acc, b = _rnd(s, pm, qb, mpos, mneg, maxf, ovp, ovn, exip, exin, low)
                    flag |= b
                out[n, oc, oy, ox] = acc
        bad[n, oc] = flag


# public for the vectorised round-to-nearest kernels of ``_nb_simd`` and the FQ kernel ``_nb_fq``
f2i, i2f, rnd_n, rnd = _f2i, _i2f, _rnd_n, _rnd
