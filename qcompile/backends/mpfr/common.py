"""Shared by both engines: attribute normalisation, output shapes, window enumeration, and the
exact data-movement ops (they never round, so one numpy implementation serves float64 and
object arrays alike)."""

from __future__ import annotations

import numpy as np

from qcompile.errors import QCompileError
from qcompile.ir import DType

_PACKED = frozenset({DType.INT4, DType.UINT4, DType.FLOAT4E2M1})  # no numpy element type


class KernelError(QCompileError):
    """A node the MPFR backend cannot evaluate with these attributes/shapes."""


def conv_geometry(x_shape, kernel, *, strides=None, pads=None, dilations=None,
                  auto_pad="NOTSET", ceil_mode=0):
    """(strides, dilations, (top, left, bottom, right), (OH, OW)) for a 2-D window op."""
    if len(x_shape) != 4 or len(kernel) != 2:
        raise KernelError(f"only 2-D (NCHW) windows are supported, got input {x_shape}")
    H, W = x_shape[2], x_shape[3]
    kh, kw = kernel
    sh, sw = tuple(strides) if strides else (1, 1)
    dh, dw = tuple(dilations) if dilations else (1, 1)
    ap = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    if ap in ("SAME_UPPER", "SAME_LOWER"):
        pads_ = []
        for n, k, s, d in ((H, kh, sh, dh), (W, kw, sw, dw)):
            out = -(-n // s)
            tot = max(0, (out - 1) * s + (k - 1) * d + 1 - n)
            lo = tot // 2 if ap == "SAME_UPPER" else tot - tot // 2
            pads_.append((lo, tot - lo))
        pt, pb = pads_[0]
        pl, pr = pads_[1]
    elif ap == "VALID":
        pt = pl = pb = pr = 0
    else:
        pt, pl, pb, pr = tuple(pads) if pads else (0, 0, 0, 0)
    eh, ew = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    if ceil_mode:
        OH = -(-(H + pt + pb - eh) // sh) + 1
        OW = -(-(W + pl + pr - ew) // sw) + 1
        if (OH - 1) * sh >= H + pt:
            OH -= 1
        if (OW - 1) * sw >= W + pl:
            OW -= 1
    else:
        OH = (H + pt + pb - eh) // sh + 1
        OW = (W + pl + pr - ew) // sw + 1
    return (sh, sw), (dh, dw), (pt, pl, pb, pr), (OH, OW)


def window_taps(H, W, OH, OW, kernel, strides, dilations, pads):
    """Yield (iy [OH,1], ix [1,OW], valid [OH,OW]) for each window tap in (ky, kx) order."""
    sh, sw = strides
    dh, dw = dilations
    pt, pl = pads[0], pads[1]
    oy = np.arange(OH)[:, None]
    ox = np.arange(OW)[None, :]
    for ky in range(kernel[0]):
        for kx in range(kernel[1]):
            iy = oy * sh - pt + ky * dh
            ix = ox * sw - pl + kx * dw
            ok = (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
            yield np.clip(iy, 0, H - 1), np.clip(ix, 0, W - 1), ok


def gemm_operands(a, b, transA=0, transB=0):
    a = a.T if transA else a
    b = b.T if transB else b
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise KernelError(f"Gemm: bad operand shapes {a.shape} x {b.shape}")
    return a, b


# ----------------------------------------------------------------------------- data movement
def _ints(v):
    return [int(t) for t in np.asarray(v).reshape(-1)]


def flatten(x, *, axis=1):
    axis = axis % x.ndim if x.ndim else 0
    lead = int(np.prod(x.shape[:axis], dtype=np.int64))
    return (x.reshape(lead, -1),)


def reshape(x, shape, *, allowzero=0):
    s = _ints(shape)
    if not allowzero:
        s = [x.shape[i] if d == 0 else d for i, d in enumerate(s)]
    return (x.reshape(s),)


def identity(x, *rest, **_):
    return (x,)


def concat(*xs, axis):
    return (np.concatenate(xs, axis=axis),)


def transpose(x, *, perm=None):
    return (np.transpose(x, perm),)


def squeeze(x, axes=None):
    return (np.squeeze(x, axis=None if axes is None else tuple(_ints(axes))),)


def unsqueeze(x, axes):
    out = x
    for a in sorted(a % (x.ndim + len(_ints(axes))) for a in _ints(axes)):
        out = np.expand_dims(out, a)
    return (out,)


def slice_(x, starts, ends, axes=None, steps=None):
    starts, ends = _ints(starts), _ints(ends)
    axes = list(range(len(starts))) if axes is None else _ints(axes)
    steps = [1] * len(starts) if steps is None else _ints(steps)
    idx = [slice(None)] * x.ndim
    for s, e, a, st in zip(starts, ends, axes, steps, strict=True):
        n = x.shape[a]
        s = max(-n - 1, min(n, s))
        e = max(-n - 1, min(n, e))
        idx[a % x.ndim] = slice(s, e, st) if st > 0 else slice(
            s, None if e < -n else e, st)
    return (x[tuple(idx)],)


def pad(x, pads, fill, *, mode="constant", axes=None):
    """``fill``: the (already converted) constant for mode=constant."""
    p = _ints(pads)
    r = x.ndim
    ax = list(range(r)) if axes is None else [a % r for a in _ints(axes)]
    k = len(ax)
    width = [(0, 0)] * r
    for i, a in enumerate(ax):
        width[a] = (p[i], p[i + k])
    if any(lo < 0 or hi < 0 for lo, hi in width):
        raise KernelError("Pad: negative pads are not supported")
    m = mode.decode() if isinstance(mode, bytes) else str(mode)
    if m == "constant":
        out = np.empty(tuple(s + lo + hi for s, (lo, hi) in zip(x.shape, width)), x.dtype)
        out[...] = fill
        out[tuple(slice(lo, lo + s) for s, (lo, _) in zip(x.shape, width))] = x
        return (out,)
    if m in ("reflect", "edge"):
        return (np.pad(x, width, mode=m),)
    raise KernelError(f"Pad: mode {m!r} is not supported")


def conv_transpose_geometry(x_shape, w_shape, *, strides=None, pads=None, dilations=None,
                            output_padding=None, output_shape=None, auto_pad="NOTSET",
                            kernel_shape=None):
    """(strides, dilations, (top, left), (OH, OW)) of a 2-D ConvTranspose, as the ONNX spec.

    Output size ``s*(n-1) + output_padding + (k-1)*d + 1 - pad_begin - pad_end``; with
    ``output_shape`` (or auto_pad SAME_*, where it is ``n*s``) the pads are derived from the
    total padding ``s*(n-1) + output_padding + (k-1)*d + 1 - out`` (SAME_UPPER puts the odd
    unit at the end, otherwise at the beginning).  Output position ``o`` receives
    ``x[i] * w[k]`` where ``o = i*s + k*d - pad_begin``.
    """
    if len(x_shape) != 4 or len(w_shape) != 4:
        raise KernelError(f"ConvTranspose: only 2-D (NCHW) is supported, got input {x_shape}")
    ks = tuple(kernel_shape) if kernel_shape else tuple(w_shape[2:])
    if tuple(ks) != tuple(w_shape[2:]):
        raise KernelError(f"ConvTranspose: kernel_shape {list(ks)} does not match the weight "
                          f"shape {list(w_shape)}")
    ins = x_shape[2:]
    s = tuple(strides) if strides else (1, 1)
    d = tuple(dilations) if dilations else (1, 1)
    op = tuple(output_padding) if output_padding else (0, 0)
    ap = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    full = [s[i] * (ins[i] - 1) + op[i] + (ks[i] - 1) * d[i] + 1 for i in range(2)]
    if output_shape is not None or ap in ("SAME_UPPER", "SAME_LOWER"):
        out = (list(output_shape)[-2:] if output_shape is not None
               else [ins[i] * s[i] for i in range(2)])
        begin = []
        for i in range(2):
            tot = full[i] - out[i]
            begin.append(tot // 2 if ap == "SAME_UPPER" else tot - tot // 2)
        return s, d, tuple(begin), tuple(int(o) for o in out)
    p = tuple(pads) if (pads and ap not in ("VALID",)) else (0, 0, 0, 0)
    out = (full[0] - p[0] - p[2], full[1] - p[1] - p[3])
    if min(out) <= 0:
        raise KernelError(f"ConvTranspose: empty output {out} for input {x_shape}")
    return s, d, (p[0], p[1]), out


def conv_transpose_taps(H, W, OH, OW, KH, KW, strides, dilations, begin):
    """Yield (ky, kx, iy [OH,1], ix [1,OW], valid [OH,OW]) per kernel tap in (ky, kx) order:
    the input position feeding each output position through that tap (gather form)."""
    (sh, sw), (dh, dw), (pt, pl) = strides, dilations, begin
    oy = np.arange(OH)[:, None]
    ox = np.arange(OW)[None, :]
    for ky in range(KH):
        ty = oy + pt - ky * dh
        for kx in range(KW):
            tx = ox + pl - kx * dw
            ok = (ty % sh == 0) & (ty >= 0) & (ty < H * sh) & (tx % sw == 0) & (tx >= 0) & (
                tx < W * sw)
            yield (ky, kx, np.clip(ty // sh, 0, H - 1), np.clip(tx // sw, 0, W - 1), ok)


def padded_window_counts(H, W, OH, OW, kernel, strides, dilations, pads):
    """[OH, OW]: taps of each window inside the padded input [-top, H + bottom) x [-left,
    W + right) (AveragePool count_include_pad=1; taps past it exist only with ceil_mode)."""
    (sh, sw), (dh, dw) = strides, dilations
    pt, pl, pb, pr = pads
    ky = np.arange(kernel[0])
    kx = np.arange(kernel[1])
    iy = np.arange(OH)[:, None] * sh - pt + ky[None, :] * dh
    ix = np.arange(OW)[:, None] * sw - pl + kx[None, :] * dw
    ny = ((iy >= -pt) & (iy < H + pb)).sum(axis=1)
    nx = ((ix >= -pl) & (ix < W + pr)).sum(axis=1)
    return ny[:, None] * nx[None, :]


def reduce_axes(ndim, axes_in=None, axes_attr=None, noop_with_empty_axes=0):
    """Sorted reduced axes of a Reduce* op (input from opset 18, attribute before), or None
    for the identity (no axes with ``noop_with_empty_axes``)."""
    ax = axes_in if axes_in is not None else axes_attr
    ax = [] if ax is None else _ints(ax)
    if not ax:
        return None if noop_with_empty_axes else tuple(range(ndim))
    return tuple(sorted({a % ndim for a in ax}))


def reduced_shape(shape, axes, keepdims):
    if keepdims:
        return tuple(1 if i in axes else s for i, s in enumerate(shape))
    return tuple(s for i, s in enumerate(shape) if i not in axes)


def to_rows(x, axes):
    """x with the reduced ``axes`` moved last (in order) and merged: [..., K], row-major."""
    rest = [i for i in range(x.ndim) if i not in axes]
    y = np.transpose(x, rest + list(axes))
    return y.reshape(y.shape[:len(rest)] + (-1,))


FLOAT_TYPES = frozenset({1, 10, 11, 16, 17, 18, 19, 20})
"""ONNX TensorProto float element types (FLOAT, FLOAT16, DOUBLE, BFLOAT16, FLOAT8*)."""


def cast_target(to):
    """("float", None) for a float target, else ("int", numpy dtype)."""
    to = int(to)
    if to in FLOAT_TYPES:
        return "float", None
    try:
        code = DType(to)
        dt = np.dtype(object) if code in _PACKED else code.to_numpy()
    except (ValueError, TypeError):  # unknown enum values, STRING, complex
        dt = np.dtype(object)
    if dt.kind not in "iub":  # STRING, complex, packed 4-bit types
        raise KernelError(f"Cast: target type {to} is not supported")
    return "int", dt


def lrn_window(C, c, size):
    """Channels summed by LRN for channel c (ONNX: [c - floor((size-1)/2), c + ceil(..)])."""
    lo = max(0, c - (size - 1) // 2)
    hi = min(C - 1, c + -(-(size - 1) // 2))
    return lo, hi


# -- reference-engine helpers (object arrays of gmpy2 values) ----------------------------
def full(shape, elem, sample):
    """Evaluate ``elem(index)`` over the whole output, or at ``sample`` indices."""
    if sample is not None:
        return [elem(tuple(i)) for i in sample]
    out = np.empty(shape, object)
    for i in np.ndindex(*shape):
        out[i] = elem(i)
    return (out,)


def elementwise(fn, sample, *arrays):
    shape = np.broadcast_shapes(*(a.shape for a in arrays))
    bs = [np.broadcast_to(a, shape) for a in arrays]
    return full(shape, lambda i: fn(*(b[i] for b in bs)), sample)


def empty_apart(a: np.ndarray, dtype=None) -> np.ndarray:
    """``np.empty(a.shape, dtype)`` placed half a 4 KiB page away from ``a`` modulo 4 KiB.

    Large arrays come from mmap at the same page offset, so ``out[i]`` and ``a[i]`` share
    their low 12 address bits; a kernel that loads ``a[i + k]`` after storing ``out[i]`` then
    stalls on false store-to-load dependencies (4K aliasing): the numba FQ kernel ran 2.5x
    slower into ``np.empty_like(x)`` than into this (measured, 819,200 elements)."""
    dt = np.dtype(a.dtype if dtype is None else dtype)
    n = a.size
    if n * dt.itemsize < 65536:  # small arrays come from the heap, at no fixed offset
        return np.empty(a.shape, dt)
    buf = np.empty(n + 4096 // dt.itemsize, dt)
    gap = (a.ctypes.data + 2048 - buf.ctypes.data) % 4096
    k = gap // dt.itemsize
    return buf[k:k + n].reshape(a.shape)


_MALLOC_SET = []


def keep_freed_blocks() -> None:
    """Once per process (glibc only): serve arrays up to 32 MiB from the heap and keep freed
    memory there (``mallopt`` M_MMAP_THRESHOLD = 32 MiB, M_TRIM_THRESHOLD = 256 MiB).  By
    default glibc maps each large array afresh and unmaps it when freed, so every op's
    output costs page faults and zeroing again: the fast engine spent 15% of ResNet-20's
    fp32 time (batch 50) and a third of its FQ time on them (measured).  The price is a
    process that holds its peak heap; other allocators are left alone."""
    if _MALLOC_SET:
        return
    _MALLOC_SET.append(True)
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD (the most glibc accepts on 64-bit)
        libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # musl and others: no mallopt, nothing to tune
        pass
