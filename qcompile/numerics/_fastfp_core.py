"""Internals of :mod:`qcompile.numerics.fastfp`: the blockwise rounding core.

Rounding a binary64 value ``v`` into a format (p bits, exponent range) is done
by scaling with the quantum ``q`` (the spacing of the format at ``v``), rounding
to an integer with the mode's numpy ufunc, and scaling back:

    q = 2**max(e_v - p + 1, qmin)   built directly as the bit pattern
                                    ((v_bits & EXP) - ((p-1) << 52)) max QMIN_BITS
    r = rint|floor|ceil|trunc|away(v / q) * q

Both scalings are by powers of two and exact (q stays normal as long as
qmin >= -1022; v / q cannot underflow to 0 except for formats whose quantum
exceeds 1, where such tiny v go to the reference), and the integer rounding is the exact IEEE operation, so the
result is the correctly rounded value for every mode, including gradual
underflow (the ``max`` with ``qmin = emin - 1``) and carries into the next binade.
The sign of zero comes out right (``rint(-0.3) = -0.0``).  That is 6 numpy passes
on cache-sized blocks plus two reductions (max/min) that detect the rare
elements needing the slower, still vectorised, fix-up: NaN, inf, values beyond
``max_finite`` (overflow: MPFR table, saturation, no-inf formats), the
subnormal=off underflow zone, and values so tiny that their quantum would be a
binary64 subnormal (only formats with emin < -1021 or unbounded range); the
latter are rounded by the gmpy2 reference element by element.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from qcompile.numerics.float_format import FloatFormat, Rounding

BLOCK = 32768

_I64 = np.int64
_F64 = np.float64
EXP = _I64(0x7FF0000000000000)
ABS = _I64(0x7FFFFFFFFFFFFFFF)
SIGN = _I64(-0x8000000000000000)
DBL_MAX = float(np.finfo(np.float64).max)


class NotExact(ArithmeticError):
    """The fast engine cannot produce the exact (reference) result as a float64 array."""


def _away(x, out):
    t = np.abs(x)
    np.ceil(t, out=t)
    np.copysign(t, x, out=out)
    return out


_RFUNC = {
    Rounding.NEAREST: np.rint,
    Rounding.ZERO: np.trunc,
    Rounding.UP: np.ceil,
    Rounding.DOWN: np.floor,
    Rounding.AWAY: _away,
}

# overflow gives inf?  (positive, negative)
_OVF_INF = {
    Rounding.NEAREST: (True, True),
    Rounding.AWAY: (True, True),
    Rounding.ZERO: (False, False),
    Rounding.UP: (True, False),
    Rounding.DOWN: (False, True),
}


def _f2b(x: float) -> int:
    return int(np.array(x, dtype=np.float64).view(np.int64))


class Plan:
    """Per (format, mode) constants and which exactness shortcuts apply."""

    def __init__(self, fmt: FloatFormat, mode: Rounding):
        self.fmt = fmt
        self.mode = mode
        p = fmt.p
        self.p = p
        pe = min(p, 53)  # rounding a double to >= 53 bits only touches the range
        self.pm = _I64((pe - 1) << 52)
        self.bounded = fmt.bounded
        qtrue = fmt.qmin_exp  # None when unbounded
        qclamp = -1022 if (qtrue is None or qtrue < -1022) else qtrue
        self.qmin_bits = _I64((qclamp + 1023) << 52)
        # |v| below low_ref (nonzero) -> true quantum < 2**-1022 -> reference
        self.low_ref = math.ldexp(1.0, pe - 1023) if (qtrue is None or qtrue < -1022) else 0.0
        if qclamp > 0:  # v / q must not underflow to 0 (formats whose quantum exceeds 1)
            self.low_ref = max(self.low_ref, math.ldexp(1.0, qclamp - 1073))
        # subnormal=off underflow zone: 0 < |v| < 2**(emin-1)
        if self.bounded and not fmt.subnormal and qtrue >= -1022:
            self.low_uf = math.ldexp(1.0, fmt.emin - 1)
        else:
            self.low_uf = 0.0
        self.low = max(self.low_ref, self.low_uf)
        self.low_m1 = np.uint64(_f2b(self.low) - 1) if self.low > 0 else None
        # largest p-bit double: beyond it the p-bit rounding may leave binary64
        top_pbit = DBL_MAX if pe >= 53 else math.ldexp(1.0 - math.ldexp(1.0, -pe), 1024)
        # maxf: largest double <= max_finite (None: the format's range exceeds binary64's);
        # maxf_exact: whether it *is* max_finite (not so for p > 53)
        self.maxf = None
        self.maxf_exact = False
        if self.bounded and fmt.emax <= 1024:
            mfe = fmt.max_finite_exact
            mf = float(mfe)
            if Fraction(mf) > mfe:
                mf = float(np.nextafter(mf, 0.0))
            self.maxf = mf
            self.maxf_exact = Fraction(mf) == mfe
        self.T = self.maxf if self.maxf is not None else top_pbit
        self.rfunc = _RFUNC[mode]
        self.ovf_inf = _OVF_INF[mode]
        # --- exactness shortcuts for operands that are values of the format (p <= 26) ---
        q = qtrue
        e = fmt.emax
        self.ops_exact = p <= 51  # odd-rounding proxies are valid (p + 2 <= 53)
        self.prod_exact = bool(self.bounded and p <= 26 and 2 * q >= -1074 and 2 * e <= 1024)
        self.add_rn = bool(p <= 26 and mode is Rounding.NEAREST and self.bounded and q >= -1074
                           and e <= 1023)
        self.add_exact = bool(self.bounded and q >= -1074 and e + 1 - q <= 53)
        self.fma_exact = bool(self.prod_exact and max(e, 2 * e) + 1 - min(q, 2 * q) <= 53)
        self.div_rn = bool(p <= 26 and mode is Rounding.NEAREST and self.bounded and q >= -1074
                           and e - q <= 1023 and q - e >= -1022)
        self.sqrt_rn = bool(p <= 25 and mode is Rounding.NEAREST and self.bounded and q >= -1074)


_PLANS: dict = {}


def get_plan(fmt: FloatFormat, mode: Rounding) -> Plan:
    key = (fmt, mode)
    pl = _PLANS.get(key)
    if pl is None:
        if len(_PLANS) > 512:
            _PLANS.clear()
        pl = _PLANS[key] = Plan(fmt, mode)
    return pl


class Scratch:
    """Block-sized temporaries (reused across blocks of one call)."""

    def __init__(self, n: int):
        self.n = n
        self.f = [np.empty(n, _F64) for _ in range(8)]
        self.i = [np.empty(n, _I64) for _ in range(3)]
        self.b = [np.empty(n, np.bool_) for _ in range(2)]

    def fs(self, m):
        return [a[:m] for a in self.f]

    def is_(self, m):
        return [a[:m] for a in self.i]

    def bs(self, m):
        return [a[:m] for a in self.b]


def round_main(v, out, plan: Plan, ub, iv):
    """Main path: correct for finite |v| <= plan.T with |v| >= plan.low or v == 0."""
    np.bitwise_and(v.view(_I64), EXP, out=ub)
    np.subtract(ub, plan.pm, out=ub)
    np.maximum(ub, plan.qmin_bits, out=ub)
    q = ub.view(_F64)
    np.divide(v, q, out=out)  # exact: q is a normal power of two (measured faster than * 1/q)
    plan.rfunc(out, out=out)
    np.multiply(out, q, out=out)
    return out


def special_indices(v, plan: Plan, ib, bb):
    """Indices of elements the main path cannot handle (None if there are none)."""
    hi = v.max()
    lo = v.min()
    mask = None
    if not (hi <= plan.T and lo >= -plan.T):  # also catches NaN
        mask = np.abs(v) <= plan.T
        np.logical_not(mask, out=mask)
    if plan.low_m1 is not None:
        np.bitwise_and(v.view(_I64), ABS, out=ib)
        np.subtract(ib, 1, out=ib)
        np.less(ib.view(np.uint64), plan.low_m1, out=bb)
        if bb.any():
            mask = bb.copy() if mask is None else (mask | bb)
    if mask is None:
        return None
    idx = np.flatnonzero(mask)
    return idx if idx.size else None


def round_block(v, out, plan: Plan, sc_i, sc_b, fix_cb=None):
    """out[:] = round(v) for a 1-D block; ``v`` may alias ``out``.

    ``fix_cb(idx, v_sub) -> (v_sub, overflow_mask)`` lets an operation correct the
    proxies of flagged elements and tell overflows (finite exact result) from
    exact infinities; it is called before ``out`` is written, so operands may
    alias ``out``.
    """
    ub, iv, ib = sc_i[0], sc_i[1], sc_i[2]
    idx = special_indices(v, plan, ib, sc_b[0])
    if idx is not None:
        vs = v[idx]
        if fix_cb is not None:
            vs, ovf = fix_cb(idx, vs)
        else:
            ovf = None
        fixed = fixup(vs, plan, ovf)
    round_main(v, out, plan, ub, iv)
    if idx is not None:
        out[idx] = fixed
    return out


def _round_plain(w, plan: Plan):
    ub = np.empty(w.shape, _I64)
    iv = np.empty(w.shape, _I64)
    out = np.empty_like(w)
    return round_main(w, out, plan, ub, iv)


def fixup(vs, plan: Plan, ovf=None):
    """Vectorised rounding of the special elements ``vs`` (proxies).

    ``ovf``: bool mask of infinite proxies that stand for an overflowed finite
    exact result (as opposed to an exact infinity).
    """
    fmt, mode = plan.fmt, plan.mode
    vs = np.asarray(vs, dtype=_F64)
    res = np.empty_like(vs)
    nan = np.isnan(vs)
    inf = np.isinf(vs)
    if ovf is None:
        ovf = np.zeros(vs.shape, bool)
    over_inf = inf & ovf
    exact_inf = inf & ~ovf
    finite = ~(nan | inf)
    w = np.where(finite, vs, 0.0)
    w[over_inf] = np.copysign(DBL_MAX, vs[over_inf])
    a = np.abs(w)
    ref_zone = (a < plan.low_ref) & (a != 0) & finite
    uf_zone = (a < plan.low_uf) & (a != 0) & finite & ~ref_zone
    r = _round_plain(w, plan)
    neg = np.signbit(w)
    if plan.maxf is not None:
        over = ~(np.abs(r) <= plan.maxf) & (finite | over_inf)
        if over.any():
            to_inf = np.where(neg, plan.ovf_inf[1], plan.ovf_inf[0])
            mx = np.copysign(plan.maxf, w)
            if fmt.saturate:
                val = mx
            elif fmt.has_inf:
                val = np.where(to_inf, np.copysign(np.inf, w), mx)
            else:
                val = np.where(to_inf, np.nan, mx)
            if not plan.maxf_exact and np.isfinite(val[over]).any():
                raise NotExact(f"max finite value of {fmt} is not representable in binary64")
            r = np.where(over, val, r)
    else:
        bad = (~np.isfinite(r) & finite) | over_inf
        if bad.any():
            raise NotExact(f"result exceeds the binary64 range for format {fmt}")
    if uf_zone.any():
        # MPFR decides underflow after rounding to p bits with unbounded exponent
        mn = plan.low_uf
        ii = np.flatnonzero(uf_zone)
        wi = w[ii]
        _, ex = np.frexp(wi)
        k = np.ldexp(wi, plan.p - ex)
        k = plan.rfunc(k, out=np.empty_like(k))
        r[ii] = np.ldexp(k, ex - plan.p)
        ra = np.abs(r)
        under = uf_zone & (ra < mn)
        if mode is Rounding.NEAREST:
            up = a > mn * 0.5
        elif mode is Rounding.ZERO:
            up = np.zeros_like(under)
        elif mode is Rounding.AWAY:
            up = np.ones_like(under)
        elif mode is Rounding.UP:
            up = ~neg
        else:
            up = neg
        r = np.where(under, np.copysign(np.where(up, mn, 0.0), w), r)
    res[...] = r
    if exact_inf.any():
        if fmt.has_inf:
            val = vs
        elif fmt.saturate:
            if not plan.maxf_exact:
                raise NotExact(f"max finite value of {fmt} is not representable in binary64")
            val = np.copysign(plan.maxf, vs)
        else:
            val = np.full(vs.shape, np.nan)
        res[exact_inf] = val[exact_inf] if np.ndim(val) else val
    res[nan] = np.nan
    if ref_zone.any():
        from qcompile.numerics.mpfr_ref import ref_round

        ii = np.flatnonzero(ref_zone)
        res[ii] = ref_values([ref_round(float(x), fmt, mode) for x in w[ii]], fmt)
    return res


def ref_values(vals, fmt) -> np.ndarray:
    out = np.empty(len(vals), _F64)
    for k, x in enumerate(vals):
        if not isinstance(x, float):
            raise NotExact(f"reference result {x} for format {fmt} is not representable in binary64")
        out[k] = x
    return out


# ----------------------------------------------------------------------------- EFTs
def odd_adjust(s, e, nz, t):
    """In place: s <- round-to-odd(s + e) given s = RN(s + e) (e: exact error).

    Only the sign of ``e`` and whether it is nonzero are used.  ``nz`` (bool) and
    ``t`` (int64) are scratch.
    """
    sb = s.view(_I64)
    np.not_equal(e, 0.0, out=nz)
    np.bitwise_xor(e.view(_I64), sb, out=t)
    np.right_shift(t, 63, out=t)  # -1 where the signs differ
    np.bitwise_and(t, nz, out=t)  # 1 where we must step toward zero
    np.subtract(sb, t, out=sb)
    np.bitwise_or(sb, nz, out=sb)
    return s


def two_sum(a, b, s, e, t):
    """s = RN(a+b), e = (a+b) - s exactly (Knuth). ``t`` scratch. s, e, t distinct from a, b."""
    np.add(a, b, out=s)
    np.subtract(s, a, out=t)  # bb
    np.subtract(b, t, out=e)  # b - bb
    np.subtract(s, t, out=t)  # s - bb
    np.subtract(a, t, out=t)  # a - (s - bb)
    np.add(t, e, out=e)
    return s, e


def split(x, hi, lo):
    """Veltkamp splitting (|x| < 2**995): x = hi + lo, both with <= 26 bits."""
    np.multiply(x, 134217729.0, out=hi)
    np.subtract(hi, x, out=lo)
    np.subtract(hi, lo, out=hi)
    np.subtract(x, hi, out=lo)
    return hi, lo


def two_prod(a, b, ph, pl, ah, al, bh, bl, t):
    """Dekker: ph = RN(a*b), pl = a*b - ph exactly (no fma in numpy)."""
    np.multiply(a, b, out=ph)
    split(a, ah, al)
    if b is a:
        bh, bl = ah, al
    else:
        split(b, bh, bl)
    np.multiply(ah, bh, out=pl)
    np.subtract(pl, ph, out=pl)
    np.multiply(ah, bl, out=t)
    np.add(pl, t, out=pl)
    np.multiply(al, bh, out=t)
    np.add(pl, t, out=pl)
    np.multiply(al, bl, out=t)
    np.add(pl, t, out=pl)
    return ph, pl
