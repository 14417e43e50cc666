"""Shared machinery of the passes that tune a quantised graph layer by layer (``adaround``,
``bias_correct``): which layers, their geometry, the float reference graph and the data.

A *quantised layer* is a Conv / Gemm / MatMul whose weight (input 1) is the output of a
``qcompile.QDQ`` of a float constant (what ``quantize`` inserts). Its parameters (scale, zero
point, bits, axis) are read from that QDQ; the passes change only the constant under it
(``adaround``: pre-rounded weights ``s (q - z)``, which the lowering re-quantises to exactly
``q``) or the constant under the bias QDQ (``bias_correct``). The float reference is a clone with
every QDQ removed (``x`` in place of ``QDQ(x)``): the network before quantisation.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from qcompile.errors import QCompileError
from qcompile.ir import Graph, Node, Value, is_op
from qcompile.numerics import quant
from qcompile.numerics.patches import LinearGeometry
from qcompile.passes import checks
from qcompile.passes._feeds import feeds_of, model_data
from qcompile.passes.base import PassContext, Stats

WEIGHTED = ("Conv", "Gemm", "MatMul")


class LayerwiseError(QCompileError):
    """A layer-wise pass cannot run (no data or no executor)."""


def is_qdq(n: Node | None) -> bool:
    return is_op(n, "QDQ")


@dataclass
class QLayer:
    node: Node
    wq: Node  # the weight's QDQ node (input 0: the float weight constant)
    geom: LinearGeometry
    act: tuple[float, float] | None  # fused Relu/Clip bounds
    bias: Value | None  # the float bias constant (under its int32 QDQ), if any

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def weight(self) -> Value:
        return self.wq.inputs[0]  # type: ignore[return-value]

    def weight_qparams(self) -> tuple[np.ndarray, np.ndarray, quant.QType, int | None]:
        s, z = self.wq.inputs[1], self.wq.inputs[2]
        assert s is not None and z is not None
        qt = quant.QType(int(self.wq.attrs["bits"]), bool(self.wq.attrs["signed"]))
        return np.asarray(s.const, np.float32), np.asarray(z.const), qt, self.wq.attrs.get("axis")

    def dequantized_weight(self) -> np.ndarray:
        s, z, qt, axis = self.weight_qparams()
        return quant.fake_quant(self.weight.const, s, z, qt, axis)


def quantised_layers(graph: Graph, st: Stats) -> list[QLayer]:
    """Every quantised layer, in graph order; the others are declined with a reason."""
    out = []
    for n in graph.nodes:
        if n.domain != "" or n.op not in WEIGHTED:
            continue
        where = f"{n.op} {n.name!r}"
        w = n.inputs[1]
        wq = w.producer if w is not None else None
        if not is_qdq(wq) or not wq.inputs[0].is_const:  # type: ignore[union-attr]
            st.skip("float_layer", where, "its weight is not quantised (kept float or declined "
                    "by quantize)")
            continue
        x = n.inputs[0]
        if x is None or x.type.shape is None or not isinstance(x.type.shape[-1], int):
            st.skip("dynamic_shape", where, "its input has no static shape")
            continue
        b = n.inputs[2] if len(n.inputs) > 2 else None
        if b is not None and is_qdq(b.producer):
            b = b.producer.inputs[0]  # type: ignore[union-attr]
        if b is not None and (not b.is_const or b.const.size != _out_channels(n)):
            b = None
        out.append(QLayer(n, wq, geometry(n), _fused_bounds(n), b))  # type: ignore[arg-type]
    return out


def _out_channels(n: Node) -> int:
    w = n.inputs[1].producer.inputs[0].const  # type: ignore[union-attr]
    if n.op == "Conv":
        return int(w.shape[0])
    if n.op == "Gemm" and n.attrs.get("transB", 0):
        return int(w.shape[0])
    return int(w.shape[-1])


def geometry(n: Node) -> LinearGeometry:
    if n.op != "Conv":
        return LinearGeometry("Gemm", trans_b=bool(n.attrs.get("transB", 0)))
    w = n.inputs[1].producer.inputs[0].const  # type: ignore[union-attr]
    kernel = tuple(int(k) for k in n.attrs.get("kernel_shape", w.shape[2:]))
    if len(kernel) != 2:
        raise LayerwiseError(f"Conv {n.name!r}: only 2-D convolutions are supported")
    pads = tuple(int(p) for p in n.attrs.get("pads", (0, 0, 0, 0)))
    auto = n.attrs.get("auto_pad", "NOTSET")
    if isinstance(auto, bytes):
        auto = auto.decode()
    if auto not in ("NOTSET", "VALID"):
        raise LayerwiseError(f"Conv {n.name!r}: auto_pad={auto} is not supported; "
                             "re-export with explicit pads")
    out_shape = n.output.type.shape
    return LinearGeometry(
        "Conv", groups=int(n.attrs.get("group", 1)), kernel=kernel,  # type: ignore[arg-type]
        strides=tuple(int(s) for s in n.attrs.get("strides", (1, 1))),  # type: ignore[arg-type]
        dilations=tuple(int(d) for d in n.attrs.get("dilations", (1, 1))),  # type: ignore[arg-type]
        pads=(pads[0], pads[1], pads[2], pads[3]),
        out_hw=(int(out_shape[2]), int(out_shape[3])))  # type: ignore[index,arg-type]


def _fused_bounds(n: Node) -> tuple[float, float] | None:
    from qcompile.passes.quantize import activation_bounds

    act = checks.fused_activation(n.output)
    if act is None:
        return None
    b = activation_bounds(act)
    return None if b is None else (b[0], b[1])


def float_reference(graph: Graph) -> Graph:
    """A clone of ``graph`` with every QDQ removed (``x`` in place of ``QDQ(x)``)."""
    g = graph.clone()
    for n in list(g.nodes):
        if is_qdq(n):
            g.replace_value(n.output, n.inputs[0])  # type: ignore[arg-type]
            g.remove(n)
    for v in list(g.initializers.values()):
        if not v.uses() and v not in g.outputs:
            g.remove_const(v)
    return g


def calibration_inputs(graph: Graph, ctx: PassContext, images: int, seed: int,
                       batch: int = 32) -> list[dict[str, np.ndarray]]:
    """The calibration feeds (``images`` of them, chosen as ``calibrate`` does), in memory, so
    the float and the quantised network see exactly the same batches."""
    if ctx.executor is None:
        raise LayerwiseError("no executor to run the graph; the driver must set "
                             "PassContext(executor=...)")
    data = ctx.calib_data
    if data is None:
        raise LayerwiseError("no calibration data; give --calib PATH")
    name = graph.inputs[0].name
    if hasattr(data, "split") and hasattr(data, "batches"):
        from qcompile.passes._select import recorded_selection  # calibrate{select=...} images

        idx = recorded_selection(graph, data, images)
        if idx is None:
            idx, _ = data.split(min(images, len(data)), seed=seed)
        data = model_data(graph, data, ctx.log)  # as the model input declares
        feeds = [feeds_of(graph, b.x) for b in data.batches(batch, indices=idx)]
    elif hasattr(data, "batches"):
        feeds = [feeds_of(graph, b.x) for b in data.batches(batch, limit=images)]
    else:
        feeds = [item if isinstance(item, dict) else {name: np.asarray(item)}
                 for item in list(data)[:images]]
    if not feeds:
        raise LayerwiseError("the calibration set is empty")
    return feeds


def run_values(graph: Graph, ctx: PassContext, feeds: list[dict[str, np.ndarray]],
               values: list[Value]) -> Iterator[dict[Value, np.ndarray]]:
    """``values`` on each feed in turn (through ``ctx.executor``)."""
    assert ctx.executor is not None
    for feed in feeds:
        yield ctx.executor.run(graph, feed, values)


class Ticker:
    """``ctx.progress`` bar (or nothing): ``tick(n)``, ``close()``."""

    def __init__(self, ctx: PassContext, total: int, desc: str) -> None:
        self.bar = ctx.progress(total=total, desc=desc) if ctx.progress else None

    def tick(self, n: int) -> None:
        if self.bar is None:
            return
        if hasattr(self.bar, "update"):
            self.bar.update(n)
        elif callable(self.bar):
            self.bar(n)

    def close(self) -> None:
        if self.bar is not None and hasattr(self.bar, "close"):
            self.bar.close()
