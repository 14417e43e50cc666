"""Float/posit formats for ``assign``: insert ``qcompile.FQ`` ops on weights and activations.

For every quantisable node (Conv/Gemm/MatMul with a constant weight) that is not kept:

* weight ``W``: ``FQ(W, s_w){format=weights, axis=c}`` with one scale per output channel
  ``c`` (Conv: axis 0; Gemm: 0 with transB, else 1; MatMul: the last axis),
  ``s_w[c] = max|W[c]| / max_finite(F)``;
* activation input 0: ``FQ(x, s_x){format=activations}`` with one scale per tensor,
  ``s_x = max(|lo|, |hi|) / max_finite(F)`` from the calibrated range ``meta[RANGE]`` (shared by
  every consumer that needs the same format).

(``scaling=none`` uses ``s = 1``; posits, and any family registered with ``amax_scaled=False``,
are always unscaled, see :mod:`qcompile.numerics.fq`.)
Kept layers (``keep``: first, last or node names) get no FQ op: they run in the arithmetic format
of the backend (fp32 by default on the MPFR backend). Biases are not rounded (they are added to
the accumulator in the arithmetic format). Average weight bits count kept layers at 32.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from qcompile.errors import OptionError
from qcompile.ir import QCOMPILE_DOMAIN, RANGE, Graph, Node, Value
from qcompile.numerics.formats import FormatError, family_of
from qcompile.numerics.fq import amax_scale, fq_format
from qcompile.passes.base import Stats

WEIGHTED = ("Conv", "Gemm", "MatMul")
KEPT_BITS = 32


def float_layers(graph: Graph) -> list[Node]:
    """Conv/Gemm/MatMul nodes with a constant float weight, in graph order."""
    out = []
    for n in graph.nodes:
        if n.domain == "" and n.op in WEIGHTED and len(n.inputs) > 1:
            w = n.inputs[1]
            if w is not None and w.is_const and np.asarray(w.const).dtype.kind == "f":
                out.append(n)
    return out


def parse_fq(spec: str, where: str):
    try:
        return fq_format(spec)
    except FormatError as e:
        raise OptionError(f"{where}: {e}") from None


def weight_axis(n: Node) -> int:
    if n.op == "Conv":
        return 0
    if n.op == "Gemm":
        return 0 if n.attrs.get("transB", 0) else 1
    return int(np.asarray(n.inputs[1].const).ndim) - 1


def _fq_node(graph: Graph, x: Value, spec: str, scale: np.ndarray, axis: int | None,
             tag: str) -> Node:
    s = graph.add_const(f"{x.name}.fq_scale", np.asarray(scale, np.float32))
    attrs: dict = {"format": spec, "rounding": "nearest", "saturate": 1}
    if axis is not None:
        attrs["axis"] = int(axis)
    return Node("FQ", [x, s], [x.type], attrs=attrs, domain=QCOMPILE_DOMAIN,
                name=f"{x.name}_fq", output_names=[f"{x.name}_{weights_or_act(tag)}"])


def weights_or_act(tag: str) -> str:
    return "fq" if tag == "w" else "fqa"


def _amax_scale(amax, fmt, scaling: str) -> np.ndarray:
    """The amax scale, made exactly representable in float32 (the constant's storage type),
    so the scale the backends read is the one computed here."""
    if scaling == "none":
        return np.ones_like(np.asarray(amax, np.float64), dtype=np.float32)
    s = amax_scale(amax, fmt).astype(np.float32)
    return np.where((s > 0) & np.isfinite(s), s, np.float32(1.0))


def insert_formats(graph: Graph, layers: Sequence[Node], kept: set[str],
                   weights: str | Mapping[str, str], activations: str, scaling: str,
                   st: Stats) -> dict[str, int]:
    """Insert the FQ ops; returns {layer: weight bits} (kept layers at 32). ``weights`` is one
    format for every layer or a per-layer mapping (missing layers: ``weights["*"]``)."""
    per = {"*": weights} if isinstance(weights, str) else dict(weights)
    af = parse_fq(activations, "assign activations")
    act_cache: dict[Value, Value] = {}
    config: dict[str, int] = {}
    for n in layers:
        if n.name in kept:
            config[n.name] = KEPT_BITS
            st.count("kept_layers")
            continue
        wspec = per.get(n.name, per.get("*"))
        wf = parse_fq(wspec, f"assign weights of {n.name}")
        w = n.inputs[1]
        ax = weight_axis(n)
        wc = np.asarray(w.const, np.float64)
        amax = np.abs(np.moveaxis(wc, ax, 0).reshape(wc.shape[ax], -1)).max(axis=1)
        fq = _fq_node(graph, w, wspec, _amax_scale(amax, wf, scaling), ax, "w")
        graph.insert_before(n, fq)
        n.replace_input(1, fq.output)
        st.count("fq_weights")
        config[n.name] = wf.bits or KEPT_BITS
        x = n.inputs[0]
        if x is None or x.is_const:
            continue
        if x not in act_cache:
            rng = x.meta.get(RANGE)
            if rng is None and scaling != "none" and family_of(af).amax_scaled:
                raise OptionError(f"assign: activation %{x.name} of {n.op} {n.name!r} has no "
                                  "calibrated range; run calibrate before assign")
            amax = max(abs(rng.lo), abs(rng.hi)) if rng is not None else 1.0
            fqa = _fq_node(graph, x, activations, _amax_scale(amax, af, scaling), None, "a")
            graph.insert_before(n, fqa)
            act_cache[x] = fqa.output
            st.count("fq_activations")
        n.replace_input(0, act_cache[x])
    return config


def is_int_spec(spec: str) -> bool:
    from qcompile.numerics import quant

    return str(spec).strip().lower() in quant.QTYPES
