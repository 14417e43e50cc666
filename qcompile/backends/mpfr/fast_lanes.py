"""Conv on output lanes for the fast engine: the stride-phase-split zero-padded layout shared by
the lane kernels, and the general-mode lane path (``_nb_lanes``: directed modes, subnormal=off,
the unbounded qresnet format) with its two corrections (zero outputs at the border recomputed
with padding skipped; flagged planes redone by the caller's general path)."""

from __future__ import annotations

import math

import numpy as np

from qcompile.numerics.formats import Rounding

_F64 = np.float64
# the mode codes of ``_nb_lanes``
_MODE = {Rounding.NEAREST: 0, Rounding.ZERO: 1, Rounding.AWAY: 2, Rounding.UP: 3,
         Rounding.DOWN: 4}


def phase_planes(x, KH, KW, s, pads, dilations, OH, OW, dt):
    """xp [N, C, L] (zero-padded input split into the s x s stride phases, flat per channel),
    the lane width Wq and the taps' lane offsets [KH*KW] (see ``_nb_native``)."""
    N, C, H, W = x.shape
    dh, dw = dilations
    pt, pl = pads[0], pads[1]
    Hq = OH + (KH - 1) * dh // s + 1  # one spare row: dropped lanes read inside
    Wq = OW + (KW - 1) * dw // s
    xp = np.zeros((N, C, Hq * s, Wq * s), dt)
    h, wd = max(0, min(H, Hq * s - pt)), max(0, min(W, Wq * s - pl))
    xp[:, :, pt:pt + h, pl:pl + wd] = x[:, :, :h, :wd]
    if s > 1:
        xp = xp.reshape(N, C, Hq, s, Wq, s).transpose(0, 1, 3, 5, 2, 4)
    xp = np.ascontiguousarray(xp).reshape(N, C, -1)
    offs = np.array([(((ky * dh) % s * s + (kx * dw) % s) * Hq + (ky * dh) // s) * Wq
                     + (kx * dw) // s for ky in range(KH) for kx in range(KW)], np.int64)
    return xp, Wq, offs


def general_params(fmt, mode, plan, ovf, exi):
    """(ints, floats) of ``_nb_lanes`` for (format, mode), or None where it does not apply:
    p <= 26 and the products exact (bounded) or range-checked by the caller (unbounded, with
    infinities); subnormal=off only with its underflow zone far above binary64's subnormals.
    ``ovf``/``exi``: the overflow and exact-infinity values (+, -) of ``_nb_params``."""
    if fmt.p > 26:
        return None
    qmin = int(plan.qmin_bits)
    mn, thr = 0.0, (math.inf, math.inf)
    odd = not (plan.add_rn or plan.add_exact)
    if not fmt.bounded:  # operands range-checked by the caller (see _nb_lanes)
        if not fmt.has_inf or not odd:
            return None
        kind = 1
    else:
        if not plan.prod_exact or plan.low_ref > 0 or plan.maxf is None:
            return None
        kind = int(odd)
        if not fmt.subnormal:
            if fmt.emin - 1 - fmt.p < -1000:
                return None
            kind += 2
            qmin = 1 << 52  # binary64's least normal quantum: round at the unbounded exponent
            mn = plan.low_uf
            thr = {Rounding.NEAREST: (mn / 2, mn / 2), Rounding.ZERO: (math.inf, math.inf),
                   Rounding.AWAY: (-1.0, -1.0), Rounding.UP: (-1.0, math.inf),
                   Rounding.DOWN: (math.inf, -1.0)}[mode]
    maxf = plan.maxf if plan.maxf is not None else math.inf
    ints = np.array([int(plan.pm), qmin, _MODE[mode], kind], np.int64)
    flts = np.array([maxf, ovf[0], ovf[1], exi[0], exi[1], mn, thr[0], thr[1]], _F64)
    return ints, flts


def split_params(fmt, plan, binary32=True):
    """The lane types ``_nb_simd.conv2d_split`` may use for a format of the check-free
    round-to-nearest loop (gradual underflow, exact products, finite max), best first: tuples
    (dtype, K, C, thr, cap, lo) with K = 2**(P-p) + 1 for Veltkamp's splitting (P = 53 or
    24), C = 1.5 * 2**(qmin + P - 1) and thr = 2**emin for the fixed quantum below 2**emin;
    ``split_choice`` takes a type only where no rounded value of the conv exceeds cap and no
    nonzero product is below lo.  binary32 (``binary32=True``) gives binary64's values where
    p <= 11 (24 >= 2p + 1: the sum's double rounding is innocuous) and 2**emin >= 2**-126,
    with products exact: 2 qmin >= -149, else (bf16) only where every nonzero product is at
    least 2**-126 (lo); cap keeps v*K and products below 2**128.  binary64: 2 <= p <= 26,
    2**emin >= 2**-1000, maxf * K finite (cap = maxf)."""
    p, q = fmt.p, fmt.qmin_exp
    if p < 2 or p > 26 or q is None or plan.maxf is None:
        return []
    emin = q + p - 1
    maxf = plan.maxf
    out = []
    if binary32 and p <= 11 and emin >= -126:
        cap = min(maxf, math.ldexp(1.0, 126 - (25 - p)))
        lo = 0.0 if 2 * q >= -149 else math.ldexp(1.0, -126)
        f = np.float32
        out.append((f, f(math.ldexp(1.0, 24 - p) + 1.0), f(1.5 * math.ldexp(1.0, q + 23)),
                    f(math.ldexp(1.0, emin)), cap, lo))
    if emin >= -1000 and math.log2(maxf) + 54 - p <= 1020:
        out.append((_F64, math.ldexp(1.0, 53 - p) + 1.0, 1.5 * math.ldexp(1.0, q + 52),
                    math.ldexp(1.0, emin), maxf, 0.0))
    return out


def _min_nonzero(a):
    m = np.abs(a)
    m = m[m > 0]
    return float(m.min()) if m.size else math.inf


def split_choice(nbs, cands, x, w, group):
    """(lane type, checked): the first of ``split_params``' lane types under which no nonzero
    product is below lo and either no rounded product or partial sum of this conv can exceed
    cap (``conv_bound`` on the per-channel max |x|; checked False) or at least no product can
    (max |w| * max |x| per channel; checked True: ``conv2d_split`` watches the sums);
    (None, False) where none applies (NaN/inf inputs never pass)."""
    if not cands or x.size == 0:
        return None, False
    X = np.ascontiguousarray(np.abs(x).max(axis=(0, 2, 3)), _F64)
    if not np.isfinite(X).all():
        return None, False
    K, C, thr = cands[-1][1:4]  # binary64's constants (always last)
    A, P, W = nbs.conv_bound(X, w, group, K, C, thr)
    top, pmax = A.max(), P.max()
    small = None
    for c in cands:
        if c[5] > 0.0:
            if small is None:  # exact: a product of two format values (p <= 26)
                small = _min_nonzero(x) * float(W.min())
            if small < c[5]:
                continue
        if top <= c[4]:  # NaN: never
            return c, False
        if pmax <= c[4]:
            return c, True
    return None, False


def conv_rn(nbs, sp, checked, xp, Wq, offs, w, out, bias, group, fmt_args):
    """The round-to-nearest lane conv into out: ``conv2d_split`` in lane type sp[0] (its sums
    watched where checked), the marked (image, channel) jobs redone by ``conv2d`` (those
    images x channels; every job with more than one group), or ``conv2d`` alone where sp is
    None; fmt_args: (pm, qb, maxf, ovp, ovn, exip, exin).  Returns the jobs redone."""
    if sp is None:
        nbs.conv2d(xp, Wq, offs, w, out, bias, group, *fmt_args)
        return 0
    lt = sp[0]  # exact casts: format values
    bad = np.zeros(out.shape[:2] if checked else (0, 0), np.bool_)
    nbs.conv2d_split(xp.astype(lt, copy=False), Wq, offs, w.astype(lt), out, bias, group,
                     *sp[1:4], lt(sp[4]), bad, *fmt_args)
    if not bad.any():
        return 0
    if group > 1:
        nbs.conv2d(xp, Wq, offs, w, out, bias, group, *fmt_args)
        return int(bad.size)
    imgs, chans = np.flatnonzero(bad.any(axis=1)), np.flatnonzero(bad.any(axis=0))
    o = np.empty((imgs.size, chans.size) + out.shape[2:], _F64)
    nbs.conv2d(np.ascontiguousarray(xp[imgs]), Wq, offs, np.ascontiguousarray(w[chans]), o,
               bias[chans] if bias.size else bias, 1, *fmt_args)
    out[np.ix_(imgs, chans)] = o
    return int(imgs.size * chans.size)


def conv_general(nbl, params, x, w, b, s, pads, dilations, group, OH, OW):
    """Conv by ``_nb_lanes`` (x, w, b float64 values of the format; equal strides s, finite
    weights; operands range-checked for unbounded formats)."""
    ints, flts = params
    N, C, H, W = x.shape
    OC, _, KH, KW = w.shape
    xp, Wq, offs = phase_planes(x, KH, KW, s, pads, dilations, OH, OW, _F64)
    out = np.empty((N, OC, OH, OW), _F64)
    bias = np.zeros(0, _F64) if b is None else np.ascontiguousarray(b, _F64)
    wc = np.ascontiguousarray(w, _F64)
    nbl.conv2d(xp, Wq, offs, wc, out, bias, group, ints, flts)
    dh, dw = dilations
    pt, pl = pads[0], pads[1]
    oy, ox = np.arange(OH) * s - pt, np.arange(OW) * s - pl
    rows = (oy < 0) | (oy + (KH - 1) * dh >= H)
    cols = (ox < 0) | (ox + (KW - 1) * dw >= W)
    border = rows[:, None] | cols[None, :]
    if border.any():
        pts = np.argwhere((out == 0.0) & border)
        if pts.size:
            nbl.points(np.ascontiguousarray(x, _F64), wc, bias, pts.astype(np.int64), out, s, s,
                       pt, pl, dh, dw, group, ints, flts)
    return out
