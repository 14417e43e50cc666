"""The calibration record, and the one rule that keeps calibration images out of evaluation.

``calibrate`` writes, in the model's metadata under :data:`CALIB_KEY` (ONNX ``metadata_props``),
a JSON record ``{"source", "size", "indices", "select", "method", "seed", "images", ...}``:
the data set it read (resolved path as given), how many images that set holds, and the
positions of the images it used (in selection order).  Passes that evaluate on held-out images
(``assign``) add theirs to ``indices``.

**The held-out rule.** An evaluation data set ``ds`` is *the same source* as the record when
``resolve(record.source) == resolve(ds.source)`` and ``record.size == len(ds)``; then the
recorded indices are left out, otherwise nothing is.  Every command that scores a model
(``eval``, ``compare``, ``emulate``, ``sweep``, ``report``, ``assign``) applies exactly this rule
through :func:`calibration_indices` / :func:`held_out`.

Works on plain ``Mapping[str, str]`` metadata (a Graph's ``metadata``, an ORT session's custom
metadata), so the data layer needs nothing of the IR.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, MutableMapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CALIB_KEY", "add_indices", "calibration_indices", "held_out", "read_record",
           "same_source", "write_record"]

CALIB_KEY = "qcompile.calibration"


def read_record(metadata: Mapping[str, str] | None) -> dict[str, Any] | None:
    """The parsed record, or None when there is none (or it is not a JSON object)."""
    raw = (metadata or {}).get(CALIB_KEY)
    if not raw:
        return None
    try:
        rec = json.loads(raw)
    except (ValueError, TypeError):
        return None
    return rec if isinstance(rec, dict) else None


def write_record(metadata: MutableMapping[str, str], record: Mapping[str, Any]) -> None:
    metadata[CALIB_KEY] = json.dumps(dict(record), separators=(",", ":"))


def _resolved(p: Any) -> Path | None:
    try:
        return Path(str(p)).resolve()
    except (OSError, RuntimeError, ValueError):
        return None


def same_source(record: Mapping[str, Any] | None, ds: Any) -> bool:
    """The held-out rule's test: same resolved source path and same size."""
    source = getattr(ds, "source", None)
    if not record or "source" not in record or source is None:
        return False
    try:
        size, n = int(record.get("size", -1)), len(ds)
    except (TypeError, ValueError):
        return False
    a, b = _resolved(record["source"]), _resolved(source)
    return a is not None and a == b and size == n


def calibration_indices(metadata: Mapping[str, str] | None, ds: Any) -> np.ndarray:
    """Sorted positions of ``ds`` the model was calibrated on (empty if another source)."""
    rec = read_record(metadata)
    if not same_source(rec, ds):
        return np.zeros(0, np.int64)
    try:
        idx = np.asarray(rec.get("indices", []), np.int64).reshape(-1)
    except (TypeError, ValueError):
        return np.zeros(0, np.int64)
    return np.unique(idx[(idx >= 0) & (idx < len(ds))])


def held_out(ds: Any, metadatas: Iterable[Mapping[str, str] | None]) -> np.ndarray:
    """Positions of ``ds`` used for calibration by none of the models (``metadatas``)."""
    exclude = np.zeros(0, np.int64)
    for md in metadatas:
        exclude = np.union1d(exclude, calibration_indices(md, ds))
    return np.setdiff1d(np.arange(len(ds), dtype=np.int64), exclude)


def add_indices(metadata: MutableMapping[str, str], indices: Iterable[int], key: str,
                count: int) -> None:
    """Add ``indices`` (held-out images a pass scored on) to the record, with ``key: count``."""
    rec = read_record(metadata)
    if rec is None:
        return
    rec["indices"] = sorted(set(rec.get("indices", [])) | {int(i) for i in indices})
    rec[key] = int(count)
    write_record(metadata, rec)
