"""Fast-engine kernels (float64 arrays of format values).  Signatures mirror ONNX: the engine,
then inputs positional, attributes keyword-only.  Each returns a tuple of outputs."""

from __future__ import annotations

import numpy as np

from qcompile.backends.base import OpTable
from qcompile.backends.mpfr import common as cm
from qcompile.backends.mpfr import fast
from qcompile.backends.mpfr.ops_shape import data_movement, exact, register_data_ops
from qcompile.numerics import fastfp

FAST: OpTable = OpTable("mpfr-fast")
_F64 = np.float64


def _conv_const(E, v, default):
    if v is None:  # absent: the default is not a constant of the model (+-inf stay +-inf)
        return np.asarray(default, _F64)
    return E.convert(np.asarray(v, _F64))


@FAST.register("Conv")
def conv(E, x, w, b=None, *, strides=None, pads=None, dilations=None, group=1,
         kernel_shape=None, auto_pad="NOTSET"):
    s, d, p, _ = cm.conv_geometry(x.shape, w.shape[2:], strides=strides, pads=pads,
                                  dilations=dilations, auto_pad=auto_pad)
    return (E.A.conv2d(x, w, b, s, p, d, int(group)),)


@FAST.register("ConvTranspose")
def conv_transpose(E, x, w, b=None, *, strides=None, pads=None, dilations=None, group=1,
                   kernel_shape=None, output_padding=None, output_shape=None,
                   auto_pad="NOTSET"):
    s, d, begin, out_hw = cm.conv_transpose_geometry(
        x.shape, w.shape, strides=strides, pads=pads, dilations=dilations,
        output_padding=output_padding, output_shape=output_shape, auto_pad=auto_pad,
        kernel_shape=kernel_shape)
    return (E.A.conv_transpose2d(x, w, b, s, d, begin, out_hw, int(group)),)


def _matmul2d(E, a, b, bias=None):
    return E.A.gemm(a, b, bias, bias_first=E.cfg.gemm_bias_first and bias is not None)


@FAST.register("Gemm")
def gemm(E, a, b, c=None, *, alpha=1.0, beta=1.0, transA=0, transB=0):
    a, b = cm.gemm_operands(a, b, transA, transB)
    return (_matmul2d(E, a, b, c),)


@FAST.register("MatMul")
def matmul(E, a, b):
    if b.ndim == 2 and a.ndim >= 2:
        r = E.A.gemm(a.reshape(-1, a.shape[-1]), b)
        return (r.reshape(a.shape[:-1] + (b.shape[1],)),)
    if a.ndim == b.ndim and a.ndim > 2 and a.shape[:-2] == b.shape[:-2]:
        out = np.empty(a.shape[:-1] + (b.shape[-1],), _F64)
        for i in np.ndindex(*a.shape[:-2]):
            out[i] = E.A.gemm(a[i], b[i])
        return (out,)
    raise cm.KernelError(f"MatMul: operand shapes {a.shape} x {b.shape} are not supported")


@FAST.register("BatchNormalization")
def batchnorm(E, x, scale, bias, mean, var, *, epsilon=1e-5, momentum=0.9,
              training_mode=0):
    A = E.A
    eps = E.convert(np.asarray(epsilon, _F64))
    s = A.sqrt(A.add(var, eps))  # per channel, once
    shp = (1, -1) + (1,) * (x.ndim - 2)
    return (A.affine4(x, mean.reshape(shp), s.reshape(shp), scale.reshape(shp),
                      bias.reshape(shp)),)


@FAST.register("InstanceNormalization")
def instance_norm(E, x, scale, bias, *, epsilon=1e-5):
    """Per (n, c) over the spatial positions in row-major order: mean = (sum from +0) / count;
    var = dot(x - mean, x - mean) / count (the ``--accumulate`` rule, like Conv);
    y = ((x - mean) / sqrt(var + eps)) * scale + B, left to right."""
    A = E.A
    N, C = x.shape[:2]
    flat = x.reshape(N, C, -1)
    K = flat.shape[2]
    cnt = E.convert(np.full((N, C), float(K)))
    acc = np.zeros((N, C))
    for i in range(K):
        acc = A.add(acc, flat[:, :, i])
    mean = A.div(acc, cnt)
    dev = A.sub(flat, mean[:, :, None])
    if A.accumulate == "exact":
        ss = np.array([fastfp.dot(r, r, A.fmt, A.mode, "exact", check_inputs=False)
                       for r in dev.reshape(N * C, K)], _F64).reshape(N, C)
    else:
        ss = np.zeros((N, C))
        for i in range(K):
            ss = fastfp.mac_step(ss, dev[:, :, i], dev[:, :, i], A.fmt, A.mode, A.accumulate)
    var = A.div(ss, cnt)
    eps = E.convert(np.asarray(epsilon, _F64))
    sd = A.sqrt(A.add(var, np.broadcast_to(eps, var.shape)))
    y = A.div(dev, sd[:, :, None])
    y = A.add(A.mul(y, np.broadcast_to(scale[None, :, None], y.shape)),
              np.broadcast_to(bias[None, :, None], y.shape))
    return (y.reshape(x.shape),)


@FAST.register("Add")
def add(E, a, b):
    return (E.A.add(a, b),)


@FAST.register("Sub")
def sub(E, a, b):
    return (E.A.sub(a, b),)


@FAST.register("Mul")
def mul(E, a, b):
    return (E.A.mul(a, b),)


@FAST.register("Div")
def div(E, a, b):
    return (E.A.div(a, b),)


@FAST.register("Sqrt")
def sqrt(E, x):
    return (E.A.sqrt(x),)


@FAST.register("Relu")
@exact
def relu(E, x):
    # x > 0 ? x : +0; with --mpfr-compare NaN -> +0 (mpfr_greater_p), else NaN stays
    return (fast.relu(np.asarray(x), not E.cfg.mpfr_compare),)


@FAST.register("Neg")
@exact
def neg(E, x):
    return (-x,)


@FAST.register("Abs")
@exact
def abs_(E, x):
    return (np.abs(x),)


@FAST.register("LeakyRelu")
def leaky_relu(E, x, *, alpha=0.01):
    al = E.convert(np.asarray(alpha, _F64))
    ax = E.A.mul(x, np.broadcast_to(al, x.shape))
    if E.cfg.mpfr_compare:  # x > 0 ? x : alpha*x (NaN and zeros take the multiply)
        return (np.where(x > 0, x, ax),)
    return (np.where(x < 0, ax, x),)


@FAST.register("Clip")
@exact
def clip(E, x, lo=None, hi=None, *, min=None, max=None):  # noqa: A002 (ONNX names)
    lo = _conv_const(E, lo if lo is not None else min, -np.inf)
    hi = _conv_const(E, hi if hi is not None else max, np.inf)
    if E.cfg.mpfr_compare:  # x < lo ? lo : (x > hi ? hi : x)
        return (np.where(x < lo, lo, np.where(x > hi, hi, x)),)
    y = np.where(x < lo, lo, x)
    return (np.where(y > hi, hi, y),)


def _transcendental(E, x, name):
    flat = np.asarray(x, _F64).reshape(-1)
    R = E.ref_arith()
    from qcompile.backends.mpfr.ref import exact, to_float

    vals = np.array([getattr(R, name)(exact(float(v))) for v in flat], dtype=object)
    return (to_float(vals).reshape(np.shape(x)),)


@FAST.register("Exp")
def exp(E, x):
    return _transcendental(E, x, "exp")


@FAST.register("Tanh")
def tanh(E, x):
    return _transcendental(E, x, "tanh")


@FAST.register("Sigmoid")
def sigmoid(E, x):
    return _transcendental(E, x, "sigmoid")


# ----------------------------------------------------------------------------- pooling
def _taps(x, kernel_shape, **kw):
    N, C, H, W = x.shape
    s, d, p, (OH, OW) = cm.conv_geometry(x.shape, kernel_shape, **kw)
    for iy, ix, ok in cm.window_taps(H, W, OH, OW, kernel_shape, s, d, p):
        yield x[:, :, iy, ix], ok, (OH, OW)


@FAST.register("MaxPool")
@exact
def maxpool(E, x, *, kernel_shape, strides=None, pads=None, dilations=None, ceil_mode=0,
            auto_pad="NOTSET", storage_order=0):
    m = has = None
    for v, ok, (OH, OW) in _taps(x, kernel_shape, strides=strides, pads=pads,
                                 dilations=dilations, auto_pad=auto_pad, ceil_mode=ceil_mode):
        if m is None:
            m = np.full(x.shape[:2] + (OH, OW), -np.inf)
            has = np.zeros((OH, OW), bool)
        if E.cfg.mpfr_compare:  # best = -inf; if (v > best) best = v: never a NaN
            take = ok & (v > m)
        else:
            take = ok & (~has | (v > m) | np.isnan(v))
        m = np.where(take, v, m)
        has |= ok
    return (m,)


@FAST.register("AveragePool")
def avgpool(E, x, *, kernel_shape, strides=None, pads=None, ceil_mode=0, auto_pad="NOTSET",
            count_include_pad=0, dilations=None):
    acc = cnt = None
    for v, ok, (OH, OW) in _taps(x, kernel_shape, strides=strides, pads=pads,
                                 dilations=dilations, auto_pad=auto_pad, ceil_mode=ceil_mode):
        if acc is None:
            acc = np.zeros(x.shape[:2] + (OH, OW))
            cnt = np.zeros((OH, OW))
        acc = np.where(ok, E.A.add(acc, v), acc)
        cnt += ok
    if count_include_pad:  # taps inside the padded input (fewer only past it, ceil_mode)
        s, d, p, (OH, OW) = cm.conv_geometry(x.shape, kernel_shape, strides=strides, pads=pads,
                                             dilations=dilations, auto_pad=auto_pad,
                                             ceil_mode=ceil_mode)
        cnt = cm.padded_window_counts(x.shape[2], x.shape[3], OH, OW, kernel_shape, s, d, p)
    return (E.A.div(acc, np.broadcast_to(E.convert(cnt), acc.shape)),)


@FAST.register("GlobalAveragePool")
def global_avgpool(E, x):
    N, C = x.shape[:2]
    flat = x.reshape(N, C, -1)
    acc = np.zeros((N, C))
    for i in range(flat.shape[2]):
        acc = E.A.add(acc, flat[:, :, i])
    d = E.convert(np.full((N, C), float(flat.shape[2])))
    return (E.A.div(acc, d).reshape((N, C) + (1,) * (x.ndim - 2)),)


# ----------------------------------------------------------------------------- data movement
@FAST.register("Pad")
@data_movement
def pad(E, x, pads, value=None, axes=None, *, mode="constant"):
    fill = float(_conv_const(E, None if value is None else np.asarray(value).reshape(-1)[0], 0.0))
    return cm.pad(x, pads, fill, mode=mode, axes=axes)


register_data_ops(FAST)

from qcompile.backends.mpfr import ops_formats as _fq  # noqa: E402  (qcompile.FQ kernels)

_fq.register(FAST, _fq.fq_fast)

from qcompile.backends.mpfr import ops_qdq as _ops_qdq  # noqa: E402  (quantised kernels, #7)

_ops_qdq.register(FAST)

from qcompile.backends.mpfr import ops_ext_fast as _ext  # noqa: E402  (exporter ops, #12)
from qcompile.backends.mpfr import ops_resize as _rs  # noqa: E402
from qcompile.backends.mpfr.ops_shape import add_integer_paths  # noqa: E402

_ext.register(FAST)
_rs.register(FAST, _rs.resize_fast)
add_integer_paths(FAST)

from qcompile.backends.mpfr import ops_qdq_ms as _ops_qdq_ms  # noqa: E402  (QGemm..., #13)

_ops_qdq_ms.register(FAST)
