"""Library logic of ``qcompile sweep``: accuracy and top-1 agreement per uniform number format.

For each format the model is folded, calibrated once (``calib_images`` images drawn by the
calibrate pass's seeded split) and then

* integer ``intN``: ``quantize{weights=intN, activations=uintN}`` (per-channel symmetric
  weights, calibrated minmax activation ranges; int16 through ``assign``) run by ONNX Runtime;
* float / posit ``F``: ``assign{policy=uniform, weights=F, activations=F, keep=none}`` (explicit
  ``qcompile.FQ`` ops, amax scaling) run by the MPFR fast engine with the arithmetic in
  ``arith`` (default fp32) between the FQ ops.

Every layer gets the format (nothing kept). Evaluation images are ``limit`` images drawn with a
seeded permutation from the images that are *not* calibration images; the FP32 reference (ONNX Runtime, the model as
given) runs on the same images. ``expand_formats`` understands ranges ``b12e4..b20e4`` (every
width, same exponent bits) and ``posit8_1..posit16_1`` (every n, same es).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qcompile.errors import OptionError, QCompileError
from qcompile.ir import is_op
from qcompile.numerics.formats import FormatError, parse_any, spellings

_RANGE = re.compile(r"^b(\d+)e(\d+)\.\.b(\d+)e(\d+)$|^posit(\d+)_(\d+)\.\.posit(\d+)_(\d+)$")


def _split(text: str) -> list[str]:
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return [t.strip() for t in out if t.strip()]


def expand_formats(text: str) -> list[str]:
    """``"int8,e4m3,b12e4..b14e4"`` -> ``["int8", "e4m3", "b12e4", "b13e4", "b14e4"]``;
    OptionError (one line, listing the valid families) for anything unknown."""
    out: list[str] = []
    for tok in _split(text or ""):
        t = tok.lower()
        m = _RANGE.match(t)
        if m:
            g = m.groups()
            if g[0] is not None:
                lo, e1, hi, e2, mk = int(g[0]), g[1], int(g[2]), g[3], "b{}e" + g[1]
            else:
                lo, e1, hi, e2, mk = int(g[4]), g[5], int(g[6]), g[7], "posit{}_" + g[5]
            if e1 != e2 or lo > hi:
                raise OptionError(f"--formats: range {tok!r} needs the same exponent part and "
                                  "a rising width, e.g. b12e4..b20e4 or posit8_1..posit16_1")
            out += [mk.format(n) for n in range(lo, hi + 1)]
        else:
            out.append(t)
    if not out:
        raise OptionError("--formats: no format given; e.g. --formats int8,e4m3,bf16,posit8_1")
    for f in out:
        try:
            fmt = parse_any(f)
        except FormatError as e:
            raise OptionError(f"--formats: {e}") from None
        if fmt.family == "int" and (fmt.bits not in (4, 8, 16) or not fmt.signed):
            raise OptionError(f"--formats: {f}: integer formats are int4, int8 or int16 "
                              "(signed weights, unsigned activations of the same width)")
        if fmt.bits is None:
            raise OptionError(f"--formats: {f} has no bit width to plot; use a named format, "
                              "bNeE or positN_ES; valid families: " + "; ".join(spellings()))
    return list(dict.fromkeys(out))


def family(spec: str) -> str:
    """Plot family: ``int``, ``float E=4`` (by exponent bits), ``posit es=1`` (the format's
    ``group``)."""
    return parse_any(spec).group


def pipeline_for(spec: str) -> str:
    """The passes (after fold,calibrate) that make ``spec`` uniform over the model."""
    f = parse_any(spec)
    if f.family == "int" and f.bits == 16:  # quantize stops at int8 weights; assign has int16
        return ("assign{policy=uniform,weights=int16,activations=uint16,keep=none,"
                "weight_scale=minmax}")
    if f.family == "int":
        return (f"quantize{{weights=int{f.bits},activations=uint{f.bits},"
                "reduce_range=false}")
    return f"assign{{policy=uniform,weights={spec},activations={spec},keep=none}}"


@dataclass
class FormatEvaluator:
    """A calibrated float graph plus held-out labelled images in memory; evaluates variants.

    ``evaluate(graph)`` runs graphs with ``qcompile.FQ`` ops on the MPFR fast engine (arithmetic
    ``arith``) and the others on ONNX Runtime; ``run(passes)`` applies passes to a clone of the
    calibrated graph first."""

    model: str
    data: str
    preprocess: str | None = None
    limit: int | None = 1000
    calib_images: int = 256
    calib_method: str = "minmax"
    arith: str = "fp32"
    seed: int = 0
    batch: int = 50
    log: Callable[[str], None] = lambda m: None
    progress: Callable | None = None
    graph: Any = field(init=False)
    labels: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        from qcompile.data.calibration import calibration_indices, held_out
        from qcompile.driver.context import open_data, ort_executor
        from qcompile.driver.defaults import choose_preprocess, graph_facts, limited
        from qcompile.frontend import lift
        from qcompile.passes import PassContext, parse_pipeline, run_pipeline

        self.float_graph = lift(self.model, warn=self.log)
        self.preprocess = choose_preprocess(self.preprocess,
                                            [graph_facts(self.float_graph, str(self.model))],
                                            self.data, self.log)
        self.ds = open_data(self.data, self.preprocess, log=self.log)
        if getattr(self.ds, "labels", None) is None:
            raise QCompileError(f"sweep: {self.data} has no labels (an .npz with 'labels' or "
                                "class folders)")
        self.executor = ort_executor()
        self.ctx = PassContext(calib_data=self.ds, executor=self.executor,
                               rng=np.random.default_rng(self.seed), log=self.log)
        cal = (f"fold,calibrate{{images={self.calib_images},method={self.calib_method},"
               f"seed={self.seed}}}")
        self.graph = run_pipeline(self.float_graph.clone(), parse_pipeline(cal), self.ctx).graph
        self.calib_indices = calibration_indices(self.graph.metadata, self.ds)
        rest = held_out(self.ds, [self.graph.metadata])
        if rest.size == 0:
            raise QCompileError("sweep: no images left for evaluation after calibration; "
                                "lower --calib-images")
        # --limit: the seeded class-stratified draw of every command (data/select.py)
        self.indices, self.limit_record = limited(self.ds, rest, self.limit, self.seed)
        xs, ys = [], []
        for b in self.ds.batches(self.batch, indices=self.indices):
            xs.append(b.x)
            ys.append(b.labels)
        self.xs, self.labels = xs, np.concatenate(ys)
        self.fp32_logits = self._ort(self.float_graph)

    def run(self, passes: str):
        from qcompile.passes import parse_pipeline, run_pipeline

        g = run_pipeline(self.graph.clone(), parse_pipeline(passes), self.ctx).graph
        return g

    def _ort(self, graph) -> np.ndarray:
        name, out = graph.inputs[0].name, graph.outputs[0]
        return np.concatenate([self.executor.run(graph, {name: x}, [out])[out]
                               for x in self.xs]).reshape(len(self.labels), -1)

    def _mpfr(self, graph, desc: str) -> np.ndarray:
        from qcompile.backends.mpfr import Interpreter, make_config

        it = Interpreter(graph, make_config(format=self.arith), "fast")
        it.prepare()
        from qcompile.driver.emulate import warm_kernels

        warm_kernels(it.engine.A, self.log, self.progress)  # first run: announced, with a bar
        name, out = graph.inputs[0].name, graph.outputs[0].name
        bar = self.progress(total=len(self.labels), desc=desc) if self.progress else None
        parts = []
        try:
            for x in self.xs:
                parts.append(it.run_numpy({name: x})[out])
                if bar:
                    bar.update(len(x))
        finally:
            if bar:
                bar.close()
        return np.concatenate(parts).reshape(len(self.labels), -1)

    def evaluate(self, graph, desc: str = "evaluate") -> dict[str, Any]:
        """top-1 accuracy, top-1 agreement with FP32 and the backend used, for ``graph``."""
        t0 = time.perf_counter()
        has_fq = any(is_op(n, "FQ") for n in graph.nodes)
        logits = self._mpfr(graph, desc) if has_fq else self._ort(graph)
        return {**self.score(logits), "backend": "mpfr-fast" if has_fq else "ort",
                "seconds": round(time.perf_counter() - t0, 2)}

    def score(self, logits: np.ndarray) -> dict[str, float]:
        top = np.where(np.isnan(logits), -np.inf, logits).argmax(1)
        ok = (top == self.labels) & ~np.isnan(logits[np.arange(len(top)), top])
        ref = self.fp32_logits.argmax(1)
        return {"top1": float(ok.mean()), "agreement": float((top == ref).mean())}

    @property
    def fp32_top1(self) -> float:
        return float((self.fp32_logits.argmax(1) == self.labels).mean())


def sweep(model: str, data: str, formats: Sequence[str], *, preprocess: str | None = None,
          limit: int | None = 1000, calib_images: int = 256, arith: str = "fp32",
          seed: int = 0, log: Callable[[str], None] = lambda m: None,
          progress: Callable | None = None, cluster: str | None = None) -> dict[str, Any]:
    """Evaluate every uniform format; returns a JSON-ready report (see module docstring).
    ``cluster``: the formats x image batches run on a Dask cluster (:func:`_on_cluster`)."""
    ev = FormatEvaluator(model, data, preprocess, limit, calib_images, arith=arith, seed=seed,
                         log=log, progress=progress)
    fp32 = ev.fp32_top1
    rows = []
    done = _on_cluster(cluster, ev, formats, log, progress) if cluster else {}
    for spec in formats:
        passes = pipeline_for(spec)
        r = done[spec] if cluster else ev.evaluate(ev.run(passes), desc=f"sweep {spec}")
        rows.append({"format": spec, "family": family(spec), "bits": parse_any(spec).bits,
                     "pipeline": "fold,calibrate," + passes, **r,
                     "drop": round(100 * (fp32 - r["top1"]), 3)})
        log(f"sweep: {spec:<10} top-1 {100 * r['top1']:.2f}%  agreement "
            f"{100 * r['agreement']:.2f}%  ({r['backend']}, {r['seconds']} s)")
    return {"model": str(model), "data": str(data), "images": int(len(ev.labels)),
            "calibration_images": int(ev.calib_indices.size), "arith": arith,
            "limit": ev.limit_record,
            "fp32_top1": fp32, "rows": rows}


def _on_cluster(spec: str, ev: FormatEvaluator, formats: Sequence[str], log, progress
                ) -> dict[str, dict[str, Any]]:
    """Every format's graph (built here, broadcast once) x every batch of the held-out images
    (shipped once each) as one shard on a Dask cluster (:mod:`qcompile.driver.cluster`); the
    batches are the local run's, so each format's logits are the same bits."""
    from qcompile.driver.cluster import job_key, open_cluster, pack

    graphs = {f: ev.run(pipeline_for(f)) for f in formats}
    with open_cluster(spec, log) as c:
        log(f"cluster: the {len(ev.labels)} held-out images travel once, in {len(ev.xs)} "
            "batches")
        xs = c.client.scatter(list(ev.xs), hash=False)
        jobs = {f: c.broadcast({"key": job_key(f, ev.arith, str(id(ev)), str(time.time())),
                                "graph": pack(g), "arith": ev.arith})
                for f, g in graphs.items()}
        shards = [(f, j) for f in formats for j in range(len(xs))]
        res = c.map_shards(_sweep_shard, [{"job": jobs[f], "x": xs[j]} for f, j in shards],
                           sizes=[len(ev.xs[j]) for _, j in shards], progress=progress,
                           desc=f"sweep {len(formats)} formats on {len(c.workers)} workers")
    out = {}
    for f in formats:
        part = [r for (g, _), r in zip(shards, res, strict=True) if g == f]
        logits = np.concatenate([p[0] for p in part]).reshape(len(ev.labels), -1)
        out[f] = {**ev.score(logits), "backend": part[0][1],
                  "seconds": round(sum(p[2] for p in part), 2)}
    return out


def _sweep_worker(job: dict):
    from qcompile.driver.cluster import unpack, worker_threads

    g = unpack(job["graph"])
    if not any(is_op(n, "FQ") for n in g.nodes):
        from qcompile.driver.context import ort_executor

        ex = ort_executor(threads=worker_threads())
        return "ort", lambda x: ex.run(g, {g.inputs[0].name: x}, [g.outputs[0]])[g.outputs[0]]
    from qcompile.backends.mpfr import Interpreter, make_config

    it = Interpreter(g, make_config(format=job["arith"]), "fast")
    it.prepare()
    it.engine.A.warmup()
    return "mpfr-fast", lambda x: it.run_numpy({g.inputs[0].name: x})[g.outputs[0].name]


def _sweep_shard(shard: dict) -> tuple[np.ndarray, str, float]:
    """On a worker: one batch of one format (its engine built once per worker)."""
    from qcompile.driver.cluster import worker_cached

    job = shard["job"]
    backend, run = worker_cached(job["key"], lambda: _sweep_worker(job))
    t0 = time.perf_counter()
    y = run(shard["x"])
    return y, backend, time.perf_counter() - t0


def to_markdown(rep: dict) -> str:
    lines = [f"Uniform formats on {Path(rep['model']).name}: {rep['images']} evaluation images "
             f"(disjoint from the {rep['calibration_images']} calibration images); FP32 "
             f"{100 * rep['fp32_top1']:.2f}%; arithmetic between FQ ops: {rep['arith']}.", "",
             "| format | family | bits | backend | top-1 (%) | drop (points) | "
             "agreement with FP32 (%) |", "|---|---|---|---|---|---|---|"]
    for r in rep["rows"]:
        lines.append(f"| {r['format']} | {r['family']} | {r['bits']} | {r['backend']} | "
                     f"{100 * r['top1']:.2f} | {r['drop']:.2f} | {100 * r['agreement']:.2f} |")
    return "\n".join(lines) + "\n"


def plot_points(rep: dict) -> dict[str, list[tuple[float, float, str]]]:
    """Accuracy-vs-bits points per family, ``(bits + offset, top-1 %, format)``: family ``k`` of
    ``m`` is shifted by ``(k - (m-1)/2) * w/m`` bits with ``w = 0.1 * max(bit span, 4)``, so
    formats of equal width (int8, e4m3, e5m2) stand side by side instead of hiding each other
    (shared by the PNG and the HTML plot)."""
    fams: dict[str, list[tuple[int, float, str]]] = {}
    for r in rep["rows"]:
        fams.setdefault(r["family"], []).append((r["bits"], 100 * r["top1"], r["format"]))
    bits = [r["bits"] for r in rep["rows"]] or [0]
    m, w = len(fams), 0.1 * max(max(bits) - min(bits), 4)
    return {fam: [(b + (k - (m - 1) / 2) * w / max(m, 1), y, f) for b, y, f in sorted(pts)]
            for k, (fam, pts) in enumerate(sorted(fams.items()))}


def save_plot(rep: dict, path: str | Path) -> Path:
    """Accuracy vs bits, one line per family (own marker and dash, offset by family),
    FP32 dashed; written atomically."""
    from qcompile.driver.report import STYLES, pyplot, save_figure
    from qcompile.files import check_output_path

    check_output_path(path)  # before drawing
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    bits = sorted({r["bits"] for r in rep["rows"]})
    for k, (fam, pts) in enumerate(plot_points(rep).items()):
        st = STYLES[k % len(STYLES)]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=st["marker"], ls=st["dash_mpl"],
                color=st["color"], mfc="none" if k % 2 else st["color"], ms=7, label=fam)
        for x, y, f in pts:
            ax.annotate(f, (x, y), textcoords="offset points", xytext=(2, 6), fontsize=6,
                        color=st["color"], rotation=70)
    ax.axhline(100 * rep["fp32_top1"], color="k", ls="--", lw=1, label="FP32")
    ax.set_xticks(bits)
    ax.set_xlabel("bits per value (families side by side)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(f"{Path(rep['model']).stem}: uniform formats ({rep['images']} images)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path, bbox_inches="tight")
