"""Blocks of a quantised graph for ``reconstruct``: where to cut, and each block as a numpy
program (:class:`qcompile.numerics.reconstruct.Block`).

Nodes are taken in graph order, without the QDQs of constants (weights and biases are the
layers' parameters). A range starts at each quantised Conv/Gemm/MatMul and runs to the next one
(nodes before the first layer belong to no block). Its *inputs* are the values it reads that
earlier nodes produce; its *outputs* the values it produces that later nodes (or the graph
outputs) read. Ranges are merged with the next one until they have one output (``layer``) or one
input and one output (``block``: in a ResNet, exactly one residual block, whose input is the
quantised output of the previous residual join).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qcompile.errors import QCompileError
from qcompile.ir import Graph, Node, Value
from qcompile.numerics import patches as pt
from qcompile.numerics import reconstruct as rc
from qcompile.passes._layerwise import WEIGHTED, QLayer, is_qdq, quantised_layers
from qcompile.passes.base import Stats
from qcompile.passes.quantize import TRANSPARENT, activation_bounds

_RESHAPE = ("Flatten", "Reshape", "Squeeze", "Unsqueeze")


@dataclass
class BlockPlan:
    name: str
    nodes: list[Node]
    inputs: list[str]  # value names in the quantised graph
    output: str  # value name in the quantised graph
    float_output: str  # the same value in the float reference (QDQs removed)
    layers: list[QLayer]


def _const_qdq(n: Node) -> bool:
    return is_qdq(n) and n.inputs[0] is not None and n.inputs[0].is_const


def block_plans(graph: Graph, granularity: str, st: Stats) -> list[BlockPlan]:
    layers = {la.node: la for la in quantised_layers(graph, Stats())}
    nodes = [n for n in graph.nodes if not _const_qdq(n)]
    pos = {n: i for i, n in enumerate(nodes)}
    starts = [i for i, n in enumerate(nodes) if n in layers]
    if not starts:
        return []
    bounds = list(zip(starts, starts[1:] + [len(nodes)], strict=True))
    outs_g = set(graph.outputs)

    def io(a: int, b: int) -> tuple[list[Value], list[Value]]:
        ins: dict[Value, None] = {}
        outs: dict[Value, None] = {}
        for n in nodes[a:b]:
            for v in n.inputs:
                if v is None or v.is_const or (v.producer is not None and
                                               (_const_qdq(v.producer)
                                                or a <= pos[v.producer] < b)):
                    continue
                ins[v] = None
            for v in n.outputs:
                if v in outs_g or any(pos.get(u.node, -1) >= b for u in v.uses()):
                    outs[v] = None
        return list(ins), list(outs)

    last_use: dict[Value, int] = {}
    for i, n in enumerate(nodes):
        for v in n.inputs:
            if v is not None and not v.is_const and not (v.producer is not None
                                                         and _const_qdq(v.producer)):
                last_use[v] = i
    for v in outs_g:
        last_use[v] = len(nodes)

    def live(b: int) -> int:
        """How many values cross the cut before node ``b``."""
        return sum(1 for v, u in last_use.items()
                   if u >= b and (v.producer is None or pos[v.producer] < b))

    def ok(lo: int, hi: int, ins: list, outs: list) -> bool:
        if len(outs) != 1:
            return False
        return granularity == "layer" or (hi >= len(nodes) or live(hi) == 1)

    plans = []
    a = 0
    while a < len(bounds):
        lo, hi = bounds[a]
        b = a
        ins, outs = io(lo, hi)
        while not ok(lo, hi, ins, outs) and b + 1 < len(bounds):
            b += 1
            hi = bounds[b][1]
            ins, outs = io(lo, hi)
        a = b + 1
        first = nodes[lo]
        if len(outs) != 1:
            st.skip("multiple_outputs", f"{first.op} {first.name!r}",
                    f"the range from it has {len(outs)} outputs; not reconstructed")
            continue
        fv = outs[0]
        while is_qdq(fv.producer):
            fv = fv.producer.inputs[0]  # type: ignore[union-attr,assignment]
        plans.append(BlockPlan(first.name, nodes[lo:hi], [v.name for v in ins], outs[0].name,
                               fv.name, [layers[n] for n in nodes[lo:hi] if n in layers]))
    return plans


def _share_group(n: Node) -> list[Node]:
    """Activation QDQs that must keep ``n``'s step: linked through scale-transparent ops."""
    seen, work = {n}, [n]
    while work:
        q = work.pop()
        near: list[Node] = []
        p = q.inputs[0].producer  # type: ignore[union-attr]
        if p is not None and p.domain == "" and p.op in TRANSPARENT and p.inputs[0] is not None \
                and is_qdq(p.inputs[0].producer):
            near.append(p.inputs[0].producer)  # type: ignore[arg-type]
        for u in q.output.uses():
            if u.node.domain == "" and u.node.op in TRANSPARENT:
                near += [w.node for w in u.node.output.uses() if is_qdq(w.node)]
        for m in near:
            if m not in seen and np.array_equal(m.inputs[1].const, q.inputs[1].const):  # type: ignore[union-attr]
                seen.add(m)
                work.append(m)
    return sorted(seen, key=lambda m: m.name)


def build_block(plan: BlockPlan, learn_steps: bool = True, reg_depthwise: float = 1.0
                ) -> tuple[rc.Block, list[QLayer], list[list[Node]]] | str:
    """The numpy program of ``plan`` (or why it cannot be built); depthwise weights get
    ``reg_scale = reg_depthwise``."""
    ops: list[rc.Op] = []
    weights: list[rc.SoftWeight] = []
    wlayers: list[QLayer] = []
    steps: list[rc.Step] = []
    groups: list[list[Node]] = []
    step_of: dict[Node, int] = {}
    members = set(plan.nodes)
    layers = {la.node: la for la in plan.layers}
    for n in plan.nodes:
        where = f"{n.op} {n.name!r}"
        ins = tuple(v.name for v in n.inputs if v is not None)
        out = n.output.name
        if is_qdq(n):
            s, z = n.inputs[1].const, n.inputs[2].const  # type: ignore[union-attr]
            if s is None or z is None or np.size(s) != 1:
                return f"{where}: only per-tensor activation QDQs with constant parameters"
            if n not in step_of:
                grp = _share_group(n)
                inside = all(m in members for m in grp)
                bits, signed = int(n.attrs["bits"]), bool(n.attrs["signed"])
                qmin = -(1 << (bits - 1)) if signed else 0
                qmax = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
                steps.append(rc.Step(float(np.ravel(s)[0]), float(np.ravel(z)[0]), qmin, qmax,
                                     learn=learn_steps and inside))
                groups.append(grp if inside else [n])
                for m in (grp if inside else [n]):
                    step_of[m] = len(steps) - 1
            ops.append(rc.Op("qdq", ins[:1], out, step_of[n]))
        elif n.domain != "":
            return f"{where}: not modelled by the block program"
        elif n.op in WEIGHTED:
            r = _linear(n, layers.get(n), ins[:1], out, weights, wlayers, reg_depthwise)
            if isinstance(r, str):
                return f"{where}: {r}"
            ops.append(r)
        elif n.op == "Relu":
            ops.append(rc.Op("relu", ins[:1], out))
        elif n.op == "Clip":
            b = activation_bounds(n)
            if b is None:
                return f"{where}: Clip bounds are not constant"
            ops.append(rc.Op("clip", ins[:1], out, (b[0], b[1])))
        elif n.op == "Add":
            if len(ins) != 2 or any(v.is_const for v in n.inputs if v is not None):
                return f"{where}: only Add of two activations"
            ops.append(rc.Op("add", ins, out))
        elif n.op == "GlobalAveragePool":
            ops.append(rc.Op("gap", ins, out))
        elif n.op in _RESHAPE:
            shape = n.output.type.shape
            if shape is None or not all(isinstance(d, int) for d in shape[1:]):
                return f"{where}: output shape is not static"
            ops.append(rc.Op("reshape", ins[:1], out, tuple(shape[1:])))
        elif n.op == "Slice":
            r = _slice(n)
            if isinstance(r, str):
                return f"{where}: {r}"
            ops.append(rc.Op("slice", ins[:1], out, r))
        elif n.op == "Pad":
            r = _pad(n)
            if isinstance(r, str):
                return f"{where}: {r}"
            ops.append(rc.Op("pad", ins[:1], out, r))
        elif n.op == "Identity":
            ops.append(rc.Op("identity", ins[:1], out))
        else:
            return f"{where}: {n.op} is not modelled by the block program (numpy backward)"
    return rc.Block(ops, weights, steps, plan.output), wlayers, groups


def _linear(n: Node, la: QLayer | None, ins: tuple[str, ...], out: str,
            weights: list[rc.SoftWeight], wlayers: list[QLayer],
            reg_depthwise: float = 1.0) -> rc.Op | str:
    if n.op == "Gemm" and (n.attrs.get("transA", 0) or n.attrs.get("alpha", 1.0) != 1.0
                           or n.attrs.get("beta", 1.0) != 1.0):
        return "only Gemm with transA=0, alpha=beta=1"
    if n.op == "MatMul" and (n.inputs[0].type.rank != 2):  # type: ignore[union-attr]
        return "only 2-D MatMul"
    if la is None:
        return "a float (unquantised) layer inside a block"
    try:
        geom = la.geom
    except QCompileError as e:  # pragma: no cover - geometry() raised while listing layers
        return str(e)
    s, z, qt, _ = la.weight_qparams()
    w2 = pt.weight_matrix(la.weight.const, geom)
    o = w2.shape[0] * w2.shape[1]
    s2, z2 = pt.channel_matrix(s, geom, o), pt.channel_matrix(z, geom, o)
    shape = la.weight.const.shape
    depthwise = n.op == "Conv" and len(shape) > 1 and shape[1] == 1 and \
        int(n.attrs.get("group", 1)) == shape[0] > 1
    weights.append(rc.SoftWeight(w2.astype(np.float32), s2[..., None], z2[..., None]
                                 .astype(np.float32), qt.qmin, qt.qmax,
                                 reg_depthwise if depthwise else 1.0))
    wlayers.append(la)
    bias = None if la.bias is None else np.asarray(la.bias.const, np.float32).reshape(-1)
    return rc.Op("conv" if n.op == "Conv" else "gemm", ins, out,
                 (geom, len(weights) - 1, bias))


def _consts(n: Node) -> list[np.ndarray | None] | str:
    out: list[np.ndarray | None] = []
    for v in n.inputs[1:]:
        if v is not None and v.const is None:
            return "its parameters are not constant"
        out.append(None if v is None else np.asarray(v.const))
    return out


def _slice(n: Node) -> tuple[slice, ...] | str:
    c = _consts(n)
    rank = n.inputs[0].type.rank  # type: ignore[union-attr]
    if isinstance(c, str) or rank is None:
        return c if isinstance(c, str) else "input rank unknown"
    c += [None] * (4 - len(c))
    starts, ends, axes, steps = c
    assert starts is not None and ends is not None
    axes = np.arange(len(starts)) if axes is None else axes
    steps = np.ones(len(starts), np.int64) if steps is None else steps
    sl = [slice(None)] * rank
    for a, b, e, st in zip(axes.tolist(), starts.tolist(), ends.tolist(), steps.tolist(),
                           strict=True):
        if a % rank == 0:
            return "slices the batch axis"
        big = 2 ** 62
        sl[a % rank] = slice(int(b), None if abs(e) >= big else int(e), int(st))
    return tuple(sl)


def _pad(n: Node) -> tuple[tuple[int, int], ...] | str:
    mode = n.attrs.get("mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    c = _consts(n)
    if isinstance(c, str) or mode != "constant" or not c or c[0] is None:
        return "only constant-mode Pad with constant pads"
    if len(c) > 1 and c[1] is not None and np.any(c[1] != 0):
        return "only zero padding"
    if len(c) > 2 and c[2] is not None:
        return "only Pad without axes"
    p = c[0].astype(int).tolist()
    r = len(p) // 2
    if any(x < 0 for x in p) or p[0] or p[r]:
        return "only non-negative padding of non-batch axes"
    return tuple((p[i], p[i + r]) for i in range(r))
