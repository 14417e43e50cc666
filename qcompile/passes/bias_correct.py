"""``bias_correct``: remove the shift in each layer's output mean caused by weight quantisation
(Nagel et al., "Data-Free Quantization", ICCV 2019, sec. 4.2; AIMET's empirical variant).

For a quantised layer ``y = W x + b`` with dequantised weight ``W~ = s (q - z)``, quantisation
adds ``e = W~ x~ - W x`` to every output; its mean per output channel ``E[e_o]`` biases the
following layers. With ``b_o' = b_o - E[e_o]`` the mean is restored:

* ``empirical`` (default): ``E[e_o] = mean(y~_o) - mean(y_o)`` over the calibration images and
  positions, ``y`` from the float reference graph and ``y~`` from the quantised graph, one layer
  at a time in graph order (so layer ``i`` is corrected for the error that reaches it after
  layers ``< i`` were corrected; ``sequential=false``: all layers from one quantised run, two
  network runs in all instead of one per layer). Also absorbs the mean error of quantised
  activations.
* ``analytic``: ``E[e_o] = sum_{c,k} (W~ - W)[o, c, k] E[x_c]`` with ``E[x_c]`` the float input's
  per-channel mean (one float run for all layers; zero padding at the borders is ignored, so it
  is exact for 1x1 convolutions and Gemm and approximate for padded k x k ones).

The correction goes into the float constant under the layer's int32 bias QDQ (quantised at
``s_in s_w`` by the lowering). Written before ``quantize`` in a ``qcompile run`` pipeline
(``calibrate,bias_correct,quantize``) it is scheduled right after that ``quantize`` (see
``qcompile.passes.pipeline.schedule``). Declines (counted, explained): float layers, layers without a
bias input (a bias would have to be added after ``quantize``), shared bias constants.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from qcompile.errors import OptionError
from qcompile.ir import Graph, Value
from qcompile.numerics import patches as pt
from qcompile.numerics._blas import blas_threads
from qcompile.passes import checks
from qcompile.passes._layerwise import (
    QLayer,
    Ticker,
    calibration_inputs,
    float_reference,
    quantised_layers,
)
from qcompile.passes.base import Pass, PassContext, PassResult, Stats


@dataclass(frozen=True)
class BiasCorrect(Pass):
    """Correct each quantised layer's bias for the mean error its weight quantisation causes."""

    name = "bias_correct"
    summary = "bias correction for weight-quantisation mean shift (empirical|analytic)"
    requires = (checks.quantized,)
    needs_data = "yes"
    runs_after = "quantize"  # written before quantize, it is scheduled after it

    mode: Literal["empirical", "analytic"] = "empirical"
    images: int = 64
    sequential: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.images < 1:
            raise OptionError(f"pass 'bias_correct': images={self.images} must be >= 1")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        st = Stats()
        layers = [la for la in quantised_layers(graph, st) if self._accept(la, st)]
        if not layers:
            return st.result(graph, False)
        feeds = calibration_inputs(graph, ctx, self.images, self.seed)
        fg = float_reference(graph)
        fnodes = {n.name: n for n in fg.nodes}
        with blas_threads(1):
            if self.mode == "analytic":
                means = _means(fg, ctx, feeds, [fnodes[la.name].inputs[0] for la in layers])
                for la in layers:
                    self._apply(la, _analytic_shift(la, means[fnodes[la.name].inputs[0]]), st)
                return st.result(graph, True)
            ref = _means(fg, ctx, feeds, [fnodes[la.name].output for la in layers])
            if not self.sequential:  # one quantised run: every layer against the float one
                got = _means(graph, ctx, feeds, [la.node.output for la in layers])
                for la in layers:
                    self._apply(la, got[la.node.output] - ref[fnodes[la.name].output], st)
                return st.result(graph, True)
            bar = Ticker(ctx, len(layers), "bias_correct")
            try:
                for la in layers:
                    got = _means(graph, ctx, feeds, [la.node.output])[la.node.output]
                    self._apply(la, got - ref[fnodes[la.name].output], st)
                    bar.tick(1)
            finally:
                bar.close()
        return st.result(graph, True)

    def _accept(self, la: QLayer, st: Stats) -> bool:
        where = f"{la.node.op} {la.name!r}"
        if la.bias is None:
            st.skip("no_bias", where, "has no bias constant to correct (give the layer a zero "
                    "bias before 'quantize')")
            return False
        if len(la.bias.uses()) != 1:
            st.skip("shared_bias", where, "its bias constant has other uses")
            return False
        return True

    def _apply(self, la: QLayer, shift: np.ndarray, st: Stats) -> None:
        b = la.bias
        assert b is not None and b.const is not None
        new = b.const.astype(np.float64).reshape(-1) - shift.astype(np.float64).reshape(-1)
        b.const = new.astype(b.const.dtype).reshape(b.const.shape)
        st.count("corrected")


def _means(graph: Graph, ctx: PassContext, feeds: list, values: list[Value]
           ) -> dict[Value, np.ndarray]:
    """Per-channel (axis 1) means of ``values`` over all feeds (float64)."""
    assert ctx.executor is not None
    wanted = list(dict.fromkeys(values))
    sums: dict[Value, np.ndarray] = {}
    counts: dict[Value, int] = {}
    for feed in feeds:
        outs = ctx.executor.run(graph, feed, wanted)
        for v in wanted:
            a = outs[v].astype(np.float64)
            axes = (0,) + tuple(range(2, a.ndim))
            sums[v] = sums.get(v, 0) + a.sum(axis=axes)
            counts[v] = counts.get(v, 0) + a.size // a.shape[1]
    return {v: sums[v] / counts[v] for v in wanted}


def _analytic_shift(la: QLayer, mean_in: np.ndarray) -> np.ndarray:
    """``(W~ - W) E[x]`` per output channel (grouped; each input channel over its kernel)."""
    dw = pt.weight_matrix(la.dequantized_weight() - la.weight.const, la.geom)  # [g, o, k]
    g, _, k = dw.shape
    m = mean_in.reshape(g, -1)  # [g, c]
    per_c = k // m.shape[1]
    mk = np.repeat(m, per_c, axis=1)  # (c, ky, kx) order: each channel over its kernel taps
    return np.einsum("gok,gk->go", dw.astype(np.float64), mk).reshape(-1)
