"""The end-to-end driver behind ``qcompile run``: lift -> passes -> lower -> write.

This is the one place that wires a frontend, the pass manager and a backend together (passes
never import backends: the executor for calibration is injected here).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from qcompile.data.recipe import record_preprocess
from qcompile.driver.context import canonical, pass_context
from qcompile.driver.defaults import SOURCE_KEY, choose_preprocess, graph_facts
from qcompile.driver.targets import check_graph, configure_pipeline, get_target
from qcompile.errors import QCompileError
from qcompile.files import check_output_path
from qcompile.passes import REGISTRY, DumpDir, PrintAfter, run_pipeline
from qcompile.passes.dequantize import quantised_ops


def _split(text: str) -> list[str]:
    from qcompile.passes.pipeline import split_specs

    return split_specs(text)


def compile_model(model: str | Path, output: str | Path, **options: Any) -> dict[str, Any]:
    """:func:`build_model`, then write ``output`` atomically (checked before any pass runs);
    returns the JSON-ready report with ``output`` set."""
    from qcompile.backends.ort import save_model

    out = check_output_path(output, "-o")
    model_proto, report = build_model(model, **options)
    save_model(model_proto, out)
    report["output"] = str(out)
    return report


def build_model(model: Any, *, passes: str | None = None,
                target: str = "ort-fp32", calib: str | None = None,
                preprocess: str | None = None,
                print_after: Sequence[str] = (), dump_dir: str | None = None, seed: int = 0,
                verify_each: bool = True, progress: Callable | None = None,
                log: Callable[[str], None] = lambda m: None,
                cpu: str | None = None,
                extra_instruments: Sequence[Any] = ()) -> tuple[Any, dict[str, Any]]:
    """Run the whole job in memory: ``(onnx.ModelProto, JSON-ready report)``; writes nothing.
    ``model`` is a path or an ``onnx.ModelProto``.

    ``passes=None``: the target's default pipeline (``ort-int8``: fold,calibrate,quantize).
    ``preprocess=None``: recorded/detected from the model, or refused for uint8 images
    (:mod:`qcompile.data.recipe`).  The output records the preset it was calibrated with
    (``qcompile.preprocess``) and, for ``ort-int8``, the model it came from
    (``qcompile.source_model``), so ``eval`` needs no flag and shows the FP32 baseline."""
    from qcompile.backends.ort import lower
    from qcompile.frontend import lift

    tgt = get_target(target)
    passes = passes if passes is not None else tgt.default_pipeline
    pipeline = configure_pipeline(tgt, passes, cpu=cpu)
    written = [n.split("{")[0].strip() for n in _split(passes)]
    if [p.name for p in pipeline][:len(written)] != written:
        log("pipeline: runs as " + ",".join(p.spec() for p in pipeline)
            + " (bias_correct corrects quantize's weight error, so it runs after quantize)")
    for unknown in [n for n in print_after if n != "all" and n not in REGISTRY]:
        raise QCompileError(f"--print-after: unknown pass {unknown!r}; valid: "
                            f"{', '.join(sorted(REGISTRY))} or all")
    named = isinstance(model, (str, Path))
    label = str(model) if named else "<ModelProto>"
    graph = canonical(lift(model, warn=log), log)
    n_quant = quantised_ops(graph)
    if n_quant and written[:1] != ["dequantize"]:
        raise QCompileError(f"{label} is already quantised ({n_quant} QuantizeLinear/QLinear ops)"
                            "; add 'dequantize' first: -p dequantize,calibrate,quantize")
    if not n_quant:
        check_graph(tgt, graph, stage="input")
    if calib is not None:
        preprocess = choose_preprocess(preprocess, [graph_facts(graph, label)], calib, log)
    ctx = pass_context(pipeline, calib=calib, preprocess=preprocess, seed=seed,
                       verify_each=verify_each, progress=progress, log=log)
    instruments = []
    if print_after:
        instruments.append(PrintAfter(print_after, sys.stdout))
    if dump_dir:
        instruments.append(DumpDir(dump_dir))
    ctx.instruments = instruments + list(extra_instruments)  # e.g. run --report
    if n_quant:  # dequantize, then lower and lift: ONNX infers the shapes com.microsoft ops hid
        k = [p.name for p in pipeline].index("dequantize") + 1
        first = run_pipeline(graph, pipeline[:k], ctx)
        graph = canonical(lift(lower(first.graph), name=graph.name), log)
        check_graph(tgt, graph, stage="input")
        result = run_pipeline(graph, pipeline[k:], ctx)
        result.results[:0] = first.results
    else:
        result = run_pipeline(graph, pipeline, ctx)
    check_graph(tgt, result.graph, stage="output")
    record_preprocess(result.graph.metadata, preprocess)
    if tgt.name == "ort-int8" and named:
        result.graph.metadata[SOURCE_KEY] = str(Path(model).resolve())
    model_proto = lower(result.graph)
    extra: dict[str, Any] = {}
    if tgt.name == "ort-int8":
        from qcompile.backends.ort.measure import optimized_op_counts

        extra["ort_ops"] = dict(sorted(optimized_op_counts(model_proto).items()))
    return model_proto, {**extra,
        "model": label,
        "output": None,
        "target": tgt.name,
        "pipeline": ",".join(p.spec() for p in pipeline),
        "preprocess": preprocess,
        "nodes": len(result.graph.nodes),
        "passes": [{"pass": p.spec(), "modified": r.modified, "stats": dict(r.stats),
                    "notes": list(r.notes), "seconds": round(t, 6)}
                   for p, r, t in result.results],
    }


def pass_table() -> list[dict[str, Any]]:
    """Every registered pass: name, summary, options (name, type, default), requires, ensures
    (what ``qcompile passes`` prints)."""
    from qcompile.passes import describe_options

    return [{
        "name": name,
        "summary": cls.summary or (cls.__doc__ or "").strip().splitlines()[0],
        "options": [{"name": n, "type": t, "default": d} for n, t, d in describe_options(cls)],
        "requires": [c.name for c in cls.requires],
        "ensures": [c.name for c in cls.ensures],
    } for name, cls in REGISTRY.items()]
