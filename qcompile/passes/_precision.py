"""Shared machinery of ``sensitivity`` and ``assign`` (no pass here).

* :func:`weight_layers` - the Conv/Gemm/MatMul nodes whose weight is a ``qcompile.QDQ`` of a
  constant, in graph order, with their parameter counts.
* :func:`set_weight_format` - re-type one layer's weight QDQ to another integer type: new
  symmetric scale (:func:`qcompile.numerics.clipping.symmetric_weight_scale`), ``bits`` attribute,
  zero point, and the int32 bias QDQ's scale ``s_b = s_in * s_w`` (so QLinearConv stays exact).
* :class:`HeldOut` - labelled images that are *not* calibration images, held in memory, and
  the graph evaluations on them through the injected ``ctx.executor`` (no backend import).
* Metrics: top-1 accuracy, the SQNR of logits ``10 log10(sum a^2 / sum (a - b)^2)``, the
  parameter-weighted average weight bits ``sum_l n_l b_l / sum_l n_l``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from qcompile.data.calibration import add_indices, calibration_indices, held_out
from qcompile.errors import QCompileError
from qcompile.ir import Graph, Node, TensorType, is_op
from qcompile.numerics import quant
from qcompile.numerics.clipping import symmetric_weight_scale
from qcompile.passes._feeds import model_data
from qcompile.passes.base import PassContext

WEIGHTED = ("Conv", "Gemm", "MatMul")


def _qdq_of(v) -> Node | None:
    p = None if v is None else v.producer
    return p if is_op(p, "QDQ") else None


@dataclass(frozen=True)
class Layer:
    name: str
    op: str
    params: int
    bits: int


def weight_layers(graph: Graph) -> list[Layer]:
    """Layers with a quantised constant weight (``QDQ(const)`` on input 1), in graph order."""
    out = []
    for n in graph.nodes:
        if n.domain == "" and n.op in WEIGHTED and len(n.inputs) > 1:
            q = _qdq_of(n.inputs[1])
            if q is not None and q.inputs[0] is not None and q.inputs[0].is_const:
                out.append(Layer(n.name, n.op, int(q.inputs[0].const.size), int(q.attrs["bits"])))
    return out


def avg_bits(layers: Sequence[Layer], bits: dict[str, int] | None = None) -> float:
    """``sum_l n_l b_l / sum_l n_l`` with ``bits`` overriding each layer's current width."""
    bits = bits or {}
    total = sum(la.params for la in layers)
    return sum(la.params * bits.get(la.name, la.bits) for la in layers) / max(total, 1)


def weight_mb(layers: Sequence[Layer], bits: dict[str, int] | None = None) -> float:
    """Weight storage in MB (1e6 bytes): ``sum_l n_l b_l / 8e6``."""
    return avg_bits(layers, bits) * sum(la.params for la in layers) / 8e6


def set_weight_format(graph: Graph, node_name: str, qt: quant.QType, *, method: str = "mse",
                      reduce_range: bool = False) -> None:
    """Re-type the weight QDQ of ``node_name`` to ``qt`` (symmetric; bias scale follows)."""
    n = graph.find_node(node_name)
    q = _qdq_of(n.inputs[1]) if n is not None else None
    if q is None:
        raise QCompileError(f"layer {node_name!r} has no quantised weight")
    w, s, z = q.inputs
    axis = q.attrs.get("axis")
    rr = reduce_range and qt.bits == 8  # reduce_range is the u8 x s8 int8 kernel's remedy only
    scale = symmetric_weight_scale(w.const, axis, qt, method=method, reduce_range=rr)
    _set_const(s, np.asarray(scale, np.float32))
    _set_const(z, np.zeros(np.shape(scale), qt.storage))
    q.attrs["bits"], q.attrs["signed"] = qt.bits, 1
    b_q = _qdq_of(n.inputs[2]) if len(n.inputs) > 2 else None
    x_q = _qdq_of(n.inputs[0])
    if b_q is not None and x_q is not None:
        s_b, _ = quant.bias_qparams(x_q.inputs[1].const, scale)
        _set_const(b_q.inputs[1], s_b)


def _set_const(v, arr: np.ndarray) -> None:
    v.const = arr
    v.type = TensorType.of(arr)


class HeldOut:
    """Up to ``n`` labelled images of ``ctx.calib_data`` outside the calibration indices.

    Drawn with a seeded permutation of the remaining indices, so the same (data, seed, n) gives
    the same images. ``logits(graph)`` runs the graph on them through ``ctx.executor``.
    """

    def __init__(self, graph: Graph, ctx: PassContext, n: int, *, seed: int = 0,
                 batch: int = 250, who: str = "assign") -> None:
        data = ctx.calib_data
        if ctx.executor is None:
            raise QCompileError(f"{who} needs an executor to evaluate candidates "
                                "(the driver sets one with --calib)")
        if data is None or not hasattr(data, "batches") or getattr(data, "labels", None) is None:
            raise QCompileError(f"{who} needs labelled images (--calib with labels, e.g. an "
                                ".npz with 'labels' or class folders)")
        used = calibration_indices(graph.metadata, data)
        rest = held_out(data, [graph.metadata])
        if rest.size == 0:
            raise QCompileError(f"{who}: no labelled images left after the {used.size} "
                                "calibration images; lower calibrate{images=...}")
        rng = np.random.default_rng(seed + 7919)
        self.indices = np.sort(rng.permutation(rest)[: max(1, min(n, rest.size))])
        xs, ys = [], []
        for b in model_data(graph, data, ctx.log).batches(batch, indices=self.indices):
            xs.append(b.x)
            ys.append(b.labels)
        self.batches = xs
        self.labels = np.concatenate(ys)
        self.ctx = ctx
        self._alive: list[Graph] = []  # executors may key sessions on id(graph): keep ids unique

    def __len__(self) -> int:
        return int(self.labels.size)

    def logits(self, graph: Graph) -> np.ndarray:
        self._alive.append(graph)
        name, out = graph.inputs[0].name, graph.outputs[0]
        parts = [self.ctx.executor.run(graph, {name: x}, [out])[out] for x in self.batches]
        return np.concatenate(parts).astype(np.float32)

    def accuracy(self, logits: np.ndarray) -> float:
        return float((logits.argmax(1) == self.labels).mean())

    def record(self, graph: Graph, key: str) -> None:
        """Add these indices to the calibration record so ``qcompile eval`` leaves them out."""
        add_indices(graph.metadata, self.indices, key, len(self.indices))
