"""Lane kernels for every rounding mode: directed modes (up, down, zero, away), subnormal=off
formats and the unbounded ``--compat qresnet`` format, in the layout of ``_nb_simd``.

One step ``acc = round(acc + round(x*w))`` per lane, vectorised across output positions; the
mode, the underflow rule and the sum's rounding are compile-time constants of one loop each
(5 modes x 4 kinds; a run compiles only its kind), chosen per tap call, never per lane:

* ``round(v)``: the quantum ``q = 2**max(e_v - p + 1, qmin)`` from the bit pattern; nearest,
  toward zero and away round the magnitude ``|v|/q`` (half-even by ``(t + 2**52) - 2**52``,
  then stepped by one where it went the wrong way), up and down the signed ``v/q`` (ceil /
  floor from ``(t + 1.5*2**52) - 1.5*2**52``), and the sign is put back, so zeros keep the
  exact result's sign.  Overflow gives the format's MPFR table value, exact infinities stay.
  subnormal=off: ``qmin`` is binary64's (rounding at the unbounded exponent, as MPFR decides
  underflow), then a nonzero result below ``mn = 2**(emin-1)`` becomes ``+-mn`` where
  ``|v| > thr`` (per sign: ``mn/2`` for nearest, -1 for "always mn", inf for "always 0") and
  ``+-0`` otherwise: the rule of ``fastfp.fixup``;
* the sum of two format values: exact in binary64 for narrow ranges, else TwoSum +
  round-to-odd, ``round_p(RO_53(z)) == round_p(z)`` for p + 2 <= 53 (bf16/fp16 directed, the
  unbounded qresnet format: its operands are range-checked by the caller to 2**+-480, so no
  product or sum of fewer than 2**60 terms leaves binary64's normal range); round down: an
  exact zero sum is -0 unless both terms are +0.

Padded taps are zero products.  Adding +-0 to acc changes acc only when acc is a zero (to the
other zero), and a zero acc's sign reaches the output only when the output is a zero; with
round down (+0 + -0 = -0) and underflow to -0 that can differ from the reference, which skips
padding, so the caller recomputes every zero output whose window touches the padding with
``points`` (one scalar sum that skips padded taps, like the reference).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from qcompile.backends.mpfr._nb import f2i, i2f

EXP = np.int64(0x7FF0000000000000)
SIGN = np.int64(-0x8000000000000000)
INV = np.int64(2046 << 52)
TWO52 = 4503599627370496.0
MAGIC = 1.5 * TWO52  # (t + MAGIC) - MAGIC: t rounded half-even for |t| < 2**51, any sign
INF = np.inf
NEAREST, ZERO, AWAY, UP, DOWN = 0, 1, 2, 3, 4


@njit(inline="always", cache=True)
def rnd(v, MODE, UF, pm, qmin, maxf, ovp, ovn, exip, exin, mn, thrp, thrn):
    """v rounded into the format; MODE and UF are constants where this is inlined (the
    nested ifs below are what LLVM turns into vector selects)."""
    b = f2i(v)
    qb = (b & EXP) - pm
    if qb < qmin:
        qb = qmin
    iq = i2f(INV - qb)
    if MODE == UP or MODE == DOWN:  # signed: ceil / floor of v/q
        t = v * iq
        rm = (t + MAGIC) - MAGIC
        if MODE == UP:
            if rm < t:
                rm += 1.0
        elif rm > t:
            rm -= 1.0
    else:  # on the magnitude: nearest-even, toward zero, away
        t = abs(v) * iq
        rm = (t + TWO52) - TWO52
        if MODE == ZERO:
            if rm > t:
                rm -= 1.0
        elif MODE == AWAY:
            if rm < t:
                rm += 1.0
    r = i2f(f2i(rm * i2f(qb)) | (b & SIGN))
    if abs(r) > maxf:
        r = ovn if b < 0 else ovp
    if abs(v) == INF:  # not nested: for p = 2, inf * 2**-q is inf * 0 = NaN above
        r = exin if b < 0 else exip
    if UF:
        if abs(r) < mn and v != 0.0:
            u = mn if abs(v) > (thrn if b < 0 else thrp) else 0.0
            r = i2f(f2i(u) | (b & SIGN))
    return r


@njit(inline="always", cache=True)
def add(acc, term, MODE, ODD):
    """Binary64 proxy of acc + term: exact or round-to-odd (TwoSum); round down's zero."""
    s = acc + term
    if ODD:
        bb = s - acc
        e = (acc - (s - bb)) + (term - bb)
        if e != 0.0 and abs(s) < INF:
            sb = f2i(s)
            if (f2i(e) ^ sb) < 0:
                sb -= 1
            s = i2f(sb | 1)
    if MODE == DOWN:
        if s == 0.0:
            s = i2f(SIGN) if (f2i(acc) | f2i(term)) < 0 else 0.0
    return s


@njit(inline="always", cache=True)
def _loop(acc, xs, wv, n, MODE, UF, ODD, pm, qm, maxf, ovp, ovn, exip, exin, mn, thrp, thrn):
    """acc[p] = round(acc[p] + round(wv * xs[p])) for p < n."""
    for p in range(n):
        a = acc[p]
        ph = rnd(wv * xs[p], MODE, UF, pm, qm, maxf, ovp, ovn, exip, exin, mn, thrp, thrn)
        acc[p] = rnd(add(a, ph, MODE, ODD), MODE, UF, pm, qm, maxf, ovp, ovn, exip, exin, mn,
                     thrp, thrn)


@njit(inline="always", cache=True)
def _modes(acc, x, off, wv, n, md, UF, ODD, pm, qm, maxf, ovp, ovn, exip, exin, mn, thrp, thrn):
    xs = x[off:]  # a slice: the index is the non-negative lane (no wraparound test)
    if md == NEAREST:
        _loop(acc, xs, wv, n, NEAREST, UF, ODD, pm, qm, maxf, ovp, ovn, exip, exin, mn, thrp,
              thrn)
    elif md == ZERO:
        _loop(acc, xs, wv, n, ZERO, UF, ODD, pm, qm, maxf, ovp, ovn, exip, exin, mn, thrp, thrn)
    elif md == AWAY:
        _loop(acc, xs, wv, n, AWAY, UF, ODD, pm, qm, maxf, ovp, ovn, exip, exin, mn, thrp, thrn)
    elif md == UP:
        _loop(acc, xs, wv, n, UP, UF, ODD, pm, qm, maxf, ovp, ovn, exip, exin, mn, thrp, thrn)
    else:
        _loop(acc, xs, wv, n, DOWN, UF, ODD, pm, qm, maxf, ovp, ovn, exip, exin, mn, thrp, thrn)


@njit(inline="always", cache=True)
def _step(a, t, md, pm, qm, maxf, ovp, ovn, exip, exin, mn, thrp, thrn):
    """round(a + t) for the scalar paths (bias, recomputed points): every rule as data."""
    s = add(a, t, NEAREST, True)  # round-to-odd: exact rounding for every kind (p + 2 <= 53)
    if md == DOWN:
        s = add(a, t, DOWN, True)
    if md == NEAREST:
        return rnd(s, NEAREST, True, pm, qm, maxf, ovp, ovn, exip, exin, mn, thrp, thrn)
    if md == ZERO:
        return rnd(s, ZERO, True, pm, qm, maxf, ovp, ovn, exip, exin, mn, thrp, thrn)
    if md == AWAY:
        return rnd(s, AWAY, True, pm, qm, maxf, ovp, ovn, exip, exin, mn, thrp, thrn)
    if md == UP:
        return rnd(s, UP, True, pm, qm, maxf, ovp, ovn, exip, exin, mn, thrp, thrn)
    return rnd(s, DOWN, True, pm, qm, maxf, ovp, ovn, exip, exin, mn, thrp, thrn)


@njit(inline="always", cache=True)
def _rnd_any(v, md, pm, qm, maxf, ovp, ovn, exip, exin, mn, thrp, thrn):
    if md == NEAREST:
        return rnd(v, NEAREST, True, pm, qm, maxf, ovp, ovn, exip, exin, mn, thrp, thrn)
    if md == ZERO:
        return rnd(v, ZERO, True, pm, qm, maxf, ovp, ovn, exip, exin, mn, thrp, thrn)
    if md == AWAY:
        return rnd(v, AWAY, True, pm, qm, maxf, ovp, ovn, exip, exin, mn, thrp, thrn)
    if md == UP:
        return rnd(v, UP, True, pm, qm, maxf, ovp, ovn, exip, exin, mn, thrp, thrn)
    return rnd(v, DOWN, True, pm, qm, maxf, ovp, ovn, exip, exin, mn, thrp, thrn)


@njit(inline="always", cache=True)
def _plane(job, xp, Wq, offs, w, out, bias, group, ip, fp, UF, ODD):
    """Output plane ``job`` = (image, output channel): taps over lanes, then bias, cropped."""
    pm, qm, md = ip[0], ip[1], ip[2]
    maxf, ovp, ovn, exip, exin = fp[0], fp[1], fp[2], fp[3], fp[4]
    mn, thrp, thrn = fp[5], fp[6], fp[7]
    OC, Cg, KH, KW = w.shape
    OH, OW = out.shape[2], out.shape[3]
    n = OH * Wq
    b = job // OC
    oc = job % OC
    g = oc // (OC // group)
    acc = np.zeros(n)
    for c in range(Cg):
        for t in range(KH * KW):
            _modes(acc, xp[b, g * Cg + c], offs[t], w[oc, c, t // KW, t % KW], n, md, UF, ODD,
                   pm, qm, maxf, ovp, ovn, exip, exin, mn, thrp, thrn)
    o = out[b, oc]
    for oy in range(OH):
        for ox in range(OW):
            v = acc[oy * Wq + ox]
            if bias.size > 0:
                v = _step(v, bias[oc], md, pm, qm, maxf, ovp, ovn, exip, exin, mn, thrp, thrn)
            o[oy, ox] = v


# One plane function and one parallel kernel per kind (0 exact sums, 1 round-to-odd sums,
# 2 subnormal=off, 3 both), so that a run compiles only the kind it uses; the 5 modes are
# specialised inside (one branch per tap call, never per lane).
@njit(cache=True)
def _plane0(job, xp, Wq, offs, w, out, bias, group, ip, fp):
    _plane(job, xp, Wq, offs, w, out, bias, group, ip, fp, False, False)


@njit(cache=True)
def _plane1(job, xp, Wq, offs, w, out, bias, group, ip, fp):
    _plane(job, xp, Wq, offs, w, out, bias, group, ip, fp, False, True)


@njit(cache=True)
def _plane2(job, xp, Wq, offs, w, out, bias, group, ip, fp):
    _plane(job, xp, Wq, offs, w, out, bias, group, ip, fp, True, False)


@njit(cache=True)
def _plane3(job, xp, Wq, offs, w, out, bias, group, ip, fp):
    _plane(job, xp, Wq, offs, w, out, bias, group, ip, fp, True, True)


@njit(parallel=True, cache=True)
def conv2d_0(xp, Wq, offs, w, out, bias, group, ip, fp):
    for job in prange(xp.shape[0] * w.shape[0]):
        _plane0(job, xp, Wq, offs, w, out, bias, group, ip, fp)


@njit(parallel=True, cache=True)
def conv2d_1(xp, Wq, offs, w, out, bias, group, ip, fp):
    for job in prange(xp.shape[0] * w.shape[0]):
        _plane1(job, xp, Wq, offs, w, out, bias, group, ip, fp)


@njit(parallel=True, cache=True)
def conv2d_2(xp, Wq, offs, w, out, bias, group, ip, fp):
    for job in prange(xp.shape[0] * w.shape[0]):
        _plane2(job, xp, Wq, offs, w, out, bias, group, ip, fp)


@njit(parallel=True, cache=True)
def conv2d_3(xp, Wq, offs, w, out, bias, group, ip, fp):
    for job in prange(xp.shape[0] * w.shape[0]):
        _plane3(job, xp, Wq, offs, w, out, bias, group, ip, fp)


def conv2d(xp, Wq, offs, w, out, bias, group, ip, fp):
    """As ``_nb_simd.conv2d`` (same layout) for any mode: ip = (pm, qmin, mode, kind),
    fp = (maxf, ovp, ovn, exip, exin, mn, thrp, thrn)."""
    (conv2d_0, conv2d_1, conv2d_2, conv2d_3)[int(ip[3])](xp, Wq, offs, w, out, bias, group, ip,
                                                         fp)


@njit(parallel=True, cache=True)
def points(x, w, bias, pts, out, sh, sw, pt, pl, dh, dw, group, ip, fp):
    """Recompute the outputs ``pts`` [P, 4] = (n, oc, oy, ox) in the reference's order with
    padded taps skipped: acc = +0, taps (c, ky, kx), bias last."""
    pm, qm, md = ip[0], ip[1], ip[2]
    maxf, ovp, ovn, exip, exin = fp[0], fp[1], fp[2], fp[3], fp[4]
    mn, thrp, thrn = fp[5], fp[6], fp[7]
    H, W = x.shape[2], x.shape[3]
    OC, Cg, KH, KW = w.shape
    ocg = OC // group
    for i in prange(pts.shape[0]):
        n, oc, oy, ox = pts[i, 0], pts[i, 1], pts[i, 2], pts[i, 3]
        g = oc // ocg
        a = 0.0
        for c in range(Cg):
            for ky in range(KH):
                iy = oy * sh - pt + ky * dh
                if iy < 0 or iy >= H:
                    continue
                for kx in range(KW):
                    ix = ox * sw - pl + kx * dw
                    if ix < 0 or ix >= W:
                        continue
                    ph = _rnd_any(w[oc, c, ky, kx] * x[n, g * Cg + c, iy, ix], md, pm, qm, maxf,
                                  ovp, ovn, exip, exin, mn, thrp, thrn)
                    a = _step(a, ph, md, pm, qm, maxf, ovp, ovn, exip, exin, mn, thrp, thrn)
        if bias.size > 0:
            a = _step(a, bias[oc], md, pm, qm, maxf, ovp, ovn, exip, exin, mn, thrp, thrn)
        out[n, oc, oy, ox] = a
