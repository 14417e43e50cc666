"""Kernels of ``qcompile.FQ`` (round a tensor into a float/posit format) for both MPFR engines.

Semantics (:mod:`qcompile.numerics.fq`): ``q = round_F(x / s)`` of the exact quotient, then
``y = round_A(q * s)`` into the arithmetic format ``A`` of the run (with no scale, or a scale of
1, ``y = round_A(q)``). The scale is a graph constant, so it has already been converted into the
conversion format like every other constant; both engines see the same value.

* fast: ``fq_round`` (vectorised, exact: ``fastfp.div`` for floats, a round-to-odd quotient for
  posits) and ``fastfp.mul`` / ``fastfp.round_to`` into ``A``;
* reference: gmpy2 per element - the family's exact quotient (MPFR division in ``F``'s context
  for floats, the exact rational posit rounding of ``posit_ref`` for posits), MPFR
  multiplication into ``A``.

Which family a format belongs to is the registry's business (``family_of``); nothing here
depends on it.
"""

from __future__ import annotations

import functools

import numpy as np

from qcompile.backends.mpfr.common import KernelError, empty_apart
from qcompile.numerics import fastfp
from qcompile.numerics.formats import FormatError, Rounding, family_of
from qcompile.numerics.fq import check_scale, fq_format, fq_round

_F64 = np.float64


def _s(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


@functools.lru_cache(maxsize=128)
def _fmt(spec: str, saturate: bool):
    try:
        return fq_format(spec, saturate=saturate)
    except FormatError as e:
        raise KernelError(f"FQ: {e}") from None


def _parse(format, rounding, saturate):  # noqa: A002 (attribute name)
    fmt = _fmt(_s(format), bool(int(saturate)))
    try:
        mode = Rounding.parse(_s(rounding))
    except FormatError as e:
        raise KernelError(f"FQ: {e}") from None
    try:
        family_of(fmt).check_rounding(fmt, mode)
    except FormatError as e:
        raise KernelError(f"FQ: {e}") from None
    return fmt, mode


def _scale_shape(x_shape, s: np.ndarray, axis):
    if s.size == 1:
        return s.reshape(())
    if axis is None:
        raise KernelError(f"FQ: a scale of {s.size} values needs an axis attribute")
    ax = int(axis) % len(x_shape)
    if x_shape[ax] != s.size:
        raise KernelError(f"FQ: scale has {s.size} values, axis {axis} has {x_shape[ax]}")
    shp = [1] * len(x_shape)
    shp[ax] = s.size
    return s.reshape(shp)


def fq_fast(E, x, scale=None, *, format, rounding="nearest", saturate=1, axis=None):  # noqa: A002
    fmt, mode = _parse(format, rounding, saturate)
    x = np.asarray(x, _F64)
    s = np.ones((), _F64) if scale is None else _scale_shape(x.shape, np.asarray(scale, _F64), axis)
    try:
        check_scale(s)
    except FormatError as e:
        raise KernelError(f"FQ: {e} (after conversion into the run's conversion format)") from None
    A = E.A
    mul = not np.all(s == 1.0) and _product_fits(fmt, s)
    r = _fq_div_nb(x, s, fmt, mode, axis, A if mul else None)
    if r is not None and mul:  # q * s fused in the kernel, exact: round_A of it
        return (A.round(r),)
    q = fq_round(x, s, fmt, mode) if r is None else r
    if np.all(s == 1.0):  # A.round: one IEEE conversion where A is the machine's format
        return (A.round(q),)
    p = _exact_product(q, s, fmt)
    if p is not None:  # round_A(q s) of the exact product: one rounding, as fastfp.mul
        return (A.round(p),)
    return (fastfp.mul(q, np.broadcast_to(s, q.shape), A.fmt, A.mode),)


@functools.lru_cache(maxsize=64)
def _fq_params(fmt, mode):
    """The fast engine's rounding parameters of ``fmt`` (a float format of p <= 26 whose
    numba rounding applies), or None (posits, wide or custom formats: the numpy way)."""
    from qcompile.backends.mpfr.fast import FastArith, numba_available
    from qcompile.numerics.float_format import FloatFormat

    if not isinstance(fmt, FloatFormat) or not numba_available():
        return None
    nb = FastArith(fmt, mode).nb
    return None if nb is None else (nb[0], nb[1])


_NB_MIN = 4096  # smaller tensors (tests, Gemm inputs at batch 1): the numpy way, no compile


def _fq_div_nb(x: np.ndarray, s: np.ndarray, fmt, mode, axis, A=None):
    """``fq_round(x, s, fmt, mode)`` by the numba kernel (:mod:`._nb_fq`) for a scale per
    tensor or per channel, or with the arithmetic ``A`` (where ``_product_fits``) its product
    by ``s`` as a binary64 array whose ``A.round`` is FQ's output: exact products from the
    kernel, ``round_A(q s)`` for its flagged elements; those (breakpoints, specials, products
    out of binary64's normal range) by ``fq_round`` and ``fastfp.mul``.  None where the kernel
    does not apply."""
    if x.size < _NB_MIN or np.all(s == 1.0):
        return None
    par = _fq_params(fmt, mode)
    if par is None:
        return None
    from qcompile.backends.mpfr import _nb_fq

    if s.size == 1:
        inner, C = x.size, 1
    else:
        ax = int(axis) % x.ndim
        inner, C = int(np.prod(x.shape[ax + 1:], dtype=np.int64)), x.shape[ax]
    xf = np.ascontiguousarray(x).reshape(-1)
    out = empty_apart(xf)
    flag = np.empty(xf.size, np.uint8)
    _nb_fq.fq_div(xf, np.ascontiguousarray(s, np.float64).reshape(-1), inner, C, par[0],
                  par[1], A is not None, out, flag)
    bad = np.flatnonzero(flag)
    if bad.size:
        sb = np.broadcast_to(s, x.shape).reshape(-1)[bad]
        qb = fq_round(xf[bad], sb, fmt, mode)
        out[bad] = qb if A is None else fastfp.mul(qb, sb, A.fmt, A.mode)
    return out.reshape(x.shape)


def _product_fits(fmt, s) -> bool:
    """A value of ``fmt`` has at most ``fmt.bits`` significant bits (the storage width bounds
    the precision) and a binary32 scale at most 24: with ``bits + 24 <= 53`` the product's
    significand fits binary64's, so ``q * s`` is exact unless it leaves the normal range."""
    bits = getattr(fmt, "bits", None)
    return bits is not None and bits + 24 <= 53 and bool(np.all(s.astype(np.float32) == s))


def _exact_product(q: np.ndarray, s: np.ndarray, fmt) -> np.ndarray | None:
    """``q * s`` in binary64 where that is the exact product (``_product_fits``, and no
    nonzero ``q`` gives a product below 2**-1022 nor a finite one inf), else None."""
    if q.dtype != np.float64 or not _product_fits(fmt, s):
        return None  # (a family may hand back other arrays: fastfp.mul converts them)
    with np.errstate(all="ignore"):
        p = q * s
        lost = ((np.abs(p) < 2.0 ** -1022) & (q != 0)) | (np.isinf(p) & np.isfinite(q))
    return None if lost.any() else p


def fq_ref(E, x, scale=None, *, format, rounding="nearest", saturate=1, axis=None,  # noqa: A002
           sample=None):
    import gmpy2

    from qcompile.backends.mpfr.ref import exact

    fmt, mode = _parse(format, rounding, saturate)
    div_exact = family_of(fmt).div_exact
    x = np.asarray(x, object)
    s = np.full((), 1.0, object) if scale is None else _scale_shape(
        x.shape, np.asarray(scale, object), axis)
    s = np.broadcast_to(s, x.shape)
    A = E.A

    def one(i):
        xv, sv = x[i], s[i]
        sf = float(sv)
        if not (sf > 0 and gmpy2.is_finite(sv)):
            raise KernelError("FQ: FQ scales must be positive and finite")
        q = exact(div_exact(fmt, xv, sv, mode))
        return A.round(q) if sf == 1.0 else A.mul(q, sv)

    if sample is not None:
        return [one(tuple(i)) for i in sample]
    out = np.empty(x.shape, object)
    for i in np.ndindex(*x.shape):
        out[i] = one(i)
    return (out,)


def register(table, kernel) -> None:
    """Register ``kernel`` as ``qcompile.FQ`` in ``table`` (called from ops_fast / ops_ref)."""
    table.register("FQ", "qcompile")(kernel)
