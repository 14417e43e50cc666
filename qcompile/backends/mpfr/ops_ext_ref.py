"""Reference-engine kernels of ReduceMean, ReduceSum, Softmax, HardSigmoid, HardSwish, Sum,
Max, Min, Cast, LRN: object arrays of gmpy2.mpfr, one MPFR call per scalar operation, loops
written out plainly.  The rules are stated in :mod:`qcompile.backends.mpfr.ops_ext_fast`
(and the README); ``sample`` works as in :mod:`qcompile.backends.mpfr.ops_ref`."""

from __future__ import annotations

import numpy as np
from gmpy2 import is_infinite, is_nan, mpfr, trunc

from qcompile.backends.base import OpTable
from qcompile.backends.mpfr import common as cm
from qcompile.backends.mpfr.common import elementwise as _ew
from qcompile.backends.mpfr.common import full as _full
from qcompile.backends.mpfr.ops_shape import exact

_POS0 = mpfr(0, 2)  # +0 at the smallest precision: the start of every exact sum

_ONE = mpfr(1)


def _c(E, v):
    return E.C.round(float(np.float64(v)))


def _reduce(E, x, axes, keepdims, noop, axes_in, mean, sample):
    ax = cm.reduce_axes(x.ndim, axes_in, axes, noop)
    if ax is None:
        return _full(x.shape, lambda i: x[i], sample)
    rows = cm.to_rows(x, ax)
    K = rows.shape[-1]
    out_shape = cm.reduced_shape(x.shape, ax, keepdims)
    lead = rows.shape[:-1]
    cnt = _c(E, K)

    def elem(i):
        j = np.unravel_index(np.ravel_multi_index(i, out_shape), lead) if lead else ()
        acc = _POS0
        for v in rows[tuple(j)]:  # row-major order of the reduced elements
            acc = E.A.add(acc, v)
        return E.A.div(acc, cnt) if mean else acc

    return _full(out_shape, elem, sample)


def reduce_mean(E, x, axes_in=None, *, axes=None, keepdims=1, noop_with_empty_axes=0,
                sample=None):
    return _reduce(E, x, axes, keepdims, noop_with_empty_axes, axes_in, True, sample)


def reduce_sum(E, x, axes_in=None, *, axes=None, keepdims=1, noop_with_empty_axes=0,
               sample=None):
    return _reduce(E, x, axes, keepdims, noop_with_empty_axes, axes_in, False, sample)


def softmax(E, x, *, axis=-1, sample=None):
    A = E.A
    ax = axis % x.ndim
    rows: dict = {}

    def row(key):  # (e_k list, sum) of one softmax row, computed once
        if key not in rows:
            idx = list(key)
            idx.insert(ax, slice(None))
            vals = list(x[tuple(idx)])
            m = vals[0]
            for v in vals[1:]:
                if v > m or is_nan(v):
                    m = v
            e = [A.exp(A.sub(v, m)) for v in vals]
            s = _POS0
            for t in e:
                s = A.add(s, t)
            rows[key] = (e, s)
        return rows[key]

    def elem(i):
        e, s = row(i[:ax] + i[ax + 1:])
        return A.div(e[i[ax]], s)

    return _full(x.shape, elem, sample)


def _hs(E, v, al, be):
    t = E.A.add(E.A.mul(v, al), be)
    if t < 0:
        return _POS0
    return _ONE if t > 1 else t


def hard_sigmoid(E, x, *, alpha=0.2, beta=0.5, sample=None):
    al, be = _c(E, alpha), _c(E, beta)
    return _ew(lambda v: _hs(E, v, al, be), sample, x)


def hard_swish(E, x, *, sample=None):
    al, be = _c(E, 1.0 / 6.0), _c(E, 0.5)
    return _ew(lambda v: E.A.mul(v, _hs(E, v, al, be)), sample, x)


def sum_(E, *xs, sample=None):
    def f(*vs):
        acc = vs[0]
        for v in vs[1:]:
            acc = E.A.add(acc, v)
        return acc

    return _ew(f, sample, *xs)


def _sel(larger):
    def f(*vs):
        m = vs[0]
        for v in vs[1:]:
            if (v > m if larger else v < m) or (isinstance(v, type(_ONE)) and is_nan(v)):
                m = v
        return m

    return f


@exact
def max_(E, *xs, sample=None):
    return _ew(_sel(True), sample, *xs)


@exact
def min_(E, *xs, sample=None):
    return _ew(_sel(False), sample, *xs)


def cast(E, x, *, to, saturate=1, round_mode="up", sample=None):
    kind, dt = cm.cast_target(to)
    src_float = x.dtype == object or x.dtype.kind == "f"
    if kind == "float":
        if src_float:
            return _ew(lambda v: v, sample, x)
        return _ew(lambda v: E.A.round(int(v)), sample, x)
    if dt == np.bool_:
        def f(v):
            return bool(v != 0)  # NaN != 0
    elif not src_float:
        f = dt.type
    else:
        info = np.iinfo(dt)

        def f(v):
            if is_nan(v) or is_infinite(v) or not info.min <= int(trunc(v)) <= info.max:
                raise cm.KernelError(f"Cast: NaN, inf or a value outside {dt} (undefined in "
                                     "ONNX)")
            return int(trunc(v))  # toward zero
    if sample is not None:
        return [f(x[tuple(i)]) for i in sample]
    out = np.empty(x.shape, dt)
    for i in np.ndindex(*x.shape):
        out[i] = f(x[i])
    return (out,)


def lrn(E, x, *, size, alpha=1e-4, beta=0.75, bias=1.0, sample=None):
    A = E.A
    C = x.shape[1]
    k, b, be = _c(E, float(alpha) / int(size)), _c(E, bias), _c(E, beta)

    def elem(i):
        lo, hi = cm.lrn_window(C, i[1], int(size))
        w = [x[(i[0], c) + i[2:]] for c in range(lo, hi + 1)]  # ascending channels
        t = A.add(b, A.mul(k, A.dot(w, w)))
        return A.div(x[i], A.pow(t, be))

    return _full(x.shape, elem, sample)


def register(table: OpTable) -> None:
    for op, fn in (("ReduceMean", reduce_mean), ("ReduceSum", reduce_sum),
                   ("Softmax", softmax), ("HardSigmoid", hard_sigmoid),
                   ("HardSwish", hard_swish), ("Sum", sum_), ("Max", max_), ("Min", min_),
                   ("Cast", cast), ("LRN", lrn)):
        table.register(op)(fn)
