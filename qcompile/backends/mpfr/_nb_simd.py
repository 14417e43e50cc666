"""Vectorised round-to-nearest kernels for formats narrower than the machine's (b15e4, bf16,
fp16, e4m3, ...): Conv and Gemm with every product and every sum rounded into the format.

Each step is ``_nb.rnd_n`` (round a binary64 value into the format at its quantum, branch-free
after if-conversion, overflow to the format's MPFR table value), applied to an exact product
(p <= 26 and a bounded range: ``x*w`` is exact in binary64) and to the binary64 sum of two
format values (round-to-nearest double rounding is innocuous for 53 >= 2p + 1); the caller
selects these kernels only when ``fast.FastArith._nb_params`` chose the check-free loop
(nearest, no zone check, finite max, products exact), so the kernels compute what ``_nb``
computes, element for element.

Layout and order as in ``_nb_native``: lanes are output positions of one plane (never the
reduction), padded taps are zero products (round to nearest with gradual underflow: acc starts
at +0 and is never -0, so ``acc + round(w*0)`` is acc; weights are checked finite), the nine
taps of a 3x3 kernel are fused per lane in (ky, kx) order, and input channels follow in order.

The split kernel ``conv2d_split`` computes the same values with about a
third of the operations where no step can overflow (``conv_bound``, or watched per lane): for
|v| >= 2**emin the format's rounding is RN_p(v), Veltkamp's ``c - (c - v)``; below, the fixed
quantum ``(v + C) - C``; a sum of two format values below 2**emin is exact (no case needed).
Its lane type may be binary32 where ``fast_lanes.split_params`` shows it gives the same
values (8 lanes per AVX2 vector instead of 4).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from qcompile.backends.mpfr._nb import rnd_n

INF = np.inf


@njit(cache=True)
def _tap(acc, x, off, wv, n, pm, qb, maxf, ovp, ovn, exip, exin):
    xs = x[off:]  # slice: the index is the non-negative lane (no wraparound test)
    for p in range(n):
        ph = rnd_n(wv * xs[p], pm, qb, maxf, ovp, ovn, exip, exin)
        acc[p] = rnd_n(acc[p] + ph, pm, qb, maxf, ovp, ovn, exip, exin)


@njit(cache=True)
def _nine(acc, x, w, o, n, pm, qb, maxf, ovp, ovn, exip, exin):
    """The nine taps of a 3x3 kernel in (ky, kx) order; o: their lane offsets."""
    w0, w1, w2 = w[0, 0], w[0, 1], w[0, 2]
    w3, w4, w5 = w[1, 0], w[1, 1], w[1, 2]
    w6, w7, w8 = w[2, 0], w[2, 1], w[2, 2]
    x0, x1, x2 = x[o[0]:], x[o[1]:], x[o[2]:]
    x3, x4, x5 = x[o[3]:], x[o[4]:], x[o[5]:]
    x6, x7, x8 = x[o[6]:], x[o[7]:], x[o[8]:]
    for p in range(n):
        a = acc[p]
        a = rnd_n(a + rnd_n(w0 * x0[p], pm, qb, maxf, ovp, ovn, exip, exin),
                  pm, qb, maxf, ovp, ovn, exip, exin)
        a = rnd_n(a + rnd_n(w1 * x1[p], pm, qb, maxf, ovp, ovn, exip, exin),
                  pm, qb, maxf, ovp, ovn, exip, exin)
        a = rnd_n(a + rnd_n(w2 * x2[p], pm, qb, maxf, ovp, ovn, exip, exin),
                  pm, qb, maxf, ovp, ovn, exip, exin)
        a = rnd_n(a + rnd_n(w3 * x3[p], pm, qb, maxf, ovp, ovn, exip, exin),
                  pm, qb, maxf, ovp, ovn, exip, exin)
        a = rnd_n(a + rnd_n(w4 * x4[p], pm, qb, maxf, ovp, ovn, exip, exin),
                  pm, qb, maxf, ovp, ovn, exip, exin)
        a = rnd_n(a + rnd_n(w5 * x5[p], pm, qb, maxf, ovp, ovn, exip, exin),
                  pm, qb, maxf, ovp, ovn, exip, exin)
        a = rnd_n(a + rnd_n(w6 * x6[p], pm, qb, maxf, ovp, ovn, exip, exin),
                  pm, qb, maxf, ovp, ovn, exip, exin)
        a = rnd_n(a + rnd_n(w7 * x7[p], pm, qb, maxf, ovp, ovn, exip, exin),
                  pm, qb, maxf, ovp, ovn, exip, exin)
        a = rnd_n(a + rnd_n(w8 * x8[p], pm, qb, maxf, ovp, ovn, exip, exin),
                  pm, qb, maxf, ovp, ovn, exip, exin)
        acc[p] = a


@njit(parallel=True, cache=True)
def conv2d(xp, Wq, offs, w, out, bias, group, pm, qb, maxf, ovp, ovn, exip, exin):
    """As ``_nb_native.conv2d`` (same arguments), with the format's rounding after every
    multiply and every add (bias last)."""
    N = xp.shape[0]
    OC, Cg, KH, KW = w.shape
    OH, OW = out.shape[2], out.shape[3]
    n = OH * Wq
    ocg = OC // group
    for job in prange(N * OC):
        b = job // OC
        oc = job % OC
        g = oc // ocg
        acc = np.zeros(n)
        for c in range(Cg):
            ci = g * Cg + c
            if KH == 3 and KW == 3:
                _nine(acc, xp[b, ci], w[oc, c], offs, n, pm, qb, maxf, ovp, ovn, exip, exin)
            else:
                for t in range(KH * KW):
                    _tap(acc, xp[b, ci], offs[t], w[oc, c, t // KW, t % KW], n, pm, qb, maxf,
                         ovp, ovn, exip, exin)
        o = out[b, oc]
        has_b = bias.size > 0
        for oy in range(OH):
            for ox in range(OW):
                v = acc[oy * Wq + ox]
                if has_b:
                    v = rnd_n(v + bias[oc], pm, qb, maxf, ovp, ovn, exip, exin)
                o[oy, ox] = v


@njit(parallel=True, cache=True)
def affine4(x, m, d, k, c, out, pm, qb, maxf, ovp, ovn, exip, exin):
    """out[j, ch, i] = ((x - m[ch]) / d[ch]) * k[ch] + c[ch], four rounded steps left to right
    (BatchNormalization); x [J, C, I].  The caller checks ``plan.div_rn``: the binary64
    quotient of two format values is then normal and its double rounding innocuous."""
    J, C, n = x.shape
    for job in prange(J * C):
        j = job // C
        ch = job % C
        mv, dv, kv, cv = m[ch], d[ch], k[ch], c[ch]
        xs = x[j, ch]
        o = out[j, ch]
        for i in range(n):
            t = rnd_n(xs[i] - mv, pm, qb, maxf, ovp, ovn, exip, exin)
            t = rnd_n(t / dv, pm, qb, maxf, ovp, ovn, exip, exin)
            t = rnd_n(t * kv, pm, qb, maxf, ovp, ovn, exip, exin)
            o[i] = rnd_n(t + cv, pm, qb, maxf, ovp, ovn, exip, exin)


# ---- split kernels: the same values with a third of the operations, where no step can overflow;
# generic in the lane type: binary64, or binary32 (8 lanes per AVX2 vector) where
# ``fast_lanes.split_params`` shows that binary32 gives the same values


@njit(inline="always", cache=True)
def _split(v, K):
    """RN_p(v) at the unbounded exponent by Veltkamp's splitting, ``c = v*K`` with
    ``K = 2**(P-p) + 1`` (P = 53 or 24, the lane type's precision), ``c - (c - v)`` (round to
    nearest even gives the nearest p-bit value, ties to even; needs |v*K| finite, v normal)."""
    c = v * K
    return c - (c - v)


@njit(inline="always", cache=True)
def _rprod(v, K, C, thr):
    """v rounded into the format with gradual underflow, no overflow: |v| < thr = 2**emin at
    the fixed quantum 2**qmin by ``(v + C) - C`` (C = 1.5 * 2**(qmin + P - 1); the sign put
    back so that -0 stays -0), else ``_split``."""
    s = math.copysign((v + C) - C, v)
    h = _split(v, K)
    return s if abs(v) < thr else h


@njit(cache=True)
def _stap(acc, x, off, wv, n, K, C, thr):
    """One tap over the lanes: acc = round(acc + round(wv * x)); the sum needs no underflow
    case (a sum of two format values below 2**emin is exact, and ``_split`` keeps it)."""
    xs = x[off:]
    for p in range(n):
        acc[p] = _split(acc[p] + _rprod(wv * xs[p], K, C, thr), K)


@njit(cache=True)
def _stap_chk(acc, mx, x, off, wv, n, K, C, thr):
    """``_stap`` keeping each lane's largest |partial sum| in mx (NaN sticks)."""
    xs = x[off:]
    for p in range(n):
        a = _split(acc[p] + _rprod(wv * xs[p], K, C, thr), K)
        acc[p] = a
        m = abs(a)
        o = mx[p]
        mx[p] = o if m <= o else m  # a select, not a branch: stays vectorised


@njit(parallel=True, cache=True)
def conv2d_split(xp, Wq, offs, w, out, bias, group, K, C, thr, cap, bad, pm, qb, maxf, ovp,
                 ovn, exip, exin):
    """``conv2d``'s values where no rounded product exceeds cap (``conv_bound``): tap after
    tap over the lanes (short independent steps keep the vector units busy; the fused
    nine-tap chain is latency bound), bias added in binary64 by ``rnd_n``; xp, w, K, C, thr,
    cap in the lane type, out binary64.  With ``bad`` of shape (N, OC) (the partial sums are
    not bounded), each lane's largest |partial sum| is watched and a job (image, output
    channel) where one exceeds cap (or is NaN) is marked for the caller to redo with the
    checked kernel (before it every step was exact: a sum beyond cap is the first step that
    may differ); with bad of size 0 nothing is watched."""
    N = xp.shape[0]
    OC, Cg, KH, KW = w.shape
    OH, OW = out.shape[2], out.shape[3]
    n = OH * Wq
    ocg = OC // group
    watch = bad.size > 0
    for job in prange(N * OC):
        b = job // OC
        oc = job % OC
        g = oc // ocg
        acc = np.zeros(n, dtype=xp.dtype)
        mx = np.zeros(n if watch else 0, dtype=xp.dtype)
        for c in range(Cg):
            xr = xp[b, g * Cg + c]
            for t in range(KH * KW):
                wv = w[oc, c, t // KW, t % KW]
                if watch:
                    _stap_chk(acc, mx, xr, offs[t], wv, n, K, C, thr)
                else:
                    _stap(acc, xr, offs[t], wv, n, K, C, thr)
        o = out[b, oc]
        has_b = bias.size > 0
        for oy in range(OH):
            for ox in range(OW):
                i = oy * Wq + ox
                if watch and not mx[i] <= cap:
                    bad[b, oc] = True
                v = np.float64(acc[i])
                if has_b:
                    v = rnd_n(v + bias[oc], pm, qb, maxf, ovp, ovn, exip, exin)
                o[oy, ox] = v


@njit(parallel=True, cache=True)
def conv_bound(X, w, group, K, C, thr):
    """(A, P, W): per output channel A_K, where A_k = R(A_(k-1) + R(|w_k| * X_c(k))) in the
    kernel's order, and P = max_k R(|w_k| * X_c(k)); per block the least nonzero |w| (inf if
    none); R is the format's rounding at the
    unbounded exponent (``_rprod``/``_split`` with the binary64 constants: |w| * X is exact,
    values too large for them give NaN) and X_c >= |x| over channel c.  R is monotone and
    odd, so every rounded partial sum of the conv is at most A in magnitude and every
    rounded product at most P.  X finite (the caller's check).  Output channels are the
    vector lanes (independent chains): blocks of 32 per thread, |w| * X staged transposed in
    chunks of 512 taps."""
    OC, Cg, KH, KW = w.shape
    T = KH * KW
    R = Cg * T
    ocg = OC // group
    wf = w.reshape(OC, R)
    A = np.zeros(OC)
    P = np.zeros(OC)
    nblk = (OC + 31) // 32
    W = np.full(nblk, np.inf)
    for blk in prange(nblk):
        lo = blk * 32
        nb = min(OC, lo + 32) - lo
        a = np.zeros(32)
        pm = np.zeros(32)
        buf = np.empty((512, 32))
        wmin = np.inf
        for k0 in range(0, R, 512):
            kn = min(R, k0 + 512) - k0
            for j in range(nb):
                oc = lo + j
                base = (oc // ocg) * Cg
                c = k0 // T
                t = k0 - c * T
                for i in range(kn):
                    v = abs(wf[oc, k0 + i])
                    if 0.0 < v < wmin:
                        wmin = v
                    buf[i, j] = v * X[base + c]
                    t += 1
                    if t == T:
                        t = 0
                        c += 1
            for i in range(kn):
                for j in range(nb):
                    ph = _rprod(buf[i, j], K, C, thr)
                    a[j] = _split(a[j] + ph, K)
                    q = pm[j]
                    pm[j] = q if (ph <= q or q != q) else ph  # NaN sticks
        for j in range(nb):
            A[lo + j] = a[j]
            P[lo + j] = pm[j]
        W[blk] = wmin
    return A, P, W
