"""The pass context every command builds the same way: calibration data opened with the
command's preprocessing, ONNX Runtime injected as the executor (``passes/`` never imports a
backend), and the pipeline's data needs checked up front from what each pass declares
(``Pass.needs_data``), so no driver keeps a list of pass names.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from qcompile.errors import QCompileError

__all__ = ["canonical", "open_data", "ort_executor", "pass_context"]


def open_data(path: str, preprocess: str | Any = "none", *, size: int | None = None,
              log: Callable[[str], None] = lambda m: None):
    """``open_dataset(path)`` with ``preprocess`` (a preset name or a ``Preprocess``)."""
    from qcompile.data import Preprocess, open_dataset, preprocess_from_options

    pre = preprocess if isinstance(preprocess, Preprocess) else \
        preprocess_from_options(preprocess, **({"size": size} if size is not None else {}))
    return open_dataset(path, pre, warn=log)


class FixedBatchExecutor:
    """An executor that honours the graph's declared batch: when the first input's first dim
    is a fixed ``B``, any number of rows runs in chunks of exactly ``B`` and the outputs come
    back one row per input row (``qcompile.data.model_input.run_batched``, the one rule; with
    ``B = 1`` each image runs alone).  A symbolic batch runs the feed as given."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def run(self, graph: Any, feeds: Any, outputs: Sequence[Any]) -> dict[Any, np.ndarray]:
        from qcompile.data.model_input import run_batched
        from qcompile.passes._feeds import input_spec

        batch = input_spec(graph.inputs[0]).batch if graph.inputs else None
        outputs = list(outputs)

        def once(f):  # one executor run per chunk of rows, all requested outputs together
            res = self.inner.run(graph, f, outputs)
            return [res[v] for v in outputs]

        arrays = run_batched(once, feeds, batch)
        return dict(zip(outputs, arrays, strict=True))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def ort_executor(threads: int = 0):
    """The executor passes run graphs with (ONNX Runtime, float), in the model's batch size;
    ``threads`` 0: ONNX Runtime's default (all cores)."""
    from qcompile.backends.ort.executor import OrtExecutor

    return FixedBatchExecutor(OrtExecutor(threads=threads))


def pass_context(pipeline: Sequence[Any], *, calib: str | None = None,
                 preprocess: str | Any = "none", seed: int = 0, verify_each: bool = True,
                 progress: Callable[..., Any] | None = None,
                 log: Callable[[str], None] = lambda m: None, calib_flag: str = "--calib"):
    """A ``PassContext`` for ``pipeline``: with ``calib`` the data set and the ORT executor;
    refuses (one line, naming the first such pass and ``calib_flag``) when a pass cannot run
    without calibration data and none is given."""
    from qcompile.passes import PassContext
    from qcompile.passes.pipeline import data_needs

    ctx = PassContext(rng=np.random.default_rng(seed), verify_each=verify_each,
                      progress=progress, log=log)
    needs, _ = data_needs(pipeline)
    if needs and calib is None:
        raise QCompileError(f"pass '{needs[0]}' needs calibration images; give {calib_flag} "
                            "DATA (a .npz/.npy, an image folder or an image)")
    if calib is not None:
        ctx.calib_data = open_data(calib, preprocess, log=log)
        ctx.executor = ort_executor()
    return ctx


def canonical(graph, log: Callable[[str], None] = lambda m: None):
    """``graph`` after the ``canonicalize`` pass, which every command applies first so exporter
    idioms (shape subgraphs, ReduceMean pools, MatMul+Add, Caffe scales, ...) reach the other
    passes and the backends in one form. When it rewrote anything the graph is lowered and
    lifted again so ONNX shape inference gives the rewritten values static types; one log line
    says what changed. Unchanged graphs are returned as they are (one scan of the nodes)."""
    from qcompile.passes import PassContext, parse_pipeline, run_pipeline

    res = run_pipeline(graph, parse_pipeline("canonicalize"), PassContext(log=log))
    _, result, _ = res.results[0]
    if not result.modified:
        return graph
    from qcompile.backends.ort import lower
    from qcompile.frontend import lift

    done = {k: v for k, v in result.stats.items() if not k.startswith("skipped")}
    log("canonicalize: " + ", ".join(f"{k}={v}" for k, v in done.items()))
    return lift(lower(res.graph), name=graph.name)
