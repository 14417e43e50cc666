"""Block kernels of :mod:`qcompile.numerics.fastfp` (the maths is in that module's docstring).

Each ``_k_*`` kernel computes one block of an elementwise operation: a binary64 *proxy* of the
exact result (exact, or rounded to odd with the error sign from TwoSum / TwoProduct) followed
by one ``round_block`` into the format; elements whose residual binary64 cannot hold go to the
gmpy2 reference.  :func:`run` is the driver that cuts broadcast operands into cache-sized
blocks; :func:`mac_core` is the multiply-accumulate step shared by ``mac_step`` and ``dot``.
"""

from __future__ import annotations

import math

import numpy as np

from qcompile.numerics import _fastfp_core as _c
from qcompile.numerics._fastfp_core import (
    ABS,
    BLOCK,
    SIGN,
    Scratch,
    get_plan,
    odd_adjust,
    ref_values,
    round_block,
    two_prod,
    two_sum,
)
from qcompile.numerics.float_format import Rounding, parse_format

_F64 = np.float64
_I64 = np.int64
_H995 = math.ldexp(1.0, 995)
_P960 = math.ldexp(1.0, -960)
_P1000 = math.ldexp(1.0, 1000)
_D480 = math.ldexp(1.0, -480)
_U480 = math.ldexp(1.0, 480)
_S900 = math.ldexp(1.0, -900)
_B900 = math.ldexp(1.0, 900)


# ----------------------------------------------------------------------------- driver
def _prep(arrays, out):
    arrs = [np.asarray(a, dtype=_F64) for a in arrays]
    shape = np.broadcast_shapes(*(a.shape for a in arrs))
    flats = []
    for a in arrs:
        if a.shape != shape:
            a = np.broadcast_to(a, shape)
        flats.append(np.ascontiguousarray(a).reshape(-1))
    if out is None:
        res = np.empty(shape, _F64)
        work = res
    else:
        if not isinstance(out, np.ndarray) or out.dtype != _F64 or out.shape != shape:
            raise ValueError(f"out must be a float64 array of shape {shape}")
        res = out
        work = out if out.flags.c_contiguous else np.empty(shape, _F64)
    return flats, res, work


def run(kernel, arrays, fmt, mode, out, **kw):
    fmt = parse_format(fmt)
    mode = Rounding.parse(mode)
    plan = get_plan(fmt, mode)
    flats, res, work = _prep(arrays, out)
    wf = work.reshape(-1)
    n = wf.size
    if n:
        sc = Scratch(min(n, BLOCK))
        with np.errstate(all="ignore"):
            for s in range(0, n, BLOCK):
                e = min(n, s + BLOCK)
                kernel(plan, [f[s:e] for f in flats], wf[s:e], sc, **kw)
    if work is not res:
        res[...] = work
    return res


def _ref_all(fn, flats, out, plan):
    """Whole block through the reference (p > 51)."""
    vals = [fn(*(float(a[k]) for a in flats), plan.fmt, plan.mode) for k in range(out.size)]
    out[:] = ref_values(vals, plan.fmt)


def _ref_some(fn, idx, ops, plan):
    if idx is None or idx.size == 0:
        return None
    vals = [fn(*(float(o[k]) for o in ops), plan.fmt, plan.mode) for k in idx]
    return ref_values(vals, plan.fmt)


def _mpfr_ref():
    from qcompile.numerics import mpfr_ref

    return mpfr_ref


# ----------------------------------------------------------------------------- kernels
def k_round(plan, ins, out, sc):
    n = out.size
    round_block(ins[0], out, plan, sc.is_(n), sc.bs(n))


def _zero_sign(s, a_neg_src, b_neg_src, *, negate_b=False, down_only=True, plan=None,
               z=None, b_sign=None):
    """Signs of exact-zero sums (IEEE/MPFR): -0 iff (rounding down and any operand
    negative) or (all operands negative).  ``b_sign``: explicit sign bools for b."""
    np.equal(s, 0.0, out=z)
    if not z.any():
        return
    idx = np.flatnonzero(z)
    sa = np.signbit(a_neg_src[idx])
    sb = np.signbit(b_neg_src[idx]) if b_sign is None else b_sign(idx)
    if negate_b:
        sb = ~sb
    if plan.mode is Rounding.DOWN:
        neg = sa | sb
    else:
        neg = sa & sb
    s[idx] = np.where(neg, -0.0, 0.0)


def _add_proxy(plan, a, b, s, sc_f, sc_i, sc_b, sub, in_fmt):
    """s <- proxy of a + b (or a - b)."""
    if sub:
        np.subtract(a, b, out=s)
    else:
        np.add(a, b, out=s)
    if not (in_fmt and (plan.add_rn or plan.add_exact)):
        e, t = sc_f[0], sc_f[1]
        np.subtract(s, a, out=t)  # bb
        if sub:
            np.add(b, t, out=e)  # -( -b - bb )
            np.subtract(s, t, out=t)
            np.subtract(a, t, out=t)
            np.subtract(t, e, out=e)
        else:
            np.subtract(b, t, out=e)
            np.subtract(s, t, out=t)
            np.subtract(a, t, out=t)
            np.add(t, e, out=e)
        odd_adjust(s, e, sc_b[1], sc_i[2])
    if plan.mode is Rounding.DOWN:
        _zero_sign(s, a, b, negate_b=sub, plan=plan, z=sc_b[1])


def k_add(plan, ins, out, sc, sub=False, in_fmt=False):
    a, b = ins
    n = out.size
    f, i, bb = sc.fs(n), sc.is_(n), sc.bs(n)
    if not plan.ops_exact:
        m = _mpfr_ref()
        return _ref_all(m.ref_sub if sub else m.ref_add, ins, out, plan)
    s = f[2]
    _add_proxy(plan, a, b, s, f, i, bb, sub, in_fmt)

    def cb(idx, vs):
        ai, bi = a[idx], b[idx]
        with np.errstate(all="ignore"):
            si = ai - bi if sub else ai + bi
        fin = np.isfinite(ai) & np.isfinite(bi)
        ovf = fin & ~np.isfinite(si)
        return np.where(~fin | ovf, si, vs), ovf

    round_block(s, out, plan, i, bb, cb)


def _mul_ref_idx(a, b, ph):
    """Elements whose TwoProduct is not exact in binary64 (finite operands)."""
    need = None
    if not (a.max() <= _H995 and a.min() >= -_H995 and b.max() <= _H995 and b.min() >= -_H995):
        need = (np.abs(a) > _H995) | (np.abs(b) > _H995)
    pa = np.abs(ph)
    bad = (pa < _P960) | (pa > _P1000)
    if bad.any():
        tiny = bad & (a != 0) & (b != 0) & ~np.isinf(ph)
        need = tiny if need is None else (need | tiny)
    if need is None:
        return None
    need &= np.isfinite(a) & np.isfinite(b)
    idx = np.flatnonzero(need)
    return idx if idx.size else None


def k_mul(plan, ins, out, sc, in_fmt=False):
    a, b = ins
    n = out.size
    f, i, bb = sc.fs(n), sc.is_(n), sc.bs(n)
    if not plan.ops_exact:
        return _ref_all(_mpfr_ref().ref_mul, ins, out, plan)
    ph = f[0]
    if in_fmt and plan.prod_exact:
        np.multiply(a, b, out=ph)
        round_block(ph, out, plan, i, bb, None)
        return
    with np.errstate(all="ignore"):
        two_prod(a, b, ph, f[1], f[2], f[3], f[4], f[5], f[6])
        ridx = _mul_ref_idx(a, b, ph)
    refv = _ref_some(_mpfr_ref().ref_mul, ridx, (a, b), plan)
    odd_adjust(ph, f[1], bb[1], i[2])

    def cb(idx, vs):
        ai, bi = a[idx], b[idx]
        with np.errstate(all="ignore"):
            pi = ai * bi
        fin = np.isfinite(ai) & np.isfinite(bi)
        ovf = fin & ~np.isfinite(pi)
        return np.where(~fin | ovf, pi, vs), ovf

    with np.errstate(all="ignore"):
        round_block(ph, out, plan, i, bb, cb)
    if refv is not None:
        out[ridx] = refv


def k_div(plan, ins, out, sc, in_fmt=False):
    a, b = ins
    n = out.size
    f, i, bb = sc.fs(n), sc.is_(n), sc.bs(n)
    if not plan.ops_exact:
        return _ref_all(_mpfr_ref().ref_div, ins, out, plan)
    q = f[0]
    with np.errstate(all="ignore"):
        np.divide(a, b, out=q)
    if in_fmt and plan.div_rn:
        round_block(q, out, plan, i, bb, None)
        return
    ridx = spec = None
    ab, bbits, qb = (np.bitwise_and(x.view(_I64), ABS) for x in (a, b, q))
    lo, hi = _c._f2b(_D480), _c._f2b(_U480)
    if not all(x.min() >= lo and x.max() <= hi for x in (ab, bbits, qb)):
        special = ~(np.isfinite(a) & np.isfinite(b)) | (a == 0) | (b == 0)
        outr = ((ab < lo) | (ab > hi) | (bbits < lo) | (bbits > hi) | (qb < lo) | (qb > hi))
        need = outr & ~special
        ridx = np.flatnonzero(need)
        spec = np.flatnonzero(special)
        if not ridx.size:
            ridx = None
    refv = _ref_some(_mpfr_ref().ref_div, ridx, (a, b), plan)
    with np.errstate(all="ignore"):
        ph, pl = two_prod(q, b, f[1], f[2], f[3], f[4], f[5], f[6], f[7])
        r = f[1]
        np.subtract(a, ph, out=r)
        np.subtract(r, pl, out=r)
    rb = r.view(_I64)
    np.bitwise_and(b.view(_I64), SIGN, out=i[0])
    np.bitwise_xor(rb, i[0], out=rb)  # sign(r) * sign(b)
    qsave = q[spec] if spec is not None and spec.size else None
    odd_adjust(q, r, bb[1], i[2])
    if qsave is not None:
        q[spec] = qsave

    def cb(idx, vs):
        ai, bi = a[idx], b[idx]
        with np.errstate(all="ignore"):
            qi = ai / bi
        fin = np.isfinite(ai) & np.isfinite(bi) & (bi != 0)
        ovf = fin & ~np.isfinite(qi)
        return np.where(~fin | ovf | (ai == 0), qi, vs), ovf

    round_block(q, out, plan, i, bb, cb)
    if refv is not None:
        out[ridx] = refv


def k_sqrt(plan, ins, out, sc, in_fmt=False):
    (a,) = ins
    n = out.size
    f, i, bb = sc.fs(n), sc.is_(n), sc.bs(n)
    if not plan.ops_exact:
        return _ref_all(_mpfr_ref().ref_sqrt, ins, out, plan)
    q = f[0]
    with np.errstate(all="ignore"):
        np.sqrt(a, out=q)
    if in_fmt and plan.sqrt_rn:
        round_block(q, out, plan, i, bb, None)
        return
    ridx = spec = None
    if not (a.min() >= _S900 and a.max() <= _B900):
        special = ~np.isfinite(a) | (a <= 0)
        need = ~special & ((a < _S900) | (a > _B900))
        spec = np.flatnonzero(special)
        ridx = np.flatnonzero(need)
        if not ridx.size:
            ridx = None
    refv = _ref_some(_mpfr_ref().ref_sqrt, ridx, (a,), plan)
    with np.errstate(all="ignore"):
        ph, pl = two_prod(q, q, f[1], f[2], f[3], f[4], f[3], f[4], f[5])
        r = f[1]
        np.subtract(a, ph, out=r)
        np.subtract(r, pl, out=r)
    qsave = q[spec] if spec is not None and spec.size else None
    odd_adjust(q, r, bb[1], i[2])
    if qsave is not None:
        q[spec] = qsave
    round_block(q, out, plan, i, bb, lambda idx, vs: (vs, None))
    if refv is not None:
        out[ridx] = refv


def _fma_special_values(ai, bi, ci, mode):
    """Exact fma results for elements with a zero/non-finite factor or non-finite c."""
    with np.errstate(all="ignore"):
        val = ai * bi + ci  # exact for zero products; IEEE specials otherwise
        finab = np.isfinite(ai) & np.isfinite(bi)
        val = np.where(finab & ~np.isfinite(ci), ci, val)
    z = val == 0
    if z.any():
        sp = np.signbit(ai) ^ np.signbit(bi)
        sc_ = np.signbit(ci)
        neg = (sp | sc_) if mode is Rounding.DOWN else (sp & sc_)
        val = np.where(z, np.where(neg, -0.0, 0.0), val)
    return val


def _fma_specials(a, b, c, mode):
    """(indices, values) of elements with a zero/non-finite factor or non-finite c."""
    finab = np.isfinite(a) & np.isfinite(b)
    special = ~(finab & np.isfinite(c)) | (a == 0) | (b == 0)
    idx = np.flatnonzero(special)
    if not idx.size:
        return None, None
    return idx, _fma_special_values(a[idx], b[idx], c[idx], mode)


def k_fma(plan, ins, out, sc, in_fmt=False):
    a, b, c = ins
    n = out.size
    f, i, bb = sc.fs(n), sc.is_(n), sc.bs(n)
    if not plan.ops_exact:
        return _ref_all(_mpfr_ref().ref_fma, ins, out, plan)
    fast = in_fmt and plan.prod_exact
    ridx = sidx = sval = None
    with np.errstate(all="ignore"):
        if fast:
            ph = f[0]
            np.multiply(a, b, out=ph)
            h = f[2]
            if plan.fma_exact:
                np.add(ph, c, out=h)
            else:
                two_sum(ph, c, h, f[3], f[4])
                odd_adjust(h, f[3], bb[1], i[2])
            if plan.mode is Rounding.DOWN:
                _zero_sign(h, ph, c, plan=plan, z=bb[1])
        else:
            ph, pl = two_prod(a, b, f[0], f[1], f[2], f[3], f[4], f[5], f[6])
            ridx = _mul_ref_idx(a, b, ph)
            if ridx is not None:
                # c non-finite: handled as special below
                ridx = ridx[np.isfinite(c[ridx])]
                ridx = ridx if ridx.size else None
            s, e = f[2], f[3]
            two_sum(ph, c, s, e, f[4])
            e2, ff = f[4], f[5]
            two_sum(e, pl, e2, ff, f[6])
            h, g = f[7], f[6]
            two_sum(s, e2, h, g, f[0])  # ph (f[0]) no longer needed
            np.add(g, ff, out=g)
            odd_adjust(h, g, bb[1], i[2])
            # exact zero results: sign from the product's and c's signs
            np.equal(h, 0.0, out=bb[1])
            if bb[1].any():
                zi = np.flatnonzero(bb[1])
                sp = np.signbit(a[zi]) ^ np.signbit(b[zi])
                sc_ = np.signbit(c[zi])
                neg = (sp | sc_) if plan.mode is Rounding.DOWN else (sp & sc_)
                h[zi] = np.where(neg, -0.0, 0.0)
            sidx, sval = _fma_specials(a, b, c, plan.mode)
            if sidx is not None:
                h[sidx] = sval
    refv = _ref_some(_mpfr_ref().ref_fma, ridx, (a, b, c), plan)

    def cb(idx, vs):
        ai, bi, ci = a[idx], b[idx], c[idx]
        with np.errstate(all="ignore"):
            si = ai * bi + ci
        fin = np.isfinite(ai) & np.isfinite(bi) & np.isfinite(ci)
        ovf = fin & ~np.isfinite(vs)
        vs = np.where(ovf, np.copysign(np.inf, si), vs)
        if not fin.all():
            vs = np.where(fin, vs, _fma_special_values(ai, bi, ci, plan.mode))
        return vs, ovf

    round_block(h, out, plan, i, bb, cb)
    if refv is not None:
        out[ridx] = refv


def k_mac(plan, ins, out, sc, accumulate="sequential"):
    acc, x, w = ins
    n = out.size
    f, i, bb = sc.fs(n), sc.is_(n), sc.bs(n)
    np.multiply(x, w, out=f[3])
    mac_core(plan, acc, f[3], out, f, i, bb, accumulate)


def mac_core(plan, acc, ph, out, f, i, bb, accumulate):
    """out <- acc (+) ph for one block; ph = exact product (in f[3]); out may be acc."""
    if accumulate == "sequential":
        r = f[4]
        round_block(ph, r, plan, i, bb, None)
        s = f[5]
        _add_proxy(plan, acc, r, s, f, i, bb, False, True)
    else:
        s = f[5]
        if plan.fma_exact:
            np.add(ph, acc, out=s)
        else:
            two_sum(ph, acc, s, f[0], f[1])
            odd_adjust(s, f[0], bb[1], i[2])
        if plan.mode is Rounding.DOWN:
            _zero_sign(s, ph, acc, plan=plan, z=bb[1])
    term = r if accumulate == "sequential" else ph

    def cb(idx, vs):
        ai, ti = acc[idx], term[idx]
        with np.errstate(all="ignore"):
            si = ai + ti
        fin = np.isfinite(ai) & np.isfinite(ti)
        ovf = fin & ~np.isfinite(si)
        return np.where(~fin | ovf, si, vs), ovf

    round_block(s, out, plan, i, bb, cb)
