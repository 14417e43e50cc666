"""Error metrics between a reference and a test signal (pure numpy).

``sqnr_db(ref, test) = 10 log10( sum(ref**2) / sum((ref - test)**2) )`` (``inf`` when equal),
computed in float64.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["sqnr_db", "max_abs"]


def sqnr_db(ref: np.ndarray, test: np.ndarray) -> float:
    r = np.asarray(ref, np.float64)
    t = np.asarray(test, np.float64)
    noise = float(np.sum((r - t) ** 2))
    signal = float(np.sum(r ** 2))
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def max_abs(ref: np.ndarray, test: np.ndarray) -> float:
    d = np.abs(np.asarray(ref, np.float64) - np.asarray(test, np.float64))
    return float(d.max()) if d.size else 0.0
