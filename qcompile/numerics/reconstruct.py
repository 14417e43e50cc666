"""BRECQ block reconstruction (Li et al., "BRECQ: Pushing the Limit of Post-Training
Quantization by Block Reconstruction", ICLR 2021), in numpy, with a hand-written backward pass.

A *block* is a small straight-line program (:class:`Op`) over named values: Conv (im2col matmul;
an elementwise path for depthwise), Gemm, Relu, Clip, Add, GlobalAveragePool, reshapes and the
activation fake-quantisers ``QDQ``. Its parameters are

* the AdaRound rounding variables ``V`` of every quantised weight (:mod:`qcompile.numerics.adaround`):
  ``W = s (clamp(floor(w/s) + h(V), qmin - z, qmax - z))``, ``h`` the rectified sigmoid;
* the step ``s_a = exp(u)`` of every learned activation quantiser
  ``y = s_a (clamp(round(x/s_a) + z, qmin, qmax) - z)``, with the LSQ gradient (Esser et al. 2020)
  ``dy/ds_a = round(x/s_a) - x/s_a`` inside the range and ``qmin - z`` / ``qmax - z`` when clamped,
  and the straight-through ``dy/dx = [qmin < x/s_a + z < qmax]``.

Both are found jointly by Adam on

    L = mean_rows sum_c (block_q(x_q) - block_fp(x_fp))^2 + lam sum (1 - |2 h(V) - 1|^beta)

(``rows``: images times output positions; ``x_q`` the quantised network's input to the block,
so the block also compensates the error that reaches it), with AdaRound's annealing of ``beta``
(regulariser off for the first ``warm_start`` of the iterations; ``lam`` times each weight's
``reg_scale``, e.g. larger for depthwise layers, whose few taps per channel round worse).
QDrop (Wei et al., ICLR 2022), ``drop = p > 0``: during the optimisation every element of every
activation quantiser's output is, independently with probability ``p`` per iteration, the float
input instead of its quantised value (``dy/dx = 1``, no step gradient there), which flattens the
loss landscape for the quantised activations the next blocks will see. The result is hard rounding
``h = [V >= 0]`` and the learned steps; the caller keeps them only when the loss with them is
lower than with nearest rounding and the calibrated steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qcompile.numerics.adaround import GAMMA, ZETA
from qcompile.numerics.reconstruct_ops import BWD, FWD

__all__ = ["Op", "SoftWeight", "Step", "Block", "ReconstructConfig", "reconstruct_block",
           "block_loss"]


@dataclass
class SoftWeight:
    """Soft-rounded weight matrix ``W2[g, o, k]`` (``s``, ``z``: ``[g, o, 1]``)."""

    w2: np.ndarray  # float weights
    s: np.ndarray
    z: np.ndarray
    qmin: int
    qmax: int
    reg_scale: float = 1.0
    v: np.ndarray = field(init=False)
    base: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        ws = self.w2 / self.s
        self.base = np.floor(ws)
        rest = np.clip(ws - self.base, 1e-4, 1 - 1e-4)
        self.v = -np.log((ZETA - GAMMA) / (rest - GAMMA) - 1.0).astype(self.w2.dtype)
        self.lo, self.hi = self.qmin - self.z, self.qmax - self.z

    def codes(self, mode: str) -> np.ndarray:
        """Integer offsets ``q - z``: ``nearest``, ``hard`` (``V >= 0``) or ``soft`` (h(V))."""
        if mode == "nearest":
            return np.clip(np.rint(self.w2 / self.s), self.lo, self.hi)
        h = (self.v >= 0).astype(self.w2.dtype) if mode == "hard" else _h(self.v)
        return np.clip(self.base + h, self.lo, self.hi)

    def weight(self, mode: str) -> np.ndarray:
        return (self.s * self.codes(mode)).astype(self.w2.dtype)

    def grad_v(self, gw: np.ndarray, reg: float, beta: float | None) -> np.ndarray:
        """``dL/dV`` from ``dL/dW2`` (soft mode) plus the rounding regulariser."""
        sig = 1.0 / (1.0 + np.exp(-self.v))
        hraw = sig * (ZETA - GAMMA) + GAMMA
        soft = self.base + np.clip(hraw, 0.0, 1.0)
        gh = gw * self.s * ((soft > self.lo) & (soft < self.hi))
        if beta is not None:
            t = 2.0 * np.clip(hraw, 0.0, 1.0) - 1.0
            gh = gh + reg * self.reg_scale * (-2.0 * beta) * np.abs(t) ** (beta - 1.0) * np.sign(t)
        return gh * ((ZETA - GAMMA) * sig * (1.0 - sig)) * ((hraw > 0.0) & (hraw < 1.0))


def _h(v: np.ndarray) -> np.ndarray:
    return np.clip(1.0 / (1.0 + np.exp(-v)) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


@dataclass
class Step:
    """A per-tensor activation quantiser; ``learn``: its step is a parameter (``log s``)."""

    s: float
    z: float
    qmin: int
    qmax: int
    learn: bool = True
    s0: float = field(init=False)

    def __post_init__(self) -> None:
        self.s0 = self.s


@dataclass(frozen=True)
class Op:
    """``out = kind(ins)``; ``arg``: conv/gemm ``(geom, weight, bias)`` (``weight`` an int index
    into the block's :class:`SoftWeight` list or a fixed ``W2`` array), clip ``(lo, hi)``, qdq an
    index into the block's :class:`Step` list, reshape the output shape without the batch, slice
    a tuple of slices, pad ``np.pad`` widths (zeros)."""

    kind: str  # conv gemm relu clip add qdq gap reshape identity slice pad
    ins: tuple[str, ...]
    out: str
    arg: Any = None


@dataclass
class Block:
    ops: list[Op]
    weights: list[SoftWeight]
    steps: list[Step]
    output: str
    drop: float = 0.0  # QDrop probability while optimising (0 outside reconstruct_block)
    rng: np.random.Generator | None = None

    # -- forward -------------------------------------------------------------------------
    def forward(self, feeds: dict[str, np.ndarray], mode: str, keep: bool = False
                ) -> tuple[np.ndarray, list]:
        """The block output for ``feeds`` (and the per-op caches when ``keep``)."""
        env = dict(feeds)
        wts = [w.weight(mode) for w in self.weights]
        caches: list = []
        for op in self.ops:
            xs = [env[i] for i in op.ins]
            y, c = FWD[op.kind](self, op, xs, wts)
            env[op.out] = y
            if keep:
                caches.append(c)
        if keep:
            caches.append(wts)
        return env[self.output], caches

    def backward(self, gout: np.ndarray, caches: list) -> tuple[list[np.ndarray], np.ndarray]:
        """``(dL/dW2 per weight, dL/ds per step)`` given ``dL/d output``."""
        wts = caches[-1]
        gw = [np.zeros_like(w) for w in wts]
        gs = np.zeros(len(self.steps))
        grads: dict[str, np.ndarray] = {self.output: gout}
        for op, c in zip(reversed(self.ops), reversed(caches[:-1]), strict=True):
            g = grads.pop(op.out, None)
            if g is None:
                continue
            gins = BWD[op.kind](self, op, g, c, wts, gw, gs)
            for name, gi in zip(op.ins, gins, strict=True):
                if gi is None:
                    continue
                grads[name] = grads[name] + gi if name in grads else gi
        return gw, gs


# -- optimisation -----------------------------------------------------------------------------
@dataclass(frozen=True)
class ReconstructConfig:
    iterations: int = 500
    lr: float = 0.01  # Adam on the rounding variables V
    lr_act: float = 0.004  # Adam on log(step) of the activation quantisers
    batch: int = 16  # images per iteration
    reg: float = 0.01
    beta_start: float = 20.0
    beta_end: float = 2.0
    warm_start: float = 0.2
    drop: float = 0.0  # QDrop: probability of keeping an activation element in float


class _Adam:
    def __init__(self, lr: float) -> None:
        self.lr, self.t, self.m, self.v = lr, 0, None, None

    def step(self, p: np.ndarray, g: np.ndarray) -> None:
        if self.m is None:
            self.m, self.v = np.zeros_like(g), np.zeros_like(g)
        self.t += 1
        self.m = 0.9 * self.m + 0.1 * g
        self.v = 0.999 * self.v + 0.001 * g * g
        mh = self.m / (1 - 0.9 ** self.t)
        vh = self.v / (1 - 0.999 ** self.t)
        p -= (self.lr * mh / (np.sqrt(vh) + 1e-8)).astype(p.dtype)


def _rows(y: np.ndarray) -> int:
    return int(np.prod(y.shape)) // (y.shape[1] if y.ndim > 1 else 1)


def block_loss(blk: Block, inputs: dict[str, np.ndarray], target: np.ndarray, mode: str,
               chunk: int = 64) -> float:
    """``mean_rows sum_c (block(inputs) - target)^2`` over every image (float64 sum)."""
    n = len(target)
    tot, rows = 0.0, 0
    for a in range(0, n, chunk):
        y, _ = blk.forward({k: v[a:a + chunk] for k, v in inputs.items()}, mode)
        d = (y - target[a:a + chunk]).astype(np.float64)
        tot += float((d * d).sum())
        rows += _rows(y)
    return tot / max(rows, 1)


def reconstruct_block(blk: Block, inputs: dict[str, np.ndarray], target: np.ndarray,
                      cfg: ReconstructConfig, rng: np.random.Generator,
                      tick: Callable[[int], None] | None = None) -> None:
    """Adam on ``V`` (every :class:`SoftWeight`) and ``log s`` (every learned :class:`Step`),
    in place; see the module docstring."""
    n = len(target)
    bs = min(cfg.batch, n)
    warm = int(cfg.warm_start * cfg.iterations)
    opt_w = [_Adam(cfg.lr) for _ in blk.weights]
    learn = [i for i, s in enumerate(blk.steps) if s.learn]
    u = np.log(np.array([blk.steps[i].s for i in learn], np.float64))
    opt_s = _Adam(cfg.lr_act)
    perm, at = rng.permutation(n), 0
    blk.drop, blk.rng = cfg.drop, rng  # QDrop only while optimising
    try:
        for it in range(cfg.iterations):
            if at + bs > n:
                perm, at = rng.permutation(n), 0
            idx = np.sort(perm[at:at + bs])
            at += bs
            y, caches = blk.forward({k: v[idx] for k, v in inputs.items()}, "soft", keep=True)
            gy = (2.0 / _rows(y)) * (y - target[idx])
            gw, gs = blk.backward(gy.astype(y.dtype), caches)
            beta = None
            if it >= warm:
                rel = (it - warm) / max(cfg.iterations - warm, 1)
                beta = cfg.beta_end + (cfg.beta_start - cfg.beta_end) * max(0.0, 1.0 - rel)
            for w, g, opt in zip(blk.weights, gw, opt_w, strict=True):
                opt.step(w.v, w.grad_v(g, cfg.reg, beta))
            if learn:
                opt_s.step(u, gs[learn] * np.exp(u))  # d/d log s = s d/ds
                for i, ui in zip(learn, u, strict=True):
                    blk.steps[i].s = float(np.exp(ui))
            if tick is not None and (it + 1) % 10 == 0:
                tick(10)
        if tick is not None and cfg.iterations % 10:
            tick(cfg.iterations % 10)
    finally:
        blk.drop, blk.rng = 0.0, None
