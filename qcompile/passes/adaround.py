"""``adaround``: learned rounding of quantised weights, layer by layer (AdaRound, Nagel et al.
2020; the maths is in :mod:`qcompile.numerics.adaround`).

Runs after ``quantize``. For each quantised layer in graph order (sequential: layer ``i`` sees
the inputs produced by the already-rounded layers ``< i``):

1. ``Xf``, ``T = f(Xf W^T + b)``: the float network's input and fused-activation output at
   ``rows`` sampled output positions of ``images`` calibration images (one float run for all
   layers, the reference graph being the graph without its QDQ nodes);
2. ``Xq``: the quantised network's input at the same positions (one run per layer);
3. ``q = adaround(W, s, z, Xq, T)``, compared with round-to-nearest on the same rows; the
   learned codes are kept only when their reconstruction loss is lower (else declined, counted);
4. the weight constant under the layer's QDQ becomes ``s (q - z)``: the QDQ parameters are
   unchanged and the lowering re-quantises it to exactly ``q`` (no backend reads ``meta``).

Declines (counted, explained): layers whose weight is not quantised, shared weight constants,
no gain over nearest rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from qcompile.errors import OptionError
from qcompile.ir import Graph
from qcompile.numerics import adaround as ar
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
class AdaRound(Pass):
    """Learn up/down rounding of every quantised weight against the float layer's output."""

    name = "adaround"
    needs_data = "yes"
    summary = "layer-wise learned weight rounding (AdaRound) on calibration data"
    requires = (checks.quantized,)

    iterations: int = 1000
    lr: float = 0.01
    images: int = 256
    rows: int = 8192
    batch: int = 1024
    reg: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        for key in ("iterations", "images", "rows", "batch"):
            if getattr(self, key) < 1:
                raise OptionError(f"pass 'adaround': {key}={getattr(self, key)} must be >= 1")
        if not self.lr > 0:
            raise OptionError(f"pass 'adaround': lr={self.lr} must be > 0")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        st = Stats()
        layers = [la for la in quantised_layers(graph, st) if self._accept(la, st)]
        if not layers:
            return st.result(graph, False)
        with blas_threads(1):  # many small products: one thread is 4-7x faster on 2 busy cores
            return self._run(graph, ctx, layers, st)

    def _run(self, graph: Graph, ctx: PassContext, layers: list[QLayer],
             st: Stats) -> PassResult:
        feeds = calibration_inputs(graph, ctx, self.images, self.seed)
        n_img = sum(len(next(iter(f.values()))) for f in feeds)
        per_image = max(1, math.ceil(self.rows / n_img))
        rng = np.random.default_rng(self.seed)
        fg = float_reference(graph)
        targets, positions = self._float_targets(graph, fg, ctx, feeds, layers, per_image, rng)
        cfg = ar.AdaRoundConfig(self.iterations, self.lr, self.batch, self.reg)
        bar = Ticker(ctx, len(layers) * self.iterations, "adaround")
        modified = False
        try:
            for la in layers:
                modified |= self._round_layer(graph, ctx, feeds, la, targets.pop(la.name),
                                              positions.pop(la.name), cfg, rng, bar, st)
        finally:
            bar.close()
        return st.result(graph, modified)

    def _accept(self, la: QLayer, st: Stats) -> bool:
        if len(la.weight.uses()) != 1:
            st.skip("shared_weight", f"{la.node.op} {la.name!r}",
                    "its weight constant has other uses (rounding it would change them)")
            return False
        return True

    def _float_targets(self, graph: Graph, fg: Graph, ctx: PassContext, feeds: list,
                       layers: list[QLayer], per_image: int, rng: np.random.Generator):
        fnodes = {n.name: n for n in fg.nodes}
        ins = {la.name: fnodes[la.name].inputs[0] for la in layers}
        wanted = list(dict.fromkeys(ins.values()))
        targets: dict[str, list[np.ndarray]] = {la.name: [] for la in layers}
        positions: dict[str, list[np.ndarray]] = {la.name: [] for la in layers}
        mats = {la.name: (pt.weight_matrix(la.weight.const, la.geom), _bias(la)) for la in layers}
        assert ctx.executor is not None
        for feed in feeds:
            outs = ctx.executor.run(fg, feed, wanted)
            for la in layers:
                x = outs[ins[la.name]]
                pos = pt.sample_positions(la.geom, len(x), per_image, rng)
                w2, b = mats[la.name]
                y = pt.linear_rows(pt.gather_rows(x, la.geom, pos), w2, b)
                if la.act is not None:
                    np.clip(y, la.act[0], la.act[1], out=y)
                targets[la.name].append(y)
                positions[la.name].append(pos)
        return ({k: np.concatenate(v, axis=1) for k, v in targets.items()}, positions)

    def _round_layer(self, graph: Graph, ctx: PassContext, feeds: list, la: QLayer,
                     target: np.ndarray, positions: list[np.ndarray], cfg: ar.AdaRoundConfig,
                     rng: np.random.Generator, bar: Ticker, st: Stats) -> bool:
        assert ctx.executor is not None
        xv = la.node.inputs[0]
        assert xv is not None
        xs = [pt.gather_rows(ctx.executor.run(graph, feed, [xv])[xv], la.geom, pos)
              for feed, pos in zip(feeds, positions, strict=True)]
        x = np.concatenate(xs, axis=1)
        del xs
        w = la.weight.const
        s, z, qt, _ = la.weight_qparams()
        w2 = pt.weight_matrix(w, la.geom)
        o = w2.shape[0] * w2.shape[1]
        s2, z2 = pt.channel_matrix(s, la.geom, o), pt.channel_matrix(z, la.geom, o)
        b = _bias(la)
        near = pt.weight_matrix(la.dequantized_weight(), la.geom)
        loss_near = ar.reconstruction_loss(x, near, b, target, la.act)
        q = ar.adaround(w2, s2, z2, qt.qmin, qt.qmax, x, target, b, la.act, cfg, rng, bar.tick)
        learned = (s2[..., None] * (q - z2[..., None])).astype(np.float32)
        loss_ada = ar.reconstruction_loss(x, learned, b, target, la.act)
        where = f"{la.node.op} {la.name!r}"
        ctx.log(f"adaround {la.name}: reconstruction loss {loss_near:.4g} (nearest) -> "
                f"{loss_ada:.4g} (learned)")
        if not loss_ada < loss_near:
            st.skip("no_gain", where, f"learned rounding does not beat nearest on the "
                    f"calibration rows ({loss_ada:.4g} >= {loss_near:.4g})")
            return False
        la.weight.const = pt.matrix_to_weight(learned, w, la.geom)
        st.count("adarounded")
        st.count("flipped_weights", int(np.count_nonzero(learned != near)))
        st.count("loss_reduction_permille", int(round(1000 * (1 - loss_ada / loss_near))))
        return True


def _bias(la: QLayer) -> np.ndarray | None:
    if la.bias is None:
        return None
    o = la.bias.const.size
    return pt.channel_matrix(la.bias.const.reshape(-1), la.geom, o)
