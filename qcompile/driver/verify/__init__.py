"""``qcompile verify``: is what ONNX Runtime computes for an int8 (QDQ) model the quantised network
that was designed?  Layer by layer, bit for bit.

Two executions of the same model file on the same images:

* ONNX Runtime (``--opt-level``, ``--device``) with every quantised tensor (each
  QuantizeLinear output) exposed as a graph output (:mod:`qcompile.backends.ort.intermediates`,
  which also lists the kernels ORT ran: fused ``QLinearConv`` ... or unfused DQ/op/Q);
* the MPFR backend evaluating *the exact quantised network*
  (:mod:`qcompile.backends.mpfr.ops_qdq_fuse`): every integer tensor is
  ``saturate(round_half_even(v) + z)`` of the exact real value ``v`` of the float ops between
  quantised tensors; integer accumulation exact, one rounding per quantised tensor.

Per quantised tensor (and per graph output): elements compared, elements equal, max ``|diff|``
in LSBs (quantisation steps: one integer code), a histogram of the differences and a few
example coordinates (image index first).  Verdict over all quantised tensors: ``bit-exact``
(all equal, exit 0), ``within 1 LSB`` (exit 0), ``diverged`` (exit 1).  Float graph outputs
(e.g. logits of a float Gemm) have no LSB: they are reported (max |diff|, top-1 agreement) but
do not enter the verdict; the exact side computes them exactly (fused float-output Gemm) or, for
float ops outside the fused patterns, in binary64.

End-to-end counts include departures inherited from earlier layers; ``isolate`` also evaluates
each layer of the exact network from ONNX Runtime's own input tensors (what a layer departs by
itself).  ``reference`` adds the float-model comparison (:mod:`qcompile.driver.verify.reference`),
``dump`` golden vectors (:mod:`qcompile.driver.verify.dump`).  Only the first graph input is fed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from qcompile.driver.progress import track
from qcompile.driver.verify.causes import Causes, explain
from qcompile.driver.verify.compare import (
    EXAMPLES,
    VERDICTS,
    FloatCmp,
    TensorCmp,
    VerifyResult,
    format_text,
)
from qcompile.errors import QCompileError

__all__ = ["EXAMPLES", "VERDICTS", "FloatCmp", "TensorCmp", "VerifyResult", "format_text",
           "verify_model"]


def verify_model(qmodel: str, data, *, preprocess: str = "none", limit: int | None = None,
                 batch: int = 25, opt_level: str = "all", device: str = "cpu",
                 engine: str = "fast", threads: int = 0, dump: str | None = None,
                 reference: str | None = None, float_model: str | None = None,
                 isolate: bool = False, log: Callable[[str], None] = lambda m: None,
                 cluster: str | None = None, progress: Callable | None = None) -> VerifyResult:
    """Run ``qmodel`` on ONNX Runtime and as the exact quantised network; compare.  With
    ``reference`` also against the float model in that format (:mod:`verify_reference`)."""
    from qcompile.driver.verify.session import VerifySession

    if cluster and (reference or dump is not None or isolate):
        raise QCompileError("--cluster: --reference, --dump and --isolate run on this machine; "
                            "drop --cluster or those options")
    t0 = time.perf_counter()
    vs = VerifySession(qmodel, opt_level=opt_level, device=device, engine=engine,
                       threads=threads)
    if engine == "fast" and not cluster:  # the first run compiles kernels: say so, with a bar
        from qcompile.driver.emulate import warm_kernels

        warm_kernels(vs.interp.engine.A, log, progress)
    ds, idx = vs.open_data(data, preprocess, limit, log)
    rc = None
    if reference:
        from qcompile.driver.verify.reference import reference_compare

        rc = reference_compare(vs, reference, float_model, engine)
    t_ref = 0.0
    t_ort = t_exact = 0.0
    n = 0
    dumper = None
    causes = Causes()  # --isolate: the rules that reproduce each layer's own departures
    if dump is not None:
        from qcompile.driver.verify.dump import GoldenDumper

        dumper = GoldenDumper(dump, vs)
    if cluster:
        t_ort, t_exact = _on_cluster(cluster, vs, dict(
            model=Path(qmodel).read_bytes(), name=Path(qmodel).name, opt_level=opt_level,
            device=device, engine=engine, threads=threads, isolate=isolate,
            preprocess=preprocess, limit=limit), data, ds, idx, batch, log, progress)
        n = int(idx.size)
    for b in track(ds.batches(batch, indices=idx), len(idx), "verify", progress) \
            if not cluster else ():
        vs.check_input(b.x)
        ta = time.perf_counter()
        ort = vs.runner.run(b.x)
        tb = time.perf_counter()
        exact = vs.run_exact(b.x)
        t_exact += time.perf_counter() - tb
        t_ort += tb - ta
        vs.compare(ort, exact, n)
        if isolate:
            tc = time.perf_counter()
            iso = vs.run_isolated(b.x, ort)
            vs.compare_isolated(ort, iso, n)
            explain(vs, ort, iso, causes)
            t_exact += time.perf_counter() - tc
        if rc is not None:
            tc = time.perf_counter()
            rc.add(b.x, ort, vs.runner.outputs)
            t_ref += time.perf_counter() - tc
        if dumper is not None:
            dumper.add(b.x, exact)
        n += len(b.x)
    if dumper is not None:
        dumper.write()
    secs = {"onnxruntime": round(t_ort, 3), "exact": round(t_exact, 3),
            "total": round(time.perf_counter() - t0, 3)}
    if rc is not None:
        secs["reference"] = round(t_ref, 3)
    res = VerifyResult(str(qmodel), ds.source, n, opt_level, device, vs.runner.version,
                       vs.tensors, vs.outputs, dict(vs.runner.kernels),
                       vs.runner.fusion_blocked, vs.exact_stats, secs)
    if vs.isolated is not None:
        res.isolated = [vs.isolated[t.name] for t in vs.tensors]
    if isolate and not cluster:
        res.extra["causes"] = causes.to_json()
    if rc is not None:
        res.extra["reference"] = rc.to_json(vs.runner.outputs)
        res.reference_report = rc.report(str(qmodel))
    return res


def _on_cluster(spec: str, vs, job: dict, data, ds, idx, batch: int, log, progress
                ) -> tuple[float, float]:
    """The batches of the local loop compared on a Dask cluster (:mod:`qcompile.driver.cluster`),
    one shard per local batch, each with its first image's position, so the merged counts,
    maxima, histograms and the first examples equal a local run's; returns the summed
    (ORT, exact) seconds."""
    import numpy as np

    from qcompile.driver.cluster import job_key, open_cluster

    if not isinstance(data, str):
        raise QCompileError("--cluster: verify a data path, not an opened data set")
    parts = [idx[i:i + batch] for i in range(0, idx.size, batch)]
    with open_cluster(spec, log) as c:
        shared = c.data_note(data)
        job = dict(job, data=str(Path(data).resolve()) if shared else None)
        job["key"] = job_key(job["model"], repr(sorted((k, str(v)) for k, v in job.items()
                                                       if k != "model")))
        shards = [{"indices": p, "first": i * batch} for i, p in enumerate(parts)]
        if not shared:
            for sh, b in zip(shards, ds.batches(batch, indices=idx), strict=True):
                sh["x"] = b.x
        res = c.map_shards(verify_shard, shards, args=(c.broadcast(job),),
                           sizes=[p.size for p in parts], progress=progress,
                           desc=f"verify on {len(c.workers)} workers")
    for r in res:  # in image order
        for mine, theirs in zip(vs.tensors + vs.outputs, r["tensors"] + r["outputs"],
                                strict=True):
            merge(mine, theirs)
        if r["isolated"] is not None:
            if vs.isolated is None:
                vs.isolated = {t.name: TensorCmp(t.name, t.op, t.kernel) for t in vs.tensors}
            for name, t in r["isolated"].items():
                merge(vs.isolated[name], t)
    return float(np.sum([r["ort_s"] for r in res])), float(np.sum([r["exact_s"] for r in res]))


def merge(into: TensorCmp | FloatCmp, part: TensorCmp | FloatCmp) -> None:
    """Add a later shard's comparison ``part`` to ``into`` (what ``add`` on its images would
    have done: sums, maxima, histogram, examples in image order up to EXAMPLES)."""
    into.compared += part.compared
    into.equal += part.equal
    if isinstance(into, TensorCmp):
        into.max_lsb = max(into.max_lsb, part.max_lsb)
        into.hist.update(part.hist)
        into.ort_above += part.ort_above
        into.examples += part.examples[:max(EXAMPLES - len(into.examples), 0)]
    else:
        into.max_abs = max(into.max_abs, part.max_abs)
        into.max_ref = max(into.max_ref, part.max_ref)
        into.top1_agree += part.top1_agree
        into.rows += part.rows


def _verify_worker(job: dict):
    import tempfile

    from qcompile.driver.cluster import worker_threads
    from qcompile.driver.verify.session import VerifySession

    path = Path(tempfile.mkdtemp(prefix="qcompile-verify-")) / job["name"]
    path.write_bytes(job["model"])
    vs = VerifySession(str(path), opt_level=job["opt_level"], device=job["device"],
                       engine=job["engine"], threads=job["threads"] or worker_threads())
    ds = None
    if job["data"] is not None:  # the client's own data call: the same view of the images
        ds, _ = vs.open_data(job["data"], job["preprocess"], job["limit"], lambda m: None)
    return vs, ds


def verify_shard(shard: dict, job: dict) -> dict:
    """On a worker: one batch through ORT and the exact network (both built once per job)."""
    from qcompile.driver.cluster import worker_cached

    vs, ds = worker_cached(job["key"], lambda: _verify_worker(job))
    vs.tensors = [TensorCmp(t.name, t.op, t.kernel) for t in vs.tensors]
    vs.outputs = [TensorCmp(o.name, o.op) if isinstance(o, TensorCmp) else FloatCmp(o.name)
                  for o in vs.outputs]
    vs.isolated = None
    x = shard["x"] if "x" in shard else next(iter(ds.batches(len(shard["indices"]),
                                                               indices=shard["indices"]))).x
    vs.check_input(x)
    ta = time.perf_counter()
    ort = vs.runner.run(x)
    tb = time.perf_counter()
    vs.compare(ort, vs.run_exact(x), shard["first"])
    if job["isolate"]:
        vs.compare_isolated(ort, vs.run_isolated(x, ort), shard["first"])
    return {"tensors": vs.tensors, "outputs": vs.outputs, "isolated": vs.isolated,
            "ort_s": tb - ta, "exact_s": time.perf_counter() - tb}
