"""Streaming range observers for calibration (pure numpy, mergeable, O(1) memory per tensor).

``update(x)`` folds one batch in; ``merge(other)`` adds another observer's data (per-batch
observers merged into a running one give the same state as one observer over all batches);
``range()`` returns ``(lo, hi)``.

:class:`MinMaxObserver` keeps the running extremes.

:class:`HistogramObserver` keeps an exact-merge histogram: ``2*bins`` bins of width
``w = R / bins`` over ``[-R, R)``, anchored at 0, with ``R = 2**k`` the smallest power of two
covering ``max|x|``. When data outgrows ``R`` the width doubles (k -> k+m) and bin ``i`` moves
to ``floor(i / 2**m)``, which is exact because the grid is anchored at zero; two histograms
merge by bringing both to the larger ``R``. At least ``bins/2`` bins span the data on its wider
side. Ranges derived from it (``method``):

* ``minmax``: the observed extremes (exact, not binned).
* ``percentile``: one-sided data (``min >= 0``) keeps ``lo = min`` and takes ``hi`` at quantile
  ``p/100``; two-sided data clips each tail at ``(1 - p/100)/2``. Linear within a bin.
* ``entropy``: TensorRT's KL-divergence threshold search on the ``|x|`` histogram (exact zeros
  left out: every candidate represents them exactly, and ReLU's spike would dominate): for each
  candidate threshold ``t`` (bin edge), reference ``P`` = histogram up to ``t`` with the outliers
  added to the last bin, ``Q`` = ``P`` merged into ``levels`` quantisation bins and spread back
  uniformly over the non-empty source bins; pick ``argmin KL(P || Q)`` over 160 evenly spaced
  candidate edges. ``levels`` is
  ``2**bits`` for one-sided data and ``2**(bits-1)`` for two-sided data.
* ``mse``: scale the observed range by ``a`` in ``(0, 1]`` (``candidates`` values) and pick the
  ``a`` minimising ``sum_bins count * (c - Q(c))**2`` for bin centres ``c`` with the uniform
  ``2**bits``-level quantiser on ``[a lo, a hi]`` (clipping error included).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["MinMaxObserver", "HistogramObserver", "METHODS", "make_observer"]

METHODS = ("minmax", "percentile", "entropy", "mse")
_CHUNK = 1 << 16
_KL_CANDIDATES = 160  # thresholds tried (evenly spaced bin edges); KL costs O(bins) each


class MinMaxObserver:
    """Running minimum and maximum of the finite values seen."""

    def __init__(self) -> None:
        self.lo = math.inf
        self.hi = -math.inf
        self.count = 0

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x)
        if x.size == 0:
            return
        lo, hi = float(np.min(x)), float(np.max(x))
        if not (math.isfinite(lo) and math.isfinite(hi)):
            f = x[np.isfinite(x)]
            if f.size == 0:
                return
            lo, hi = float(f.min()), float(f.max())
        self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)
        self.count += x.size

    def merge(self, other: MinMaxObserver) -> None:
        self.lo, self.hi = min(self.lo, other.lo), max(self.hi, other.hi)
        self.count += other.count

    def range(self, method: str = "minmax", **_: object) -> tuple[float, float]:
        if self.count == 0:
            return 0.0, 0.0
        return self.lo, self.hi


class HistogramObserver:
    """Exact-merge histogram with ``bins`` bins per side (see the module docstring)."""

    def __init__(self, bins: int = 2048) -> None:
        if bins < 16 or bins & (bins - 1):
            raise ValueError(f"histogram bins must be a power of two >= 16, got {bins}")
        self.bins = bins
        self.k: int | None = None  # R = 2**k
        self.counts = np.zeros(2 * bins, np.int64)
        self.zeros = 0  # exact zeros (ReLU's spike), all inside bin `bins`
        self.minmax = MinMaxObserver()

    @property
    def width(self) -> float:
        return math.ldexp(1.0, self.k) / self.bins if self.k is not None else 0.0

    def _grow(self, k: int) -> None:
        if self.k is None:
            self.k = k
            return
        if k <= self.k:
            return
        f = 1 << (k - self.k)
        offs = np.arange(-self.bins, self.bins)
        new = np.floor_divide(offs, f) + self.bins
        self.counts = np.bincount(new, weights=self.counts, minlength=2 * self.bins
                                  ).astype(np.int64)
        self.k = k

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, np.float32).ravel()
        before = self.minmax.count
        self.minmax.update(x)
        if self.minmax.count == before:
            return
        if not np.all(np.isfinite([self.minmax.lo, self.minmax.hi])):
            return
        if x.size and not np.isfinite(x).all():
            x = x[np.isfinite(x)]
        amax = max(-self.minmax.lo, self.minmax.hi)
        k = math.frexp(amax)[1] if amax > 0 else -126  # 2**k > amax
        self._grow(k)
        # x * inv + bins is exact (inv is a power of two); truncation of the non-negative
        # shifted value is floor. Chunks keep the temporaries in cache (~4 ns per element).
        inv = np.float32(self.bins / math.ldexp(1.0, self.k))
        n2 = 2 * self.bins
        self.zeros += x.size - int(np.count_nonzero(x))
        for s in range(0, x.size, _CHUNK):
            t = x[s:s + _CHUNK] * inv
            t += np.float32(self.bins)
            np.clip(t, 0, n2 - 1, out=t)
            self.counts += np.bincount(t.astype(np.intp), minlength=n2)

    def merge(self, other: HistogramObserver) -> None:
        if other.bins != self.bins:
            raise ValueError("cannot merge histograms with different bin counts")
        if other.k is None:
            return
        o = HistogramObserver(self.bins)
        o.k, o.counts = other.k, other.counts.copy()
        k = max(other.k, self.k if self.k is not None else other.k)
        self._grow(k)
        o._grow(k)
        self.counts += o.counts
        self.zeros += other.zeros
        self.minmax.merge(other.minmax)

    # -- ranges -------------------------------------------------------------------------
    def range(self, method: str = "minmax", *, percentile: float = 99.99, bits: int = 8,
              candidates: int = 128) -> tuple[float, float]:
        lo, hi = self.minmax.range()
        if self.k is None or method == "minmax" or lo == hi:
            return lo, hi
        if method == "percentile":
            r = self._percentile(percentile)
        elif method == "entropy":
            r = self._entropy(bits)
        elif method == "mse":
            r = self._mse(bits, candidates)
        else:
            raise ValueError(f"unknown calibration method {method!r}; use {', '.join(METHODS)}")
        return max(lo, min(r[0], 0.0)), min(hi, max(r[1], 0.0))

    def _edges(self) -> np.ndarray:
        return (np.arange(-self.bins, self.bins + 1, dtype=np.float64)) * self.width

    def _quantile(self, q: float) -> float:
        c = np.cumsum(self.counts, dtype=np.float64)
        total = c[-1]
        target = q * total
        i = int(np.searchsorted(c, target, side="left"))
        i = min(i, len(c) - 1)
        prev = c[i - 1] if i > 0 else 0.0
        frac = 0.0 if self.counts[i] == 0 else (target - prev) / self.counts[i]
        e = self._edges()
        return float(e[i] + frac * (e[i + 1] - e[i]))

    def _percentile(self, p: float) -> tuple[float, float]:
        if not 0 < p <= 100:
            raise ValueError(f"percentile must be in (0, 100], got {p}")
        tail = 1.0 - p / 100.0
        lo, _ = self.minmax.range()
        if lo >= 0:
            return lo, self._quantile(1.0 - tail)
        return self._quantile(tail / 2), self._quantile(1.0 - tail / 2)

    def _magnitude(self) -> tuple[np.ndarray, bool]:
        pos = self.counts[self.bins:].astype(np.float64)
        neg = self.counts[:self.bins][::-1].astype(np.float64)
        two_sided = self.minmax.lo < 0
        return (pos + neg if two_sided else pos), two_sided

    def _entropy(self, bits: int) -> tuple[float, float]:
        hist, two_sided = self._magnitude()
        # Exact zeros are represented exactly by every candidate (z is an integer); left in,
        # ReLU's spike at 0 dominates KL and drags the threshold down to `levels` bins.
        hist[0] -= self.zeros
        levels = 1 << (bits - 1 if two_sided else bits)
        nz = np.nonzero(hist)[0]
        last = int(nz[-1]) + 1 if nz.size else 1
        hist = hist[:last]
        if last <= levels:
            t = last * self.width
        else:
            starts = np.unique(np.linspace(levels, last, min(last - levels + 1, _KL_CANDIDATES)
                                          ).astype(int))
            kls = [_kl_for_threshold(hist, i, levels) for i in starts]
            t = int(starts[int(np.argmin(kls))]) * self.width
        return (-t if two_sided else 0.0), t

    def _mse(self, bits: int, candidates: int) -> tuple[float, float]:
        lo, hi = self.minmax.range()
        e = self._edges()
        centres = 0.5 * (e[:-1] + e[1:])
        keep = self.counts > 0
        c, n = centres[keep], self.counts[keep].astype(np.float64)
        a = np.linspace(1.0 / candidates, 1.0, candidates)[:, None]
        clo, chi = np.minimum(lo * a, 0.0), np.maximum(hi * a, 0.0)
        steps = (1 << bits) - 1
        s = np.maximum((chi - clo) / steps, 1e-30)
        q = np.clip(np.rint((c[None, :] - clo) / s), 0, steps) * s + clo
        err = ((c[None, :] - q) ** 2 * n[None, :]).sum(axis=1)
        best = int(np.argmin(err))
        return float(clo[best, 0]), float(chi[best, 0])


def _kl_for_threshold(hist: np.ndarray, i: int, levels: int) -> float:
    """KL(P || Q) for the threshold at bin ``i`` (TensorRT's entropy calibration)."""
    p = hist[:i].copy()
    p[-1] += hist[i:].sum()
    nonzero = hist[:i] > 0
    # merge i source bins into `levels` quantised bins
    edges = np.linspace(0, i, levels + 1)
    idx = np.minimum(np.searchsorted(edges, np.arange(i), side="right") - 1, levels - 1)
    qsum = np.bincount(idx, weights=hist[:i], minlength=levels)
    qcnt = np.bincount(idx, weights=nonzero.astype(np.float64), minlength=levels)
    with np.errstate(divide="ignore", invalid="ignore"):
        per = np.where(qcnt > 0, qsum / qcnt, 0.0)
    q = np.where(nonzero, per[idx], 0.0)
    ps, qs = p.sum(), q.sum()
    if ps == 0 or qs == 0:
        return math.inf
    p, q = p / ps, q / qs
    m = p > 0
    if np.any(q[m] == 0):
        # a reference bin with mass but an empty quantised bin (only the outlier bin): smooth
        q = np.where(m & (q == 0), 1e-12, q)
    return float(np.sum(p[m] * np.log(p[m] / q[m])))


def make_observer(method: str, bins: int = 2048) -> MinMaxObserver | HistogramObserver:
    """A fresh observer for ``method`` (minmax needs no histogram)."""
    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}; use {', '.join(METHODS)}")
    return MinMaxObserver() if method == "minmax" else HistogramObserver(bins)
