"""qcompile passes as onnx-ir passes, so other pipelines (the onnxscript optimizer, Olive-style
tools, any ``onnx_ir.passes.PassManager``) can embed them.

``as_onnx_ir_pass("fold")`` returns an ``onnx_ir.passes.FunctionalPass``; calling it on an
``onnx_ir.Model`` goes

1. ``onnx_ir.Model -> onnx.ModelProto`` (``onnx_ir.serde.serialize_model``: copies every
   tensor into the proto; the input model is never changed),
2. ``ModelProto -> qcompile IR`` (:func:`qcompile.frontend.lift`: copies the initialisers into
   numpy arrays and infers the shapes),
3. our pass pipeline on that IR (:func:`qcompile.passes.run_pipeline`, with its requires /
   ensures checks and the IR verifier after each pass),
4. ``IR -> ModelProto`` (:func:`qcompile.backends.ort.lower`) ``-> onnx_ir.Model``
   (``onnx_ir.serde.deserialize_model``: a new model that owns the proto's tensors).

It returns ``PassResult(new_model, modified)``, ``modified`` True when any of our passes changed
the graph; an unchanged model comes back as a copy made from step 1's proto (onnx-ir requires a
functional pass to return a new object; lowering is skipped, so nothing is re-encoded). Passes that need data (``calibrate``, ``adaround``...) take ``calib=`` (a path,
as ``qcompile run --calib``) and run the calibration on ONNX Runtime; the pass's stats and
notes (every decline with its reason) are kept on the adapter as ``last_results``.
Requires the optional extra ``pip install 'qcompile[onnxir]'``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import onnx_ir
from onnx_ir import passes as ir_passes

from qcompile.errors import OptionError

__all__ = ["QCompilePass", "as_onnx_ir_pass"]


class QCompilePass(ir_passes.FunctionalPass):
    """An onnx-ir functional pass running a qcompile pipeline (see the module docstring)."""

    def __init__(self, pipeline: list, spec: str, *, calib: str | None = None,
                 preprocess: str | None = "none", seed: int = 0,
                 log: Callable[[str], None] = lambda m: None) -> None:
        super().__init__()
        self.pipeline = pipeline
        self.spec = spec
        self.calib, self.preprocess, self.seed, self.log = calib, preprocess, seed, log
        self.last_results: list[dict[str, Any]] = []

    def __repr__(self) -> str:
        return f"QCompilePass({self.spec!r})"

    def call(self, model: onnx_ir.Model) -> ir_passes.PassResult:
        from qcompile.backends.ort import lower
        from qcompile.driver.context import pass_context
        from qcompile.frontend import lift
        from qcompile.passes import run_pipeline

        proto = onnx_ir.serde.serialize_model(model)
        graph = lift(proto, warn=self.log)
        ctx = pass_context(self.pipeline, calib=self.calib, preprocess=self.preprocess or "none",
                           seed=self.seed, log=self.log, calib_flag="calib=")
        res = run_pipeline(graph, self.pipeline, ctx)
        self.last_results = [{"pass": p.spec(), "modified": r.modified, "stats": dict(r.stats),
                              "notes": list(r.notes)} for p, r, _ in res.results]
        if not any(r.modified for _, r, _ in res.results):
            return ir_passes.PassResult(onnx_ir.serde.deserialize_model(proto), False)
        return ir_passes.PassResult(onnx_ir.serde.deserialize_model(lower(res.graph)), True)


def as_onnx_ir_pass(pass_or_spec: Any, *, calib: str | None = None,
                    preprocess: str | None = "none", seed: int = 0,
                    log: Callable[[str], None] = lambda m: None) -> QCompilePass:
    """An ``onnx_ir.passes.PassBase`` for one of our passes: a configured
    :class:`qcompile.passes.Pass` instance, or a pipeline text as ``--passes`` takes it
    (``"fold"``, ``"fold,cle{iterations=10}"``; unknown names are one-line OptionErrors)."""
    from qcompile.passes import Pass, parse_pipeline

    if isinstance(pass_or_spec, Pass):
        pipeline = [pass_or_spec]
    elif isinstance(pass_or_spec, str):
        pipeline = parse_pipeline(pass_or_spec)
    else:
        raise OptionError(f"as_onnx_ir_pass: give a qcompile Pass or a pipeline text such as "
                          f"'fold', not {type(pass_or_spec).__name__}")
    spec = ",".join(p.spec() for p in pipeline)
    return QCompilePass(pipeline, spec, calib=calib, preprocess=preprocess, seed=seed, log=log)
