"""``clip_search``: MSE-optimal clipping ranges for quantised weights (per channel) and for
activations (per tensor); the maths is in :mod:`qcompile.numerics.clipping`.

Min-max ranges waste most of a low-bit grid on a few outliers; clipping them shrinks the step
for every other value. For a grid ``alpha in {1 - k/grid (1 - alpha_min)}``:

* ``target=weights`` (default) runs **after** ``quantize``: for each quantised Conv/Gemm/MatMul
  and each output channel ``c`` (one search per tensor for per-tensor weights), the symmetric
  scale ``s_c = alpha s0_c`` (``s0``: quantize's min-max scale; the QDQ node's own integer
  type) minimising, with ``d_c = w_c - fake_quant(w_c, s_c)``,

  - ``metric=output`` (default): the squared error the channel's output gets,
    ``E[(x . d_c)^2] = d_c^T E[x x^T] d_c`` over ``rows`` input rows (sampled output positions)
    of the float graph on ``images`` calibration images; what accuracy depends on (on
    cifar10_resnet20 W4A8 round-to-nearest it lowers the accuracy drop where ``mse`` raises
    it). Per-tensor weights fall back to ``mse``;
  - ``metric=mse``: ``||d_c||^2`` (data-free). Minimising a channel's MSE is maximising its
    SQNR (the signal does not depend on ``alpha``), so an SQNR metric would pick the same.

  It rewrites the explicit op parameters: the scale constant of the weight QDQ and, to keep
  the integer bias in accumulator units, the int32 bias QDQ's scale ``s_b = s_in s_w``. Run it
  before ``adaround`` and ``bias_correct`` (they start from the scale it chooses; a layer whose
  weight already sits on its grid, as adaround leaves it, is declined).
* ``target=activations`` runs **between** ``calibrate`` and ``quantize``: it rewrites the
  calibrated ranges ``meta[RANGE]`` that quantize turns into QDQ parameters, per tensor
  ``[alpha lo, alpha hi]`` minimising the squared error of the asymmetric ``activations``
  quantiser (give the type quantize will use: ``uint4`` for W4A4) over ``samples`` values drawn
  from the float graph's outputs on ``images`` calibration images (chosen as ``calibrate``
  chooses them, ``seed``).

Both keep ``alpha = 1`` as a candidate, so the error is never worse than the starting range.
Stats: layers/tensors clipped, channels clipped, the total error reduction in permille; the log
has per layer the mean and minimum alpha and the error reduction. Declines (counted,
explained): float layers, asymmetric or reduce_range weights (clipping would leave the 7-bit
codes), weights already on their grid, layers/tensors whose range is already optimal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from qcompile.errors import OptionError
from qcompile.ir import RANGE, Graph, Range, Value
from qcompile.numerics import clipping, quant
from qcompile.numerics import patches as pt
from qcompile.numerics._blas import blas_threads
from qcompile.passes import checks
from qcompile.passes._layerwise import (
    QLayer,
    calibration_inputs,
    float_reference,
    is_qdq,
    quantised_layers,
)
from qcompile.passes.base import Check, Pass, PassContext, PassResult, PreconditionError, Stats


def _not_quantized(graph: Graph) -> str | None:
    if checks.quantized(graph) is None:
        return "the graph already has qcompile.QDQ nodes"
    return None


not_quantized = Check("not_quantized", _not_quantized, "no QDQ node has been inserted yet")

_HINTS = {
    ("weights", "quantized"): "run 'quantize' first: clip_search{target=weights} rewrites the "
                              "weight QDQ scales (e.g. calibrate,quantize,clip_search,adaround)",
    ("activations", "calibrated"): "run 'calibrate' first: clip_search{target=activations} "
                                   "refines the calibrated ranges",
    ("activations", "not_quantized"): "put clip_search{target=activations} between 'calibrate' "
                                      "and 'quantize' (it rewrites the ranges quantize reads)",
}


@dataclass(frozen=True)
class ClipSearch(Pass):
    """MSE-optimal clipping of weight scales (after quantize) or activation ranges (before)."""

    name = "clip_search"
    needs_data = "yes"
    summary = "MSE-optimal clipping: weight QDQ scales per channel | activation ranges"

    target: Literal["weights", "activations"] = "weights"
    metric: Literal["output", "mse"] = "output"
    grid: int = 100
    alpha_min: float = 0.2
    activations: Literal["uint8", "int8", "uint4", "int4", "uint16", "int16"] = "uint8"
    images: int = 64
    samples: int = 65536
    rows: int = 4096
    seed: int = 0

    def __post_init__(self) -> None:
        if self.grid < 1:
            raise OptionError(f"pass 'clip_search': grid={self.grid} must be >= 1")
        if not 0.0 < self.alpha_min < 1.0:
            raise OptionError(f"pass 'clip_search': alpha_min={self.alpha_min} must be in (0, 1)")
        for key in ("images", "samples", "rows"):
            if getattr(self, key) < 1:
                raise OptionError(f"pass 'clip_search': {key}={getattr(self, key)} must be >= 1")

    def preconditions(self) -> tuple[Check, ...]:
        if self.target == "weights":
            return (checks.quantized,)
        return (not_quantized, checks.calibrated)

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        # The checks depend on ``target`` (one position per target), so they run here rather
        # than as the class-level ``requires``; same named checks, same error type.
        for check in self.preconditions():
            why = check(graph)
            if why is not None:
                raise PreconditionError(f"'{self.spec()}' needs '{check.name}' ({why}); "
                                        f"{_HINTS[(self.target, check.name)]}")
        st = Stats()
        if self.target == "weights":
            return self._weights(graph, ctx, st)
        return self._activations(graph, ctx, st)

    # -- weights ------------------------------------------------------------------------
    def _weights(self, graph: Graph, ctx: PassContext, st: Stats) -> PassResult:
        layers = [la for la in quantised_layers(graph, st) if self._accept(la, st)]
        grams: dict[str, np.ndarray] = {}
        if self.metric == "output" and layers:
            with blas_threads(1):
                grams = self._grams(graph, ctx, [la for la in layers
                                                 if la.wq.attrs.get("axis") is not None])
        total_start = total_best = 0.0
        modified = False
        for la in layers:
            where = f"{la.node.op} {la.name!r}"
            s0, _, qt, axis = la.weight_qparams()
            res = clipping.search_weight_clip(la.weight.const, s0, axis, qt, grid=self.grid,
                                              alpha_min=self.alpha_min,
                                              gram=grams.get(la.name))
            changed = res.alpha.reshape(-1) < 1.0
            start, best = float(res.err_start.sum()), float(res.err.sum())
            what = "output" if la.name in grams else "weight"  # per-tensor: weight MSE
            if not changed.any():
                st.skip("already_optimal", where, "the min-max scale is already optimal "
                        f"({what} error) for every channel")
                continue
            self._set_scales(graph, la, res.scale)  # type: ignore[arg-type]
            total_start += start
            total_best += best
            modified = True
            st.count("layers_clipped")
            st.count("channels_clipped", int(changed.sum()))
            st.count("channels_kept", int((~changed).sum()))
            a = res.alpha.reshape(-1)
            ctx.log(f"clip_search {la.name}: alpha mean {a.mean():.3f} min {a.min():.3f} "
                    f"({int(changed.sum())}/{a.size} channels clipped), {what} MSE "
                    f"-{100 * (1 - best / start):.1f}%")
        if modified and total_start > 0:
            st.count("mse_reduction_permille", int(round(1000 * (1 - total_best / total_start))))
        return st.result(graph, modified)

    def _accept(self, la: QLayer, st: Stats) -> bool:
        where = f"{la.node.op} {la.name!r}"
        s0, z, qt, axis = la.weight_qparams()
        w = la.weight.const
        if np.any(z != 0):
            st.skip("asymmetric", where, "asymmetric weight quantisation (zero point != 0); "
                    "clip_search needs symmetric_weights=true")
            return False
        lo, hi = quant.channel_minmax(w, axis)
        amax = np.maximum(-lo, hi).reshape(-1)
        codes = np.rint(amax / np.asarray(s0, np.float64).reshape(-1))
        _, q_full = quant.qrange(qt, symmetric=True)
        _, q_reduced = quant.qrange(qt, symmetric=True, reduce_range=True)
        # (2-bit: both ranges are [-1, 1], nothing to protect)
        if q_reduced < q_full and codes.max() <= q_reduced:
            st.skip("reduce_range", where, f"weights use the reduced {qt.bits - 1}-bit range "
                    "(quantize reduce_range=true); clipped codes would leave it; use "
                    "quantize{reduce_range=false}")
            return False
        if np.array_equal(quant.fake_quant(w, s0, z, qt, axis), w):
            st.skip("on_grid", where, "the weight already sits on its quantisation grid "
                    "(adaround ran before?); run clip_search before adaround")
            return False
        return True

    def _grams(self, graph: Graph, ctx: PassContext, layers: list[QLayer]
               ) -> dict[str, np.ndarray]:
        """``H = E[x x^T]`` of each layer's input rows in the float graph (``rows`` sampled
        output positions over ``images`` calibration images), per group."""
        if not layers:  # per-tensor weights only: no Gram matrix needed
            return {}
        feeds = calibration_inputs(graph, ctx, self.images, self.seed)
        assert ctx.executor is not None
        fg = float_reference(graph)
        fnodes = {n.name: n for n in fg.nodes}
        ins = {la.name: fnodes[la.name].inputs[0] for la in layers}
        wanted = list(dict.fromkeys(v for v in ins.values() if v is not None))
        n_img = sum(len(next(iter(f.values()))) for f in feeds)
        per_image = max(1, math.ceil(self.rows / n_img))
        rng = np.random.default_rng(self.seed)
        sums: dict[str, np.ndarray] = {}
        counts: dict[str, int] = {}
        for feed in feeds:
            outs = ctx.executor.run(fg, feed, wanted)
            for la in layers:
                x = outs[ins[la.name]]  # type: ignore[index]
                rows = pt.gather_rows(x, la.geom, pt.sample_positions(la.geom, len(x),
                                                                       per_image, rng))
                r64 = rows.astype(np.float64)
                sums[la.name] = sums.get(la.name, 0) + r64.transpose(0, 2, 1) @ r64
                counts[la.name] = counts.get(la.name, 0) + rows.shape[1]
        return {k: sums[k] / counts[k] for k in sums}

    def _set_scales(self, graph: Graph, la: QLayer, scale: np.ndarray) -> None:
        old = la.wq.inputs[1]
        assert old is not None and old.const is not None
        _set_const(graph, la.wq, 1, np.asarray(scale, np.float32).reshape(old.const.shape))
        bq = la.node.inputs[2].producer if len(la.node.inputs) > 2 and la.node.inputs[2] \
            is not None else None
        if not is_qdq(bq):
            return
        assert bq is not None
        sb_old = bq.inputs[1]
        assert sb_old is not None and sb_old.const is not None
        xq = la.node.inputs[0].producer  # type: ignore[union-attr]
        if is_qdq(xq) and xq.inputs[1] is not None and xq.inputs[1].const is not None:
            s_in = np.asarray(xq.inputs[1].const, np.float32)
            s_b, _ = quant.bias_qparams(s_in, scale)
        else:  # keep the ratio s_b / s_w (the input scale is not readable)
            ratio = np.asarray(sb_old.const, np.float64) / np.asarray(old.const, np.float64)
            s_b = (ratio * scale).astype(np.float32)
        _set_const(graph, bq, 1, np.broadcast_to(s_b, np.shape(sb_old.const)).astype(np.float32))

    # -- activations --------------------------------------------------------------------
    def _activations(self, graph: Graph, ctx: PassContext, st: Stats) -> PassResult:
        qt = quant.qtype(self.activations)
        values = [v for n in graph.nodes for v in n.outputs if RANGE in v.meta]
        values = [v for v in graph.inputs if RANGE in v.meta] + values
        if not values:
            st.skip("nothing_calibrated", f"graph {graph.name!r}", "no value has a range")
            return st.result(graph, False)
        feeds = calibration_inputs(graph, ctx, self.images, self.seed)
        per_feed = max(1, self.samples // len(feeds))
        rng = np.random.default_rng(self.seed)
        samples: dict[Value, list[np.ndarray]] = {v: [] for v in values}
        assert ctx.executor is not None
        for feed in feeds:
            outs = ctx.executor.run(graph, feed, values)
            for v, arr in outs.items():
                flat = np.asarray(arr, np.float32).reshape(-1)
                take = rng.choice(flat.size, min(per_feed, flat.size), replace=False)
                samples[v].append(flat[take])
        total_start = total_best = 0.0
        modified = False
        for v in values:
            r = v.meta[RANGE]
            where = f"%{v.name}"
            res = clipping.search_activation_clip(np.concatenate(samples.pop(v)), r.lo, r.hi, qt,
                                                  grid=self.grid, alpha_min=self.alpha_min)
            if float(res.alpha) >= 1.0:
                st.skip("already_optimal", where, f"the calibrated range [{r.lo:.4g}, "
                        f"{r.hi:.4g}] is already MSE-optimal at {qt}")
                continue
            v.meta[RANGE] = Range(res.lo, res.hi, f"{r.method}+clip_mse")
            total_start += float(res.err_start)
            total_best += float(res.err)
            modified = True
            st.count("tensors_clipped")
            ctx.log(f"clip_search %{v.name}: alpha {float(res.alpha):.3f}, range "
                    f"[{r.lo:.4g}, {r.hi:.4g}] -> [{res.lo:.4g}, {res.hi:.4g}], MSE "
                    f"-{100 * (1 - float(res.err) / max(float(res.err_start), 1e-300)):.1f}%")
        if modified and total_start > 0:
            st.count("mse_reduction_permille", int(round(1000 * (1 - total_best / total_start))))
        return st.result(graph, modified)


def _set_const(graph: Graph, node, index: int, array: np.ndarray) -> None:
    """Give ``node`` input ``index`` the value ``array``: in place when only it reads the
    constant (a fresh array, so cached sessions notice), else through a new constant."""
    v = node.inputs[index]
    if checks.exclusive_const(v, node):
        v.const = array
    else:
        node.replace_input(index, graph.add_const(f"{v.name}_clipped", array))
