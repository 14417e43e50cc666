"""Interpreter listeners: per-layer overflow/underflow counts, ``--verify`` against the
reference engine, ``--dump`` of golden vectors.  A listener is called as
``listener(node, inputs, outputs)`` after each node (engine tensors)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from qcompile.backends.mpfr.config import EmuConfig


def _kernel_flag(node, flag) -> bool:
    """A flag the node's kernel declares (``ops_shape.data_movement`` / ``exact``); both op
    tables declare the same flags (tests/backends/test_mpfr_op_tables.py)."""
    from qcompile.backends.mpfr.ops_fast import FAST

    return bool(getattr(FAST.lookup(node), flag, False))


def _f64(a) -> np.ndarray:
    a = np.asarray(a)
    return a if a.dtype == np.float64 else a.astype(np.float64)


class LayerStats:
    """Per layer (node): ``overflow`` = output values that are +-inf or NaN (or +-max in a
    saturating / inf-less format); ``underflow`` = nonzero outputs below the smallest normal
    value (subnormal results)."""

    def __init__(self, cfg: EmuConfig) -> None:
        f = cfg.fmt
        self.min_normal = f.min_normal if f.bounded else None
        self.maxf = f.max_finite if (f.bounded and (f.saturate or not f.has_inf)) else None
        self.rows: dict[str, dict] = {}

    def __call__(self, node, inputs, outputs) -> None:
        if not len(outputs) or _kernel_flag(node, "exact"):
            return  # exact ops (selections, copies) never round: nothing to count
        if np.asarray(outputs[0]).dtype.kind not in "fO":
            return  # integer results (Cast to int) are not format values
        y = _f64(outputs[0])
        a = np.abs(y)
        ovf = int(np.count_nonzero(~np.isfinite(y)))
        if self.maxf is not None:
            ovf += int(np.count_nonzero(a == self.maxf))
        udf = 0
        if self.min_normal is not None:
            udf = int(np.count_nonzero((a < self.min_normal) & (a != 0)))
        row = self.rows.setdefault(node.name, {"name": node.name, "op": node.op, "values": 0,
                                               "overflow": 0, "underflow": 0})
        row["values"] += int(y.size)
        row["overflow"] += ovf
        row["underflow"] += udf

    def report(self) -> list[dict]:
        return list(self.rows.values())


def same_bits(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise bit identity of float64 arrays (all NaNs equal; -0 != +0)."""
    a, b = _f64(a), _f64(b)
    return (a.view(np.int64) == b.view(np.int64)) | (np.isnan(a) & np.isnan(b))


_TWO_D_ONLY_A = frozenset({"Gemm", "MatMul"})  # a non-constant 2-D B is not batch-indexed


def _batch_rows(node, inputs, y) -> list[bool] | None:
    """Which inputs carry the batch row-for-row with ``y`` (so one image's outputs need only
    that image's rows of them), or None when the node may mix rows: an ``axis`` of 0
    (Concat, Softmax, Split...), or no input of ``y``'s rank and leading size."""
    axis = node.attrs.get("axis", 1)
    if y.ndim < 2 or y.shape[0] < 2 or (isinstance(axis, int) and axis % y.ndim == 0):
        return None
    rows = []
    for i, (v, a) in enumerate(zip(node.inputs, inputs)):
        a = None if a is None else np.asarray(a)
        rows.append(a is not None and v is not None and not v.is_const and a.ndim == y.ndim
                    and a.shape[0] == y.shape[0] and (i == 0 or node.op not in _TWO_D_ONLY_A
                                                       or a.ndim > 2))
    return rows if any(rows) else None


class Verifier:
    """Recompute ``k`` random output elements of every rounding layer with the reference
    engine, from the fast engine's own inputs to that layer (first time each layer runs).
    On a batch the ``k`` elements come from one random image, and only that image's rows of
    the batch-carrying inputs go to the reference (turning a batch of 50 activations into
    exact mpfr objects cost minutes per model; one image's rows, seconds)."""

    def __init__(self, cfg: EmuConfig, k: int, seed: int = 0) -> None:
        from qcompile.backends.mpfr.interpreter import RefEngine

        self.k = k
        self.ref = RefEngine(cfg)
        self.rng = np.random.default_rng(seed)
        self.seen: set[str] = set()
        self.checked = 0
        self.layers = 0
        self.mismatches: list[dict] = []

    def __call__(self, node, inputs, outputs) -> None:
        if node.name in self.seen or _kernel_flag(node, "data_movement"):
            return  # data movement: one implementation serves both engines
        self.seen.add(node.name)
        if not len(outputs) or np.asarray(outputs[0]).dtype.kind not in "fO":
            return  # integer results (Cast to int) are not format values
        y = _f64(outputs[0])
        if y.size == 0:
            return
        rows = _batch_rows(node, inputs, y)
        b = int(self.rng.integers(y.shape[0])) if rows else None
        yb = y[b:b + 1] if rows else y
        n = min(self.k, yb.size)
        flat = self.rng.choice(yb.size, size=n, replace=False)
        idx = [tuple(int(t) for t in np.unravel_index(f, yb.shape)) for f in flat]
        if rows:
            inputs = [a[b:b + 1] if r else a for a, r in zip(inputs, rows)]
        args = [None if a is None else (self.ref.from_numpy(a) if np.asarray(a).dtype.kind == "f"
                                        else a) for a in inputs]
        kernel = self.ref.table.lookup(node)
        from qcompile.backends.mpfr.ref import to_float

        got = to_float(np.array(kernel(self.ref, *args, sample=idx, **node.attrs), dtype=object))
        want = np.array([yb[i] for i in idx])
        if rows:  # report the element's place in the batch
            idx = [(b,) + i[1:] for i in idx]
        ok = same_bits(got, want)
        self.checked += n
        self.layers += 1
        for i in np.flatnonzero(~ok):
            self.mismatches.append({"layer": node.name, "op": node.op, "index": list(idx[i]),
                                    "fast": repr(float(want[i])), "reference": repr(float(got[i]))})

    def report(self) -> dict:
        return {"elements": self.checked, "layers": self.layers, "per_layer": self.k,
                "mismatches": len(self.mismatches), "examples": self.mismatches[:10]}


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:80] or "value"


class DumpListener:
    """Write each layer's outputs as ``DIR/img<index>/<nnn>_<node>.npz`` (float64, exact values
    of the format; keys = output value names) plus ``DIR/manifest.json``."""

    def __init__(self, folder: str, cfg: EmuConfig) -> None:
        self.dir = Path(folder)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cfg = cfg
        self.cur: Path | None = None
        self.k = 0
        self.files: list[str] = []

    def start(self, index: int, feeds: dict) -> None:
        self.cur = self.dir / f"img{index:05d}"
        self.cur.mkdir(exist_ok=True)
        self.k = 0
        np.savez(self.cur / "000_input_fp32.npz", **{k: np.asarray(v) for k, v in feeds.items()})

    def __call__(self, node, inputs, outputs) -> None:
        if self.cur is None:
            return
        self.k += 1
        p = self.cur / f"{self.k:03d}_{_safe(node.name)}.npz"
        np.savez(p, **{_safe(v.name): _f64(t) for v, t in zip(node.outputs, outputs)})
        self.files.append(str(p))

    def finish(self) -> dict:
        man = {"config": self.cfg.to_json(), "files": self.files,
               "note": "float64 arrays holding exact values of the format, one file per layer"}
        (self.dir / "manifest.json").write_text(json.dumps(man, indent=1))
        return {"dir": str(self.dir), "files": len(self.files)}
