"""AdaRound: learned up/down rounding of weights (Nagel et al., "Up or Down? Adaptive Rounding
for Post-Training Quantization", ICML 2020), in numpy on sampled rows.

For a layer ``Y = f(X W^T + b)`` (``f`` the fused activation, a clamp to ``[lo, hi]`` or the
identity) with per-output-channel scale ``s`` and zero point ``z``, each weight is rounded to

    q = clamp(floor(w / s) + h(V), qmin - z, qmax - z) + z,   h(V) = clamp(sigmoid(V)(zeta - gamma) + gamma, 0, 1)

(``zeta = 1.1``, ``gamma = -0.1``, the rectified sigmoid), with the continuous ``V`` found by
Adam on

    L(V) = mean_rows sum_o ( f(Xq Wsoft^T + b) - f(Xf W^T + b) )^2 + lam * sum (1 - |2 h(V) - 1|^beta)

where ``Xq`` is the layer input in the quantised network (so the rounding also compensates the
error that reaches the layer), ``Xf`` the float network's input and ``Wsoft = s (q - z)`` with
the soft ``h``. ``V`` starts where ``h(V) = frac(w / s)`` (the float weight); the regulariser is
off for the first ``warm_start`` of the iterations, then ``beta`` decays linearly from
``beta_start`` to ``beta_end`` (BRECQ's schedule), pushing every ``h`` to 0 or 1. The result is
``h >= 1/2`` (``V >= 0``): every weight is rounded to one of its two neighbouring grid points.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["AdaRoundConfig", "adaround", "rect_sigmoid", "reconstruction_loss"]

ZETA, GAMMA = 1.1, -0.1


@dataclass(frozen=True)
class AdaRoundConfig:
    iterations: int = 1000
    lr: float = 1e-2
    batch: int = 1024
    reg: float = 0.01
    beta_start: float = 20.0
    beta_end: float = 2.0
    warm_start: float = 0.2


def rect_sigmoid(v: np.ndarray) -> np.ndarray:
    return np.clip(1.0 / (1.0 + np.exp(-v)) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def _act(z: np.ndarray, act: tuple[float, float] | None) -> tuple[np.ndarray, np.ndarray | None]:
    if act is None:
        return z, None
    lo, hi = act
    return np.clip(z, lo, hi), (z > lo) & (z < hi)


def reconstruction_loss(x: np.ndarray, w2: np.ndarray, b: np.ndarray | None,
                        target: np.ndarray, act: tuple[float, float] | None) -> float:
    """``mean_rows sum_o (f(X W^T + b) - T)^2`` (float64 accumulation)."""
    z = np.matmul(x, w2.transpose(0, 2, 1))
    if b is not None:
        z += b[:, None, :]
    y, _ = _act(z, act)
    d = (y - target).astype(np.float64)
    return float((d * d).sum() / max(x.shape[1], 1))


def adaround(w2: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, qmin: int, qmax: int,
             x: np.ndarray, target: np.ndarray, bias: np.ndarray | None,
             act: tuple[float, float] | None, cfg: AdaRoundConfig, rng: np.random.Generator,
             tick: Callable[[int], None] | None = None) -> np.ndarray:
    """Integer codes ``q[g, o, k]`` (int64) for ``w2`` (see the module docstring).

    ``scale``/``zero_point``: ``[g, o]``; ``x``: ``[g, P, k]`` quantised-network inputs;
    ``target``: ``[g, P, o]`` float-network outputs (after ``act``); ``bias``: ``[g, o]``.
    """
    s = scale.astype(np.float32)[..., None]
    z = zero_point.astype(np.float32)[..., None]
    lo_i, hi_i = np.float32(qmin) - z, np.float32(qmax) - z
    ws = w2.astype(np.float32) / s
    base = np.floor(ws)
    rest = np.clip(ws - base, 1e-4, 1 - 1e-4)
    v = (-np.log((ZETA - GAMMA) / (rest - GAMMA) - 1.0)).astype(np.float32)
    m1, m2 = np.zeros_like(v), np.zeros_like(v)
    b1, b2, eps = 0.9, 0.999, 1e-8
    n_rows = x.shape[1]
    bs = min(cfg.batch, n_rows)
    warm = int(cfg.warm_start * cfg.iterations)
    bt = None if bias is None else bias.astype(np.float32)
    perm, at = rng.permutation(n_rows), 0
    for it in range(cfg.iterations):
        if at + bs > n_rows:
            perm, at = rng.permutation(n_rows), 0
        idx = perm[at:at + bs]
        at += bs
        xb, tb = x[:, idx], target[:, idx]
        sig = 1.0 / (1.0 + np.exp(-v))
        hraw = sig * (ZETA - GAMMA) + GAMMA
        h = np.clip(hraw, 0.0, 1.0)
        soft = base + h
        wq = s * np.clip(soft, lo_i, hi_i)
        zz = np.matmul(xb, wq.transpose(0, 2, 1))
        if bt is not None:
            zz += bt[:, None, :]
        y, mask = _act(zz, act)
        gz = (2.0 / bs) * (y - tb)
        if mask is not None:
            gz *= mask
        gw = np.matmul(gz.transpose(0, 2, 1), xb)  # [g, o, k]
        gh = gw * s * ((soft > lo_i) & (soft < hi_i))
        if it >= warm:
            rel = (it - warm) / max(cfg.iterations - warm, 1)
            beta = cfg.beta_end + (cfg.beta_start - cfg.beta_end) * max(0.0, 1.0 - rel)
            t = 2.0 * h - 1.0
            gh += cfg.reg * (-2.0 * beta) * np.abs(t) ** (beta - 1.0) * np.sign(t)
        g = gh * ((ZETA - GAMMA) * sig * (1.0 - sig)) * ((hraw > 0.0) & (hraw < 1.0))
        m1 = b1 * m1 + (1 - b1) * g
        m2 = b2 * m2 + (1 - b2) * g * g
        mh = m1 / (1 - b1 ** (it + 1))
        vh = m2 / (1 - b2 ** (it + 1))
        v -= (cfg.lr * mh / (np.sqrt(vh) + eps)).astype(np.float32)
        if tick is not None and (it + 1) % 100 == 0:
            tick(100)
    if tick is not None and cfg.iterations % 100:
        tick(cfg.iterations % 100)
    q = np.clip(base + (v >= 0), lo_i, hi_i) + z
    return np.rint(q).astype(np.int64)
