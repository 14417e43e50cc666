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

from qcompile.driver.verify.compare import (
    EXAMPLES,
    VERDICTS,
    FloatCmp,
    TensorCmp,
    VerifyResult,
    format_text,
)

__all__ = ["EXAMPLES", "VERDICTS", "FloatCmp", "TensorCmp", "VerifyResult", "format_text",
           "verify_model"]


def verify_model(qmodel: str, data, *, preprocess: str = "none", limit: int | None = None,
                 batch: int = 25, opt_level: str = "all", device: str = "cpu",
                 engine: str = "fast", threads: int = 0, dump: str | None = None,
                 reference: str | None = None, float_model: str | None = None,
                 isolate: bool = False, log: Callable[[str], None] = lambda m: None) -> VerifyResult:
    """Run ``qmodel`` on ONNX Runtime and as the exact quantised network; compare.  With
    ``reference`` also against the float model in that format (:mod:`verify_reference`)."""
    from qcompile.driver.verify.session import VerifySession

    t0 = time.perf_counter()
    vs = VerifySession(qmodel, opt_level=opt_level, device=device, engine=engine,
                       threads=threads)
    ds, idx = vs.open_data(data, preprocess, limit, log)
    rc = None
    if reference:
        from qcompile.driver.verify.reference import reference_compare

        rc = reference_compare(vs, reference, float_model, engine)
    t_ref = 0.0
    t_ort = t_exact = 0.0
    n = 0
    dumper = None
    if dump is not None:
        from qcompile.driver.verify.dump import GoldenDumper

        dumper = GoldenDumper(dump, vs)
    for b in ds.batches(batch, indices=idx):
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
            vs.compare_isolated(ort, vs.run_isolated(b.x, ort), n)
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
    if rc is not None:
        res.extra["reference"] = rc.to_json(vs.runner.outputs)
        res.reference_report = rc.report(str(qmodel))
    return res
