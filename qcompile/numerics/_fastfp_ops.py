"""The elementwise operations of :mod:`qcompile.numerics.fastfp` (see its docstring for why each
result is the correctly rounded value of the exact operation, bit for bit as ``mpfr_ref``)."""

from __future__ import annotations

import numpy as np

from qcompile.numerics._fastfp_core import get_plan
from qcompile.numerics._fastfp_kernels import (
    k_add,
    k_div,
    k_fma,
    k_mac,
    k_mul,
    k_round,
    k_sqrt,
)
from qcompile.numerics._fastfp_kernels import run as _run
from qcompile.numerics.float_format import FloatFormat, Rounding, parse_format

_I64 = np.int64
_F64 = np.float64

def round_to(x, fmt: FloatFormat | str, mode: Rounding | str = Rounding.NEAREST, out=None):
    """Correctly round binary64 values into ``fmt`` (exact for every p and mode).

    ``out`` may be ``x`` itself (in-place rounding of a float64 array).
    """
    return _run(k_round, [x], fmt, mode, out)


def add(a, b, fmt, mode=Rounding.NEAREST, out=None, *, assume_in_format=False):
    """round(a + b).  ``assume_in_format``: the caller guarantees a, b are values of fmt."""
    return _run(k_add, [a, b], fmt, mode, out, sub=False, in_fmt=assume_in_format)


def sub(a, b, fmt, mode=Rounding.NEAREST, out=None, *, assume_in_format=False):
    """round(a - b)."""
    return _run(k_add, [a, b], fmt, mode, out, sub=True, in_fmt=assume_in_format)


def mul(a, b, fmt, mode=Rounding.NEAREST, out=None, *, assume_in_format=False):
    """round(a * b)."""
    return _run(k_mul, [a, b], fmt, mode, out, in_fmt=assume_in_format)


def div(a, b, fmt, mode=Rounding.NEAREST, out=None, *, assume_in_format=False):
    """round(a / b)."""
    return _run(k_div, [a, b], fmt, mode, out, in_fmt=assume_in_format)


def sqrt(a, fmt, mode=Rounding.NEAREST, out=None, *, assume_in_format=False):
    """round(sqrt(a))."""
    return _run(k_sqrt, [a], fmt, mode, out, in_fmt=assume_in_format)


def fma(a, b, c, fmt, mode=Rounding.NEAREST, out=None, *, assume_in_format=False):
    """round(a * b + c) with a single rounding."""
    return _run(k_fma, [a, b, c], fmt, mode, out, in_fmt=assume_in_format)


def accumulate_step(acc, term, fmt, mode=Rounding.NEAREST, out=None, *, term_in_format=False):
    """acc <- round(acc + term): one accumulation step, vectorised over all outputs.

    ``acc`` should be a value of the format (it is the previous step's result);
    ``term`` may be any binary64 value (e.g. an exact product x*w for the "fma"
    accumulation), exact in every mode.  ``term_in_format=True`` (the "sequential"
    accumulation, where the term is an already rounded product) enables the
    cheaper exact shortcuts.  ``out=acc`` updates in place.
    """
    return _run(k_add, [acc, term], fmt, mode, out, sub=False, in_fmt=term_in_format)


def mac_step(acc, x, w, fmt, mode=Rounding.NEAREST, accumulate="sequential", out=None):
    """One multiply-accumulate step for the gemm/conv engines (broadcasting).

    ``"sequential"``: acc <- round(acc + round(x*w)); ``"fma"``: acc <- round(acc + x*w).
    acc, x and w must be values of ``fmt`` (not checked; see :func:`dot`).  For
    formats where products of format values are not exact in binary64 (p > 26 or
    exponent ranges wider than binary64's half range) this falls back to the
    general exact ``mul``/``add``/``fma``.
    """
    fmt = parse_format(fmt)
    mode = Rounding.parse(mode)
    if accumulate not in ("sequential", "fma"):
        raise ValueError(f"mac_step accumulate must be 'sequential' or 'fma', not {accumulate!r}")
    plan = get_plan(fmt, mode)
    if not plan.prod_exact:
        if accumulate == "sequential":
            return add(acc, mul(x, w, fmt, mode), fmt, mode, out)
        return fma(x, w, acc, fmt, mode, out)
    return _run(k_mac, [acc, x, w], fmt, mode, out, accumulate=accumulate)


def is_representable(x, fmt) -> np.ndarray:
    """Boolean array: is each element a value of ``fmt``?"""
    fmt = parse_format(fmt)
    x = np.asarray(x, dtype=_F64)
    r = round_to(x, fmt, Rounding.NEAREST)
    same = r.view(_I64) == x.view(_I64)
    nan = np.isnan(x)
    if nan.any():
        same = (same & ~nan) | (nan & (fmt.has_inf or fmt.has_nan))
    return same
