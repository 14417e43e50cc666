"""The reference engine's arithmetic: gmpy2 (MPFR) scalars in an explicit context.

Exact by construction: every operation is one MPFR call (``ctx.add``, ``ctx.mul``, ``ctx.fma``,
``ctx.fsum``, ``ctx.sqrt``, ``ctx.exp`` ...) in a context with the format's precision,
exponent range, subnormalisation and rounding mode, on exact mpfr operands.  Formats whose
largest value is not MPFR's (E4M3's NaN code, E2M1) or that saturate get the
``mpfr_ref`` overflow table: a result beyond the largest value is recomputed by
``mpfr_ref`` in a fresh context, whose overflow flag tells an overflow from an exact infinity.
Tensors are numpy object arrays of ``gmpy2.mpfr``.
"""

from __future__ import annotations

import math

import gmpy2
import numpy as np
from gmpy2 import mpfr

from qcompile.numerics import mpfr_ref as R
from qcompile.numerics.fastfp import NotExact

_ZERO = mpfr(0, 2)
_EXACT = gmpy2.context(precision=64, emin=gmpy2.get_emin_min(), emax=gmpy2.get_emax_max())


def exact(x) -> mpfr:
    """Exact mpfr of a float/int/mpfr."""
    return R.to_mpfr(x)


class RefArith:
    """Scalar MPFR arithmetic of one (format, mode, accumulation rule)."""

    def __init__(self, fmt, mode, accumulate="sequential"):
        self.fmt, self.mode, self.accumulate = fmt, mode, accumulate
        self.ctx = R.context(fmt, mode)
        self.finish = fmt.bounded and (fmt.saturate or not fmt.has_inf)
        self.maxf = R._max_finite_mpfr(fmt) if fmt.bounded else None
        c = self.ctx
        self._add, self._sub, self._mul, self._div = c.add, c.sub, c.mul, c.div

    def _fin(self, r, fn, *args):
        if self.finish and not abs(r) <= self.maxf:
            return exact(fn(*args, self.fmt, self.mode))
        return r

    def round(self, x):
        return self._fin(self.ctx.plus(exact(x)), R.ref_round, x)

    def add(self, a, b):
        return self._fin(self._add(a, b), R.ref_add, a, b)

    def sub(self, a, b):
        return self._fin(self._sub(a, b), R.ref_sub, a, b)

    def mul(self, a, b):
        return self._fin(self._mul(a, b), R.ref_mul, a, b)

    def div(self, a, b):
        return self._fin(self._div(a, b), R.ref_div, a, b)

    def sqrt(self, a):
        return self._fin(self.ctx.sqrt(a), R.ref_sqrt, a)

    def _func(self, name, *args):
        ctx = R.context(self.fmt, self.mode)  # fresh flags: overflow vs exact infinity
        return R._finish(getattr(ctx, name)(*args), ctx, self.fmt, self.mode)

    def exp(self, a):
        return self._func("exp", a)

    def tanh(self, a):
        return self._func("tanh", a)

    def pow(self, a, b):
        """a ** b correctly rounded (MPFR pow)."""
        return self._func("pow", a, b)

    def sigmoid(self, a):
        """round(1 / round(1 + round(exp(-a)))): three correctly rounded steps."""
        return self.div(mpfr(1), self.add(mpfr(1), self.exp(-a)))

    def dot(self, xs, ws, bias=None, bias_first=False):
        """Accumulate the products of the lists ``xs``, ``ws`` in order (see package doc)."""
        acc = bias if (bias_first and bias is not None) else _ZERO
        if self.accumulate == "exact":
            terms = [acc] + [exact_mul(x, w) for x, w in zip(xs, ws)]
            acc = self.ctx.fsum(terms)
            if self.finish and not abs(acc) <= self.maxf:
                acc = exact(R.ref_dot([float(t) for t in terms[1:]], [1.0] * (len(terms) - 1),
                                      self.fmt, self.mode, "exact",
                                      bias=float(terms[0]), bias_first=True))
        elif self.accumulate == "fma":
            fma = self.ctx.fma
            for x, w in zip(xs, ws):
                acc = self._fin(fma(x, w, acc), R.ref_fma, x, w, acc)
        else:
            mul, add = self._mul, self._add
            if self.finish:
                for x, w in zip(xs, ws):
                    acc = self.add(acc, self.mul(x, w))
            else:
                for x, w in zip(xs, ws):
                    acc = add(acc, mul(x, w))
        if bias_first and bias is not None and not xs:
            acc = self.round(acc)
        if bias is not None and not bias_first:
            acc = self.add(acc, bias)
        return acc


def exact_mul(x, w):
    """The exact product ``x * w`` of two mpfr values (precision ``prec(x) + prec(w)`` holds
    every product of a ``p``-bit and a ``q``-bit significand; MPFR's whole exponent range)."""
    return gmpy2.context(precision=max(2, x.precision + w.precision), emin=gmpy2.get_emin_min(),
                         emax=gmpy2.get_emax_max()).mul(x, w)


def to_obj(a: np.ndarray) -> np.ndarray:
    """float array -> object array of exact mpfr."""
    a = np.asarray(a, np.float64)
    out = np.empty(a.shape, object)
    flat = out.reshape(-1)
    for i, v in enumerate(a.reshape(-1).tolist()):
        flat[i] = mpfr(v, 53, _EXACT)
    return out


def to_float(a: np.ndarray) -> np.ndarray:
    """object array of mpfr -> float64 (raises NotExact if a value is not a binary64)."""
    out = np.empty(a.shape, np.float64)
    flat = out.reshape(-1)
    for i, v in enumerate(np.asarray(a, object).reshape(-1).tolist()):
        if gmpy2.is_nan(v):
            flat[i] = math.nan
            continue
        f = float(v)
        if mpfr(f, 53, _EXACT) != v or (math.isinf(f) and not gmpy2.is_infinite(v)):
            raise NotExact(f"reference value {v} is not representable in binary64")
        flat[i] = f if f != 0 else (-0.0 if gmpy2.is_signed(v) else 0.0)
    return out
