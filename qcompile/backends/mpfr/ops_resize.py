"""Resize (nearest and linear) for both engines.

Geometry (index arithmetic, not data arithmetic: computed in binary64, never rounded into the
format): the output size of axis a is ``sizes[a]``, or ``floor(in * scales[a])``; the scale is
``scales[a]`` or ``out / in``.  An output coordinate x maps to the input coordinate

* half_pixel ``(x + 0.5) / s - 0.5``; pytorch_half_pixel the same, 0 when out == 1;
* asymmetric ``x / s``; tf_half_pixel_for_nn ``(x + 0.5) / s``;
* align_corners ``x * (in - 1) / (out - 1)``, 0 when out == 1.

``mode=nearest`` picks input index round_prefer_floor (ties down), round_prefer_ceil, floor or
ceil of that coordinate, clamped to [0, in - 1]: exact, a copy.  ``mode=linear`` clamps the
coordinate c to [0, in - 1], takes i0 = floor(c), i1 = min(i0 + 1, in - 1), l = c - i0 and
h = 1 - l, converts h and l into the format (they are constants of the op), and interpolates
one resized axis at a time from the last to the first: y = (h (*) v0) (+) (l (*) v1), each
step rounded, on the previous step's rounded values.  Axes whose size and scale are unchanged
are copied.  cubic, tf_crop_and_resize, antialias and the keep_aspect_ratio policies are not
supported (reported up front by the interpreter).
"""

from __future__ import annotations

import math

import numpy as np

from qcompile.backends.base import OpTable
from qcompile.backends.mpfr import common as cm

_F64 = np.float64
MODES = ("nearest", "linear")
TRANSFORMS = ("half_pixel", "pytorch_half_pixel", "asymmetric", "tf_half_pixel_for_nn",
              "align_corners")
NEAREST = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


def _s(v):
    return v.decode() if isinstance(v, bytes) else str(v)


def _floats(v):
    return [float(t) for t in np.asarray(v).reshape(-1)]


def plan(x_shape, scales=None, sizes=None, axes=None):
    """(output shape, per-axis scale) of a Resize."""
    r = len(x_shape)
    ax = list(range(r)) if axes is None else [a % r for a in cm._ints(axes)]
    out, sc = list(x_shape), [1.0] * r
    if sizes is not None and np.asarray(sizes).size:
        for a, n in zip(ax, cm._ints(sizes), strict=True):
            out[a], sc[a] = n, n / x_shape[a]
    elif scales is not None and np.asarray(scales).size:
        for a, s in zip(ax, _floats(scales), strict=True):
            out[a], sc[a] = int(math.floor(x_shape[a] * s)), s
    else:
        raise cm.KernelError("Resize: neither scales nor sizes given")
    return tuple(out), sc


def coordinate(x, n_in, n_out, s, transform):
    """Input coordinates (float64 array) of the output coordinates ``x``."""
    x = np.asarray(x, _F64)
    if transform == "half_pixel":
        return (x + 0.5) / s - 0.5
    if transform == "pytorch_half_pixel":
        return (x + 0.5) / s - 0.5 if n_out > 1 else np.zeros_like(x)
    if transform == "asymmetric":
        return x / s
    if transform == "tf_half_pixel_for_nn":
        return (x + 0.5) / s
    if transform == "align_corners":
        return x * (n_in - 1) / (n_out - 1) if n_out > 1 else np.zeros_like(x)
    raise cm.KernelError(f"Resize: coordinate_transformation_mode {transform!r}")


def nearest_index(c, n_in, rule):
    if rule == "round_prefer_floor":
        i = np.where(c - np.floor(c) == 0.5, np.floor(c), np.round(c))
    elif rule == "round_prefer_ceil":
        i = np.where(c - np.floor(c) == 0.5, np.ceil(c), np.round(c))
    elif rule == "floor":
        i = np.floor(c)
    elif rule == "ceil":
        i = np.ceil(c)
    else:
        raise cm.KernelError(f"Resize: nearest_mode {rule!r}")
    return np.clip(i, 0, n_in - 1).astype(np.int64)


def _axes_todo(x_shape, out, sc):
    return [a for a in range(len(x_shape)) if not (out[a] == x_shape[a] and sc[a] == 1.0)]


def _linear_taps(n_in, n_out, s, transform):
    c = np.clip(coordinate(np.arange(n_out), n_in, n_out, s, transform), 0, n_in - 1)
    i0 = np.floor(c).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    lo = c - i0
    return i0, i1, 1.0 - lo, lo


def _geometry(x, roi, scales, sizes, axes, mode, transform, nearest_mode):
    mode, transform = _s(mode), _s(transform)
    if mode not in MODES:
        raise cm.KernelError(f"Resize: mode {mode!r} is not supported")
    out, sc = plan(x.shape, scales, sizes, axes)
    return mode, transform, _s(nearest_mode), out, sc, _axes_todo(x.shape, out, sc)


def _nearest(x, out, sc, todo, transform, rule):
    y = x
    for a in todo:
        c = coordinate(np.arange(out[a]), x.shape[a], out[a], sc[a], transform)
        y = np.take(y, nearest_index(c, x.shape[a], rule), axis=a)
    return y


def resize_fast(E, x, roi=None, scales=None, sizes=None, *, mode="nearest",
                coordinate_transformation_mode="half_pixel", nearest_mode="round_prefer_floor",
                cubic_coeff_a=-0.75, exclude_outside=0, extrapolation_value=0.0, antialias=0,
                axes=None, keep_aspect_ratio_policy="stretch"):
    mode, tr, rule, out, sc, todo = _geometry(x, roi, scales, sizes, axes, mode,
                                              coordinate_transformation_mode, nearest_mode)
    if mode == "nearest":
        return (np.array(_nearest(x, out, sc, todo, tr, rule)),)
    A, y = E.A, x
    for a in reversed(todo):  # last resized axis first
        i0, i1, h, lo = _linear_taps(x.shape[a], out[a], sc[a], tr)
        shp = [1] * x.ndim
        shp[a] = -1
        v0, v1 = np.take(y, i0, axis=a), np.take(y, i1, axis=a)
        hw = np.broadcast_to(E.convert(h).reshape(shp), v0.shape)
        lw = np.broadcast_to(E.convert(lo).reshape(shp), v0.shape)
        y = A.add(A.mul(v0, hw), A.mul(v1, lw))
    return (np.array(y),)


def resize_ref(E, x, roi=None, scales=None, sizes=None, *, mode="nearest",
               coordinate_transformation_mode="half_pixel", nearest_mode="round_prefer_floor",
               cubic_coeff_a=-0.75, exclude_outside=0, extrapolation_value=0.0, antialias=0,
               axes=None, keep_aspect_ratio_policy="stretch", sample=None):
    mode, tr, rule, out, sc, todo = _geometry(x, roi, scales, sizes, axes, mode,
                                              coordinate_transformation_mode, nearest_mode)
    if mode == "nearest":
        y = _nearest(x, out, sc, todo, tr, rule)
        return [y[tuple(i)] for i in sample] if sample is not None else (np.array(y),)
    A = E.A
    taps = {}
    for a in todo:
        i0, i1, h, lo = _linear_taps(x.shape[a], out[a], sc[a], tr)
        taps[a] = (i0, i1, [E.C.round(float(v)) for v in h], [E.C.round(float(v)) for v in lo])

    def value(i, k):  # interpolate along todo[k:], the innermost (last) axis first
        if k == len(todo):
            return x[tuple(i)]
        a = todo[k]
        i0, i1, h, lo = taps[a]
        o = i[a]
        v0 = value(i[:a] + [int(i0[o])] + i[a + 1:], k + 1)
        v1 = value(i[:a] + [int(i1[o])] + i[a + 1:], k + 1)
        return A.add(A.mul(v0, h[o]), A.mul(v1, lo[o]))

    from qcompile.backends.mpfr.common import full as _full

    return _full(out, lambda i: value(list(i), 0), sample)


def unsupported_reason(attrs) -> str | None:
    """Why a Resize node cannot run (None when it can); checked before any work."""
    mode = _s(attrs.get("mode", "nearest"))
    tr = _s(attrs.get("coordinate_transformation_mode", "half_pixel"))
    if mode not in MODES:
        return f"Resize mode={mode}"
    if tr not in TRANSFORMS:
        return f"Resize coordinate_transformation_mode={tr}"
    if mode == "nearest" and _s(attrs.get("nearest_mode", "round_prefer_floor")) not in NEAREST:
        return f"Resize nearest_mode={_s(attrs.get('nearest_mode'))}"
    if int(attrs.get("antialias", 0)):
        return "Resize antialias=1"
    if _s(attrs.get("keep_aspect_ratio_policy", "stretch")) != "stretch":
        return "Resize keep_aspect_ratio_policy other than stretch"
    return None


def register(table: OpTable, kernel) -> None:
    table.register("Resize")(kernel)
