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
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from qcompile.backends.mpfr._nb import rnd_n


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
