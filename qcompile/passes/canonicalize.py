"""``canonicalize``: rewrite what exporters write into the forms our passes and backends expect.

Every rewrite matches a pattern, checks that it can be rewritten exactly (else it declines with
the reason, counted as ``skipped_<key>`` and explained in the notes), then rewrites:

1. **Shape subgraphs feeding Reshape** (Shape/Gather/Unsqueeze/Concat/Slice/Cast/... of tensors
   whose only symbolic dimension is the batch) fold into a constant target, with ``-1`` in the one
   position that depends on the batch (``_canonical_shape`` has the argument); a folded target
   that makes ``Reshape(x)`` equal ``Flatten(x, axis=1)`` (``[N, prod(d1..dk)]``) becomes a
   Flatten (option ``flatten``). Reshapes with a constant target are left as they are.
2. ``ReduceMean(x, axes=[2,3] | [-2,-1])`` on a 4-D ``x`` is ``GlobalAveragePool(x)`` (both are
   ``y[n,c] = sum_hw x[n,c,h,w] / (H W)``); with ``keepdims=0`` the ``[N,C,1,1]`` result is
   Flattened to ``[N,C]``.
3. ``Add(MatMul(A, W), b)`` with 2-D ``A``, constant 2-D ``W`` [K,M] and constant ``b`` of shape
   [M] or [1,M] is ``Gemm(A, W, b)`` (``alpha = beta = 1``: ``Y = A W + b``).
4. ``Mul(Conv(x), k)`` / ``Add(Conv(x), c)`` with per-channel constants (shape [C,1,1] or
   [1,C,1,1], a scalar, or an Unsqueeze of one) fold into the Conv:
   ``k (W*x + b) + c = (k W) * x + (k b + c)``.
5. ``Sum(x1..xn)`` is ``Add(...Add(Add(x1, x2), x3)..., xn)``; ``Sum(x)`` is the identity.
6. ``Clip`` bounds become scalar constants of the input's type (attribute-form bounds become
   inputs); non-constant bounds decline.
7. ``x * Clip(x + 3, 0, 6) / 6`` (also ``* (1/6)``, ``x * (Clip(..) / 6)`` and
   ``x * HardSigmoid(x){alpha=1/6, beta=1/2}``) is ``HardSwish(x) = x max(0, min(1, x/6 + 1/2))``
   (opset >= 14; the same function, last-ulp rounding aside; option ``hardswish``). ONNX has
   no Swish op below opset 24, so ``x * Sigmoid(x)`` stays a Mul, operands ordered
   ``Mul(x, Sigmoid(x))`` and marked with ``node.meta[ACTIVATION] = "Swish"``.
8. ``Transpose(Transpose(x, p), q)`` is ``Transpose(x, p o q)`` with ``(p o q)[i] = p[q[i]]``;
   removed when that is the identity.
9. Identity and inference Dropout: removed by ``cleanup``'s rules, which also drop the nodes
   and constants the rewrites leave dead (``cleanup{fold_constants=false}`` runs last).

Constant nodes are already constants after ``lift``. A graph with nothing to rewrite costs one
scan of its nodes and is left unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from qcompile.ir import Graph, MetaKey, Node, TensorType
from qcompile.passes import _canonical_rewrites as rw
from qcompile.passes._canonical_shape import Decline, const_value, fold_reshape_target
from qcompile.passes.base import Check, Pass, PassContext, PassResult, Stats
from qcompile.passes.cleanup import Cleanup

ACTIVATION: MetaKey[str] = MetaKey("canonical_activation")  # "Swish" on x * Sigmoid(x)
Rewrite = Callable[[], str]  # applies a checked rewrite, returns its stat key


def _canonical(graph: Graph) -> str | None:
    # The optional rewrites (flatten, hardswish) are off here, so the check holds after any
    # configuration of the pass; declined patterns count as canonical (they stay as they are).
    p = Canonicalize(flatten=False, hardswish=False)
    for node in graph.nodes:
        try:
            if p.match(graph, node) is not None:
                return f"{node.qualified_op} {node.name!r} can still be canonicalised"
        except Decline:
            continue
    return None


canonical = Check("canonical", _canonical, "no exporter idiom that canonicalize rewrites remains")


@dataclass(frozen=True)
class Canonicalize(Pass):
    """Rewrite exporter idioms (shape subgraphs, ReduceMean, MatMul+Add, Sum...) into canonical ops."""

    name = "canonicalize"
    summary = ("fold shape subgraphs, ReduceMean->GlobalAveragePool, MatMul+Add->Gemm, Conv "
               "affines, Sum, Clip bounds, HardSwish, Transpose pairs, Identity/Dropout")
    flatten: bool = True  # a Reshape that equals Flatten(axis=1) becomes Flatten
    hardswish: bool = True  # fuse decomposed HardSwish into the ONNX op (opset >= 14)
    ensures = (canonical,)

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        st = Stats()
        modified = False
        for node in graph.nodes:
            if node.graph is not graph:
                continue  # removed by an earlier rewrite
            try:
                rewrite = self.match(graph, node)
            except Decline as d:
                st.skip(d.key, f"{node.op} {node.name!r}", d.detail)
                continue
            if rewrite is not None:
                st.count(rewrite())
                modified = True
        clean = Cleanup(fold_constants=False).run(graph, ctx)
        for k, n in clean.stats.items():
            st.count(k, n)
        st.notes += clean.notes
        return st.result(graph, modified or clean.modified)

    def match(self, graph: Graph, node: Node) -> Rewrite | None:
        """The checked rewrite rooted at ``node``; None when nothing matches; Decline if blocked."""
        if node.domain != "":
            return None
        m = _MATCHERS.get(node.op)
        return None if m is None else m(self, graph, node)


def _reshape(p: Canonicalize, graph: Graph, node: Node) -> Rewrite | None:
    data, shape_in = node.inputs[0], node.inputs[1]
    if data is None or shape_in is None:
        return None
    if shape_in.is_const:
        return None  # a constant target is canonical (batch-agnostic or not, it is exact)
    target, pos, symbol = fold_reshape_target(node)
    in_shape = data.type.shape or ()
    as_flatten = (p.flatten and len(target) == 2 and len(in_shape) >= 2
                  and all(isinstance(d, int) for d in in_shape[1:])
                  and target[1] == int(np.prod(in_shape[1:]))
                  and (pos == 0 or (pos is None and target[0] == in_shape[0])))
    out = node.outputs[0]
    dims = tuple((symbol if j == pos else None) if d == -1 else d for j, d in enumerate(target))
    out_type = TensorType(out.type.dtype, dims)

    def apply() -> str:
        if as_flatten:
            new = Node("Flatten", [data], [out_type], attrs={"axis": 1}, name=f"{node.name}_flat")
            graph.insert_before(node, new)
            rw.replace(graph, out, new.output)
            graph.remove(node, drop_dead_consts=True)
            return "reshape_to_flatten"
        const = graph.add_const(f"{node.name}_shape", np.array(target, np.int64))
        node.replace_input(1, const)
        out.type = out_type
        return "folded_shape_subgraph"
    return apply


def _reduce_mean(p: Canonicalize, graph: Graph, node: Node) -> Rewrite | None:
    x = node.inputs[0]
    if x is None or x.type.rank != 4:
        return None
    if len(node.inputs) > 1 and node.inputs[1] is not None:  # opset 18: axes is an input
        axes_v = const_value(node.inputs[1])
        if axes_v is None:
            raise Decline("axes_not_constant", "its axes input is not a constant")
        axes = [int(a) for a in axes_v.reshape(-1)]
    elif "axes" in node.attrs:
        axes = [int(a) for a in node.attrs["axes"]]
    else:
        return None  # all axes (or noop_with_empty_axes): not a spatial mean
    if sorted(a % 4 for a in axes) != [2, 3]:
        return None
    keep = int(node.attrs.get("keepdims", 1))
    out = node.outputs[0]
    shape = x.type.shape or (None,) * 4
    gap_type = TensorType(out.type.dtype, (shape[0], shape[1], 1, 1))

    def apply() -> str:
        gap = Node("GlobalAveragePool", [x], [gap_type], name=f"{node.name}_gap")
        new = [gap]
        if not keep:
            new.append(Node("Flatten", [gap.output], [TensorType(out.type.dtype, shape[:2])],
                            attrs={"axis": 1}, name=f"{node.name}_flat"))
        graph.insert_before(node, *new)
        rw.replace(graph, out, new[-1].output)
        graph.remove(node, drop_dead_consts=True)
        return "reducemean_to_gap"
    return apply


def _add(p: Canonicalize, graph: Graph, node: Node) -> Rewrite | None:
    for i in (0, 1):
        v, other = node.inputs[i], node.inputs[1 - i]
        prod = v.producer if v is not None else None
        if prod is not None and prod.domain == "" and prod.op == "MatMul" \
                and other is not None and const_value(other) is not None:
            return _gemm(graph, node, prod, other)
    return rw.conv_affine(graph, node)


def _gemm(graph: Graph, add: Node, mm: Node, bias) -> Rewrite:
    a, w = mm.inputs
    where = f"MatMul {mm.name!r}"
    wv = const_value(w)
    if wv is None or wv.ndim != 2:
        raise Decline("gemm_weight", f"the weight of {where} is not a constant 2-D matrix")
    if a is None or a.type.rank != 2:
        raise Decline("gemm_rank", f"the input of {where} is not 2-D (Gemm takes [M, K])")
    if not a.type.dtype.is_float:
        raise Decline("gemm_dtype", f"{where} is not a float MatMul")
    k = (a.type.shape or (None, None))[1]
    if isinstance(k, int) and k != wv.shape[0]:
        raise Decline("gemm_weight", f"{where}: input width {k} != weight rows {wv.shape[0]}")
    b = np.asarray(const_value(bias))
    m = wv.shape[1]
    if b.shape not in ((m,), (1, m)):
        raise Decline("gemm_bias", f"the bias {b.shape} is not a row [{m}] or [1, {m}]")
    mm_out = mm.outputs[0]
    if len(mm_out.uses()) != 1 or mm_out in graph.outputs:
        raise Decline("gemm_shared", f"the output of {where} is also used elsewhere")
    out = add.outputs[0]
    out_type = TensorType(out.type.dtype, ((a.type.shape or (None,))[0], m))

    def apply() -> str:
        wc = w if w.is_const else graph.add_const(f"{mm.name}_weight", wv)
        bc = bias if bias.is_const and bias.const.ndim == 1 else \
            graph.add_const(f"{add.name}_bias", b.reshape(-1).astype(wv.dtype))
        gemm = Node("Gemm", [a, wc, bc], [out_type], name=f"{mm.name}_gemm")
        graph.insert_before(add, gemm)
        rw.replace(graph, out, gemm.output)
        graph.remove(add, drop_dead_consts=True)
        graph.remove(mm, drop_dead_consts=True)
        return "matmul_add_to_gemm"
    return apply


_MATCHERS: dict[str, Callable[[Canonicalize, Graph, Node], Rewrite | None]] = {
    "Reshape": _reshape,
    "ReduceMean": _reduce_mean,
    "Add": _add,
    "Mul": lambda p, g, n: rw.conv_affine(g, n) or rw.activation(g, n, p.hardswish, ACTIVATION),
    "Div": lambda p, g, n: rw.activation(g, n, p.hardswish, ACTIVATION),
    "Sum": lambda p, g, n: rw.sum_to_add(g, n),
    "Clip": lambda p, g, n: rw.clip_bounds(g, n),
    "Transpose": lambda p, g, n: rw.transpose_pair(g, n),
}

