"""``reconstruct``: BRECQ-style block reconstruction of a quantised graph (Li et al. 2021; the
maths and the hand-written backward pass are in :mod:`qcompile.numerics.reconstruct`).

Runs after ``quantize``. The graph is cut into blocks, in graph order:

* ``granularity=layer``: one quantised Conv/Gemm/MatMul and the ops after it up to the next one
  (its activation, output QDQ, a residual Add ...), extended until the range has one output;
* ``granularity=block``: such ranges merged until the block has one input and one output (a
  residual block: the region between two residual joins).

For each block (sequential: block ``i`` sees the inputs produced by the already-reconstructed
blocks ``< i``): ``x_q`` = its inputs in the quantised graph, ``T`` = its output in the float
graph (every QDQ removed) on the same ``images`` calibration images; the rounding of its weights
and the steps of its activation QDQs are learned jointly to minimise ``||block_q(x_q) - T||^2``.
The result is kept only when the loss over all calibration images is lower than with nearest
rounding and the calibrated steps (else declined, counted). It is written into the QDQ ops:

* a weight constant becomes ``s (q - z)`` (QDQ parameters unchanged; the lowering re-quantises
  it to exactly ``q``, as ``adaround`` does);
* an activation QDQ's scale constant becomes the learned step (zero point unchanged; a step
  shared with QDQs outside the block, through scale-transparent ops, is not learned; a step
  after a Clip is shrunk to stay inside it so ORT still fuses the Clip);
* the int32 bias QDQ of every layer whose input step changed (in this block or the next)
  gets ``s_b = s_in s_w``.

``drop=p``: QDrop (Wei et al. 2022): while learning, each activation QDQ output element is its
float input with probability ``p`` (0.5 in the paper; see :mod:`qcompile.numerics.reconstruct`).
``reg_depthwise``: the rounding regulariser of depthwise layers is ``reg * reg_depthwise``
(default 10: a depthwise channel has only k*k taps, whose rounding needs the stronger push).

``weight_scale=mse`` (default, BRECQ's initialisation) first replaces every weight QDQ's
min-max scale by the per-channel MSE-optimal one (and its bias scale accordingly); the rounding
is then learned on that grid.

Declines (counted, explained): no quantised layer, a block with an op the numpy program does
not model, no gain. Per block, ``ctx.log`` gets loss before/after, iterations and time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import numpy as np

from qcompile.errors import OptionError
from qcompile.ir import Graph, Node, Value
from qcompile.numerics import clipping, quant
from qcompile.numerics import patches as pt
from qcompile.numerics import reconstruct as rc
from qcompile.numerics._blas import blas_threads
from qcompile.passes import checks
from qcompile.passes._layerwise import (
    QLayer,
    Ticker,
    calibration_inputs,
    float_reference,
    is_qdq,
    quantised_layers,
)
from qcompile.passes._reconstruct_graph import BlockPlan, block_plans, build_block
from qcompile.passes.base import Pass, PassContext, PassResult, Stats


@dataclass(frozen=True)
class Reconstruct(Pass):
    """Jointly learn weight rounding and activation steps per block (BRECQ)."""

    name = "reconstruct"
    needs_data = "yes"
    summary = "block reconstruction: learned weight rounding + activation steps (BRECQ)"
    requires = (checks.quantized,)

    granularity: Literal["layer", "block"] = "block"
    iterations: int = 500
    lr: float = 0.01
    lr_act: float = 0.004
    images: int = 256
    batch: int = 16
    reg: float = 0.01
    reg_depthwise: float = 10.0  # rounding-loss weight of depthwise layers, times ``reg``
    drop: float = 0.0  # QDrop probability (0.5 in the paper)
    act_steps: bool = True
    weight_scale: Literal["mse", "keep"] = "mse"
    threads: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        for key in ("iterations", "images", "batch", "threads"):
            if getattr(self, key) < 1:
                raise OptionError(f"pass 'reconstruct': {key}={getattr(self, key)} must be >= 1")
        if not (self.lr > 0 and self.lr_act >= 0):
            raise OptionError(f"pass 'reconstruct': lr={self.lr}, lr_act={self.lr_act} must be "
                              "> 0 and >= 0")
        if not (0.0 <= self.drop < 1.0 and self.reg_depthwise > 0):
            raise OptionError(f"pass 'reconstruct': drop={self.drop} must be in [0, 1) and "
                              f"reg_depthwise={self.reg_depthwise} > 0")
        if self.weight_scale not in ("mse", "keep"):
            raise OptionError(f"pass 'reconstruct': weight_scale={self.weight_scale!r}; use "
                              "'mse' or 'keep'")
        if self.granularity not in ("layer", "block"):
            raise OptionError(f"pass 'reconstruct': granularity={self.granularity!r}; use "
                              "'layer' or 'block'")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        st = Stats()
        if not quantised_layers(graph, st):
            return st.result(graph, False)
        plans = block_plans(graph, self.granularity, st)
        if not plans:
            return st.result(graph, False)
        if self.weight_scale == "mse":
            _mse_weight_scales([la for p in plans for la in p.layers], st)
        with blas_threads(self.threads):  # small products: one thread is faster on busy cores
            return self._run(graph, ctx, plans, st)

    def _run(self, graph: Graph, ctx: PassContext, plans: list[BlockPlan],
             st: Stats) -> PassResult:
        feeds = calibration_inputs(graph, ctx, self.images, self.seed)
        rng = np.random.default_rng(self.seed)
        fg = float_reference(graph)
        cfg = rc.ReconstructConfig(self.iterations, self.lr, self.lr_act if self.act_steps
                                   else 0.0, self.batch, self.reg, drop=self.drop)
        bar = Ticker(ctx, len(plans) * self.iterations, "reconstruct")
        modified = False
        try:
            every = [la for p in plans for la in p.layers]
            for plan in plans:
                if self._block(graph, fg, ctx, feeds, plan, cfg, rng, bar, st):
                    modified = True
                    for la in every:  # a learned output step is the next block's input step
                        _sync_bias(la)
        finally:
            bar.close()
        return st.result(graph, modified)

    def _block(self, graph: Graph, fg: Graph, ctx: PassContext, feeds: list, plan: BlockPlan,
               cfg: rc.ReconstructConfig, rng: np.random.Generator, bar: Ticker,
               st: Stats) -> bool:
        t0 = time.perf_counter()
        built = build_block(plan, learn_steps=self.act_steps, reg_depthwise=self.reg_depthwise)
        where = f"block {plan.name!r}"
        if isinstance(built, str):
            st.skip("unsupported", where, built)
            bar.tick(cfg.iterations)
            return False
        blk, wlayers, qdq_nodes = built
        assert ctx.executor is not None
        ins = [graph.find_value(k) for k in plan.inputs]
        fout = fg.find_value(plan.float_output)
        assert fout is not None and all(v is not None for v in ins)
        xs: dict[str, list[np.ndarray]] = {k: [] for k in plan.inputs}
        ts: list[np.ndarray] = []
        for feed in feeds:
            outs = ctx.executor.run(graph, feed, ins)  # type: ignore[arg-type]
            for v in ins:
                xs[v.name].append(np.asarray(outs[v], np.float32))  # type: ignore[union-attr]
            ts.append(np.asarray(ctx.executor.run(fg, feed, [fout])[fout], np.float32))
        inputs = {k: np.concatenate(v) for k, v in xs.items()}
        target = np.concatenate(ts)
        del xs, ts
        before = rc.block_loss(blk, inputs, target, "nearest")
        rc.reconstruct_block(blk, inputs, target, cfg, rng, bar.tick)
        after = rc.block_loss(blk, inputs, target, "hard")
        secs = time.perf_counter() - t0
        ctx.log(f"reconstruct {plan.name}: loss {before:.4g} -> {after:.4g} "
                f"({cfg.iterations} iterations, {secs:.1f} s)")
        st.count("seconds", int(round(secs)))
        if not after < before:
            st.skip("no_gain", where, f"reconstruction does not beat nearest rounding and the "
                    f"calibrated steps ({after:.4g} >= {before:.4g})")
            return False
        _write_back(graph, blk, wlayers, qdq_nodes)
        st.count("blocks")
        st.count("layers", len(wlayers))
        st.count("loss_reduction_permille", int(round(1000 * (1 - after / before))))
        st.notes.append(f"{where}: loss {before:.4g} -> {after:.4g}, {cfg.iterations} "
                        f"iterations, {secs:.1f} s")
        return True


def _write_back(graph: Graph, blk: rc.Block, wlayers: list, qdq_nodes: list[list[Node]]) -> None:
    for sw, la in zip(blk.weights, wlayers, strict=True):
        learned = sw.weight("hard")
        la.weight.const = pt.matrix_to_weight(learned, la.weight.const, la.geom)
    changed: set[Value] = set()
    for step, nodes in zip(blk.steps, qdq_nodes, strict=True):
        if not step.learn or step.s == step.s0:
            continue
        for n in nodes:
            sv = n.inputs[1]
            assert sv is not None and sv.const is not None
            s = np.full(sv.const.shape, step.s, np.float32)
            bounds = _clip_bounds(n)
            if bounds is not None:
                zv = n.inputs[2]
                qt = quant.QType(int(n.attrs["bits"]), bool(n.attrs["signed"]))
                s = quant.fit_scale_within(s, zv.const, qt, *bounds)  # type: ignore[union-attr]
            sv.const = s
            changed.add(n.output)


def _sync_bias(la: QLayer) -> None:
    """The int32 bias QDQ keeps ``s_b = s_in s_w`` when either step changed."""
    x = la.node.inputs[0]
    b = la.node.inputs[2] if len(la.node.inputs) > 2 else None
    if x is None or b is None or not is_qdq(b.producer) or not is_qdq(x.producer):
        return
    s_in = x.producer.inputs[1].const  # type: ignore[union-attr]
    s_w = la.wq.inputs[1].const
    s_b, _ = quant.bias_qparams(s_in, s_w)
    bs = b.producer.inputs[1]  # type: ignore[union-attr]
    bs.const = np.asarray(s_b, np.float32).reshape(bs.const.shape)


def _mse_weight_scales(layers: list[QLayer], st: Stats) -> None:
    """BRECQ's initialisation of the weight quantisers: per channel, the symmetric scale
    ``alpha s0`` minimising ``||w - fake_quant(w)||^2`` (:mod:`qcompile.numerics.clipping`);
    what min-max chooses wastes most of a 2- or 4-bit grid on a few large weights."""
    for la in layers:
        s, z, qt, axis = la.weight_qparams()
        if np.any(z != 0):
            continue
        res = clipping.search_weight_clip(la.weight.const, s, axis, qt)
        assert res.scale is not None
        if np.all(res.alpha == 1.0):
            continue
        la.wq.inputs[1].const = res.scale.reshape(np.shape(la.wq.inputs[1].const))
        _sync_bias(la)
        st.count("weight_scales_clipped")


def _clip_bounds(n: Node) -> tuple[float, float] | None:
    from qcompile.passes.quantize import activation_bounds

    p = n.inputs[0].producer if n.inputs[0] is not None else None
    if p is None or p.domain != "" or p.op != "Clip":
        return None
    b = activation_bounds(p)
    return None if b is None else (b[0], b[1])
