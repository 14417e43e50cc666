"""Error metrics between a reference and a test signal (pure numpy): the one home of SQNR.

``SQNR(ref, test) = 10 log10( sum ref^2 / sum (ref - test)^2 )`` in dB, computed in float64;
``inf`` when the two are equal (zero noise), ``-inf`` for a zero signal with nonzero noise.
Over several batches the two sums are accumulated first and the ratio is taken once
(:class:`SqnrAccumulator`), so the result is the SQNR of the whole set, not a mean of
per-batch values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from qcompile.errors import QCompileError

__all__ = ["SqnrAccumulator", "max_abs", "sqnr_db", "sqnr_from_sums"]


def sqnr_from_sums(signal: float, noise: float) -> float:
    """``10 log10(signal / noise)`` with ``inf`` for zero noise and ``-inf`` for zero signal."""
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def sqnr_db(ref: np.ndarray, test: np.ndarray) -> float:
    """SQNR of ``test`` against ``ref`` over all elements (float64 sums)."""
    r = np.asarray(ref, np.float64)
    t = np.asarray(test, np.float64)
    return sqnr_from_sums(float(np.sum(r ** 2)), float(np.sum((r - t) ** 2)))


def max_abs(ref: np.ndarray, test: np.ndarray) -> float:
    d = np.abs(np.asarray(ref, np.float64) - np.asarray(test, np.float64))
    return float(d.max()) if d.size else 0.0


class SqnrAccumulator:
    """Accumulates ``sum ref^2`` and ``sum (ref - test)^2`` per name over batches (float64)."""

    def __init__(self) -> None:
        self.signal: dict[str, float] = {}
        self.noise: dict[str, float] = {}

    def add(self, name: str, ref: np.ndarray, test: np.ndarray) -> None:
        r = np.asarray(ref, np.float64)
        t = np.asarray(test, np.float64)
        if r.shape != t.shape:
            raise QCompileError(f"tensor '{name}': shapes differ ({r.shape} vs {t.shape})")
        self.signal[name] = self.signal.get(name, 0.0) + float(np.sum(r * r))
        self.noise[name] = self.noise.get(name, 0.0) + float(np.sum((r - t) ** 2))

    def add_all(self, ref: Mapping[str, np.ndarray], test: Mapping[str, np.ndarray],
                names: Sequence[str] | None = None) -> None:
        for n in (names if names is not None else [k for k in ref if k in test]):
            self.add(n, ref[n], test[n])

    def sqnr(self, name: str) -> float:
        return sqnr_from_sums(self.signal[name], self.noise[name])

    def result(self, names: Sequence[str] | None = None) -> list[float]:
        return [self.sqnr(n) for n in (names if names is not None else self.signal)]
