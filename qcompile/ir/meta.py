"""Typed keys for ``meta`` (analysis results only; backends never read ``meta``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class MetaKey(Generic[T]):
    name: str

    def __repr__(self) -> str:
        return f"MetaKey({self.name})"


@dataclass(frozen=True)
class Range:
    """Observed range of a value over the calibration data (after the observer's clipping)."""

    lo: float
    hi: float
    method: str = "minmax"


RANGE: MetaKey[Range] = MetaKey("range")
