"""Library logic of ``qcompile emulate``: run a model in an emulated float format.

``emulate(model, config, ...)`` lifts the model, optionally runs passes, evaluates it with the
MPFR backend (``fast`` or ``reference`` engine), runs FP32 (ONNX Runtime) beside it, and
returns a JSON-ready report.  ``seconds`` is the emulated network's evaluation wall time only
(model load, constant conversion and kernel loading are reported separately).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from qcompile.backends.mpfr.config import EmuConfig, make_config
from qcompile.backends.mpfr.interpreter import Interpreter
from qcompile.backends.mpfr.listeners import DumpListener, LayerStats, Verifier
from qcompile.data.calibration import calibration_indices
from qcompile.driver.context import canonical, open_data, pass_context
from qcompile.driver.defaults import choose_preprocess, graph_facts, limited
from qcompile.driver.progress import track
from qcompile.errors import QCompileError
from qcompile.passes._feeds import input_spec, model_data

__all__ = ["emulate", "make_config"]


def jnum(v: float) -> float | str:
    """A logit for JSON: the float itself (repr round-trips binary64 exactly), or a string
    for non-finite values ("inf", "-inf", "nan"), which strict JSON cannot hold."""
    v = float(v)
    if math.isfinite(v):
        return v
    return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")


def _order(logits: np.ndarray) -> np.ndarray:
    """Classes by descending logit; NaN last; ties by class index."""
    key = np.where(np.isnan(logits), -np.inf, logits)
    return np.lexsort((np.arange(logits.size), -key))


def find_labels(n_classes: int, labels: str | None, model: str, data: str | None):
    from qcompile.data import cifar10_classes, load_labels

    if labels:
        names = load_labels(labels)
        if len(names) != n_classes:
            raise QCompileError(f"--labels: {labels} names {len(names)} classes, the model has "
                                f"{n_classes} outputs")
        return names
    if n_classes == 10:
        return cifar10_classes()
    if n_classes == 1000:
        dirs = [Path(model).parent]
        if data:
            p = Path(data)
            dirs.append(p if p.is_dir() else p.parent)
        for d in dirs:
            f = d / "imagenet_classes.tsv"
            if f.is_file():
                return load_labels(f)
    return None


def _fp32_session(graph, threads: int = 0):
    from qcompile.backends.ort import lower, session

    return session(lower(graph), threads=threads)


def emulate(model: str, cfg: EmuConfig, *, image: str | None = None, data: str | None = None,
            limit: int | None = None, preprocess: str | None = None, size: int | None = None,
            passes: str | None = None, engine: str = "fast", verify: int = 0,
            dump: str | None = None, labels: str | None = None, batch: int = 32,
            fp32: bool = True, seed: int = 0, use_numba: bool = True,
            log: Callable[[str], None] = lambda m: None, calib: str | None = None,
            preset: str | None = None, cluster: str | None = None,
            progress: Callable | None = None) -> dict[str, Any]:
    from qcompile.data import preprocess_from_options
    from qcompile.frontend import lift

    if (image is None) == (data is None):
        raise QCompileError("give exactly one of --image FILE or --data PATH")
    if verify < 0:
        raise QCompileError("--verify K: K must be >= 0")
    if cluster and (verify or dump or image is not None):
        raise QCompileError("--cluster: --verify, --dump and --image run on this machine; "
                            "drop --cluster or those options")
    if preset is not None:
        from qcompile.driver.presets import preset_pipeline

        if passes:
            raise QCompileError("--preset and --passes both given; use one")
        passes = preset_pipeline(preset)
    t0 = time.perf_counter()
    graph = canonical(lift(model, warn=log), log)
    preprocess = choose_preprocess(preprocess, [graph_facts(graph, str(model))],
                                   image if image is not None else data, log)
    pre = preprocess_from_options(preprocess, size=size)
    float_graph = graph.clone() if passes else graph
    if passes:  # FP32 (ORT) reference: the model as given (passes may insert FQ ops)
        graph = _run_passes(graph, passes, calib, pre, seed, log)
    load_s = time.perf_counter() - t0
    ds = open_data(image if image is not None else data, pre, log=log)
    ds = model_data(graph, ds, log)  # as the input declares it: NCHW/NHWC, dtype, fixed size
    # never evaluate on the calibration images (the one held-out rule, data/calibration.py)
    skip = calibration_indices(graph.metadata, ds) if data is not None else np.zeros(0, np.int64)
    stats = LayerStats(cfg)
    listeners: list = [stats]
    verifier = Verifier(cfg, verify, seed=seed) if verify else None
    if verifier:
        listeners.append(verifier)
    dumper = DumpListener(dump, cfg) if dump else None
    if dumper:
        listeners.append(dumper)
    kw = {"use_numba": use_numba} if engine == "fast" else {}
    t1 = time.perf_counter()
    interp = None if cluster else _interpreter(graph, cfg, engine, listeners, kw, log, progress)
    compile_s = time.perf_counter() - t1
    in_name = graph.inputs[0].name
    in_dtype = input_spec(float_graph.inputs[0]).dtype
    out_name = graph.outputs[0].name
    sess = _fp32_session(float_graph) if fp32 and not cluster else None
    names = None
    results, seconds, fp32_s = [], 0.0, 0.0
    n_ok = n_ok32 = n_agree = n_lab = 0
    lim = 1 if image is not None else None
    if dumper:
        batch = 1  # one golden-vector folder per image
    b0 = graph.inputs[0].type.shape[0] if graph.inputs[0].type.shape else None
    if isinstance(b0, int) and b0 > 0:  # a static batch dimension fixes the batch size
        batch = b0
    eval_idx, limit_rec = None, None
    if data is not None:  # never the calibration images; --limit: the seeded stratified draw
        if skip.size:
            log(f"emulate: leaving out the {skip.size} calibration image(s) of {data}")
        eval_idx, limit_rec = limited(ds, np.setdiff1d(np.arange(len(ds), dtype=np.int64),
                                                       skip), limit, seed)
    if cluster:
        job = {"graph": graph, "float_graph": float_graph if fp32 else None, "cfg": cfg,
               "engine": engine, "kw": kw, "data": data, "pre": pre, "batch": batch}
        todo = cluster_batches(cluster, job, ds, batch, lim, eval_idx, stats, log, progress)
    else:
        todo = track(_local_batches(interp, sess, ds, batch, lim, eval_idx, dumper, in_name,
                                    in_dtype, out_name),
                     None if eval_idx is None else len(eval_idx), f"emulate {cfg.name}",
                     progress, size=lambda t: len(t[0].indices))
    kernels = None
    for bt, out, ref, secs, secs32, ks in todo:
        seconds += secs
        fp32_s += secs32
        kernels = ks if kernels is None else {k: kernels[k] + v for k, v in ks.items()}
        if names is None:
            names = find_labels(out.shape[1], labels, model, data or image)
        for j in range(out.shape[0]):
            lg = out[j]
            top = _order(lg)[:5]
            r = {"index": int(bt.indices[j]),
                 "label": None if bt.labels is None else int(bt.labels[j]),
                 "logits": [jnum(v) for v in lg],
                 "top5": [[int(c), names[c] if names else str(c), jnum(lg[c])] for c in top]}
            if ref is not None:
                t32 = _order(ref[j])[:5]
                r["fp32_top5"] = [[int(c), names[c] if names else str(c), jnum(ref[j][c])]
                                  for c in t32]
                n_agree += int(top[0] == t32[0] and not np.isnan(lg[top[0]]))
            if bt.labels is not None:
                n_lab += 1
                n_ok += int(top[0] == bt.labels[j] and not np.isnan(lg[top[0]]))
                if ref is not None:
                    n_ok32 += int(t32[0] == bt.labels[j])
            results.append(r)
    n = len(results)
    rep: dict[str, Any] = {
        "model": str(model), "format": cfg.name, "config": cfg.to_json(),
        "describe": cfg.describe(), "engine": engine, "images": n,
        "seconds": seconds, "load_seconds": load_s, "compile_seconds": compile_s,
        "fp32_seconds": fp32_s, "listener_seconds": interp.listener_seconds if interp else 0.0,
        "results": results, "layers": stats.report(),
    }
    if cluster:
        rep["cluster"] = cluster
    if engine == "fast":
        rep["kernels"] = dict(interp.engine.A.kernel_stats) if interp else (kernels or {})
    if interp is not None:
        rep["profile"] = op_profile(interp)
    if data is not None:
        rep["accuracy"] = {"top1": n_ok / n_lab if n_lab else None,
                           "fp32_top1": n_ok32 / n_lab if (n_lab and fp32) else None,
                           "top1_agreement": n_agree / n if (n and fp32) else None,
                           "labelled": n_lab}
    if verifier:
        rep["verify"] = verifier.report()
    if dumper:
        rep["dump"] = dumper.finish()
    return rep


def _interpreter(graph, cfg: EmuConfig, engine: str, listeners: list, kw: dict,
                 log: Callable[[str], None] = lambda m: None,
                 progress: Callable | None = None) -> Interpreter:
    """The emulator, prepared and (fast engine) with its kernels compiled."""
    interp = Interpreter(graph, cfg, engine, listeners=listeners, **kw)
    interp.prepare()
    if engine == "fast":
        warm_kernels(interp.engine.A, log, progress)
    return interp


def warm_kernels(arith, log: Callable[[str], None], progress: Callable | None = None) -> None:
    """Compile or load the numba kernels; when that takes over a second (the first run, before
    numba's disk cache exists) say so, with progress (a ``progress(total=, desc=)`` bar when
    given, else one log line per kernel), instead of staying silent."""
    import threading

    t0 = time.perf_counter()
    said = threading.Event()

    def announce():
        said.set()
        log("compiling kernels (first run only) ...")

    timer = threading.Timer(1.0, announce)
    timer.daemon = True
    timer.start()

    bar: list = []  # the bar, opened at the first kernel finished after the announcement

    def step(done, total):
        if not said.is_set():
            return
        if progress is None:
            log(f"compiling kernels: {done}/{total} ({time.perf_counter() - t0:.0f} s)")
            return
        if not bar:
            bar.append(progress(total=total, desc="compiling kernels (first run only)",
                                unit="kernels"))
            bar[0].update(done - 1)
        bar[0].update(1)

    try:
        arith.warmup(step)
    finally:
        timer.cancel()
        if bar:
            bar[0].close()


def op_profile(interp: Interpreter) -> dict[str, float]:
    """Evaluation seconds per op type (kernels only, listeners excluded), largest first."""
    prof: dict[str, float] = {}
    for n in interp.graph.nodes:
        prof[n.op] = prof.get(n.op, 0.0) + interp.node_seconds.get(n.name, 0.0)
    return dict(sorted(prof.items(), key=lambda kv: -kv[1]))


def run_batch(interp: Interpreter, sess, x: np.ndarray, in_name: str, in_dtype, out_name: str
              ) -> tuple[np.ndarray, np.ndarray | None, float, float]:
    """One batch: (emulated logits [B, C], FP32 logits or None, emulation s, FP32 s); the
    one evaluation step of local and cluster runs, so both compute the same bits."""
    t, l0 = time.perf_counter(), interp.listener_seconds
    out = interp.run_numpy({in_name: x})[out_name]
    secs = time.perf_counter() - t - (interp.listener_seconds - l0)
    out = out.reshape(out.shape[0], -1)
    ref, secs32 = None, 0.0
    if sess is not None:
        t = time.perf_counter()
        ref = sess.run([out_name], {in_name: x.astype(in_dtype)})[0]
        ref = ref.reshape(ref.shape[0], -1).astype(np.float64)
        secs32 = time.perf_counter() - t
    return out, ref, secs, secs32


def _local_batches(interp, sess, ds, batch, lim, eval_idx, dumper, in_name, in_dtype, out_name):
    for bt in ds.batches(batch, limit=lim, indices=eval_idx):
        if dumper:
            dumper.start(int(bt.indices[0]), {in_name: bt.x})
        k0 = _kstats(interp)
        out, ref, secs, secs32 = run_batch(interp, sess, bt.x, in_name, in_dtype, out_name)
        yield bt, out, ref, secs, secs32, {k: v - k0[k] for k, v in _kstats(interp).items()}


def _kstats(interp) -> dict[str, int]:
    return dict(getattr(getattr(interp.engine, "A", None), "kernel_stats", {}))


def cluster_batches(spec: str, job: dict, ds, batch: int, lim: int | None, eval_idx, stats,
                    log: Callable[[str], None], progress: Callable | None):
    """The local loop's batches computed on a Dask cluster (:mod:`qcompile.driver.cluster`):
    one shard per batch of the same images the local run batches together, so every logit
    is the same bits; yields in image order; merges the workers' layer statistics into
    ``stats``."""
    from types import SimpleNamespace

    from qcompile.driver.cluster import image_shards, job_key, open_cluster, pack

    job = dict(job, graph=pack(job["graph"]), float_graph=None if job["float_graph"] is None
               else pack(job["float_graph"]))
    idx = np.arange(len(ds), dtype=np.int64) if eval_idx is None else eval_idx
    idx = idx[:lim] if lim is not None else idx
    with open_cluster(spec, log) as c:
        shared = c.data_note(job["data"])
        job = dict(job, data=str(Path(job["data"]).resolve()) if shared else None)
        job["key"] = job_key(job["graph"], repr(sorted((k, str(v)) for k, v in job.items()
                                                       if k != "graph")))
        shards = image_shards(idx, batch, ds, shared)
        res = c.map_shards(emulate_shard, shards, args=(c.broadcast(job),),
                           sizes=[sh["indices"].size for sh in shards], progress=progress,
                           desc=f"emulate {job['cfg'].name} on {len(c.workers)} workers")
    for r in res:
        for row in r["layers"]:
            tot = stats.rows.setdefault(row["name"], dict(row, values=0, overflow=0,
                                                           underflow=0))
            for k in ("values", "overflow", "underflow"):
                tot[k] += row[k]
        yield (SimpleNamespace(indices=r["indices"], labels=r["labels"]), r["out"], r["ref"],
               r["seconds"], r["fp32_seconds"], r["kernels"])


def _worker_state(job: dict):
    from qcompile.driver.cluster import unpack, worker_threads
    from qcompile.passes._feeds import input_spec

    g = unpack(job["graph"])
    interp = _interpreter(g, job["cfg"], job["engine"], [], job["kw"])
    fg = None if job["float_graph"] is None else unpack(job["float_graph"])
    sess = _fp32_session(fg, worker_threads()) if fg is not None else None
    ds = None
    if job["data"] is not None:
        ds = model_data(g, open_data(job["data"], job["pre"]), None)
    return (interp, sess, ds, input_spec(fg.inputs[0]).dtype if fg is not None else None,
            g.inputs[0].name, g.outputs[0].name)


def emulate_shard(shard: dict, job: dict) -> dict:
    """On a worker: one batch of images through the emulator (built once per job) and FP32."""
    from qcompile.driver.cluster import worker_cached

    interp, sess, ds, in_dtype, in_name, out_name = worker_cached(
        job["key"], lambda: _worker_state(job))
    stats = LayerStats(job["cfg"])
    interp.listeners = [stats]
    if "x" in shard:
        x, labels = shard["x"], shard["labels"]
    else:
        bt = next(iter(ds.batches(len(shard["indices"]), indices=shard["indices"])))
        x, labels = bt.x, bt.labels
    k0 = _kstats(interp)
    out, ref, secs, secs32 = run_batch(interp, sess, x, in_name, in_dtype, out_name)
    return {"indices": shard["indices"], "labels": labels, "out": out, "ref": ref,
            "seconds": secs, "fp32_seconds": secs32, "layers": stats.report(),
            "kernels": {k: v - k0[k] for k, v in _kstats(interp).items()}}


def _run_passes(graph, passes: str, calib: str | None, pre, seed: int,
                log: Callable[[str], None]):
    """Run ``passes`` (with calibration data and the ORT executor when given)."""
    from qcompile.passes import parse_pipeline, run_pipeline

    pipeline = parse_pipeline(passes)
    ctx = pass_context(pipeline, calib=calib, preprocess=pre, seed=seed, log=log)
    return run_pipeline(graph, pipeline, ctx).graph
