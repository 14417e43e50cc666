"""``cle``: cross-layer equalisation (Nagel et al., "Data-Free Quantization", ICCV 2019).

For a region ``src -> f* -> sink`` where ``src`` and ``sink`` are Conv/Gemm and every ``f`` is
positively homogeneous per channel (``f(x / s) = f(x) / s`` for ``s > 0``: Relu, LeakyRelu,
MaxPool, AveragePool, GlobalAveragePool, zero Pad, Identity, Dropout, Flatten of a 1x1 map),
scaling output channel ``c`` of ``src`` by ``1/s_c`` and input channel ``c`` of ``sink`` by
``s_c`` leaves the network function unchanged:

    W1[c] /= s_c,  b1[c] /= s_c,  W2[:, c] *= s_c,   s_c = sqrt(r1_c * r2_c) / r2_c

with ``r1_c = max|W1[c]|`` (output-channel range of src) and ``r2_c = max|W2[:, c]|`` (input-
channel range of sink), after which both ranges equal ``sqrt(r1_c * r2_c)``. Grouped and
depthwise sinks map input channel ``c`` to group ``c // (Cin/g)``, slice ``c % (Cin/g)``.
Chains of several layers are swept ``iterations`` times or until ``max|s - 1| < threshold``.

``Clip(0, M)`` (ReLU6) is not homogeneous. With ``clip=data`` (default) a Clip whose input never
exceeds ``M`` on the calibration images is replaced by Relu (exact on that data; reported);
otherwise, or without data, the region is declined with the reason. ``clip=scale`` is the DFQ
recipe, exact and data-free: equalise treating ``Clip(0, M)`` as Relu, then re-establish the clip
with its bound scaled per channel, ``min(relu(x / s_c), M / s_c) = clip(x, 0, M) / s_c``, written
``Relu -> Min(x, b)`` with the constant ``b_c = M / S_c`` (``S`` the product of the region's scales
over all sweeps; a Clip whose channels all keep ``S_c = 1`` stays a Clip). ORT fuses the Relu into
the QLinearConv; the Min runs in float between DQ and Q. ``clip=relu`` replaces every such Clip
by Relu as AIMET does for ReLU6 networks: this CHANGES the function wherever the input exceeds
``M`` (reported as such); ``clip=skip`` never touches a Clip.
Declines: branches (residual joins), non-constant or shared weights, non-homogeneous ops.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from qcompile.ir import RANGE, Graph, Node, Value
from qcompile.passes import checks
from qcompile.passes._feeds import feeds_of, model_data
from qcompile.passes.base import Pass, PassContext, PassResult, Stats

HOMOGENEOUS = ("Relu", "LeakyRelu", "MaxPool", "AveragePool", "GlobalAveragePool", "Identity",
               "Dropout", "Pad", "Flatten")
LINEAR = ("Conv", "Gemm")


@dataclass(frozen=True)
class Region:
    src: Node
    mids: tuple[Node, ...]
    sink: Node


@dataclass(frozen=True)
class CrossLayerEqualize(Pass):
    """Equalise per-channel weight ranges across (src, homogeneous*, sink) regions."""

    name = "cle"
    needs_data = "optional"
    summary = "cross-layer equalisation of per-channel weight ranges (float-preserving)"
    requires = (checks.bn_folded,)
    iterations: int = 20
    threshold: float = 1e-3
    clip: Literal["data", "skip", "relu", "scale"] = "data"
    images: int = 64

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ValueError("iterations must be >= 1")
        if not self.threshold > 0:
            raise ValueError("threshold must be > 0")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        st = Stats()
        regions, clips = [], []
        for src in graph.nodes:
            if src.domain == "" and src.op in LINEAR:
                r = _match(src, st)
                if r is not None:
                    regions.append(r)
                    clips += [n for n in r.mids if n.op == "Clip"]
        if clips and self.clip == "scale":
            bad = [c for c in clips
                   if len(c.inputs) > 2 and c.inputs[2] is not None and not c.inputs[2].is_const]
            for c in bad:
                st.skip("clip", f"Clip {c.name!r}", "its upper bound is not a constant")
            regions = [r for r in regions if not any(n in bad for n in r.mids)]
        elif clips:
            ok = self._resolve_clips(graph, ctx, clips, st)
            regions = [r for r in regions if all(n.op != "Clip" or n in ok for n in r.mids)]
            for n in ok:
                _clip_to_relu(graph, n)
                st.count("clip_replaced_by_relu")
        if not regions:
            return st.result(graph, bool(st.counts.get("clip_replaced_by_relu")))
        sweeps = 0
        total = {id(r): 1.0 for r in regions}  # S: product of each region's scales
        for sweeps in range(1, self.iterations + 1):  # noqa: B007
            steps = {id(r): _equalize(r) for r in regions}
            for r in regions:
                total[id(r)] = total[id(r)] * steps[id(r)]
            if max(float(np.max(np.abs(s - 1.0))) for s in steps.values()) < self.threshold:
                break
        st.count("regions", len(regions))
        st.count("sweeps", sweeps)
        for r in regions if self.clip == "scale" else ():  # other modes made them Relus
            for n in [m for m in r.mids if m.op == "Clip"]:
                _rescale_clip(graph, n, np.asarray(total[id(r)], np.float64), st)
        for r in regions:  # the values between src and sink changed: ranges are stale
            for v in [r.src.outputs[0]] + [n.outputs[0] for n in r.mids]:
                v.meta.pop(RANGE, None)
        return st.result(graph, True)

    def _resolve_clips(self, graph: Graph, ctx: PassContext, clips: list[Node],
                       st: Stats) -> set[Node]:
        """Clips whose input stays within [lo, hi] on the calibration data (so Clip == Relu)."""
        where = ", ".join(repr(c.name) for c in clips[:3]) + ("..." if len(clips) > 3 else "")
        if self.clip == "relu":
            for c in clips:
                st.notes.append(f"Clip {c.name!r}: replaced by Relu (clip=relu; the function "
                                f"changes where its input exceeds {_clip_bounds(c)[1]})")
            return {c for c in clips if _clip_bounds(c)[1] is not None}
        if self.clip == "skip" or ctx.executor is None or ctx.calib_data is None:
            why = ("clip=skip" if self.clip == "skip"
                   else "no calibration data to check Clip == Relu (give --calib)")
            for c in clips:
                st.skip("clip", f"Clip {c.name!r}", f"not scale-invariant; {why}")
            return set()
        inputs = [c.inputs[0] for c in clips]
        peak = {v: -np.inf for v in inputs}
        batches = model_data(graph, ctx.calib_data, ctx.log).batches(16, limit=self.images)
        for batch in batches:
            feeds = feeds_of(graph, batch.x)
            out = ctx.executor.run(graph, feeds, inputs)
            for v in inputs:
                peak[v] = max(peak[v], float(np.max(out[v])))
        ok = set()
        for c in clips:
            lo, hi = _clip_bounds(c)
            if lo == 0.0 and hi is not None and peak[c.inputs[0]] <= hi:
                ok.add(c)
            else:
                st.skip("clip", f"Clip {c.name!r}", f"input reaches {peak[c.inputs[0]]:.3g} > "
                        f"{hi} on the calibration data, so it is not a Relu there")
        ctx.log(f"cle: checked {where} on calibration data")
        return ok


def _clip_bounds(n: Node) -> tuple[float | None, float | None]:
    def val(i: int, attr: str):
        if len(n.inputs) > i and n.inputs[i] is not None:
            v = n.inputs[i]
            return float(v.const) if v.is_const else None
        return n.attrs.get(attr)

    return val(1, "min"), val(2, "max")


def _clip_to_relu(graph: Graph, clip: Node) -> None:
    old = clip.outputs[0]
    relu = Node("Relu", [clip.inputs[0]], [old.type], name=clip.name + "_relu")
    graph.insert_after(clip, relu)
    graph.replace_value(old, relu.outputs[0])
    public = old.name
    graph.remove(clip, drop_dead_consts=True)
    if relu.outputs[0].name != public:  # keep the tensor's name for dumps and reports
        relu.outputs[0].name = graph.unique_name(public)


def _rescale_clip(graph: Graph, clip: Node, scale: np.ndarray, st: Stats) -> None:
    """``Clip(0, M)`` after its channels were divided by ``scale``: ``Relu -> Min(M / scale)``."""
    _, hi = _clip_bounds(clip)
    if hi is None:  # Clip(0, inf) is a Relu: homogeneous as it stands
        return
    if np.all(np.abs(scale - 1.0) < 1e-12):
        st.count("clip_kept")
        return
    shape = clip.inputs[0].type.shape
    rank = 2 if shape is None else len(shape)
    bound = (hi / scale).astype(np.float32).reshape((-1,) + (1,) * (rank - 2))
    old = clip.outputs[0]
    relu = Node("Relu", [clip.inputs[0]], [old.type], name=clip.name + "_relu")
    graph.insert_after(clip, relu)
    b = graph.add_const(graph.unique_name(clip.name + ".bound"), bound)
    mn = Node("Min", [relu.outputs[0], b], [old.type], name=clip.name + "_min")
    graph.insert_after(relu, mn)
    graph.replace_value(old, mn.outputs[0])
    public = old.name
    graph.remove(clip, drop_dead_consts=True)
    if mn.outputs[0].name != public:
        mn.outputs[0].name = graph.unique_name(public)
    st.count("clip_bound_per_channel")


def exclusive_weight(n: Node) -> bool:
    w = n.inputs[1]
    b = n.inputs[2] if len(n.inputs) > 2 else None
    return checks.exclusive_const(w, n) and (b is None or checks.exclusive_const(b, n))


def _match(src: Node, st: Stats) -> Region | None:
    where = f"{src.op} {src.name!r}"
    if not exclusive_weight(src):
        return None  # reported when this node is the sink side, or not equalisable at all
    v: Value = src.outputs[0]
    mids: list[Node] = []
    while True:
        uses = v.uses()
        if len(uses) != 1 or v in (src.graph.outputs if src.graph else ()):
            if len(uses) > 1:
                st.skip("branch", where, f"%{v.name} feeds {len(uses)} nodes (residual/branch)")
            return None
        n, idx = uses[0]
        if n.domain != "" or idx != 0:
            return None
        if n.op in LINEAR:
            if not exclusive_weight(n):
                st.skip("shared_weight", where, f"sink {n.name!r} has a shared/non-constant weight")
                return None
            if n.op == "Gemm" and n.attrs.get("transA", 0):
                st.skip("not_scale_invariant", where, f"Gemm {n.name!r} has transA")
                return None
            return Region(src, tuple(mids), n)
        reason = _homogeneous(n)
        if reason is not None:
            st.skip("not_scale_invariant", where, f"{n.op} {n.name!r} {reason}")
            return None
        mids.append(n)
        v = n.outputs[0]


def _homogeneous(n: Node) -> str | None:
    if n.op == "Clip":
        lo, _ = _clip_bounds(n)
        return None if lo == 0.0 else "is a Clip with a nonzero lower bound"
    if n.op not in HOMOGENEOUS:
        return "is not positively homogeneous"
    if n.op == "Pad":
        mode = n.attrs.get("mode", "constant")
        cval = n.inputs[2] if len(n.inputs) > 2 else None
        if mode != "constant" or (cval is not None and (not cval.is_const or np.any(cval.const))):
            return "pads with a nonzero value"
    if n.op == "Flatten":
        shape = n.inputs[0].type.shape
        if shape is None or any(d != 1 for d in shape[2:]) or n.attrs.get("axis", 1) != 1:
            return "does not keep channels in place"
    if n.op == "Dropout" and len(n.inputs) > 2 and n.inputs[2] is not None:
        return "may be in training mode"
    return None


def _src_view(n: Node) -> np.ndarray:
    """src weight with output channels on axis 0 (a view for Conv, a transpose for Gemm)."""
    w = n.inputs[1].const
    if n.op == "Gemm" and not n.attrs.get("transB", 0):
        return w.T
    return w


def sink_slices(n: Node, channels: int) -> list[tuple]:
    """Index expression of sink weight entries that multiply input channel c, per c."""
    w = n.inputs[1].const
    if n.op == "Gemm":
        return [(slice(None), c) if n.attrs.get("transB", 0) else (c, slice(None))
                for c in range(channels)]
    g = int(n.attrs.get("group", 1))
    cin_g, cout_g = w.shape[1], w.shape[0] // g
    return [(slice((c // cin_g) * cout_g, (c // cin_g + 1) * cout_g), c % cin_g)
            for c in range(channels)]


def _equalize(r: Region) -> np.ndarray:
    """One CLE step on a region; returns its per-channel scales ``s``."""
    w1 = _src_view(r.src).astype(np.float64)
    c = w1.shape[0]
    w2 = r.sink.inputs[1].const.astype(np.float64)
    sl = sink_slices(r.sink, c)
    r1 = np.abs(w1.reshape(c, -1)).max(axis=1)
    r2 = np.array([np.abs(w2[s]).max() for s in sl])
    s = np.ones(c)
    ok = (r1 > 0) & (r2 > 0)
    s[ok] = np.sqrt(r1[ok] * r2[ok]) / r2[ok]
    dtype = r.src.inputs[1].const.dtype
    w1 /= s.reshape((c,) + (1,) * (w1.ndim - 1))
    new1 = w1.astype(dtype)
    if r.src.op == "Gemm" and not r.src.attrs.get("transB", 0):
        new1 = np.ascontiguousarray(new1.T)  # back to the stored [K, N] layout
    r.src.inputs[1].const = new1
    if len(r.src.inputs) > 2 and r.src.inputs[2] is not None:
        b = r.src.inputs[2]
        b.const = (b.const.astype(np.float64).reshape(-1) / s).astype(b.const.dtype).reshape(b.const.shape)
    for ch, idx in enumerate(sl):
        w2[idx] *= s[ch]
    r.sink.inputs[1].const = w2.astype(r.sink.inputs[1].const.dtype)
    return s
