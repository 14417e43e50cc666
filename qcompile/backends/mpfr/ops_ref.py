"""Reference-engine kernels: object arrays of gmpy2.mpfr, one MPFR call per scalar operation.

Signatures mirror ONNX (engine, inputs positional, attributes keyword-only) plus
``sample``: a list of output index tuples.  With ``sample`` a kernel returns only those
elements of its first output (a list), which is how ``--verify`` re-checks the fast engine
element by element from the same inputs.  Loops are written out plainly on purpose.
"""

from __future__ import annotations

import numpy as np
from gmpy2 import is_nan, mpfr

from qcompile.backends.base import OpTable
from qcompile.backends.mpfr import common as cm
from qcompile.backends.mpfr.common import elementwise as _ew
from qcompile.backends.mpfr.common import full as _full
from qcompile.backends.mpfr.ops_shape import data_movement, exact, register_data_ops

REF: OpTable = OpTable("mpfr-reference")
_POS0 = mpfr(0, 2)
_NEG_INF = mpfr("-inf")


def _scalar(E, v, default):
    if v is None:
        return mpfr(default)
    return E.C.round(np.asarray(v).reshape(-1)[0])


@REF.register("Conv")
def conv(E, x, w, b=None, *, strides=None, pads=None, dilations=None, group=1,
         kernel_shape=None, auto_pad="NOTSET", sample=None):
    N, C, H, W = x.shape
    OC, Cg, KH, KW = w.shape
    (sh, sw), (dh, dw), (pt, pl, _, _), (OH, OW) = cm.conv_geometry(
        x.shape, (KH, KW), strides=strides, pads=pads, dilations=dilations, auto_pad=auto_pad)
    ocg = OC // int(group)
    xl, wl = x.tolist(), w.tolist()
    dot = E.A.dot

    def elem(i):
        n, oc, oy, ox = i
        g = oc // ocg
        xs, ws = [], []
        for c in range(Cg):  # (input channel, kernel row, kernel column); padding skipped
            xc, wc = xl[n][g * Cg + c], wl[oc][c]
            for ky in range(KH):
                iy = oy * sh - pt + ky * dh
                if not 0 <= iy < H:
                    continue
                for kx in range(KW):
                    ix = ox * sw - pl + kx * dw
                    if 0 <= ix < W:
                        xs.append(xc[iy][ix])
                        ws.append(wc[ky][kx])
        return dot(xs, ws, None if b is None else b[oc])

    return _full((N, OC, OH, OW), elem, sample)


@REF.register("ConvTranspose")
def conv_transpose(E, x, w, b=None, *, strides=None, pads=None, dilations=None, group=1,
                   kernel_shape=None, output_padding=None, output_shape=None,
                   auto_pad="NOTSET", sample=None):
    N, C, H, W = x.shape
    _, ocg, KH, KW = w.shape
    (sh, sw), (dh, dw), (pt, pl), (OH, OW) = cm.conv_transpose_geometry(
        x.shape, w.shape, strides=strides, pads=pads, dilations=dilations,
        output_padding=output_padding, output_shape=output_shape, auto_pad=auto_pad,
        kernel_shape=kernel_shape)
    Cg = C // int(group)
    xl, wl = x.tolist(), w.tolist()
    dot = E.A.dot

    def elem(i):
        n, oc, oy, ox = i
        g, j = divmod(oc, ocg)
        xs, ws = [], []
        for c in range(g * Cg, (g + 1) * Cg):  # (input channel, kernel row, kernel column)
            for ky in range(KH):
                ty = oy + pt - ky * dh  # = iy * sh when input row iy feeds this output row
                if ty < 0 or ty % sh or ty // sh >= H:
                    continue
                for kx in range(KW):
                    tx = ox + pl - kx * dw
                    if tx >= 0 and tx % sw == 0 and tx // sw < W:
                        xs.append(xl[n][c][ty // sh][tx // sw])
                        ws.append(wl[c][j][ky][kx])
        return dot(xs, ws, None if b is None else b[oc])

    return _full((N, ocg * int(group), OH, OW), elem, sample)


def _mm(E, a, b, bias, sample, bias_first):
    M, K = a.shape
    N = b.shape[1]
    al, bt = a.tolist(), b.T.tolist()
    bb = None if bias is None else np.broadcast_to(bias, (M, N))
    return _full((M, N), lambda i: E.A.dot(al[i[0]], bt[i[1]], None if bb is None else bb[i],
                                           bias_first), sample)


@REF.register("Gemm")
def gemm(E, a, b, c=None, *, alpha=1.0, beta=1.0, transA=0, transB=0, sample=None):
    a, b = cm.gemm_operands(a, b, transA, transB)
    return _mm(E, a, b, c, sample, E.cfg.gemm_bias_first and c is not None)


@REF.register("MatMul")
def matmul(E, a, b, *, sample=None):
    if b.ndim == 2 and a.ndim >= 2:
        lead = a.shape[:-1]
        r = _mm(E, a.reshape(-1, a.shape[-1]), b, None,
                None if sample is None else [(int(np.ravel_multi_index(i[:-1], lead)), i[-1])
                                             for i in sample], False)
        return r if sample is not None else (r[0].reshape(lead + (b.shape[1],)),)
    if a.ndim == b.ndim and a.ndim > 2 and a.shape[:-2] == b.shape[:-2]:
        shape = a.shape[:-1] + (b.shape[-1],)
        return _full(shape, lambda i: E.A.dot(list(a[i[:-1]]), list(b[i[:-2] + (slice(None),
                                                                                i[-1])])), sample)
    raise cm.KernelError(f"MatMul: operand shapes {a.shape} x {b.shape} are not supported")


@REF.register("BatchNormalization")
def batchnorm(E, x, scale, bias, mean, var, *, epsilon=1e-5, momentum=0.9, training_mode=0,
              sample=None):
    A = E.A
    eps = E.C.round(float(np.float64(epsilon)))
    s = [A.sqrt(A.add(v, eps)) for v in var]

    def elem(i):
        c = i[1]
        return A.add(A.mul(A.div(A.sub(x[i], mean[c]), s[c]), scale[c]), bias[c])

    return _full(x.shape, elem, sample)


@REF.register("InstanceNormalization")
def instance_norm(E, x, scale, bias, *, epsilon=1e-5, sample=None):
    A = E.A
    N, C = x.shape[:2]
    flat = x.reshape(N, C, -1)
    cnt = E.C.round(float(flat.shape[2]))
    eps = E.C.round(float(np.float64(epsilon)))
    stats: dict = {}

    def moments(n, c):  # (mean, sqrt(var + eps)) of one instance, computed once
        if (n, c) not in stats:
            acc = _POS0
            for v in flat[n, c]:  # row-major order
                acc = A.add(acc, v)
            mean = A.div(acc, cnt)
            dev = [A.sub(v, mean) for v in flat[n, c]]
            var = A.div(A.dot(dev, dev), cnt)
            stats[n, c] = (mean, A.sqrt(A.add(var, eps)))
        return stats[n, c]

    def elem(i):
        n, c = i[0], i[1]
        mean, sd = moments(n, c)
        return A.add(A.mul(A.div(A.sub(x[i], mean), sd), scale[c]), bias[c])

    return _full(x.shape, elem, sample)


def _bin(name):
    def k(E, a, b, *, sample=None):
        return _ew(getattr(E.A, name), sample, a, b)

    k.__name__ = name
    return k


for _op, _fn in (("Add", "add"), ("Sub", "sub"), ("Mul", "mul"), ("Div", "div")):
    REF.register(_op)(_bin(_fn))


@REF.register("Sqrt")
def sqrt(E, x, *, sample=None):
    return _ew(E.A.sqrt, sample, x)


@REF.register("Relu")
@exact
def relu(E, x, *, sample=None):
    if E.cfg.mpfr_compare:  # x > 0 ? x : 0 (mpfr_greater_p: NaN -> +0)
        return _ew(lambda v: v if v > 0 else _POS0, sample, x)
    return _ew(lambda v: v if (v > 0 or is_nan(v)) else _POS0, sample, x)


@REF.register("Neg")
@exact
def neg(E, x, *, sample=None):
    return _ew(lambda v: -v, sample, x)


@REF.register("Abs")
@exact
def abs_(E, x, *, sample=None):
    return _ew(abs, sample, x)


@REF.register("LeakyRelu")
def leaky_relu(E, x, *, alpha=0.01, sample=None):
    al = E.C.round(float(np.float64(alpha)))
    if E.cfg.mpfr_compare:  # x > 0 ? x : alpha*x (NaN and zeros take the multiply)
        return _ew(lambda v: v if v > 0 else E.A.mul(v, al), sample, x)
    return _ew(lambda v: E.A.mul(v, al) if v < 0 else v, sample, x)


@REF.register("Clip")
@exact
def clip(E, x, lo=None, hi=None, *, min=None, max=None, sample=None):  # noqa: A002
    lo = _scalar(E, lo if lo is not None else min, "-inf")
    hi = _scalar(E, hi if hi is not None else max, "inf")

    def f(v):
        v = lo if v < lo else v
        return hi if v > hi else v

    def f_mpfr(v):  # x < lo ? lo : (x > hi ? hi : x)
        return lo if v < lo else (hi if v > hi else v)

    return _ew(f_mpfr if E.cfg.mpfr_compare else f, sample, x)


for _op, _fn in (("Exp", "exp"), ("Tanh", "tanh"), ("Sigmoid", "sigmoid")):
    REF.register(_op)(lambda E, x, *, sample=None, _f=_fn: _ew(getattr(E.A, _f), sample, x))


# ----------------------------------------------------------------------------- pooling
def _window(x, kernel_shape, kw, i):
    """Values of the window of output index i, in (ky, kx) order, padding skipped."""
    N, C, H, W = x.shape
    (sh, sw), (dh, dw), (pt, pl, _, _), _ = cm.conv_geometry(x.shape, kernel_shape, **kw)
    n, c, oy, ox = i
    vals = []
    for ky in range(kernel_shape[0]):
        iy = oy * sh - pt + ky * dh
        for kx in range(kernel_shape[1]):
            ix = ox * sw - pl + kx * dw
            if 0 <= iy < H and 0 <= ix < W:
                vals.append(x[n, c, iy, ix])
    return vals


def _pool_shape(x, kernel_shape, kw):
    return x.shape[:2] + cm.conv_geometry(x.shape, kernel_shape, **kw)[3]


@REF.register("MaxPool")
@exact
def maxpool(E, x, *, kernel_shape, strides=None, pads=None, dilations=None, ceil_mode=0,
            auto_pad="NOTSET", storage_order=0, sample=None):
    kw = dict(strides=strides, pads=pads, dilations=dilations, auto_pad=auto_pad,
              ceil_mode=ceil_mode)

    def elem(i):
        vals = _window(x, kernel_shape, kw, i)
        if not vals:
            return _NEG_INF
        m = vals[0]
        for v in vals[1:]:
            if v > m or is_nan(v):
                m = v
        return m

    def elem_mpfr(i):  # best = -inf; if (v > best) best = v: a NaN is never picked
        m = _NEG_INF
        for v in _window(x, kernel_shape, kw, i):
            if v > m:
                m = v
        return m

    return _full(_pool_shape(x, kernel_shape, kw), elem_mpfr if E.cfg.mpfr_compare else elem,
                 sample)


@REF.register("AveragePool")
def avgpool(E, x, *, kernel_shape, strides=None, pads=None, ceil_mode=0, auto_pad="NOTSET",
            count_include_pad=0, dilations=None, sample=None):
    kw = dict(strides=strides, pads=pads, dilations=dilations, auto_pad=auto_pad,
              ceil_mode=ceil_mode)

    s, d, p, (OH, OW) = cm.conv_geometry(x.shape, kernel_shape, **kw)
    padded = cm.padded_window_counts(x.shape[2], x.shape[3], OH, OW, kernel_shape, s, d, p)

    def elem(i):
        vals = _window(x, kernel_shape, kw, i)
        acc = _POS0
        for v in vals:
            acc = E.A.add(acc, v)
        n = int(padded[i[2], i[3]]) if count_include_pad else len(vals)
        return E.A.div(acc, E.C.round(float(n)))

    return _full(_pool_shape(x, kernel_shape, kw), elem, sample)


@REF.register("GlobalAveragePool")
def global_avgpool(E, x, *, sample=None):
    N, C = x.shape[:2]
    flat = x.reshape(N, C, -1)
    d = E.C.round(float(flat.shape[2]))

    def elem(i):
        acc = _POS0
        for v in flat[i[0], i[1]]:  # row-major order
            acc = E.A.add(acc, v)
        return E.A.div(acc, d)

    return _full((N, C) + (1,) * (x.ndim - 2), elem, sample)


@REF.register("Pad")
@data_movement
def pad(E, x, pads, value=None, axes=None, *, mode="constant", sample=None):
    return cm.pad(x, pads, _scalar(E, value, 0), mode=mode, axes=axes)


register_data_ops(REF)

from qcompile.backends.mpfr import ops_formats as _fq  # noqa: E402  (qcompile.FQ kernels)

_fq.register(REF, _fq.fq_ref)

from qcompile.backends.mpfr import ops_qdq_ref as _ops_qdq_ref  # noqa: E402  (quantised, #7)

_ops_qdq_ref.register(REF)

from qcompile.backends.mpfr import ops_ext_ref as _ext  # noqa: E402  (exporter ops, #12)
from qcompile.backends.mpfr import ops_resize as _rs  # noqa: E402
from qcompile.backends.mpfr.ops_shape import add_integer_paths  # noqa: E402

_ext.register(REF)
_rs.register(REF, _rs.resize_ref)
add_integer_paths(REF)

from qcompile.backends.mpfr import ops_qdq_ms_ref as _ops_qdq_ms_ref  # noqa: E402  (#13)

_ops_qdq_ms_ref.register(REF)
