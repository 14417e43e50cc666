"""Scalar gmpy2 (MPFR) reference for arithmetic in a :class:`FloatFormat`.

This is the only module of the numerics core that imports gmpy2.  Every
operation runs in an *explicit* context built by :func:`context` (never the
global gmpy2 context): precision ``p``, ``emin``/``emax`` of the format (MPFR
defaults when the format is unbounded), ``subnormalize`` as the format says,
and the requested rounding mode.  gmpy2 applies ``mpfr_subnormalize`` (with the
ternary value, so no double rounding) after each context operation, exactly
like ``gmpy2.ieee(n)``.

Inputs are converted *exactly* to mpfr (a Python float becomes a 53-bit mpfr,
an int an mpfr of its bit length; mpfr inputs are used as they are).  This
matters: gmpy2 would otherwise convert a float operand at the context's
precision, i.e. round it before the operation.

Post-processing after each operation (see ``formats`` for the rules): values
beyond ``max_finite`` (only possible for E4M3-like formats whose top binade
lacks its last value, or after an MPFR overflow) get the MPFR overflow result
for the mode; saturating formats clamp overflow to +-max_finite; formats
without inf turn an infinite result into +-max (saturating) or NaN.  MPFR's
overflow flag tells overflow (finite exact result) from exact infinities.

Return values: a Python float whenever the result is exactly representable in
binary64 (always the case for formats with p <= 53 whose range lies inside
binary64's, i.e. every IEEE-style format up to 11 exponent bits); otherwise
(unbounded/huge exponent ranges, p > 53) the exact ``gmpy2.mpfr`` is returned.
Every ``ref_*`` function accepts floats, ints and mpfr values.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence

import gmpy2
from gmpy2 import mpfr

from qcompile.numerics.float_format import FloatFormat, Rounding, parse_format

__all__ = [
    "context",
    "to_mpfr",
    "ref_round",
    "ref_add",
    "ref_sub",
    "ref_mul",
    "ref_div",
    "ref_sqrt",
    "ref_fma",
    "ref_dot",
    "ref_round_rational",
]

_GMPY_ROUND = {m: getattr(gmpy2, m.gmpy2_name) for m in Rounding}

# Context used only to build exact mpfr copies of inputs (never rounds: the
# precision is always given explicitly and the exponent range is maximal).
_EXACT = gmpy2.context(precision=64, emin=gmpy2.get_emin_min(), emax=gmpy2.get_emax_max())

# For each mode and sign of the exact result: does overflow give inf ("inf") or the
# largest finite value ("max")?  (MPFR / IEEE 754 overflow rules.)
_OVERFLOW_TO_INF = {
    Rounding.NEAREST: (True, True),  # (positive, negative)
    Rounding.AWAY: (True, True),
    Rounding.ZERO: (False, False),
    Rounding.UP: (True, False),
    Rounding.DOWN: (False, True),
}


def overflow_gives_inf(mode: Rounding, negative: bool) -> bool:
    return _OVERFLOW_TO_INF[mode][1 if negative else 0]


def context(fmt: FloatFormat | str, rounding: Rounding | str = Rounding.NEAREST) -> gmpy2.context:
    """A fresh gmpy2 context for ``fmt`` and ``rounding`` (flags cleared)."""
    fmt = parse_format(fmt)
    rounding = Rounding.parse(rounding)
    kw = dict(precision=fmt.p, round=_GMPY_ROUND[rounding])
    if fmt.emin is not None:
        kw.update(emin=fmt.emin, emax=fmt.emax, subnormalize=bool(fmt.subnormal))
    return gmpy2.context(**kw)


def to_mpfr(x) -> mpfr:
    """Exact mpfr copy of a float / int / mpfr (raises TypeError otherwise)."""
    if isinstance(x, float):
        return mpfr(x, 53, _EXACT)
    if type(x) is mpfr:
        return x
    if isinstance(x, bool):
        return mpfr(int(x), 2, _EXACT)
    if isinstance(x, int):
        return mpfr(x, max(2, abs(x).bit_length()), _EXACT)
    try:  # numpy scalars and the like
        import numbers

        if isinstance(x, numbers.Integral):
            return to_mpfr(int(x))
        if isinstance(x, numbers.Real):
            return mpfr(float(x), 53, _EXACT)
    except Exception:  # pragma: no cover
        pass
    raise TypeError(f"cannot convert {type(x).__name__} exactly to mpfr")


def _to_output(r: mpfr):
    """float if exactly representable in binary64, else the mpfr itself."""
    if gmpy2.is_nan(r):
        return math.nan
    f = float(r)
    if math.isinf(f) and not gmpy2.is_infinite(r):
        return r
    if not math.isinf(f) and mpfr(f, 53, _EXACT) != r:
        return r
    return f


@functools.lru_cache(maxsize=256)
def _max_finite_mpfr(fmt: FloatFormat) -> mpfr:
    m = fmt.max_finite_exact
    return mpfr(gmpy2.mpq(m.numerator, m.denominator), fmt.p, _EXACT)  # exact (p bits)


def _finish(r: mpfr, ctx: gmpy2.context, fmt: FloatFormat, mode: Rounding) -> mpfr:
    """Apply max_finite / saturation / no-inf rules to a context result ``r``."""
    if fmt.emax is None or gmpy2.is_nan(r):
        return r
    maxf = _max_finite_mpfr(fmt)
    if abs(r) <= maxf:  # common case (also handles zeros)
        return r
    neg = gmpy2.is_signed(r)
    big = -maxf if neg else maxf
    if gmpy2.is_infinite(r) and not ctx.overflow:
        # exact infinity (inf operand, division by zero): representable unless no inf
        if fmt.has_inf:
            return r
        return big if fmt.saturate else mpfr("nan")
    # overflow: MPFR overflow flag, or a value in the top binade beyond max_finite (E4M3)
    if overflow_gives_inf(mode, neg):
        if fmt.saturate:
            return big
        if fmt.has_inf:
            return mpfr("-inf") if neg else mpfr("inf")
        return mpfr("nan")
    return big


def _op(fmt, mode, fn_name: str, *args):
    fmt = parse_format(fmt)
    mode = Rounding.parse(mode)
    ctx = context(fmt, mode)
    xs = [to_mpfr(a) for a in args]
    r = getattr(ctx, fn_name)(*xs)
    return _to_output(_finish(r, ctx, fmt, mode))


def ref_round(x, fmt: FloatFormat | str, mode: Rounding | str = Rounding.NEAREST):
    """Correct rounding of the (exact) value ``x`` into ``fmt``."""
    return _op(fmt, mode, "plus", x)


def ref_add(a, b, fmt, mode=Rounding.NEAREST):
    return _op(fmt, mode, "add", a, b)


def ref_sub(a, b, fmt, mode=Rounding.NEAREST):
    return _op(fmt, mode, "sub", a, b)


def ref_mul(a, b, fmt, mode=Rounding.NEAREST):
    return _op(fmt, mode, "mul", a, b)


def ref_div(a, b, fmt, mode=Rounding.NEAREST):
    return _op(fmt, mode, "div", a, b)


def ref_sqrt(a, fmt, mode=Rounding.NEAREST):
    return _op(fmt, mode, "sqrt", a)


def ref_fma(a, b, c, fmt, mode=Rounding.NEAREST):
    """round(a*b + c) with a single rounding."""
    return _op(fmt, mode, "fma", a, b, c)


def ref_round_rational(num: int, den: int, fmt, mode=Rounding.NEAREST):
    """Correct rounding of the rational ``num/den`` (den > 0) into ``fmt``."""
    fmt = parse_format(fmt)
    mode = Rounding.parse(mode)
    ctx = context(fmt, mode)
    if num == 0:
        r = mpfr(0, 2, _EXACT)
    else:
        r = mpfr(gmpy2.mpq(num, den), 0, ctx)
    return _to_output(_finish(r, ctx, fmt, mode))


def _exact_ctx(prec: int) -> gmpy2.context:
    return gmpy2.context(precision=prec, emin=gmpy2.get_emin_min(), emax=gmpy2.get_emax_max())


def ref_dot(
    xs: Sequence | Iterable,
    ws: Sequence | Iterable,
    fmt: FloatFormat | str,
    mode: Rounding | str = Rounding.NEAREST,
    accumulate: str = "sequential",
    bias=None,
    bias_first: bool = False,
):
    """Reference dot product of ``xs`` and ``ws`` in ``fmt``.

    ``accumulate``:
      * ``"sequential"``: acc = round(acc + round(x*w)) for each term in order;
      * ``"fma"``: acc = round(acc + x*w) (one rounding per step);
      * ``"exact"``: the exact sum of all products (and of the bias when
        ``bias_first``) rounded once (MPFR ``mpfr_sum``).
    acc starts at +0, or at ``bias`` (unrounded) when ``bias_first``.  Otherwise the
    bias is added last: result = round(acc + bias).  Zero results of exact
    cancellation follow IEEE/MPFR: +0 unless rounding down (-0); a sum of -0 terms
    is -0.  Saturation/no-inf rules are applied after every rounding.
    """
    fmt = parse_format(fmt)
    mode = Rounding.parse(mode)
    if accumulate not in ("sequential", "fma", "exact"):
        raise ValueError(f"accumulate must be 'sequential', 'fma' or 'exact', not {accumulate!r}")
    xs = [to_mpfr(v) for v in xs]
    ws = [to_mpfr(v) for v in ws]
    if len(xs) != len(ws):
        raise ValueError(f"length mismatch: {len(xs)} inputs vs {len(ws)} weights")
    b = None if bias is None else to_mpfr(bias)

    def fin(r, ctx):
        return _finish(r, ctx, fmt, mode)

    if accumulate == "exact":
        ctx = context(fmt, mode)
        terms = [b if (bias_first and b is not None) else mpfr(0, 2, _EXACT)]
        for x, w in zip(xs, ws, strict=True):
            terms.append(_exact_ctx(max(2, x.precision + w.precision)).mul(x, w))
        acc = fin(ctx.fsum(terms), ctx)
    else:
        acc = b if (bias_first and b is not None) else mpfr(0, 2, _EXACT)
        for x, w in zip(xs, ws, strict=True):
            ctx = context(fmt, mode)
            if accumulate == "sequential":
                prod = fin(ctx.mul(x, w), ctx)
                ctx = context(fmt, mode)
                acc = fin(ctx.add(acc, prod), ctx)
            else:
                acc = fin(ctx.fma(x, w, acc), ctx)
        if (bias_first and b is not None) and not xs:
            ctx = context(fmt, mode)
            acc = fin(ctx.plus(acc), ctx)
    if b is not None and not bias_first:
        ctx = context(fmt, mode)
        acc = fin(ctx.add(acc, b), ctx)
    return _to_output(acc)
