"""``OrtExecutor``: the :class:`qcompile.passes.base.Executor` that calibration uses.

``run(graph, feeds, outputs)`` lowers ``graph`` once, marks the requested intermediate values
as extra graph outputs, builds one InferenceSession and reuses it while the graph's structure
(node names and ops), the requested outputs and the constant arrays stay the same (a pass that
assigns a new array to ``value.const``, e.g. ``adaround`` writing rounded weights, gets a fresh
session; the cache holds the arrays it compared, so an id cannot be reused meanwhile).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from onnx import helper

from qcompile.backends.ort.lower import lower
from qcompile.backends.ort.runtime import session
from qcompile.ir import DType, Graph, Value


class OrtExecutor:
    """Float execution on ONNX Runtime exposing intermediates (cached session)."""

    def __init__(self, device: str = "cpu", threads: int = 0, opt_level: str = "all") -> None:
        self.device, self.threads, self.opt_level = device, threads, opt_level
        self._key: tuple | None = None
        self._sess = None
        self._names: list[str] = []
        self._consts: list[np.ndarray | None] = []

    def _session(self, graph: Graph, outputs: Sequence[Value]):
        names = [v.name for v in outputs]
        key = (id(graph), tuple(names), tuple((n.name, n.op) for n in graph.nodes))
        consts = [v.const for v in graph.initializers.values()]
        if key != self._key or len(consts) != len(self._consts) or any(
                a is not b for a, b in zip(consts, self._consts)):
            model = lower(graph, check=False)
            existing = {o.name for o in model.graph.output}
            extra = [v for v in outputs if v.name not in existing]
            extra_names = {v.name for v in extra}
            keep = [vi for vi in model.graph.value_info if vi.name not in extra_names]
            del model.graph.value_info[:]
            model.graph.value_info.extend(keep)
            for v in extra:
                shape = None if v.type.shape is None else list(v.type.shape)
                elem = v.type.dtype.value if v.type.dtype != DType.UNDEFINED else 1
                model.graph.output.append(helper.make_tensor_value_info(v.name, elem, shape))
            self._sess = session(model, device=self.device, opt_level=self.opt_level,
                                 threads=self.threads)
            self._key, self._names, self._consts = key, names, consts
        return self._sess

    def run(self, graph: Graph, feeds: Mapping[str, np.ndarray],
            outputs: Sequence[Value]) -> dict[Value, np.ndarray]:
        sess = self._session(graph, outputs)
        arrays = sess.run(self._names, dict(feeds))
        return dict(zip(outputs, arrays, strict=True))
