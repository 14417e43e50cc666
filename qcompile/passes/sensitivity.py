"""``sensitivity``: per-layer accuracy drop and output SQNR when only that layer is lowered.

Base configuration: every quantisable op quantised by ``quantize`` (weights at ``base``, the
widest format, activations at ``activations``). For each weighted layer ``l`` and each
candidate weight format ``f`` the base graph is cloned, only ``l``'s weight QDQ is re-typed to
``f`` (:func:`qcompile.passes._precision.set_weight_format`) and the graph runs on ``images``
held-out labelled images (never calibration images) through ``ctx.executor``:

* ``drop_l,f = acc(base) - acc(base with l at f)`` (points, i.e. percent);
* ``sqnr_l,f = 10 log10(sum z^2 / sum (z - z_l,f)^2)`` of the logits ``z_l,f`` against the
  float logits ``z`` (the output SQNR of that configuration);
* ``noise_l,f = sum (z_b - z_l,f)^2 / sum z^2``: the relative noise power that lowering ``l``
  *adds* to the base logits ``z_b``, the quantity the ``assign`` search adds up over layers
  (independent errors add in power). Measured against ``z_b`` rather than ``z`` so that the
  base configuration's own noise (8-bit activations) does not drown the layer's share.

Results are cached on disk (JSON keyed by a SHA-256 of the quantised graph's constants, the
formats, the images and the options) in ``cache`` (default ``$QCOMPILE_CACHE`` or
``~/.cache/qcompile``), so ``assign`` re-runs are instant. A progress bar counts evaluations.
The pass itself leaves the graph unchanged apart from the model metadata
``qcompile.sensitivity`` (the JSON table) and logs the table.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from qcompile.errors import OptionError
from qcompile.ir import Graph
from qcompile.numerics import quant
from qcompile.numerics.error import sqnr_db
from qcompile.passes import checks
from qcompile.passes._precision import HeldOut, set_weight_format, weight_layers
from qcompile.passes.base import Pass, PassContext, PassResult, Stats
from qcompile.passes.quantize import Quantize

REPORT_KEY = "qcompile.sensitivity"


def int_weight_type(name: str, where: str) -> quant.QType:
    try:
        qt = quant.qtype(name)
    except ValueError:
        raise OptionError(f"{where}: weight format {name!r} is not an integer type the ORT "
                          "backend runs per layer; use int4, int8 or int16") from None
    if not qt.signed or qt.bits == 32:
        raise OptionError(f"{where}: weight format {name!r}: use int4, int8 or int16")
    return qt


def quantised_base(graph: Graph, ctx: PassContext, q: Quantize, base: quant.QType,
                   method: str) -> tuple[Graph, PassResult]:
    """A clone of ``graph`` quantised by ``q`` with every weight re-typed to ``base``."""
    g = graph.clone()
    res = q.run(g, ctx)
    for la in weight_layers(g):
        set_weight_format(g, la.name, base, method=method if base.bits < 8 else "minmax",
                          reduce_range=q.reduce_range)
    return g, res


def cache_dir(option: str) -> Path:
    if option:
        return Path(option)
    env = os.environ.get("QCOMPILE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "qcompile"


def _key(g: Graph, held: HeldOut, extra: dict) -> str:
    h = hashlib.sha256()
    for v in sorted(g.initializers.values(), key=lambda v: v.name):
        h.update(v.name.encode())
        h.update(np.ascontiguousarray(v.const).tobytes())
    for n in g.nodes:
        h.update(f"{n.op}{n.name}{sorted(n.attrs.items())}".encode())
    h.update(held.indices.tobytes())
    h.update(json.dumps(extra, sort_keys=True).encode())
    return h.hexdigest()[:32]


def layer_sensitivity(float_graph: Graph, base_graph: Graph, ctx: PassContext, held: HeldOut,
                      formats: list[quant.QType], *, method: str, reduce_range: bool,
                      skip: set[str] = frozenset(), cache: str = "") -> dict:
    """``{"fp32": acc, "base": acc, "base_sqnr": dB, "layers": [row, ...]}`` (cached).

    A row: ``{"layer", "op", "params", "format", "drop", "sqnr", "noise", "accuracy"}``.
    """
    extra = {"formats": [f.name for f in formats], "method": method, "rr": reduce_range,
             "skip": sorted(skip), "v": 2}
    path = cache_dir(cache) / "sensitivity" / f"{_key(base_graph, held, extra)}.json"
    if path.exists():
        try:
            rep = json.loads(path.read_text())
            ctx.log(f"sensitivity: cached result {path}")
            return rep
        except (OSError, ValueError):
            pass
    layers = [la for la in weight_layers(base_graph) if la.name not in skip]
    total = 2 + len(layers) * len(formats)
    bar = ctx.progress(total=total, desc="sensitivity") if ctx.progress else None
    try:
        z = held.logits(float_graph)
        _tick(bar)
        zb = held.logits(base_graph)
        _tick(bar)
        acc_b = held.accuracy(zb)
        rows = []
        for la in layers:
            for qt in formats:
                g = base_graph.clone()
                set_weight_format(g, la.name, qt, method=method, reduce_range=reduce_range)
                zl = held.logits(g)
                s = sqnr_db(z, zl)
                acc = held.accuracy(zl)
                s_b = sqnr_db(zb, zl)
                rows.append({"layer": la.name, "op": la.op, "params": la.params,
                             "format": qt.name, "accuracy": acc,
                             "drop": 100.0 * (acc_b - acc), "sqnr": s, "sqnr_vs_base": s_b,
                             "noise": noise_ratio(z, zb, zl)})
                _tick(bar)
    finally:
        if bar is not None and hasattr(bar, "close"):
            bar.close()
    rep = {"images": len(held), "fp32": held.accuracy(z), "base": acc_b,
           "base_sqnr": sqnr_db(z, zb), "layers": rows}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(rep))
        tmp.replace(path)
    except OSError as e:  # a read-only home is not an error: the result just is not cached
        ctx.log(f"sensitivity: cannot write the cache {path}: {e}")
    return rep


def noise_ratio(z: np.ndarray, zb: np.ndarray, zl: np.ndarray) -> float:
    """``sum (zb - zl)^2 / sum z^2`` (float64)."""
    sig = float((z.astype(np.float64) ** 2).sum())
    return float(((zb.astype(np.float64) - zl) ** 2).sum()) / sig if sig > 0 else 0.0


def _tick(bar) -> None:
    if bar is not None:
        bar.update(1) if hasattr(bar, "update") else bar(1)


def format_table(rep: dict) -> str:
    lines = [f"sensitivity on {rep['images']} held-out images: fp32 {100 * rep['fp32']:.2f}%, "
             f"base {100 * rep['base']:.2f}% ({rep['base_sqnr']:.1f} dB)",
             f"{'layer':<28} {'params':>8} {'format':>6} {'drop':>7} {'SQNR dB':>8} {'added dB':>8}"]
    for r in rep["layers"]:
        lines.append(f"{r['layer']:<28} {r['params']:>8} {r['format']:>6} "
                     f"{r['drop']:>+7.2f} {r['sqnr']:>8.2f} {r['sqnr_vs_base']:>8.2f}")
    return "\n".join(lines)


@dataclass(frozen=True)
class Sensitivity(Pass):
    """Measure every layer's accuracy drop / SQNR when only it is lowered (graph unchanged)."""

    name = "sensitivity"
    needs_data = "yes"
    target_options = frozenset({"activations", "reduce_range"})
    summary = "per-layer accuracy drop and logit SQNR when only that layer is lowered (cached)"
    requires = (checks.bn_folded, checks.calibrated)

    weights: tuple[str, ...] = ("int4",)
    base: str = "int8"
    activations: str = "uint8"
    reduce_range: bool = False
    weight_scale: str = "mse"
    images: int = 500
    seed: int = 0
    cache: str = ""

    def __post_init__(self) -> None:
        for w in (*self.weights, self.base):
            int_weight_type(w, f"pass '{self.name}'")
        if self.weight_scale not in ("mse", "minmax"):
            raise OptionError(f"pass '{self.name}': weight_scale={self.weight_scale!r}; "
                              "use mse or minmax")
        if self.images < 1:
            raise OptionError(f"pass '{self.name}': images={self.images}; need at least 1")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        st = Stats()
        held = HeldOut(graph, ctx, self.images, seed=self.seed, who=f"pass '{self.name}'")
        q = replace(Quantize(), activations=self.activations, reduce_range=self.reduce_range)
        base, _ = quantised_base(graph, ctx, q, int_weight_type(self.base, self.name),
                                 self.weight_scale)
        rep = layer_sensitivity(graph, base, ctx, held,
                                [int_weight_type(w, self.name) for w in self.weights],
                                method=self.weight_scale, reduce_range=self.reduce_range,
                                cache=self.cache)
        ctx.log(format_table(rep))
        graph.metadata[REPORT_KEY] = json.dumps(rep, separators=(",", ":"))
        st.count("layers", len({r["layer"] for r in rep["layers"]}))
        st.count("images", rep["images"])
        return st.result(graph, True)
