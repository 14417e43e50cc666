"""``OrtExecutor``: the :class:`qcompile.passes.base.Executor` that calibration uses.

``run(graph, feeds, outputs)`` lowers ``graph`` once, marks the requested intermediate values
as extra graph outputs, builds one InferenceSession and reuses it while the graph's structure
(node names and ops), the requested outputs and the constant arrays stay the same (a pass that
assigns a new array to ``value.const``, e.g. ``adaround`` writing rounded weights, gets a fresh
session; the cache holds the arrays it compared, so an id cannot be reused meanwhile).

Each session computes only what the requested values depend on (the lowered graph is pruned
to their ancestors; the graph's own outputs are exposed only when requested).

Memory: ORT keeps every exposed output alive until the run returns (fetching a subset of a
session's outputs does not help: the others are still materialised), so a caller that needs
many intermediates requests them in chunks (``calibrate`` keeps each run's exposed bytes within
its budget) and gets one session per chunk; up to :data:`MAX_SESSIONS` of them stay cached
(least recently used dropped first), so chunks alternating batch after batch are not rebuilt;
they run without ORT's CPU memory arena, which would keep each session's peak reserved.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence

import numpy as np
from onnx import AttributeProto, helper

from qcompile.backends.ort.guard import ort_guard
from qcompile.backends.ort.lower import lower
from qcompile.backends.ort.runtime import session
from qcompile.ir import DType, Graph, Value

#: Sessions cached per executor (one per requested output set of the current graph).
MAX_SESSIONS = 32


class OrtExecutor:
    """Float execution on ONNX Runtime exposing intermediates (cached sessions)."""

    def __init__(self, device: str = "cpu", threads: int = 0, opt_level: str = "all") -> None:
        self.device, self.threads, self.opt_level = device, threads, opt_level
        self._graph_key: tuple | None = None
        self._consts: list[np.ndarray | None] = []
        self._sessions: OrderedDict[tuple[str, ...], object] = OrderedDict()

    def _session(self, graph: Graph, outputs: Sequence[Value]):
        names = tuple(v.name for v in outputs)
        gkey = (id(graph), tuple((n.name, n.op) for n in graph.nodes))
        consts = [v.const for v in graph.initializers.values()]
        if gkey != self._graph_key or len(consts) != len(self._consts) or any(
                a is not b for a, b in zip(consts, self._consts)):
            self._sessions.clear()  # another graph, or new constant arrays: rebuild all
            self._graph_key, self._consts = gkey, consts
        sess = self._sessions.get(names)
        if sess is not None:
            self._sessions.move_to_end(names)
            return sess
        model = lower(graph, check=False)
        wanted = set(names)
        kept_outputs = [o for o in model.graph.output if o.name in wanted]
        existing = {o.name for o in kept_outputs}
        extra = [v for v in outputs if v.name not in existing]
        extra_names = {v.name for v in extra}
        keep = [vi for vi in model.graph.value_info if vi.name not in extra_names]
        del model.graph.value_info[:]
        model.graph.value_info.extend(keep)
        del model.graph.output[:]
        model.graph.output.extend(kept_outputs)
        for v in extra:
            shape = None if v.type.shape is None else list(v.type.shape)
            elem = v.type.dtype.value if v.type.dtype != DType.UNDEFINED else 1
            model.graph.output.append(helper.make_tensor_value_info(v.name, elem, shape))
        _prune(model.graph, wanted)
        sess = session(model, device=self.device, opt_level=self.opt_level,
                       threads=self.threads, arena=False)
        del model
        self._sessions[names] = sess
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return sess

    def run(self, graph: Graph, feeds: Mapping[str, np.ndarray],
            outputs: Sequence[Value]) -> dict[Value, np.ndarray]:
        sess = self._session(graph, outputs)
        with ort_guard("running the model"):
            arrays = sess.run([v.name for v in outputs], dict(feeds))
        return dict(zip(outputs, arrays, strict=True))


def _prune(g, wanted: set[str]) -> None:
    """Keep only the nodes the requested outputs depend on (a chunk of a deep graph's values
    then costs its prefix, not the whole graph); graphs with subgraph attributes (If, Loop:
    outer names read inside) are left whole."""
    if any(a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS) for n in g.node
           for a in n.attribute):
        return
    need, keep = set(wanted), []
    for n in reversed(g.node):
        if any(o in need for o in n.output):
            keep.append(n)
            need.update(i for i in n.input if i)
    if len(keep) == len(g.node):
        return
    keep.reverse()
    del g.node[:]
    g.node.extend(keep)
    inits = [t for t in g.initializer if t.name in need]
    del g.initializer[:]
    g.initializer.extend(inits)
