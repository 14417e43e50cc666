"""Fast-engine kernels of the ops that exporters emit besides the CNN core (#12): ReduceMean,
ReduceSum, Softmax, HardSigmoid, HardSwish, Sum, Max, Min, Cast, LRN.

Each scalar arithmetic operation is rounded once into the format (``E.A``); the rules, which
``ops_ext_ref`` implements with one MPFR call per operation, are:

* ReduceSum / ReduceMean: per output element, acc = +0, acc = acc (+) x over the reduced
  elements in row-major order; ReduceMean then divides once by the converted count (the
  GlobalAveragePool rule);
* Softmax(axis): m = the first maximum along the axis (NaN wins), d = x (-) m, e = exp(d)
  (correctly rounded), s = +0 (+) e_0 (+) e_1 ... along the axis, y = e (/) s;
* HardSigmoid: t = (alpha (*) x) (+) beta, then +0 if t < 0, 1 if t > 1, else t (NaN stays);
  HardSwish: x (*) HardSigmoid(x) with alpha = 1/6, beta = 1/2 (constants converted);
* Sum: acc = x_0 (+) x_1 (+) ... left to right (numpy broadcasting); one input is a copy;
  Max / Min: exact, left to right, a later operand replaces the running value only when it is
  strictly larger (smaller) or NaN, so NaN wins and ties keep the earlier operand (+-0);
* Cast: float -> float keeps the value (it is already in the format); int/bool -> float is one
  rounding into the format; float -> int truncates toward zero (NaN, inf and out-of-range
  values are refused, ONNX leaves them undefined); -> bool is x != 0; int -> int as numpy;
* LRN: per element, ss = dot(w, w) over the window channels in ascending order with the
  ``--accumulate`` rule (like Conv), k = convert(alpha / size) (the quotient taken in
  binary64), y = x (/) pow((bias (+) k (*) ss), beta) with pow correctly rounded.
"""

from __future__ import annotations

import numpy as np

from qcompile.backends.base import OpTable
from qcompile.backends.mpfr import common as cm
from qcompile.backends.mpfr.ops_shape import exact
from qcompile.numerics import fastfp

_F64 = np.float64
_TWO53 = float(2**53)


def _const(E, v, shape):
    return np.broadcast_to(E.convert(np.asarray(float(np.float64(v)), _F64)), shape)


def _reduce(E, x, axes, keepdims, noop, axes_in, mean):
    ax = cm.reduce_axes(x.ndim, axes_in, axes, noop)
    if ax is None:
        return (np.array(x),)
    rows = cm.to_rows(x, ax)
    K = rows.shape[-1]
    acc = np.zeros(rows.shape[:-1], _F64)
    for k in range(K):
        acc = E.A.add(acc, rows[..., k])
    if mean:
        acc = E.A.div(acc, _const(E, K, acc.shape))
    return (acc.reshape(cm.reduced_shape(x.shape, ax, keepdims)),)


def reduce_mean(E, x, axes_in=None, *, axes=None, keepdims=1, noop_with_empty_axes=0):
    return _reduce(E, x, axes, keepdims, noop_with_empty_axes, axes_in, True)


def reduce_sum(E, x, axes_in=None, *, axes=None, keepdims=1, noop_with_empty_axes=0):
    return _reduce(E, x, axes, keepdims, noop_with_empty_axes, axes_in, False)


def _ref_map(E, name, *arrays):
    """Element-wise MPFR function (exp, pow) through the reference arithmetic."""
    from qcompile.backends.mpfr.ref import exact as mp
    from qcompile.backends.mpfr.ref import to_float

    R = E.ref_arith()
    shape = np.broadcast_shapes(*(a.shape for a in arrays))
    cols = [np.broadcast_to(np.asarray(a, _F64), shape).reshape(-1).tolist() for a in arrays]
    vals = np.array([getattr(R, name)(*(mp(v) for v in t)) for t in zip(*cols)] or [],
                    dtype=object)
    return to_float(vals).reshape(shape)


def first_max(rows):
    """[..., K] -> [...]: the first maximum along the last axis, NaN wins."""
    m = rows[..., 0].copy()
    for k in range(1, rows.shape[-1]):
        v = rows[..., k]
        m = np.where((v > m) | np.isnan(v), v, m)
    return m


def softmax(E, x, *, axis=-1):
    A = E.A
    xt = np.moveaxis(x, axis, -1)
    m = first_max(xt)
    e = _ref_map(E, "exp", A.sub(xt, m[..., None]))
    s = np.zeros(m.shape, _F64)
    for k in range(e.shape[-1]):
        s = A.add(s, e[..., k])
    return (np.moveaxis(A.div(e, s[..., None]), -1, axis),)


def _hard_sigmoid(E, x, alpha, beta):
    t = E.A.add(E.A.mul(x, _const(E, alpha, x.shape)), _const(E, beta, x.shape))
    return np.where(t < 0, 0.0, np.where(t > 1, 1.0, t))


def hard_sigmoid(E, x, *, alpha=0.2, beta=0.5):
    return (_hard_sigmoid(E, x, alpha, beta),)


def hard_swish(E, x):
    return (E.A.mul(x, _hard_sigmoid(E, x, 1.0 / 6.0, 0.5)),)


def sum_(E, *xs):
    shape = np.broadcast_shapes(*(a.shape for a in xs))
    acc = np.array(np.broadcast_to(xs[0], shape))
    for v in xs[1:]:
        acc = E.A.add(acc, np.broadcast_to(v, shape))
    return (acc,)


def _select(xs, larger):
    shape = np.broadcast_shapes(*(a.shape for a in xs))
    m = np.array(np.broadcast_to(xs[0], shape))
    for v in xs[1:]:
        v = np.broadcast_to(v, shape)
        better = (v > m) if larger else (v < m)
        if m.dtype.kind == "f":
            better = better | np.isnan(v)
        m = np.where(better, v, m)
    return (m,)


@exact
def max_(E, *xs):
    return _select(xs, True)


@exact
def min_(E, *xs):
    return _select(xs, False)


def cast(E, x, *, to, saturate=1, round_mode="up"):
    kind, dt = cm.cast_target(to)
    x = np.asarray(x)
    src_float = x.dtype.kind == "f"
    if kind == "float":
        if src_float:
            return (np.array(x),)
        v = x.astype(_F64)
        if v.size and np.abs(v).max() > _TWO53:
            raise fastfp.NotExact("Cast: integer beyond 2^53 to float")
        return (E.A.round(v),)
    if dt == np.bool_:
        return (x != 0,)
    if not src_float:
        return (x.astype(dt),)
    t = np.trunc(x)
    info = np.iinfo(dt)
    if not np.isfinite(t).all() or (t.size and (t.min() < info.min or t.max() > info.max)):
        raise cm.KernelError(f"Cast: NaN, inf or a value outside {dt} (undefined in ONNX)")
    return (t.astype(dt),)


def lrn(E, x, *, size, alpha=1e-4, beta=0.75, bias=1.0):
    A = E.A
    C = x.shape[1]
    ss = np.empty(x.shape, _F64)
    for c in range(C):
        lo, hi = cm.lrn_window(C, c, int(size))
        win = np.moveaxis(x[:, lo:hi + 1], 1, -1)  # [N, ..., window]
        if A.accumulate == "exact":
            flat = win.reshape(-1, win.shape[-1])
            r = np.array([fastfp.dot(w, w, A.fmt, A.mode, "exact", check_inputs=False)
                          for w in flat], _F64).reshape(win.shape[:-1])
        else:
            r = np.zeros(win.shape[:-1], _F64)
            for k in range(win.shape[-1]):
                r = fastfp.mac_step(r, win[..., k], win[..., k], A.fmt, A.mode, A.accumulate)
        ss[:, c] = r
    k = _const(E, float(alpha) / int(size), x.shape)
    t = A.add(_const(E, bias, x.shape), A.mul(k, ss))
    p = _ref_map(E, "pow", t, _const(E, beta, x.shape))
    return (A.div(x, p),)


def register(table: OpTable) -> None:
    for op, fn in (("ReduceMean", reduce_mean), ("ReduceSum", reduce_sum),
                   ("Softmax", softmax), ("HardSigmoid", hard_sigmoid),
                   ("HardSwish", hard_swish), ("Sum", sum_), ("Max", max_), ("Min", min_),
                   ("Cast", cast), ("LRN", lrn)):
        table.register(op)(fn)
