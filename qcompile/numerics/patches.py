"""Conv / Gemm as grouped matrix products on sampled rows (pure numpy, float32).

Layer-wise reconstruction (``adaround``, ``bias_correct``) needs ``y = W x + b`` at a sample of
output positions, not whole feature maps. A Conv with weight ``W[O, C/g, kh, kw]`` and ``g``
groups is written as ``g`` matrix products::

    Y[g, p, o] = sum_k X[g, p, k] * W2[g, o, k] + b[g, o]

where row ``p`` is one sampled output position ``(n, oy, ox)``, ``k`` runs over
``(c, ky, kx)`` of the group's input channels in that order (so ``W2 = W.reshape(g, O/g, -1)``)
and ``X[g, p, k] = xpad[n, g*C/g + c, oy*sy + ky*dy, ox*sx + kx*dx]`` on the zero-padded input.
A Gemm (``y = x W^T + b`` with ``transB=1``; ``W`` transposed otherwise) is the case ``g = 1``
with one row per image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["LinearGeometry", "sample_positions", "gather_rows", "weight_matrix",
           "matrix_to_weight", "channel_matrix", "linear_rows"]


@dataclass(frozen=True)
class LinearGeometry:
    """Shape facts of one Conv or Gemm (from its attributes and static shapes)."""

    op: str  # "Conv" or "Gemm" (MatMul: Gemm with trans_b False)
    groups: int = 1
    kernel: tuple[int, int] = (1, 1)
    strides: tuple[int, int] = (1, 1)
    dilations: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right
    out_hw: tuple[int, int] = (1, 1)
    trans_b: bool = True  # Gemm: weight stored [O, K]

    @property
    def positions(self) -> int:
        return self.out_hw[0] * self.out_hw[1] if self.op == "Conv" else 1


def sample_positions(geom: LinearGeometry, n_images: int, per_image: int,
                     rng: np.random.Generator) -> np.ndarray:
    """``[P, 3]`` int rows ``(n, oy, ox)``: ``per_image`` distinct positions per image (all of
    them when the map is smaller)."""
    if geom.op != "Conv":
        return np.stack([np.arange(n_images), np.zeros(n_images, int), np.zeros(n_images, int)],
                        axis=1)
    h, w = geom.out_hw
    k = min(per_image, h * w)
    out = []
    for n in range(n_images):
        flat = rng.choice(h * w, size=k, replace=False) if k < h * w else np.arange(h * w)
        out.append(np.stack([np.full(k, n), flat // w, flat % w], axis=1))
    return np.concatenate(out).astype(np.int64)


def gather_rows(x: np.ndarray, geom: LinearGeometry, pos: np.ndarray) -> np.ndarray:
    """``X[g, P, k]`` (float32) at positions ``pos`` (``n`` indexes this batch ``x``)."""
    x = np.asarray(x, np.float32)
    if geom.op != "Conv":
        return x.reshape(1, x.shape[0], -1)[:, pos[:, 0], :]
    pt, pl, pb, pr = geom.pads
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr))) if any(geom.pads) else x
    kh, kw = geom.kernel
    sy, sx = geom.strides
    dy, dx = geom.dilations
    n, oy, ox = pos[:, 0], pos[:, 1], pos[:, 2]
    cols = np.empty((len(pos), x.shape[1], kh * kw), np.float32)
    for ky in range(kh):
        for kx in range(kw):
            cols[:, :, ky * kw + kx] = xp[n, :, oy * sy + ky * dy, ox * sx + kx * dx]
    g = geom.groups
    c = x.shape[1] // g
    return cols.reshape(len(pos), g, c * kh * kw).transpose(1, 0, 2).copy()


def weight_matrix(w: np.ndarray, geom: LinearGeometry) -> np.ndarray:
    """``W2[g, o, k]`` from a Conv weight ``[O, C/g, kh, kw]`` or a Gemm/MatMul weight."""
    w = np.asarray(w, np.float32)
    if geom.op == "Conv":
        return w.reshape(geom.groups, w.shape[0] // geom.groups, -1)
    return (w if geom.trans_b else w.T)[None]


def matrix_to_weight(w2: np.ndarray, like: np.ndarray, geom: LinearGeometry) -> np.ndarray:
    """Inverse of :func:`weight_matrix` (same dtype and shape as ``like``)."""
    if geom.op == "Conv":
        return w2.reshape(like.shape).astype(like.dtype)
    m = w2[0]
    return (m if geom.trans_b else m.T).astype(like.dtype).reshape(like.shape)


def channel_matrix(p: np.ndarray, geom: LinearGeometry, out_channels: int) -> np.ndarray:
    """A per-output-channel vector (or scalar) as ``[g, o]`` (broadcasts against ``W2``)."""
    p = np.asarray(p, np.float32)
    if p.ndim == 0 or p.size == 1:
        return np.full((geom.groups if geom.op == "Conv" else 1,
                        out_channels // (geom.groups if geom.op == "Conv" else 1)),
                       float(p.reshape(-1)[0]), np.float32)
    g = geom.groups if geom.op == "Conv" else 1
    return p.reshape(g, out_channels // g)


def linear_rows(x: np.ndarray, w2: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    """``Y[g, p, o] = X[g, p, :] @ W2[g, o, :]^T + b[g, o]``."""
    y = np.matmul(x, w2.transpose(0, 2, 1))
    if b is not None:
        y += b[:, None, :]
    return y
