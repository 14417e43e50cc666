"""Per-layer SQNR reports: one home for the table and the plot that ``qcompile report`` (low-bit
passes), ``qcompile verify --reference`` and ``qcompile sweep`` print.

A report is a list of layers (tensor name + producing op) and one or more *series* (a label such
as ``"after fold"`` or ``"int8 vs fp64"``) of SQNR values in dB, one per layer:

    SQNR(ref, test) = 10 log10( sum ref^2 / sum (ref - test)^2 )

accumulated over every batch before the ratio is taken (so it is the SQNR of the whole
evaluation set, not a mean of per-image values).  ``inf`` means bit-identical.
Notes (e.g. which passes declined a layer and why) ride along per layer.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qcompile.errors import QCompileError
from qcompile.files import atomic_write, atomic_write_with

__all__ = ["SqnrReport", "pyplot", "save_figure"]


def _fmt_db(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if math.isinf(v):
        return "exact" if v > 0 else "-inf"
    return f"{v:.1f}"


def _jnum(v: float | None):
    if v is None or math.isnan(v):
        return None
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return round(float(v), 3)


@dataclass
class SqnrReport:
    """Layers x series table of SQNR (dB); ``notes[layer]`` lists remarks (declines and why)."""

    title: str
    layers: list[str]
    ops: list[str]
    series: dict[str, list[float | None]] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)

    def add_series(self, label: str, values: Mapping[str, float] | Sequence[float | None]) -> None:
        """Add one column; a mapping is looked up by layer name (missing layers become ``None``)."""
        if isinstance(values, Mapping):
            vals = [values.get(n) for n in self.layers]
        else:
            vals = list(values)
            if len(vals) != len(self.layers):
                raise ValueError(f"series '{label}': {len(vals)} values for {len(self.layers)} layers")
        self.series[label] = vals

    def note(self, layer: str, text: str) -> None:
        self.notes.setdefault(layer, []).append(text)

    # -- renderings ---------------------------------------------------------------------------
    def to_markdown(self) -> str:
        labels = list(self.series)
        head = "| # | layer | op | " + " | ".join(f"{lab} (dB)" for lab in labels) + " | notes |"
        sep = "|---|---|---|" + "---|" * len(labels) + "---|"
        lines = [f"### {self.title}", "", head, sep]
        for i, (name, op) in enumerate(zip(self.layers, self.ops)):
            cells = " | ".join(_fmt_db(self.series[lab][i]) for lab in labels)
            note = "; ".join(self.notes.get(name, [])).replace("|", "/")
            lines.append(f"| {i} | {name} | {op} | {cells} | {note} |")
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict:
        return {"title": self.title,
                "layers": [{"name": n, "op": o, "notes": self.notes.get(n, []),
                            **{lab: _jnum(self.series[lab][i]) for lab in self.series}}
                           for i, (n, o) in enumerate(zip(self.layers, self.ops))]}

    def save_markdown(self, path: str | Path) -> Path:
        return atomic_write(path, self.to_markdown())

    def save_json(self, path: str | Path) -> Path:
        return atomic_write(path, json.dumps(self.to_json(), indent=2))

    def save_png(self, path: str | Path, *, cap_db: float = 100.0) -> Path:
        """SQNR per layer, one line per series; exact layers are drawn at ``cap_db``."""
        plt = pyplot()
        x = np.arange(len(self.layers))
        fig, ax = plt.subplots(figsize=(max(6.0, 0.18 * len(self.layers) + 3), 4))
        for lab, vals in self.series.items():
            y = np.array([np.nan if v is None else min(v, cap_db) for v in vals], np.float64)
            ax.plot(x, y, marker="o", ms=3, lw=1, label=lab)
        ax.set_xlabel("layer (topological order)")
        ax.set_ylabel("SQNR (dB)")
        ax.set_title(self.title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        return save_figure(fig, path)


def save_figure(fig, path: str | Path, **savefig_kw) -> Path:
    """Save a matplotlib figure as PNG atomically (temporary sibling, then rename) and close it."""
    plt = pyplot()
    try:
        return atomic_write_with(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png",
                                                              **savefig_kw), suffix=".png")
    finally:
        plt.close(fig)


def pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise QCompileError("PNG plots need matplotlib: pip install 'qcompile[bench]' "
                            "(or omit the .png output)") from None
    return plt
