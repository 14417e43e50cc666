"""A self-contained HTML report (``--html report.html`` on run/report/verify/sweep/eval).

One file, no network: inline CSS, a few lines of inline JavaScript (click a column header to
sort a table; the script marks each table ``data-sortable="ready"``), plots as inline SVG drawn
here (no font, script, image or style is fetched: the page references no URL at all). Beside it
``report.json`` (same stem) holds the same data. Every user-controlled string (layer names,
notes, paths) goes through :func:`html.escape`.

Sections, when the command has the data: summary; the per-layer SQNR plot and sortable table
(:class:`~qcompile.driver.report.SqnrReport`; plot layout :func:`~qcompile.driver.report.sqnr_plot`:
y fitted to the data, layer names on x, series apart); weight and activation ranges per layer
(:func:`layer_ranges`: weight min/max from the constants, activation ranges from ``meta[RANGE]``
or, in a quantised graph, the QDQ's representable range ``[(qmin - z) s, (qmax - z) s]``);
sensitivity / assign tables (graph metadata ``qcompile.sensitivity`` / ``qcompile.assign``); the
pipeline with every decline and its reason; verify's per-tensor LSB table; sweep's
accuracy-vs-bits plot; eval's per-class table.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qcompile.driver.report import STYLES, SqnrReport, fitted_axis, label_ticks, sqnr_plot
from qcompile.errors import QCompileError
from qcompile.files import atomic_write, check_output_path

__all__ = ["Page", "check_html_path", "eval_page", "layer_ranges", "pass_report_page",
           "model_graph", "sidecar", "sweep_page", "verify_page", "write_page"]

MAC_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
esc = html.escape


def sidecar(path: str | Path) -> Path:
    """The JSON sidecar of ``path``: ``report.html`` -> ``report.json``."""
    return Path(path).with_suffix(".json")


def check_html_path(path: str | Path, flag: str = "--html") -> Path:
    """Refuse a bad ``--html`` path (and its sidecar's) before any long work."""
    if Path(path).suffix.lower() not in (".html", ".htm"):
        raise QCompileError(f"{flag}: '{path}' should end in .html (a JSON sidecar "
                            f"'{sidecar(path).name}' is written beside it)")
    check_output_path(sidecar(path), flag)
    return check_output_path(path, flag)


@dataclass
class Page:
    title: str
    kind: str
    summary: list[tuple[str, str]] = field(default_factory=list)
    sections: list[tuple[str, str, str]] = field(default_factory=list)  # (id, heading, html)
    data: dict[str, Any] = field(default_factory=dict)

    def add(self, sid: str, heading: str, body: str, key: str | None = None,
            value: Any = None) -> None:
        self.sections.append((sid, heading, body))
        if key is not None:
            self.data[key] = value


# -- values, tables ----------------------------------------------------------------------------
def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.floating, float)):
        v = float(v)
        return v if math.isfinite(v) else ("nan" if math.isnan(v) else "inf" if v > 0 else "-inf")
    if isinstance(v, np.integer):
        return int(v)
    return v if v is None or isinstance(v, (str, int, bool)) else str(v)


def _num(v: Any, digits: int = 2) -> tuple[str, str]:
    """(shown text, sort key) of a cell."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-", ""
    if isinstance(v, (bool, np.bool_)):
        return ("yes" if v else "no"), str(int(v))
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}", str(int(v))
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if math.isinf(v):
            return ("exact" if v > 0 else "-inf"), ("Infinity" if v > 0 else "-Infinity")
        return f"{v:.{digits}f}", repr(v)
    return str(v), None  # text: sorted by its text


def table(tid: str, headers: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 2) -> str:
    """A sortable table; numeric cells carry ``data-v`` (their value) for the sort script."""
    head = "".join(f"<th scope=col>{esc(h)}</th>" for h in headers)
    body = []
    for r in rows:
        cells = []
        for v in r:
            text, key = _num(v, digits)
            attr = "" if key is None else f' data-v="{esc(key)}" class=n'
            cells.append(f"<td{attr}>{esc(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div class=tw><table class=sortable id="{esc(tid)}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


# -- SVG ----------------------------------------------------------------------------------------
def _ticks(lo: float, hi: float, n: int = 6) -> list[float]:
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    return [k * step for k in range(math.ceil(lo / step), math.floor(hi / step) + 1)]


def svg_chart(series: Sequence[dict], *, ylim: tuple[float, float], xlim: tuple[float, float],
              xlabels: dict[float, str], ylabel: str, xlabel: str, title: str,
              width: int = 900, height: int = 380, hline: tuple[float, str] | None = None,
              band: float | None = None, rotate: bool = True) -> str:
    """Line/marker chart. A series: ``{"label", "pts": [(x, y, tooltip)], "lines": bool,
    "marks": [(x, y, tooltip)], "bars": [(x, lo, hi, tooltip)]}``; ``y`` NaN breaks the line,
    marks get a marker only. Style ``k`` of STYLES."""
    ml, mr, mt = 64, 16, 30
    mb = 120 if rotate else 48
    leg = 18 * ((len(series) + (hline is not None) + 2) // 3)
    H = height + leg
    pw, ph = width - ml - mr, height - mt - mb
    (x0, x1), (y0, y1) = xlim, ylim
    X = lambda x: ml + (x - x0) / ((x1 - x0) or 1) * pw  # noqa: E731
    Y = lambda y: mt + ph - (min(max(y, y0), y1) - y0) / ((y1 - y0) or 1) * ph  # noqa: E731
    o = [f'<svg role=img width="{width}" height="{H}" '
         f'viewBox="0 0 {width} {H}" font-family="sans-serif" font-size="11">',
         f"<title>{esc(title)}</title>",
         f'<text x="{width / 2}" y="16" text-anchor=middle font-size="13">{esc(title)}</text>']
    if band is not None:
        o.append(f'<rect x="{ml}" y="{mt}" width="{pw}" height="{Y(band) - mt:.1f}" '
                 f'fill="#ececec"><title>above {band:.1f}: exact or far above the data '
                 "(values in the legend and tooltips)</title></rect>")
    for t in _ticks(y0, y1 if band is None else band):
        o.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{Y(t):.1f}" y2="{Y(t):.1f}" '
                 f'stroke="#ddd"/><text x="{ml - 6}" y="{Y(t) + 4:.1f}" text-anchor=end>'
                 f"{t:g}</text>")
    for x, lab in xlabels.items():
        px = X(x)
        tr = f' transform="rotate(-60 {px:.1f} {mt + ph + 12})"' if rotate else ""
        o.append(f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{mt + ph}" y2="{mt + ph + 4}" '
                 f'stroke="#888"/><text x="{px:.1f}" y="{mt + ph + 14}" font-size="9" '
                 f'text-anchor="{"end" if rotate else "middle"}"{tr}>{esc(lab)}</text>')
    o.append(f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>')
    o.append(f'<text x="{ml + pw / 2}" y="{height - 6}" text-anchor=middle>{esc(xlabel)}</text>')
    o.append(f'<text transform="rotate(-90 14 {mt + ph / 2})" x="14" y="{mt + ph / 2}" '
             f"text-anchor=middle>{esc(ylabel)}</text>")
    if hline is not None:
        o.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{Y(hline[0]):.1f}" y2="{Y(hline[0]):.1f}" '
                 f'stroke="#000" stroke-dasharray="5 4"><title>{esc(hline[1])}</title></line>')
    for k, s in enumerate(series):
        st = STYLES[k % len(STYLES)]
        c, dash = st["color"], st["dash"]
        for x, lo, hi, tip in s.get("bars", ()):
            o.append(f'<line x1="{X(x):.1f}" x2="{X(x):.1f}" y1="{Y(lo):.1f}" y2="{Y(hi):.1f}" '
                     f'stroke="{c}" stroke-width="3"><title>{esc(tip)}</title></line>')
        pts = s.get("pts", [])
        if s.get("lines", True):
            seg: list[str] = []
            for x, y, _ in [*pts, (0, math.nan, "")]:
                if math.isnan(y):
                    if len(seg) > 1:
                        o.append(f'<polyline fill="none" stroke="{c}" stroke-width="1.4" '
                                 f'stroke-dasharray="{dash}" points="{" ".join(seg)}"/>')
                    seg = []
                else:
                    seg.append(f"{X(x):.1f},{Y(y):.1f}")
        fill = "none" if k % 2 else c
        for x, y, tip in [*pts, *s.get("marks", ())]:  # marks: markers without a line
            if not math.isnan(y):
                o.append(_marker(st["marker"], X(x), Y(y), c, fill, tip))
    lx, ly = ml, height + 4
    items = [(s["label"], STYLES[k % len(STYLES)]) for k, s in enumerate(series)]
    for i, (lab, st) in enumerate(items + ([(hline[1], None)] if hline else [])):
        x, y = lx + (i % 3) * (pw / 3), ly + 18 * (i // 3)
        if st is None:
            o.append(f'<line x1="{x}" x2="{x + 22}" y1="{y}" y2="{y}" stroke="#000" '
                     'stroke-dasharray="5 4"/>')
        else:
            o.append(f'<line x1="{x}" x2="{x + 22}" y1="{y}" y2="{y}" stroke="{st["color"]}" '
                     f'stroke-dasharray="{st["dash"]}"/>'
                     + _marker(st["marker"], x + 11, y, st["color"],
                               "none" if i % 2 else st["color"], lab))
        o.append(f'<text x="{x + 28}" y="{y + 4}">{esc(lab)}</text>')
    o.append("</svg>")
    return "".join(o)


def _marker(m: str, x: float, y: float, c: str, fill: str, tip: str) -> str:
    t = f"<title>{esc(tip)}</title>"
    a = f'fill="{fill}" stroke="{c}" stroke-width="1.3"'
    if m == "o":
        return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" {a}>{t}</circle>'
    if m == "s":
        return f'<rect x="{x - 3.2:.1f}" y="{y - 3.2:.1f}" width="6.4" height="6.4" {a}>{t}</rect>'
    shapes = {"^": [(0, -4.5), (4, 3), (-4, 3)], "v": [(0, 4.5), (4, -3), (-4, -3)],
              "D": [(0, -4.5), (4, 0), (0, 4.5), (-4, 0)]}
    pts = shapes.get(m, [(-4, -4), (4, 4), (0, 0), (4, -4), (-4, 4), (0, 0)])
    pp = " ".join(f"{x + dx:.1f},{y + dy:.1f}" for dx, dy in pts)
    return f'<polygon points="{pp}" {a}>{t}</polygon>'


def _width(n: int) -> int:
    return int(min(max(900, 90 + 13 * n), 2600))


def sqnr_svg(rep: SqnrReport) -> str:
    pl = sqnr_plot(rep)
    series = []
    for s in pl["series"]:
        pts = [(x, y, f"{rep.layers[round(x)]}: {y:.2f} dB") for x, y in zip(s["x"], s["y"])]
        marks = [(x, y, s["label"]) for x, y in zip(s["x_above"], s["y_above"])]
        series.append({"label": s["label"], "pts": pts, "marks": marks})
    return svg_chart(series, ylim=pl["ylim"], xlim=(-0.7, len(rep.layers) - 0.3),
                     xlabels={i: rep.layers[i] for i in pl["ticks"]}, ylabel="SQNR (dB)",
                     xlabel="layer (graph order" + (f"; one name per {pl['step']} layers)"
                                                    if pl["step"] > 1 else ")"),
                     title=rep.title, width=_width(len(rep.layers)),
                     band=pl["band"] if pl["above"] else None)


def sqnr_section(page: Page, rep: SqnrReport, sid: str = "sqnr") -> None:
    labels = list(rep.series)
    rows = [[i, n, op, *[rep.series[lab][i] for lab in labels], "; ".join(rep.notes.get(n, []))]
            for i, (n, op) in enumerate(zip(rep.layers, rep.ops))]
    body = (sqnr_svg(rep) + table(f"{sid}-table", ["#", "layer", "op", *[f"{lab} (dB)"
                                                                         for lab in labels],
                                                   "notes (declines and why)"], rows))
    page.add(sid, rep.title, body, sid, rep.to_json())


# -- ranges -------------------------------------------------------------------------------------
def _qtype(node) -> tuple[int, int, str] | None:
    """(qmin, qmax, name) of a ``qcompile.QDQ`` (bits/signed) or an ONNX Q/DQ (zero point's
    type; uint8 without one)."""
    from qcompile.numerics.quant import QType

    if node.domain != "":
        bits, signed = int(node.attrs.get("bits", 8)), bool(node.attrs.get("signed", 0))
        qt = QType(bits, signed)
        return (-1, 1, qt.name) if bits == 2 else (qt.qmin, qt.qmax, qt.name)
    z = node.inputs[2] if len(node.inputs) > 2 else None
    dt = np.dtype(np.uint8) if z is None or not z.is_const else z.const.dtype
    if dt.kind not in "iu":
        return None
    info = np.iinfo(dt)
    return int(info.min), int(info.max), dt.name


def _qparams(node) -> tuple[np.ndarray, np.ndarray] | None:
    s = node.inputs[1]
    z = node.inputs[2] if len(node.inputs) > 2 else None
    if s is None or not s.is_const:
        return None
    return (np.asarray(s.const, np.float64),
            np.asarray(z.const, np.float64) if z is not None and z.is_const else np.zeros(1))


def _qdq_range(node) -> tuple[float, float, str] | None:
    """``[(qmin - z) s, (qmax - z) s]`` of a QDQ / QuantizeLinear (min/max over channels)."""
    qt, qp = _qtype(node), _qparams(node)
    if qt is None or qp is None:
        return None
    sc, zp = qp
    return (float(np.min((qt[0] - zp) * sc)), float(np.max((qt[1] - zp) * sc)),
            f"{'QDQ' if node.domain else node.op} {qt[2]}")


def _dequantised(node) -> tuple[float, float] | None:
    """min/max of ``(q - z) s`` for a DequantizeLinear of integer constants (``axis``)."""
    q, qp = node.inputs[0], _qparams(node)
    if q is None or not q.is_const or qp is None or q.const.size == 0:
        return None
    sc, zp = qp
    codes = np.asarray(q.const, np.float64)
    if sc.size > 1:
        shape = [1] * codes.ndim
        shape[int(node.attrs.get("axis", 1)) % codes.ndim] = sc.size
        sc = sc.reshape(shape)
        zp = zp.reshape(shape) if zp.size > 1 else zp
    w = (codes - zp) * sc
    return float(w.min()), float(w.max())


def layer_ranges(graph) -> list[dict[str, Any]]:
    """Per layer output (:data:`pass_report.LAYER_OPS` nodes): weight min/max (MAC layers; the
    float constant under the weight's QDQ, or dequantised integer codes) and the activation
    range: ``meta[RANGE]`` (calibrated) or the consuming QDQ's representable range."""
    from qcompile.driver.pass_report import LAYER_OPS
    from qcompile.ir import RANGE, is_op

    rows = []
    for n in graph.nodes:
        if n.domain != "" or n.op not in LAYER_OPS or not n.outputs:
            continue
        out = n.outputs[0]
        if not out.type.dtype.is_float:
            continue
        row: dict[str, Any] = {"layer": out.name, "op": n.op, "w_min": None, "w_max": None,
                               "weights": None, "a_lo": None, "a_hi": None, "activations": None}
        w = n.inputs[1] if n.op in MAC_OPS and len(n.inputs) > 1 else None
        if w is not None and w.producer is not None and is_op(w.producer, "DequantizeLinear",
                                                              domain=""):
            d = w.producer
            row["w_min"], row["w_max"] = _dequantised(d) or (None, None)
            row["weights"] = f"DequantizeLinear {_qtype(d)[2] if _qtype(d) else ''}".strip()
            w = None
        if w is not None and w.producer is not None and is_op(w.producer, "QDQ"):
            q = w.producer
            r = _qdq_range(q)
            row["weights"] = r[2] if r else "QDQ"
            w = q.inputs[0]
            if w is not None and w.is_const and not w.type.dtype.is_float and r is not None:
                w = None  # integer codes: the representable range is what we know
                row["w_min"], row["w_max"] = r[0], r[1]
        if w is not None and w.is_const and w.const.size:
            row["w_min"], row["w_max"] = float(w.const.min()), float(w.const.max())
            row["weights"] = row["weights"] or "float"
        rng = out.meta.get(RANGE)
        qdq = next((u.node for u in out.uses() if u.index == 0 and (
            is_op(u.node, "QDQ") or is_op(u.node, "QuantizeLinear", domain=""))), None)
        if rng is not None:
            row.update(a_lo=float(rng.lo), a_hi=float(rng.hi), activations=f"calibrated "
                       f"({rng.method})")
        elif qdq is not None and (r := _qdq_range(qdq)) is not None:
            row.update(a_lo=r[0], a_hi=r[1], activations=r[2])
        rows.append(row)
    return rows


def model_graph(path: str | Path):
    """The lifted model file (QDQ pairs as ``qcompile.QDQ``), for its ranges and metadata."""
    from qcompile.frontend import lift

    return lift(path)


def ranges_section(page: Page, rows: list[dict[str, Any]], note: str = "") -> None:
    if not rows:
        return
    names = [r["layer"] for r in rows]
    ticks, step = label_ticks(len(rows))
    xl = {i: names[i] for i in ticks}
    parts = []
    for lo_k, hi_k, what in (("w_min", "w_max", "weight"), ("a_lo", "a_hi", "activation")):
        bars = [(i, r[lo_k], r[hi_k], f"{r['layer']}: [{r[lo_k]:.4g}, {r[hi_k]:.4g}]")
                for i, r in enumerate(rows) if r[lo_k] is not None]
        if not bars:
            parts.append(f"<p>No {what} ranges in this graph.</p>")
            continue
        parts.append(svg_chart([{"label": f"{what} range [min, max] per layer", "bars": bars,
                                 "pts": [(b[0], b[2], b[3]) for b in bars] +
                                 [(b[0], b[1], b[3]) for b in bars], "lines": False}],
                               ylim=fitted_axis([v for b in bars for v in b[1:3]]),
                               xlim=(-0.7, len(rows) - 0.3), xlabels=xl, ylabel=what,
                               xlabel="layer (graph order" + (f"; one name per {step} layers)"
                                                              if step > 1 else ")"),
                               title=f"{what.capitalize()} range per layer",
                               width=_width(len(rows))))
    tab = table("ranges-table", ["#", "layer", "op", "weight min", "weight max", "weights",
                                 "activation lo", "activation hi", "activation range from"],
                [[i, r["layer"], r["op"], r["w_min"], r["w_max"], r["weights"], r["a_lo"],
                  r["a_hi"], r["activations"]] for i, r in enumerate(rows)], digits=4)
    page.add("ranges", "Weight and activation ranges", (f"<p>{esc(note)}</p>" if note else "")
             + "".join(parts) + tab, "ranges", rows)


def metadata_sections(page: Page, metadata: dict[str, str]) -> None:
    """Sensitivity (``qcompile.sensitivity``) and assign (``qcompile.assign``) tables."""
    def load(key):
        try:
            return json.loads(metadata[key]) if key in metadata else None
        except ValueError:
            return None

    sens = load("qcompile.sensitivity")
    if sens:
        rows = [[r.get("layer"), r.get("op"), r.get("params"), r.get("format"), r.get("drop"),
                 r.get("sqnr"), r.get("sqnr_vs_base")] for r in sens.get("layers", [])]
        page.add("sensitivity", "Sensitivity (one layer lowered at a time)",
                 f"<p>{esc(str(sens.get('images')))} held-out images; FP32 "
                 f"{100 * float(sens.get('fp32', 0)):.2f}%, base "
                 f"{100 * float(sens.get('base', 0)):.2f}%.</p>"
                 + table("sensitivity-table", ["layer", "op", "params", "format",
                                               "drop (points)", "SQNR (dB)", "vs base (dB)"],
                         rows), "sensitivity", sens)
    asg = load("qcompile.assign")
    if asg:
        layers = asg.get("layers") or {}
        body = f"<p>policy {esc(str(asg.get('policy')))}, average weight bits " \
               f"{esc(str(asg.get('avg_weight_bits')))}</p>"
        if isinstance(layers, dict) and layers:
            body += table("assign-table", ["layer", "weight format"], list(layers.items()))
        page.add("assign", "Precision assignment", body, "assign", asg)


def passes_section(page: Page, passes: list[dict[str, Any]]) -> None:
    rows = [[i, p["pass"], p.get("modified"), p.get("seconds"),
             ", ".join(f"{k}={v}" for k, v in p.get("stats", {}).items()) or "-",
             len(p.get("notes", []))] for i, p in enumerate(passes)]
    dec = "".join(f"<li><code>{esc(p['pass'].split('{')[0])}</code>: {esc(n)}</li>"
                  for p in passes for n in p.get("notes", []))
    page.add("pipeline", "Pipeline and declines",
             table("passes-table", ["#", "pass", "modified", "seconds", "stats", "declines"],
                   rows) + (f"<h3>Every decline, with its reason</h3><ul class=dec>{dec}</ul>"
                            if dec else "<p>No pass declined anything.</p>"), "passes", passes)


# -- pages per command --------------------------------------------------------------------------
def pass_report_page(rep, graph=None, title: str = "") -> Page:
    """``qcompile report`` / ``run --html``: a :class:`~qcompile.driver.pass_report.PassReport`
    and the graph after the last pass (ranges, sensitivity)."""
    p = Page(title or rep.sqnr.title, "report",
             [("evaluation images", f"{rep.images} from {rep.source}"),
              ("pipeline", ",".join(x["pass"] for x in rep.passes))])
    p.data.update(images=rep.images, data=rep.source)
    sqnr_section(p, rep.sqnr)
    if graph is not None:
        ranges_section(p, layer_ranges(graph), "The graph after the last pass.")
        metadata_sections(p, dict(graph.metadata))
    passes_section(p, rep.passes)
    return p


def verify_page(res, graph=None) -> Page:
    """``qcompile verify``: verdict, per quantised tensor LSB table (+ SQNR with --reference)."""
    j = res.to_json()
    p = Page(f"verify {Path(res.model).name}", "verify",
             [("verdict", res.verdict), ("images", f"{res.images} from {res.data}"),
              ("ORT", f"{res.ort_version}, opt level {res.opt_level}, {res.device}"),
              ("first departure", (res.first_departure.name if res.first_departure else "none"))])
    rows = [[i, t.name, t.op, t.kernel, t.compared, t.equal, t.compared - t.equal, t.max_lsb]
            + ([res.isolated[i].max_lsb] if res.isolated else []) for i, t in enumerate(res.tensors)]
    pts = [(i, float(t.max_lsb), f"{t.name}: {t.max_lsb} LSB") for i, t in enumerate(res.tensors)]
    ticks, _ = label_ticks(len(pts))
    chart = svg_chart([{"label": "max |ORT - exact| (LSB)", "pts": pts}],
                      ylim=fitted_axis([q[1] for q in pts] + [0.0]), xlim=(-0.7, len(pts) - 0.3),
                      xlabels={i: res.tensors[i].name for i in ticks}, ylabel="LSB",
                      xlabel="quantised tensor (graph order)", title="Largest departure per "
                      "quantised tensor", width=_width(len(pts))) if pts else ""
    p.add("tensors", "Quantised tensors: ORT vs the exact quantised network", chart + table(
        "verify-table", ["#", "tensor", "op", "ORT kernel", "compared", "equal", "differ",
                         "max LSB"] + (["isolated max LSB"] if res.isolated else []), rows),
          "verify", j)
    if res.reference_report is not None:
        sqnr_section(p, res.reference_report, "reference")
    if graph is not None:
        ranges_section(p, layer_ranges(graph), "Ranges the QDQ scales of this model can "
                       "represent; weights dequantised.")
    return p


def sweep_page(rep: dict) -> Page:
    from qcompile.driver.sweep import plot_points

    p = Page(f"sweep {Path(rep['model']).name}", "sweep",
             [("evaluation images", str(rep["images"])),
              ("calibration images", str(rep["calibration_images"])),
              ("FP32 top-1", f"{100 * rep['fp32_top1']:.2f}%"), ("arithmetic", rep["arith"])])
    fams = plot_points(rep)
    series = [{"label": fam, "pts": [(x, y, f"{f}: {y:.2f}%") for x, y, f in pts]}
              for fam, pts in fams.items()]
    ys = [y for pts in fams.values() for _, y, _ in pts] + [100 * rep["fp32_top1"]]
    xs = [x for pts in fams.values() for x, _, _ in pts] or [0.0]
    bits = sorted({r["bits"] for r in rep["rows"]})
    chart = svg_chart(series, ylim=fitted_axis(ys), xlim=(min(xs) - 1, max(xs) + 1),
                      xlabels={b: str(b) for b in bits}, ylabel="top-1 accuracy (%)",
                      xlabel="bits per value (families side by side)", rotate=False,
                      title="Accuracy vs bits", hline=(100 * rep["fp32_top1"], "FP32"))
    rows = [[r["format"], r["family"], r["bits"], r["backend"], 100 * r["top1"], r["drop"],
             100 * r["agreement"], r.get("seconds")] for r in rep["rows"]]
    p.add("sweep", "Uniform formats", chart + table(
        "sweep-table", ["format", "family", "bits", "backend", "top-1 (%)", "drop (points)",
                        "agreement with FP32 (%)", "seconds"], rows), "sweep", rep)
    return p


def eval_page(rep: dict, graph=None) -> Page:
    base = rep.get("fp32_baseline")
    p = Page(f"eval {Path(rep['model']).name}", "eval",
             [("images", f"{rep['images']} from {rep['data']}"),
              ("top-1", f"{100 * rep['top1']:.2f}%"), ("top-5", f"{100 * rep['top5']:.2f}%"),
              ("size", f"{rep['size_bytes'] / 1e6:.2f} MB ({'int8' if rep['int8'] else 'float'})")]
             + ([("FP32 baseline", f"{100 * base['top1']:.2f}% ({base['model']})")] if base
                else []) + [(f"latency batch {k}", f"{v:.2f} ms")
                            for k, v in (rep.get("latency_ms") or {}).items()])
    pc = list(rep["per_class"].items())
    pts = [(i, 100 * v["accuracy"], f"{k}: {100 * v['accuracy']:.1f}% of {v['images']}")
           for i, (k, v) in enumerate(pc)]
    ticks, _ = label_ticks(len(pc))
    chart = svg_chart([{"label": "top-1 per class (%)", "pts": pts}],
                      ylim=fitted_axis([q[1] for q in pts]), xlim=(-0.7, len(pc) - 0.3),
                      xlabels={i: pc[i][0] for i in ticks}, ylabel="top-1 (%)", xlabel="class",
                      title="Accuracy per class", width=_width(len(pc))) if pc else ""
    p.add("classes", "Per-class accuracy", chart + table(
        "class-table", ["class", "top-1 (%)", "images"],
        [[k, 100 * v["accuracy"], v["images"]] for k, v in pc]), "eval", rep)
    if graph is not None:
        ranges_section(p, layer_ranges(graph))
    return p


# -- rendering ----------------------------------------------------------------------------------
CSS = """body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#222}
header{background:#1f3b57;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}
nav{padding:6px 24px;background:#eef2f6}nav a{margin-right:14px;color:#1f3b57}
main{padding:8px 24px 40px}section{margin:18px 0}h2{font-size:17px;border-bottom:1px solid #ccc}
.tw{overflow-x:auto;max-height:640px;overflow-y:auto;border:1px solid #ddd}
table{border-collapse:collapse;font-size:12px}th,td{padding:3px 8px;border-bottom:1px solid #eee}
th{position:sticky;top:0;background:#f4f6f8;cursor:pointer;text-align:left;user-select:none}
th[aria-sort=ascending]::after{content:" \\25B2"}th[aria-sort=descending]::after{content:" \\25BC"}
td.n{text-align:right;font-variant-numeric:tabular-nums}tr:hover td{background:#fafbe6}
.sv{overflow-x:auto}dl{display:grid;grid-template-columns:max-content auto;gap:2px 16px}
dt{font-weight:600}ul.dec{font-size:12px;max-height:360px;overflow-y:auto}"""

JS = """(function(){function key(c){var v=c.getAttribute('data-v');
if(v===null)return c.textContent.toLowerCase();return v===''?null:Number(v);}
document.querySelectorAll('table.sortable').forEach(function(t){
var hs=t.tHead.rows[0].cells;Array.prototype.forEach.call(hs,function(th,i){th.tabIndex=0;
th.title='click to sort';function go(){var asc=th.getAttribute('aria-sort')!=='ascending';
Array.prototype.forEach.call(hs,function(h){h.removeAttribute('aria-sort');});
th.setAttribute('aria-sort',asc?'ascending':'descending');var b=t.tBodies[0];
var rs=Array.prototype.slice.call(b.rows);rs.sort(function(r,s){var x=key(r.cells[i]),
y=key(s.cells[i]);if(x===null||y===null)return x===y?0:(x===null?1:-1);
return (x<y?-1:x>y?1:0)*(asc?1:-1);});rs.forEach(function(r){b.appendChild(r);});}
th.addEventListener('click',go);th.addEventListener('keydown',function(e){
if(e.key==='Enter')go();});});t.setAttribute('data-sortable','ready');});})();"""


def render(page: Page, side: str = "") -> str:
    nav = "".join(f'<a href="#{esc(sid)}">{esc(h)}</a>' for sid, h, _ in page.sections)
    summ = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in page.summary)
    secs = "".join(f'<section id="{esc(sid)}"><h2>{esc(h)}</h2><div class=sv>{body}</div>'
                   "</section>" for sid, h, body in page.sections)
    return (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><meta name=viewport "
            f'content="width=device-width,initial-scale=1"><title>{esc(page.title)}</title>'
            f"<style>{CSS}</style></head><body><header><h1>{esc(page.title)}</h1>"
            f"<div>qcompile {esc(page.kind)}" + (f"; the same data as JSON: {esc(side)}"
                                                 if side else "") + "</div></header>"
            f"<nav>{nav}</nav><main><section id=summary>"
            f"<dl>{summ}</dl></section>{secs}</main><script>{JS}</script></body></html>\n")


def write_page(page: Page, path: str | Path) -> tuple[Path, Path]:
    """Write the HTML and its JSON sidecar atomically (both paths checked first)."""
    check_html_path(path)
    side = sidecar(path)
    data = {"title": page.title, "kind": page.kind, "summary": dict(page.summary),
            **page.data}
    atomic_write(side, json.dumps(_jsonable(data), indent=1), "--html")
    return atomic_write(path, render(page, side.name), "--html"), side
