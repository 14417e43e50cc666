"""Shared helpers of the MPFR kernel property tests: configs and random format inputs."""

from __future__ import annotations

import numpy as np

from qcompile.backends.mpfr.config import EmuConfig, make_config
from qcompile.numerics.formats import Rounding, parse_format


def cfg(fmt: str, mode: str = "nearest", acc: str = "sequential") -> EmuConfig:
    """An emulation config; ``qresnet`` is the C++ engine's compat mode."""
    if fmt == "qresnet":
        return make_config(compat="qresnet", accumulate=acc)
    return EmuConfig(fmt=parse_format(fmt), rounding=Rounding.parse(mode), accumulate=acc)


def rand(rng, shape, special: bool = False, spread: int = 4, special_every: int = 8) -> np.ndarray:
    """Normal values times 2^[-spread, spread]; with ``special``, every ``special_every``-th
    element (on average) replaced by a signed zero, an infinity, NaN or an extreme value."""
    x = rng.normal(size=shape) * np.exp2(rng.integers(-spread, spread + 1, size=shape))
    if special and x.size:
        k = rng.integers(0, x.size, size=max(1, x.size // special_every))
        x.reshape(-1)[k] = rng.choice([0.0, -0.0, np.inf, -np.inf, np.nan, 1e30, 1e-30],
                                      size=k.size)
    return x
