"""Per-layer SQNR after each pass of a pipeline (``qcompile report``, ``qcompile run --report``).

For every pass stage ``k`` (the graph right after pass ``k``) and every *layer* ``l``::

    SQNR_k(l) = 10 log10( sum y_l^2 / sum (y_l - y~_{k,l})^2 )

over all evaluation images (:class:`qcompile.driver.report.SqnrAccumulator`), ``y~_{k,l}`` the tensor
in the stage-``k`` graph, run by the injected executor (ONNX Runtime: QDQ graphs run as
fake-quantised float, the requested tensors being exposed).

The reference ``y`` and the matching rule. Float-preserving passes (``fold``, ``cle``,
``absorb``) keep the network's outputs but not its intermediate tensors: ``fold`` gives the
Conv the BatchNorm's meaning under the Conv's name, ``cle`` rescales channels. So:

* the *FP32 reference* is the float graph as the first quantising pass receives it (the input
  model after ``fold``/``cle``/... and ``calibrate``; the same function as the input model).
  Its layers are the outputs of its nodes whose op is in :data:`LAYER_OPS` (Conv, Gemm, MatMul,
  Add, Relu, Clip, pooling, ...) plus the graph outputs, in graph order;
* a *quantised* stage (one with ``qcompile.QDQ`` nodes) is compared layer by layer with the
  reference: the value **with the same name**; when that value feeds a QDQ (an activation that
  ``quantize`` quantised) the QDQ's output is compared instead, since that is what the next
  layer reads; a name that does not exist in the stage is ``-`` in its column;
* a *float* stage (before quantisation) is compared on the graph outputs only, with the input
  model's outputs (which checks that the pass preserved the network); its other cells are ``-``.

Evaluation images are never calibration images: ``--data`` images, or the ``--calib`` images,
minus the indices the pipeline's ``calibrate`` recorded in the graph metadata when the source
is the same file (as ``qcompile eval`` does); at most ``limit`` of them.

Declines: every pass's notes (``"<Op> 'node': reason"``) are attached to the layers of the
node they name (by node name in the FP32 model or in the graph after that pass); notes naming
no layer (``graph ...``, ``%value``) are listed per pass.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qcompile.data.calibration import calibration_indices, held_out, read_record, same_source
from qcompile.driver.context import canonical, open_data, ort_executor, pass_context
from qcompile.driver.report import SqnrReport
from qcompile.errors import QCompileError
from qcompile.files import atomic_write, check_output_path
from qcompile.ir import Graph, Value, is_op
from qcompile.numerics.error import SqnrAccumulator
from qcompile.passes.base import Pass, PassResult

LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Sub", "Mul", "Concat",
             "BatchNormalization", "Relu", "Clip", "LeakyRelu", "PRelu", "Sigmoid",
             "HardSigmoid", "HardSwish", "Tanh", "Softmax", "MaxPool", "AveragePool",
             "GlobalAveragePool")
_NODE_IN_NOTE = re.compile(r"^[A-Za-z]\w* '([^']+)'")


class ReportError(QCompileError):
    """The report cannot be produced (no evaluation images, bad output path...)."""


@dataclass
class Stage:
    spec: str
    graph: Graph
    result: PassResult
    seconds: float


class StageRecorder:
    """Pipeline instrument: a copy of the input graph and of the graph after every pass."""

    def __init__(self) -> None:
        self.fp32: Graph | None = None  # the input model
        self.reference: Graph | None = None  # the float graph the first quantising pass gets
        self.stages: list[Stage] = []

    def before(self, p: Pass, graph: Graph) -> None:
        if self.fp32 is None:
            self.fp32 = graph.clone()
        if not has_qdq(graph):
            self.reference = self.fp32 if not self.stages else self.stages[-1].graph

    def after(self, p: Pass, graph: Graph, result: PassResult, seconds: float) -> None:
        self.stages.append(Stage(p.spec(), graph.clone(), result, seconds))


@dataclass
class PassReport:
    sqnr: SqnrReport
    passes: list[dict[str, Any]] = field(default_factory=list)
    images: int = 0
    source: str = ""
    graph: Graph | None = None  # after the last pass: ranges and metadata for the HTML report

    def to_markdown(self) -> str:
        lines = [self.sqnr.to_markdown(), "",
                 f"SQNR of each layer's output against the FP32 model on {self.images} "
                 f"evaluation image(s) from {self.source}; quantised stages against the "
                 "float graph the first quantising pass received, float stages on the graph "
                 "outputs against the input model (`-`: not compared).", "",
                 "### Passes", "", "| # | pass | modified | seconds | stats | declines |",
                 "|---|---|---|---|---|---|"]
        for i, p in enumerate(self.passes):
            stats = ", ".join(f"{k}={v}" for k, v in p["stats"].items()) or "-"
            lines.append(f"| {i} | `{p['pass']}` | {'yes' if p['modified'] else 'no'} | "
                         f"{p['seconds']:.2f} | {stats} | {len(p['notes'])} |")
        other = [(p["pass"], n) for p in self.passes for n in p["unplaced_notes"]]
        if other:
            lines += ["", "### Declines not tied to a layer", ""]
            lines += [f"- `{name}`: {n}" for name, n in other]
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict[str, Any]:
        return {"images": self.images, "data": self.source, "layers": self.sqnr.to_json(),
                "passes": self.passes}


def has_qdq(graph: Graph) -> bool:
    return any(is_op(n, "QDQ") for n in graph.nodes)


def layer_names(fp32: Graph) -> list[tuple[str, str]]:
    """``(value name, op)`` of every reported layer of the FP32 graph, in graph order."""
    out: dict[str, str] = {}
    for n in fp32.nodes:
        if n.domain == "" and n.op in LAYER_OPS:
            for v in n.outputs:
                if v.type.dtype.is_float:
                    out.setdefault(v.name, n.op)
    for v in fp32.outputs:
        if v.producer is not None:
            out.setdefault(v.name, v.producer.op)
    return list(out.items())


def stage_value(graph: Graph, name: str) -> Value | None:
    """The value of ``graph`` compared with the FP32 tensor ``name`` (see the module rule)."""
    v = graph.find_value(name)
    if v is None or v.is_const:
        return None
    for u in v.uses():
        if is_op(u.node, "QDQ") and u.index == 0:
            return u.node.output
    return v


def eval_indices(ds: Any, graph: Graph, limit: int | None, seed: int = 0) -> np.ndarray:
    """Indices of ``ds`` to evaluate on: all but the recorded calibration images (the held-out
    rule of :mod:`qcompile.data.calibration`), at most ``limit`` by the seeded stratified draw
    of every command (:func:`qcompile.data.select.draw_limit`)."""
    from qcompile.data.select import draw_limit

    exclude = calibration_indices(graph.metadata, ds)
    idx, _ = draw_limit(held_out(ds, [graph.metadata]), limit, seed, getattr(ds, "labels", None))
    if idx.size == 0:
        raise ReportError(f"data: no evaluation images left in {ds.source} ({exclude.size} used "
                          "for calibration); give --data with other images or lower "
                          "calibrate{images=...}")
    return idx


def build_report(fp32: Graph, reference: Graph, stages: Sequence[Stage],
                 feeds: Sequence[dict[str, np.ndarray]], executor_factory: Callable[[], Any], *,
                 title: str, source: str = "",
                 tick: Callable[[int], None] = lambda n: None) -> PassReport:
    """Run the references and every stage on ``feeds`` and tabulate per-layer SQNR (the rule
    is in the module docstring)."""
    layers = layer_names(reference)
    names = [n for n, _ in layers]
    out_names = [v.name for v in fp32.outputs if reference.find_value(v.name) is not None]
    plan = []  # per stage: (executor, [(layer name, stage value)], accumulator, quantised)
    for st in stages:
        q = has_qdq(st.graph)
        pairs = [(n, v) for n in (names if q else out_names)
                 if (v := stage_value(st.graph, n)) is not None]
        plan.append((executor_factory(), pairs, SqnrAccumulator(), q))
    ref_exec, fp32_exec = executor_factory(), executor_factory()
    ref_vals = [reference.find_value(n) for n in names]
    fp32_outs = list(fp32.outputs)
    images = 0
    for feed in feeds:
        ref = {v.name: a for v, a in ref_exec.run(reference, feed, ref_vals).items()}
        outs = {v.name: a for v, a in fp32_exec.run(fp32, feed, fp32_outs).items()}
        for (ex, pairs, acc, q), st in zip(plan, stages, strict=True):
            if not pairs:
                continue
            got = ex.run(st.graph, feed, [v for _, v in pairs])
            for n, v in pairs:
                acc.add(n, (ref if q else outs)[n], got[v])
        images += len(next(iter(feed.values())))
        tick(1)
    rep = SqnrReport(title, names, [op for _, op in layers])
    passes = []
    for i, ((_, pairs, acc, _q), st) in enumerate(zip(plan, stages, strict=True)):
        rep.add_series(f"{i}:{st.spec.split('{')[0]}", {n: acc.sqnr(n) for n, _ in pairs})
        unplaced = []
        for note in st.result.notes:
            targets = _note_layers(note, (reference, st.graph, fp32), set(names))
            for t in targets:
                rep.note(t, f"{st.spec.split('{')[0]}: {note.split(': ', 1)[-1]}")
            if not targets:
                unplaced.append(note)
        passes.append({"pass": st.spec, "modified": st.result.modified,
                       "stats": dict(st.result.stats), "notes": list(st.result.notes),
                       "unplaced_notes": unplaced, "seconds": round(st.seconds, 4)})
    return PassReport(rep, passes, images, source, stages[-1].graph if stages else None)


def _note_layers(note: str, graphs: Sequence[Graph], layers: set[str]) -> list[str]:
    """Layers of the node a decline note names (``"Conv 'x': ..."``), else none."""
    m = _NODE_IN_NOTE.match(note)
    if m is None:
        return []
    for g in graphs:
        node = g.find_node(m.group(1))
        if node is not None:
            hit = [v.name for v in node.outputs if v.name in layers]
            if hit:
                return hit
    return []


def write_outputs(rep: PassReport, *, markdown: str | Path | None = None,
                  png: str | Path | None = None, json_path: str | Path | None = None) -> None:
    """Write the requested files; every target folder is checked before anything is written
    and each file is replaced atomically (no half-written output)."""
    for p in (markdown, png, json_path):
        if p is not None:
            check_output_path(p)
    if png is not None:
        rep.sqnr.save_png(png)
    if json_path is not None:
        atomic_write(json_path, json.dumps(rep.to_json(), indent=2, default=str))
    if markdown is not None:
        atomic_write(markdown, rep.to_markdown())


# -- drivers (the one place here that touches a frontend/backend; imported lazily) ----------
def evaluation_feeds(graph: Graph, *, calib: str | None, preprocess: str | None,
                     data: str | None, limit: int | None, batch: int = 16, seed: int = 0,
                     log: Callable[[str], None] = lambda m: None
                     ) -> tuple[list[dict[str, np.ndarray]], str]:
    """The evaluation batches (never calibration images, see the module docstring)."""
    src = data if data is not None else calib
    if src is None:
        raise ReportError("no evaluation images: give --data (or --calib, whose images not "
                          "used for calibration are then evaluated)")
    from qcompile.driver.defaults import choose_preprocess, graph_facts

    ds = open_data(src, choose_preprocess(preprocess, [graph_facts(graph)], src), log=log)
    same = same_source(read_record(graph.metadata), ds)
    idx = eval_indices(ds, graph, limit, seed)
    name = graph.inputs[0].name
    feeds = [{name: b.x} for b in ds.batches(batch, indices=idx)]
    return feeds, f"{ds.source}" + (" (calibration images left out)" if same else "")


def finish_report(recorder: StageRecorder, *, calib: str | None, preprocess: str | None,
                  data: str | None = None, limit: int | None = 256, batch: int = 16,
                  seed: int = 0,
                  title: str = "SQNR per layer after each pass",
                  executor_factory: Callable[[], Any] | None = None,
                  progress: Callable[..., Any] | None = None,
                  log: Callable[[str], None] = lambda m: None) -> PassReport:
    """Evaluate the stages a :class:`StageRecorder` captured during a pipeline run."""
    if recorder.fp32 is None or not recorder.stages:
        raise ReportError("the pipeline ran no pass; nothing to report")
    final = recorder.stages[-1].graph
    feeds, source = evaluation_feeds(final, calib=calib, preprocess=preprocess, data=data,
                                     limit=limit, batch=batch, seed=seed, log=log)
    n = sum(len(next(iter(f.values()))) for f in feeds)
    log(f"report: {len(recorder.stages)} stage(s) x {len(layer_names(recorder.fp32))} "
        f"layers on {n} evaluation image(s) from {source}")
    bar = progress(total=len(feeds), desc="report") if progress else None
    try:
        ref = recorder.reference if recorder.reference is not None else recorder.fp32
        return build_report(recorder.fp32, ref, recorder.stages, feeds,
                            executor_factory or ort_executor, title=title, source=source,
                            tick=(bar.update if bar is not None else (lambda k: None)))
    finally:
        if bar is not None:
            bar.close()


def pass_report(model: str | Path, passes: str, *, calib: str | None,
                preprocess: str | None = None,
                data: str | None = None, limit: int | None = 256, batch: int = 16,
                target: str = "ort-fp32", cpu: str | None = None, seed: int = 0,
                progress: Callable[..., Any] | None = None,
                log: Callable[[str], None] = lambda m: None) -> PassReport:
    """Lift ``model``, run ``passes`` (configured for ``target`` as ``qcompile run`` does)
    recording every stage, and build the per-layer SQNR report."""
    from qcompile.driver.targets import configure_pipeline, get_target
    from qcompile.frontend import lift
    from qcompile.passes import run_pipeline

    if limit is not None and limit < 1:
        raise ReportError(f"--limit {limit}: need at least 1 evaluation image")
    if batch < 1:
        raise ReportError(f"--batch {batch}: must be >= 1")
    if calib is None and data is None:
        raise ReportError("no evaluation images: give --calib (its images not used for "
                          "calibration are evaluated) or --data")
    pipeline = configure_pipeline(get_target(target), passes, cpu=cpu)
    graph = canonical(lift(model, warn=log), log)
    from qcompile.driver.defaults import choose_preprocess, graph_facts

    preprocess = choose_preprocess(preprocess, [graph_facts(graph, str(model))],
                                   calib if calib is not None else data, log)
    ctx = pass_context(pipeline, calib=calib, preprocess=preprocess, seed=seed,
                       progress=progress, log=log)
    rec = StageRecorder()
    ctx.instruments = [rec]
    run_pipeline(graph, pipeline, ctx)
    return finish_report(rec, calib=calib, preprocess=preprocess, data=data, limit=limit,
                         batch=batch, seed=seed, title=f"SQNR per layer after each pass: {Path(model).name}",
                         progress=progress, log=log)
