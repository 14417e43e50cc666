"""Forward and backward kernels of the block programs of :mod:`qcompile.numerics.reconstruct`
(numpy, activations NCHW, any float dtype).

Each op has ``fwd(blk, op, xs, wts) -> (y, cache)`` and ``bwd(blk, op, g, cache, wts, gw, gs)
-> [dL/d input]``; ``bwd`` accumulates ``dL/dW2`` of a learned weight into ``gw[i]`` and
``dL/ds`` of a learned step into ``gs[i]``.

* Conv ``Y[n, o, p] = sum_k X[n, p, k] W2[g(o), o, k] + b[o]`` (im2col, ``k = (c, ky, kx)``):
  ``dW2 = dY^T X``; ``dX`` is scattered back one kernel tap ``(ky, kx)`` at a time
  (``dX[n, c, oy sy + ky dy, ox sx + kx dx] += sum_o dY[n, o, oy, ox] W[o, c, ky, kx]``).
  Depthwise (``groups = C = O``): the same sums as nine elementwise products.
* Gemm ``Y = X W^T + b``: ``dW = dY^T X``, ``dX = dY W``.
* Relu / Clip: ``dX = dY [lo < x < hi]``; Add: both inputs get ``dY``; GlobalAveragePool:
  ``dY / (H W)`` broadcast; reshapes, Slice, zero Pad: the adjoint index maps.
* QDQ (LSQ, straight-through): ``dX = dY [qmin < x/s + z < qmax]``,
  ``dL/ds = sum dY (round(x/s) - x/s)`` inside and ``sum dY (qmin|qmax - z)`` where clamped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from qcompile.numerics.patches import LinearGeometry

Block = Any  # qcompile.numerics.reconstruct.Block (no import cycle)
Op = Any


def _cols(x: np.ndarray, geom: LinearGeometry) -> np.ndarray:
    """im2col: ``[g, N*OH*OW, C/g*kh*kw]``, ``k`` ordered ``(c, ky, kx)`` as in ``W2`` (see
    :mod:`qcompile.numerics.patches`); built from the channels-last copy of ``x``."""
    pt, pl, pb, pr = geom.pads
    xp = np.pad(x.transpose(0, 2, 3, 1), ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    kh, kw = geom.kernel
    (sy, sx), (dy, dx), (oh, ow) = geom.strides, geom.dilations, geom.out_hw
    win = sliding_window_view(xp, ((kh - 1) * dy + 1, (kw - 1) * dx + 1), axis=(1, 2))
    win = win[:, ::sy, ::sx, :, ::dy, ::dx][:, :oh, :ow]  # [N, OH, OW, C, kh, kw]
    n, c = x.shape[:2]
    g = geom.groups
    cols = win.reshape(n * oh * ow, g, c // g * kh * kw)
    return cols.transpose(1, 0, 2) if g == 1 else np.ascontiguousarray(cols.transpose(1, 0, 2))


def _pad(x: np.ndarray, geom: LinearGeometry) -> np.ndarray:
    pt, pl, pb, pr = geom.pads
    return np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr))) if any(geom.pads) else x


def _slices(geom: LinearGeometry):
    (kh, kw), (sy, sx), (dy, dx), (oh, ow) = (geom.kernel, geom.strides, geom.dilations,
                                              geom.out_hw)
    for ky in range(kh):
        for kx in range(kw):
            yield ky * kw + kx, (slice(None), slice(None),
                                 slice(ky * dy, ky * dy + (oh - 1) * sy + 1, sy),
                                 slice(kx * dx, kx * dx + (ow - 1) * sx + 1, sx))


def _depthwise(geom: LinearGeometry, c: int, o: int) -> bool:
    return geom.groups == c == o and geom.groups > 1


def _weight(op: Op, wts: list) -> np.ndarray:
    return wts[op.arg[1]] if isinstance(op.arg[1], int) else op.arg[1]


def _conv_f(blk: Block, op: Op, xs: list, wts: list):
    geom, _, bias = op.arg
    x, w2 = xs[0], _weight(op, wts)
    n, c = x.shape[:2]
    o = w2.shape[0] * w2.shape[1]
    oh, ow = geom.out_hw
    if _depthwise(geom, c, o):
        xp = _pad(x, geom)
        wk = w2.reshape(c, -1)
        y = np.zeros((n, c, oh, ow), x.dtype)
        for k, sl in _slices(geom):
            y += xp[sl] * wk[:, k][None, :, None, None]
        if bias is not None:
            y += bias.reshape(1, -1, 1, 1)
        return y, (xp, x.shape)
    cols = _cols(x, geom)
    y = np.matmul(cols, w2.transpose(0, 2, 1))  # [g, NP, O/g]
    if bias is not None:
        y += bias.reshape(geom.groups, 1, -1)
    y = y.transpose(1, 0, 2).reshape(n, oh, ow, o).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(y), (cols, x.shape)


def _conv_b(blk: Block, op: Op, g: np.ndarray, c, wts: list, gw: list, gs):
    geom, widx, _ = op.arg
    w2 = _weight(op, wts)
    data, xshape = c
    n, ch, h, w = xshape
    o = w2.shape[0] * w2.shape[1]
    pt, pl, pb, pr = geom.pads
    if _depthwise(geom, ch, o):
        xp = data
        wk = w2.reshape(ch, -1)
        gxp = np.zeros_like(xp)
        gwk = np.zeros_like(wk)
        for k, sl in _slices(geom):
            gwk[:, k] = np.einsum("nchw,nchw->c", g, xp[sl])
            gxp[sl] += g * wk[:, k][None, :, None, None]
        if isinstance(widx, int):
            gw[widx] += gwk.reshape(w2.shape)
        return [gxp[:, :, pt:pt + h, pl:pl + w]]
    cols = data
    gr = geom.groups
    g2 = np.ascontiguousarray(g.transpose(0, 2, 3, 1)).reshape(-1, gr, o // gr).transpose(1, 0, 2)
    if isinstance(widx, int):
        gw[widx] += np.matmul(g2.transpose(0, 2, 1), cols)
    kh, kw = geom.kernel
    oh, ow = geom.out_hw
    w4 = w2.reshape(gr, o // gr, ch // gr, kh * kw)
    gxp = np.zeros((n, h + pt + pb, w + pl + pr, ch), g.dtype)  # channels last
    for k, sl in _slices(geom):  # col2im one kernel tap at a time: contiguous channel rows
        gk = np.matmul(g2, w4[..., k])  # [g, NP, C/g]
        gxp[:, sl[2], sl[3], :] += gk.transpose(1, 0, 2).reshape(n, oh, ow, ch)
    return [gxp[:, pt:pt + h, pl:pl + w, :].transpose(0, 3, 1, 2)]


def _gemm_f(blk: Block, op: Op, xs: list, wts: list):
    _, _, bias = op.arg
    x = xs[0]
    w2 = _weight(op, wts)[0]
    y = x @ w2.T
    if bias is not None:
        y = y + bias.reshape(1, -1)
    return y, x


def _gemm_b(blk: Block, op: Op, g: np.ndarray, x, wts: list, gw: list, gs):
    widx = op.arg[1]
    if isinstance(widx, int):
        gw[widx] += (g.T @ x)[None]
    return [g @ _weight(op, wts)[0]]


def _relu_f(blk, op, xs, wts):
    return np.maximum(xs[0], 0), xs[0] > 0


def _clip_f(blk, op, xs, wts):
    lo, hi = op.arg
    return np.clip(xs[0], lo, hi), (xs[0] > lo) & (xs[0] < hi)


def _mask_b(blk, op, g, mask, wts, gw, gs):
    return [g * mask]


def _add_f(blk, op, xs, wts):
    return xs[0] + xs[1], None


def _add_b(blk, op, g, c, wts, gw, gs):
    return [g, g]


def _gap_f(blk, op, xs, wts):
    return xs[0].mean(axis=(2, 3), keepdims=True), xs[0].shape


def _gap_b(blk, op, g, shape, wts, gw, gs):
    return [np.broadcast_to(g / (shape[2] * shape[3]), shape).astype(g.dtype)]


def _reshape_f(blk, op, xs, wts):
    return xs[0].reshape((xs[0].shape[0],) + tuple(op.arg)), xs[0].shape


def _reshape_b(blk, op, g, shape, wts, gw, gs):
    return [g.reshape(shape)]


def _slice_f(blk, op, xs, wts):
    return xs[0][op.arg], xs[0].shape


def _slice_b(blk, op, g, shape, wts, gw, gs):
    gx = np.zeros(shape, g.dtype)
    gx[op.arg] = g
    return [gx]


def _pad_f(blk, op, xs, wts):
    return np.pad(xs[0], op.arg), None


def _pad_b(blk, op, g, c, wts, gw, gs):
    return [g[tuple(slice(a, g.shape[i] - b) for i, (a, b) in enumerate(op.arg))]]


def _id_f(blk, op, xs, wts):
    return xs[0], None


def _id_b(blk, op, g, c, wts, gw, gs):
    return [g]


def _qdq_f(blk: Block, op: Op, xs: list, wts):
    st = blk.steps[op.arg]
    x = xs[0]
    s = x.dtype.type(st.s)
    t = x / s
    r = np.rint(t)
    inside = (t + st.z > st.qmin) & (t + st.z < st.qmax)  # LSQ: on the unrounded x/s
    qc = np.clip(r + st.z, st.qmin, st.qmax)
    y = ((qc - st.z) * s).astype(x.dtype)
    if blk.drop > 0 and blk.rng is not None:  # QDrop: these elements stay float this step
        keep = blk.rng.random(x.shape) >= blk.drop
        return np.where(keep, y, x), (inside, r - t, qc - st.z, keep)
    return y, (inside, r - t, qc - st.z, None)


def _qdq_b(blk: Block, op: Op, g, c, wts, gw, gs):
    inside, frac, off, keep = c
    dstep = np.where(inside, frac, off)
    if keep is not None:
        dstep = dstep * keep
        inside = inside | ~keep  # a dropped element is the identity
    if blk.steps[op.arg].learn:
        gs[op.arg] += float(np.sum(g * dstep, dtype=np.float64))
    return [g * inside]


FWD: dict[str, Callable] = {"conv": _conv_f, "gemm": _gemm_f, "relu": _relu_f,
                             "clip": _clip_f, "add": _add_f, "gap": _gap_f,
                             "reshape": _reshape_f, "identity": _id_f, "qdq": _qdq_f,
                             "slice": _slice_f, "pad": _pad_f}
BWD: dict[str, Callable] = {"conv": _conv_b, "gemm": _gemm_b, "relu": _mask_b, "clip": _mask_b,
                             "add": _add_b, "gap": _gap_b, "reshape": _reshape_b,
                             "identity": _id_b, "qdq": _qdq_b, "slice": _slice_b, "pad": _pad_b}
OP_KINDS = tuple(FWD)


