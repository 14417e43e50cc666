"""Calibration-set selection maths: which ``take`` of ``n`` images to calibrate on.

All three rules are deterministic functions of ``seed`` and return sorted int64 indices.

* :func:`select_random`: the first ``take`` entries of ``default_rng(seed).permutation(n)``
  (exactly :func:`~qcompile.data.dataset.calib_eval_split`, the historical behaviour).
* :func:`select_stratified`: with labels ``y``, the classes are visited round-robin in a seeded
  random order, each class contributing its next image from a seeded permutation of its own
  images, until ``take`` are chosen; so every class appears at least once when
  ``take >= #classes`` and class counts differ by at most one (while a class has images left).
* :func:`k_center`: greedy farthest-point selection (Gonzalez 1985) on feature vectors
  ``f_i``: starting from the given centres ``S`` (or one seeded random point), repeatedly add
  ``argmax_i min_{s in S} ||f_i - f_s||`` (first index on ties).  It is a 2-approximation of
  the k-center problem ``min_S max_i min_{s in S} ||f_i - f_s||``: the chosen set covers the
  feature space with the smallest radius up to a factor 2, so outliers and rare modes get a
  representative, unlike a random draw.  Features are standardised per dimension (z-score
  over the candidates; constant dimensions dropped) so no unit or scale dominates.
"""

from __future__ import annotations

import numpy as np

from qcompile.data.dataset import calib_eval_split

__all__ = ["SELECT_MODES", "coverage_radius", "draw_limit", "k_center", "select_random",
           "select_stratified", "standardise", "stratified_order"]

SELECT_MODES = ("random", "stratified", "diverse")


def select_random(n: int, take: int, seed: int) -> np.ndarray:
    return calib_eval_split(n, take, seed)[0]


def stratified_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """All indices of ``labels`` in round-robin class order (see the module docstring)."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    classes = rng.permutation(np.unique(labels))
    pools = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    out = []
    depth = max((len(p) for p in pools), default=0)
    for r in range(depth):
        out.extend(int(p[r]) for p in pools if r < len(p))
    return np.asarray(out, np.int64)


def select_stratified(labels: np.ndarray, take: int, seed: int) -> np.ndarray:
    return np.sort(stratified_order(labels, seed)[:take])


def standardise(features: np.ndarray) -> np.ndarray:
    """[m, d] float64 features, z-scored per dimension (constant dimensions dropped)."""
    f = np.asarray(features, np.float64).reshape(len(features), -1)
    sd = f.std(axis=0)
    keep = sd > 0
    if not keep.any():
        return np.zeros((len(f), 1))
    return (f[:, keep] - f[:, keep].mean(axis=0)) / sd[keep]


def k_center(features: np.ndarray, k: int, seed: int,
             start: np.ndarray | list[int] | None = None) -> np.ndarray:
    """Positions (into ``features``) of ``k`` points chosen by greedy farthest-point
    selection, in the order chosen; ``start`` = initial centres (else one seeded random)."""
    f = standardise(features)
    m = len(f)
    k = min(int(k), m)
    if k <= 0:
        return np.zeros(0, np.int64)
    chosen = [int(i) for i in (start if start is not None else [])][:k]
    if not chosen:
        chosen = [int(np.random.default_rng(seed).integers(m))]
    sq = (f * f).sum(axis=1)
    d = np.full(m, np.inf)
    for c in chosen:
        d = np.minimum(d, sq - 2.0 * f @ f[c] + sq[c])
    d[chosen] = -1.0
    while len(chosen) < k:
        c = int(np.argmax(d))
        chosen.append(c)
        d = np.minimum(d, sq - 2.0 * f @ f[c] + sq[c])
        d[chosen] = -1.0
    return np.asarray(chosen, np.int64)


def coverage_radius(features: np.ndarray, chosen: np.ndarray) -> float:
    """max_i min_{s in chosen} ||f_i - f_s|| on the standardised features (a diagnostic)."""
    f = standardise(features)
    sq = (f * f).sum(axis=1)
    c = f[np.asarray(chosen)]
    d2 = sq[:, None] - 2.0 * f @ c.T + (c * c).sum(axis=1)[None]
    return float(np.sqrt(max(0.0, d2.min(axis=1).max())))


def draw_limit(candidates: np.ndarray, limit: int | None, seed: int = 0,
               labels: np.ndarray | None = None) -> tuple[np.ndarray, dict | None]:
    """What ``--limit N`` means in every command: ``N`` of the ``candidates`` (dataset
    positions already past the held-out rule, :func:`qcompile.data.calibration.held_out`),
    drawn class-stratified (:func:`stratified_order` over the candidates' ``labels``, seeded)
    or, without labels, the first ``N`` of a seeded permutation.  Returns (sorted indices,
    the JSON record ``{"n", "seed", "rule"}``; None when nothing was cut)."""
    cand = np.asarray(candidates, np.int64)
    if limit is None or int(limit) >= cand.size:
        return cand, None
    take = max(int(limit), 0)
    if labels is not None:
        order = stratified_order(np.asarray(labels)[cand], seed)
        rule = "stratified"
    else:
        order = np.random.default_rng(seed).permutation(cand.size)
        rule = "random"
    return np.sort(cand[order[:take]]), {"n": take, "seed": int(seed), "rule": rule}
