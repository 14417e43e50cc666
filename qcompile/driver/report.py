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

from qcompile.errors import QCompileError
from qcompile.files import atomic_write, atomic_write_with

__all__ = ["STYLES", "SqnrReport", "fitted_axis", "label_ticks", "pyplot", "save_figure",
           "sqnr_plot"]


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

    def save_png(self, path: str | Path) -> Path:
        """SQNR per layer, one line per series (:func:`sqnr_plot` says how it is laid out)."""
        plt = pyplot()
        pl = sqnr_plot(self)
        n = len(self.layers)
        fig, ax = plt.subplots(figsize=(min(max(7.0, 0.16 * n + 3), 30.0), 5.2))
        for k, s in enumerate(pl["series"]):
            st = STYLES[k % len(STYLES)]
            ax.plot(s["x"], s["y"], marker=st["marker"], ms=4 if s["points"] > 3 else 8,
                    lw=1.2, ls=st["dash_mpl"], color=st["color"], label=s["label"],
                    mfc="none" if k % 2 else st["color"])
            ax.plot(s["x_above"], s["y_above"], marker=st["marker"], ms=7, ls="none",
                    color=st["color"], mfc="none" if k % 2 else st["color"])
        lo, hi = pl["ylim"]
        if pl["above"]:
            ax.axhspan(pl["band"], hi, color="0.92", zorder=0)
            ax.text(0.005, hi, f" above {pl['band']:.0f} dB / exact (value in legend)",
                    transform=ax.get_yaxis_transform(), va="top", fontsize=7, color="0.35")
        ax.set_ylim(lo, hi)
        ax.set_xlim(-0.7, n - 0.3)
        ticks = pl["ticks"]
        ax.set_xticks(ticks, [self.layers[i] for i in ticks], rotation=60, ha="right",
                      fontsize=6 if n > 40 else 7)
        ax.set_xlabel("layer (graph order" + (f"; one name per {pl['step']} layers)"
                                             if pl["step"] > 1 else ")"))
        ax.set_ylabel("SQNR (dB)")
        ax.set_title(self.title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        return save_figure(fig, path)


# Series styles shared by the PNG (matplotlib) and SVG (html_report) plots: colour-blind-safe
# colours (Okabe-Ito), with a marker and a dash pattern each, so overlapping lines stay apart.
STYLES = [dict(color=c, marker=m, dash=d, dash_mpl=dm) for c, m, d, dm in (
    ("#0072B2", "o", "", "-"), ("#D55E00", "s", "6 3", "--"), ("#009E73", "^", "2 2", ":"),
    ("#CC79A7", "D", "8 3 2 3", "-."), ("#E69F00", "v", "", "-"), ("#56B4E9", "P", "6 3", "--"),
    ("#000000", "X", "2 2", ":"), ("#999999", "*", "8 3 2 3", "-."))]


def fitted_axis(values: Sequence[float], *, pad: float = 0.08, min_span: float = 2.0
                ) -> tuple[float, float]:
    """Axis limits fitted to the finite ``values``: ``[min - pad*span, max + pad*span]`` with
    ``span = max(max - min, min_span)`` (a flat series still gets a readable axis)."""
    v = [float(x) for x in values if x is not None and math.isfinite(x)]
    if not v:
        return 0.0, 1.0
    lo, hi = min(v), max(v)
    span = max(hi - lo, min_span)
    mid = (lo + hi) / 2 if hi - lo < min_span else None
    if mid is not None:
        lo, hi = mid - span / 2, mid + span / 2
    return lo - pad * span, hi + pad * span


def label_ticks(n: int, most: int = 40) -> tuple[list[int], int]:
    """Which of ``n`` categorical x positions get a name: every ``step``-th, at most ``most``."""
    step = max(1, math.ceil(n / most))
    return list(range(0, n, step)), step


def sqnr_plot(rep: SqnrReport) -> dict:
    """The layout of an SQNR-per-layer plot, shared by the PNG and the HTML report's SVG.

    The y axis is fitted (:func:`fitted_axis`) to the finite values of the *per-layer* series
    (those with more than 3 values; all series if there is none), so 8-30 dB data fills the
    plot. Values above it (``inf`` = exact, and float stages that are compared on the graph
    outputs only, typically > 100 dB) are drawn in a grey band at the top, each series at its
    own height, and the legend label carries their values. Series ``k`` of ``m`` is shifted by
    ``(k - (m-1)/2) * 0.5/m`` layer so points at the same layer do not hide each other."""
    items = list(rep.series.items())
    main = [v for _, vals in items if sum(x is not None for x in vals) > 3 for v in vals]
    if not any(v is not None and math.isfinite(v) for v in main):
        main = [v for _, vals in items for v in vals]
    lo, hi = fitted_axis(main)
    above = any(v is not None and (math.isinf(v) and v > 0 or v > hi)
                for _, vals in items for v in vals)
    band = hi
    if above:  # room for the band: 10% of the plot above the fitted data
        hi = band + 0.12 * (hi - lo)
    m = len(items)
    lifted = [k for k, (_, vals) in enumerate(items)
              if any(v is not None and v > band for v in vals)]
    out = []
    for k, (lab, vals) in enumerate(items):
        dx = (k - (m - 1) / 2) * (0.5 / max(m, 1))
        x, y, xa, ya, over = [], [], [], [], []
        for i, v in enumerate(vals):
            if v is None or math.isnan(v):
                x.append(i + dx)
                y.append(math.nan)
            elif v > band:
                xa.append(i + dx)
                # stacked in the band, one height per series, so they never coincide
                ya.append(band + (hi - band) * (lifted.index(k) + 1) / (len(lifted) + 1))
                over.append(f"{rep.layers[i]} {_fmt_db(v)}" + ("" if math.isinf(v) else " dB"))
                x.append(i + dx)
                y.append(math.nan)
            else:
                x.append(i + dx)
                y.append(float(v))
        points = sum(v is not None for v in vals)
        label = lab + (f" ({'; '.join(over)})" if over and points <= 3 else
                       f" ({len(over)} above)" if over else "")
        out.append({"label": label, "x": x, "y": y, "x_above": xa, "y_above": ya,
                    "points": points})
    ticks, step = label_ticks(len(rep.layers))
    return {"series": out, "ylim": (lo, hi), "band": band, "above": above, "ticks": ticks,
            "step": step}


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
        raise QCompileError("PNG plots need matplotlib, a qcompile dependency that is missing "
                            "here: pip install matplotlib (or omit the .png output)") from None
    return plt
