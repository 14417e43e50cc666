"""``assign``: choose each layer's weight format and insert the QDQ ops (mixed precision).

Activations are quantised as ``quantize`` does (``activations``, asymmetric, calibrated ranges);
each weighted layer (Conv/Gemm/MatMul) gets one of the integer ``weights`` formats (int4, int8,
int16; symmetric, per channel; scale ``minmax`` or error-minimising ``mse``, see
:mod:`qcompile.numerics.clipping`) written explicitly as its weight QDQ's ``bits``.

Policies (``keep`` layers - ``first``, ``last`` or node names - always get the widest format):

* ``uniform``: every other layer gets the narrowest listed format;
* ``first-last``: the same with ``first,last`` always kept;
* ``budget``: a greedy knapsack on the accuracy/size front. With per-layer sensitivities
  (:mod:`qcompile.passes.sensitivity`: ``noise_l,f``, the relative noise power of the logits
  added when only layer ``l`` is at format ``f``), start from all-widest and repeatedly apply the step
  (layer ``l`` one format narrower) with the least added noise per saved bit::

      ratio = max(noise_l,f' - noise_l,f, 0) / (n_l (b_f - b_f'))

  Each step is a point of the predicted front (average weight bits ``sum n_l b_l / sum n_l``,
  total noise). The chosen configuration is then **verified by a real evaluation** on held-out
  labelled images (``images``, never calibration images; recorded in the model metadata so
  ``qcompile eval`` leaves them out too): with ``avg_bits`` (or ``size_mb``: weight storage,
  ``avg_bits = 8e6 size_mb / sum n_l``) the widest point within the budget; with ``max_drop``
  alone a bisection for the narrowest point whose measured drop (fp32 accuracy minus quantised,
  in points) is within it; with both, the budget point if its drop is within ``max_drop``,
  otherwise a one-line error stating the best reachable points.

``refine`` (budget policy): the narrowed weights of every evaluated point - and of the result -
are refined as a user would after choosing formats, so the verified drop is the drop of the
model written: ``clip`` = ``clip_search`` (output-weighted per-channel clipping), ``adaround``
(default) = ``clip_search`` then ``adaround{iterations=400,batch=512}``; ``none`` keeps
round-to-nearest (fastest). Sensitivities are measured with round-to-nearest either way.

The front, the choice and the measured accuracies are logged and stored in the model metadata
``qcompile.assign``.

Float and posit formats (``weights=e4m3``, ``bf16``, ``b12e4``, ``posit8_1``, ...; one weight format,
``activations`` a float/posit format too, defaulting to the weights' format): policies ``uniform``
and ``first-last`` insert explicit ``qcompile.FQ`` ops with amax scaling
(:mod:`qcompile.passes._assign_float`); kept layers stay in the backend's arithmetic format. Such
graphs run on the MPFR backend (``qcompile emulate``); the ORT backend refuses them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from qcompile.errors import OptionError, QCompileError
from qcompile.ir import Graph, is_op
from qcompile.numerics import quant
from qcompile.numerics.error import sqnr_from_sums
from qcompile.passes import checks
from qcompile.passes._assign_float import float_layers, insert_formats, is_int_spec, parse_fq
from qcompile.passes._precision import HeldOut, Layer, avg_bits, set_weight_format, weight_layers
from qcompile.passes.base import Check, Pass, PassContext, PassResult, Stats
from qcompile.passes.quantize import Quantize
from qcompile.passes.sensitivity import int_weight_type, layer_sensitivity, quantised_base

REPORT_KEY = "qcompile.assign"


class BudgetError(QCompileError):
    """No assignment meets the budget; the message states the best reachable points."""


def _formats_assigned(graph: Graph) -> str | None:
    if any(is_op(n, "QDQ", "FQ") for n in graph.nodes):
        return None
    return "the graph has no qcompile.QDQ or qcompile.FQ node"


# same name as checks.quantized (what later passes require), also satisfied by FQ ops
formats_assigned = Check("quantized", _formats_assigned, "QDQ or FQ nodes are present")


@dataclass(frozen=True)
class Assign(Pass):
    """Per-layer weight formats (uniform, first-last or a budgeted search) + QDQ insertion."""

    name = "assign"
    needs_data = "yes"
    target_options = frozenset({"activations", "reduce_range"})
    summary = "per-layer weight formats: uniform | first-last | budget (avg_bits/size_mb/max_drop)"
    requires = (checks.bn_folded, checks.calibrated)
    ensures = (formats_assigned,)

    policy: Literal["uniform", "first-last", "budget"] = "budget"
    weights: tuple[str, ...] = ("int4", "int8")
    activations: str = ""  # uint8 for integer weights, the weights' format for float ones
    reduce_range: bool = False
    avg_bits: float | None = None
    size_mb: float | None = None
    max_drop: float | None = None
    keep: tuple[str, ...] = ("first", "last")
    weight_scale: Literal["mse", "minmax"] = "mse"
    images: int = 1000
    sens_images: int = 500
    seed: int = 0
    cache: str = ""
    scaling: Literal["amax", "none"] = "amax"
    refine: Literal["adaround", "clip", "none"] = "adaround"

    @property
    def float_mode(self) -> bool:
        """Float/posit formats (FQ ops) rather than integer QDQ."""
        return any(not is_int_spec(w) for w in self.weights) or bool(
            self.activations and not is_int_spec(self.activations))

    @property
    def act_format(self) -> str:
        if self.activations:
            return self.activations
        return self.weights[0] if self.float_mode else "uint8"

    def __post_init__(self) -> None:
        where = f"pass '{self.name}'"
        if not self.weights:
            raise OptionError(f"{where}: weights= needs at least one format, e.g. int4,int8")
        if self.float_mode:
            self._check_float(where)
            return
        for w in self.weights:
            int_weight_type(w, where)
        if self.act_format not in ("uint8", "int8", "uint16", "int16"):
            raise OptionError(f"{where}: activations={self.act_format!r}: integer activations "
                              "are uint8, int8, uint16 or int16")
        budget = [k for k in ("avg_bits", "size_mb", "max_drop") if getattr(self, k) is not None]
        if self.policy != "budget" and budget:
            raise OptionError(f"{where}: {', '.join(budget)} apply to policy=budget only")
        if self.policy == "budget" and not budget:
            raise OptionError(f"{where}: policy=budget needs avg_bits=, size_mb= or max_drop= "
                              "(e.g. assign{policy=budget,avg_bits=5,max_drop=0.5})")
        if self.avg_bits is not None and self.size_mb is not None:
            raise OptionError(f"{where}: give avg_bits or size_mb, not both")
        if self.policy == "budget" and len(self.weights) < 2:
            raise OptionError(f"{where}: policy=budget needs two or more weight formats "
                              "(e.g. weights=int4,int8)")
        if self.refine not in ("adaround", "clip", "none"):
            raise OptionError(f"{where}: refine={self.refine!r}; use adaround, clip or none")
        if self.images < 1 or self.sens_images < 1:
            raise OptionError(f"{where}: images and sens_images must be >= 1")

    def _check_float(self, where: str) -> None:
        if self.policy == "budget":
            raise OptionError(f"{where}: policy=budget searches integer formats; float/posit "
                              "formats take policy=uniform or first-last")
        if len(self.weights) != 1:
            raise OptionError(f"{where}: float/posit weights take one format (got "
                              f"{','.join(self.weights)}); kept layers stay in the arithmetic "
                              "format")
        for w in (*self.weights, self.act_format):
            if is_int_spec(w):
                raise OptionError(f"{where}: {w} mixed with float/posit formats; use integer "
                                  "formats for both weights and activations (ORT) or float/"
                                  "posit formats for both (MPFR backend)")
            parse_fq(w, where)

    # -----------------------------------------------------------------------------------------
    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        if self.float_mode:
            return self._run_float(graph, ctx)
        st = Stats()
        fmts = sorted({int_weight_type(w, self.name) for w in self.weights}, key=lambda q: q.bits)
        q = replace(Quantize(), activations=self.act_format, reduce_range=self.reduce_range)
        float_graph = graph.clone()
        res = q.run(graph, ctx)
        for note in res.notes:
            st.notes.append(note)
        for k, v in res.stats.items():
            if k.startswith("skipped_"):
                st.count(k, v)
        if not res.modified:
            return st.result(graph, False)
        layers = weight_layers(graph)
        keep = self._keep(layers)
        widest, narrowest = fmts[-1], fmts[0]
        if self.policy in ("uniform", "first-last"):
            keep_now = keep | (self._keep(layers, ("first", "last")) if self.policy == "first-last"
                               else set())
            config = {la.name: (widest if la.name in keep_now else narrowest).bits
                      for la in layers}
            report: dict = {"policy": self.policy}
        else:
            config, report, refined = self._search(float_graph, graph, ctx, q, layers, keep, fmts)
        by_bits = {f.bits: f for f in fmts}
        for la in layers:
            b = config[la.name]
            set_weight_format(graph, la.name, by_bits[b], reduce_range=self.reduce_range,
                              method=self.weight_scale if b < 8 else "minmax")
            st.count(f"layers_{by_bits[b].name}")
        if self.policy == "budget":
            graph = self._adopt_refined(graph, refined, ctx, st)
        report.update(avg_weight_bits=round(avg_bits(layers, config), 4),
                      layers={k: by_bits[v].name for k, v in config.items()})
        graph.metadata[REPORT_KEY] = json.dumps(report, separators=(",", ":"))
        ctx.log(f"assign: {self.policy}: average weight bits {report['avg_weight_bits']:.3f}, "
                + ", ".join(f"{k}={v}" for k, v in sorted(st.counts.items())
                            if k.startswith("layers_")))
        for k, v in res.stats.items():
            if not k.startswith("skipped_"):
                st.count(k, v)
        return st.result(graph, True)

    def _run_float(self, graph: Graph, ctx: PassContext) -> PassResult:
        st = Stats()
        nodes = float_layers(graph)
        if not nodes:
            st.skip("no_layers", "graph", "no Conv/Gemm/MatMul with a constant float weight")
            return st.result(graph, False)
        layers = [Layer(n.name, n.op, int(n.inputs[1].const.size), 32) for n in nodes]
        kept = self._keep(layers)
        if self.policy == "first-last":
            kept |= self._keep(layers, ("first", "last"))
        config = insert_formats(graph, nodes, kept, self.weights[0], self.act_format,
                                self.scaling, st)
        report = {"policy": self.policy, "weights": self.weights[0],
                  "activations": self.act_format, "scaling": self.scaling,
                  "avg_weight_bits": round(avg_bits(layers, config), 4),
                  "kept": sorted(kept)}
        graph.metadata[REPORT_KEY] = json.dumps(report, separators=(",", ":"))
        ctx.log(f"assign: {self.policy}: weights {self.weights[0]}, activations "
                f"{self.act_format} ({self.scaling} scaling) on {len(nodes) - len(kept)} layers, "
                f"kept {len(kept)} in the arithmetic format; average weight bits "
                f"{report['avg_weight_bits']:.3f}")
        return st.result(graph, True)

    def _keep(self, layers: list[Layer], tokens: tuple[str, ...] | None = None) -> set[str]:
        out: set[str] = set()
        names = {la.name for la in layers}
        for t in self.keep if tokens is None else tokens:
            if t == "none":
                continue
            if t == "first":
                out.update(la.name for la in layers[:1])
            elif t == "last":
                out.update(la.name for la in layers[-1:])
            elif t in names:
                out.add(t)
            else:
                shown = ", ".join(la.name for la in layers[:4])
                raise OptionError(f"pass '{self.name}': keep names no quantised layer {t!r}; "
                                  f"use first, last or layer names such as {shown}")
        return out

    # -----------------------------------------------------------------------------------------
    def _refine(self, g: Graph, ctx: PassContext, st: Stats) -> Graph:
        """Refine the narrowed weights (budget policy) as the verified point and the result
        must agree: output-weighted clipping, then learned rounding (deterministic by seed)."""
        for p in _refine_passes(self.refine):
            res = p.run(g, ctx)
            g = res.graph
            for k, v in res.stats.items():
                st.count(f"refine_{p.name}_{k}", v)
        return g

    def _adopt_refined(self, graph: Graph, refined: tuple[Graph, Stats], ctx: PassContext,
                       st: Stats) -> Graph:
        """Give ``graph`` the refined weights of the verified point instead of refining again.

        The verified graph was built by the same quantisation and ``set_weight_format`` calls,
        so it has the same initializers; refinement only rewrites their values. Where that does
        not hold (a refinement added or removed constants), refine ``graph`` itself."""
        g, rst = refined
        same = (g.initializers.keys() == graph.initializers.keys()
                and all(np.shape(g.initializers[n].const) == np.shape(v.const)
                        for n, v in graph.initializers.items()))
        if not same:
            return self._refine(graph, ctx, st)
        for n, v in graph.initializers.items():
            v.const = g.initializers[n].const.copy()
        for k, c in rst.counts.items():
            st.count(k, c)
        return graph

    def _search(self, float_graph: Graph, qgraph: Graph, ctx: PassContext, q: Quantize,
                layers: list[Layer], keep: set[str], fmts) -> tuple[dict[str, int], dict]:
        widest = fmts[-1]
        base, _ = quantised_base(float_graph, ctx, q, widest, self.weight_scale)
        sens_held = HeldOut(float_graph, ctx, self.sens_images, seed=self.seed, who="assign")
        sens = layer_sensitivity(float_graph, base, ctx, sens_held, fmts[:-1],
                                 method=self.weight_scale, reduce_range=self.reduce_range,
                                 skip=keep, cache=self.cache)
        front = greedy_front(layers, keep, sens, [f.bits for f in fmts])
        total = sum(la.params for la in layers)
        target = self.avg_bits
        if self.size_mb is not None:
            target = 8e6 * self.size_mb / total
        held = HeldOut(float_graph, ctx, self.images, seed=self.seed, who="assign")
        held.record(qgraph, "assign_images")
        fp32 = held.accuracy(held.logits(float_graph))
        measured: dict[int, float] = {}
        refined: dict[int, tuple[Graph, Stats]] = {}

        def drop(k: int) -> float:
            if k not in measured:
                g = base.clone()
                for name, b in front[k]["config"].items():
                    if b != widest.bits:
                        set_weight_format(g, name, _qt(fmts, b), method=self.weight_scale,
                                          reduce_range=self.reduce_range)
                rst = Stats()
                g = self._refine(g, ctx, rst)
                refined[k] = (g, rst)
                measured[k] = 100.0 * (fp32 - held.accuracy(held.logits(g)))
                ctx.log(f"assign: verified {front[k]['avg_bits']:.3f} bits -> drop "
                        f"{measured[k]:+.2f} points on {len(held)} held-out images")
            return measured[k]

        def best_within(hi: int) -> int | None:
            """Largest k <= hi with drop(k) <= max_drop (bisection; drop grows with k)."""
            if drop(0) > self.max_drop:
                return None
            lo = 0
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if drop(mid) <= self.max_drop:
                    lo = mid
                else:
                    hi = mid - 1
            return lo

        last = len(front) - 1
        if target is not None:
            fits = [k for k, p in enumerate(front) if p["avg_bits"] <= target + 1e-9]
            if not fits:
                raise BudgetError(
                    f"average weight bits <= {target:.3f} is out of reach; the narrowest "
                    f"assignment (keep={','.join(self.keep) or 'none'}) has "
                    f"{front[last]['avg_bits']:.3f} bits ({_mb(front[last], total):.3f} MB)")
            k = fits[0]
            if self.max_drop is not None and drop(k) > self.max_drop:
                best = best_within(k - 1) if k > 0 else None
                reach = ("no assignment is within it (all-" + fmts[-1].name
                         + f" drops {drop(0):.2f})" if best is None else
                         f"best reachable within {self.max_drop} points: "
                         f"{front[best]['avg_bits']:.3f} bits ({_mb(front[best], total):.3f} MB) "
                         f"at {drop(best):.2f} points")
                raise BudgetError(
                    f"no assignment meets avg_bits <= {target:.3f} and max_drop <= "
                    f"{self.max_drop}: at {front[k]['avg_bits']:.3f} bits the measured drop is "
                    f"{drop(k):.2f} points on {len(held)} held-out images; {reach}")
        else:
            best = best_within(last)
            if best is None:
                raise BudgetError(f"max_drop <= {self.max_drop} is out of reach: all-"
                                  f"{fmts[-1].name} already drops {drop(0):.2f} points on "
                                  f"{len(held)} held-out images")
            k = best
        drop(k)
        report = {"policy": "budget", "images": len(held), "fp32": fp32,
                  "chosen": {"avg_bits": front[k]["avg_bits"], "drop": measured[k]},
                  "front": [{"avg_bits": round(p["avg_bits"], 4),
                             "pred_sqnr_db": round(p["pred_sqnr_db"], 2),
                             **({"drop": round(measured[i], 3)} if i in measured else {})}
                            for i, p in enumerate(front)]}
        ctx.log(f"assign: front has {len(front)} points from {front[0]['avg_bits']:.2f} to "
                f"{front[last]['avg_bits']:.2f} bits; chose {front[k]['avg_bits']:.3f} bits, "
                f"drop {measured[k]:.2f} points (fp32 {100 * fp32:.2f}%)")
        return front[k]["config"], report, refined[k]


def _refine_passes(refine: str) -> list[Pass]:
    from qcompile.passes.adaround import AdaRound
    from qcompile.passes.clip_search import ClipSearch

    if refine == "none":
        return []
    out: list[Pass] = [ClipSearch()]
    if refine == "adaround":
        out.append(AdaRound(iterations=400, batch=512))
    return out


def _qt(fmts, bits: int):
    return next(f for f in fmts if f.bits == bits)


def _mb(point: dict, total: int) -> float:
    return point["avg_bits"] * total / 8e6


def greedy_front(layers: list[Layer], keep: set[str], sens: dict, widths: list[int]
                 ) -> list[dict]:
    """Points ``{"avg_bits", "pred_noise", "pred_sqnr_db", "config"}`` from all-widest down."""
    import math

    widths = sorted(widths)
    noise: dict[tuple[str, int], float] = {}
    for r in sens["layers"]:
        noise[(r["layer"], quant.qtype(r["format"]).bits)] = float(r["noise"])
    base_noise = 10.0 ** (-sens["base_sqnr"] / 10.0) if math.isfinite(sens["base_sqnr"]) else 0.0
    config = {la.name: widths[-1] for la in layers}
    params = {la.name: la.params for la in layers}
    total_noise = base_noise

    def point() -> dict:
        return {"avg_bits": avg_bits(layers, config), "pred_noise": total_noise,
                "pred_sqnr_db": sqnr_from_sums(1.0, total_noise),
                "config": dict(config)}

    front = [point()]
    while True:
        best = None
        for la in layers:
            if la.name in keep:
                continue
            cur = config[la.name]
            i = widths.index(cur)
            if i == 0:
                continue
            nxt = widths[i - 1]
            n_cur = 0.0 if cur == widths[-1] else noise[(la.name, cur)]
            added = max(noise[(la.name, nxt)] - n_cur, 0.0)
            ratio = added / (params[la.name] * (cur - nxt))
            if best is None or ratio < best[0]:
                best = (ratio, la.name, nxt, added)
        if best is None:
            return front
        _, name, nxt, added = best
        config[name] = nxt
        total_noise += added
        front.append(point())
