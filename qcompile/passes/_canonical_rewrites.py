"""The local rewrites of ``canonicalize`` (4-8 in its docstring): match, check, rewrite.

Each ``f(graph, node, ...)`` returns None when ``node`` does not root its pattern, raises
:class:`Decline` when it does but cannot be rewritten exactly, and otherwise returns a closure
that rewrites and returns its stat key. Nothing changes the graph before that closure runs.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from qcompile.ir import RANGE, Graph, MetaKey, Node, TensorType, Value
from qcompile.passes import checks
from qcompile.passes._canonical_shape import Decline, const_value

Rewrite = Callable[[], str]
SIXTH_TOL = 1e-6  # |c - 1/6| for a Mul by "1/6" (float32(1/6) = 0.16666667)


def _producer(v: Value | None, *ops: str) -> Node | None:
    n = v.producer if v is not None else None
    return n if n is not None and n.domain == "" and n.op in ops else None


def replace(graph: Graph, old: Value, new: Value) -> None:
    """``graph.replace_value(old, new)`` where ``new`` (a fresh node output) takes ``old``'s name,
    so a rewrite keeps the exporter's tensor names (``old`` goes with its node)."""
    if old not in graph.outputs:
        name = old.name
        old.name = graph.unique_name(name + "_replaced")
        new.name = name
    graph.replace_value(old, new)


def _private(v: Value, graph: Graph) -> bool:
    return len(v.uses()) == 1 and v not in graph.outputs


# ---- 4. per-channel affine after Conv --------------------------------------------------------
def conv_affine(graph: Graph, node: Node) -> Rewrite | None:
    """``Mul(Conv, k)`` -> W' = k W, b' = k b;  ``Add(Conv, c)`` -> b' = b + c (per channel)."""
    for i in (0, 1):
        conv = _producer(node.inputs[i], "Conv")
        if conv is None:
            continue
        k = const_value(node.inputs[1 - i])
        return None if k is None else _fold_affine(graph, node, conv, k)
    return None


def _fold_affine(graph: Graph, node: Node, conv: Node, k: np.ndarray) -> Rewrite:
    y = conv.outputs[0]
    where = f"Conv {conv.name!r}"
    w = conv.inputs[1]
    if w is None or not w.is_const or not checks.exclusive_const(w, conv):
        raise Decline("affine_weight", f"the weight of {where} is not a constant only it reads")
    b = conv.inputs[2] if len(conv.inputs) > 2 else None
    if b is not None and not checks.exclusive_const(b, conv):
        raise Decline("affine_weight", f"the bias of {where} is not a constant only it reads")
    cout, rank = w.const.shape[0], y.type.rank or w.const.ndim
    kshape = (1,) * (rank - k.ndim) + k.shape if k.ndim <= rank else None
    if kshape is None or kshape[0] != 1 or kshape[1] not in (1, cout) or any(
            d != 1 for d in kshape[2:]):
        raise Decline("affine_shape", f"the constant {list(k.shape)} is not per channel of "
                                      f"[N,{cout},...]")
    if not np.issubdtype(k.dtype, np.floating) or not np.issubdtype(w.const.dtype, np.floating):
        raise Decline("affine_dtype", "the affine constant or the weight is not float")
    if not _private(y, graph):
        raise Decline("affine_shared", f"the output of {where} is also used elsewhere")

    def apply() -> str:
        kc = np.broadcast_to(np.asarray(k, np.float64).reshape(-1), (cout,))
        dtype = w.const.dtype
        b64 = np.zeros(cout) if b is None else np.asarray(b.const, np.float64).reshape(-1)
        if node.op == "Mul":
            w.const = (np.asarray(w.const, np.float64)
                       * kc.reshape((-1,) + (1,) * (w.const.ndim - 1))).astype(dtype)
            b64 = b64 * kc
        else:
            b64 = b64 + kc
        if b is not None:
            b.const = b64.astype(dtype).reshape(b.const.shape)
        elif node.op == "Add" or len(conv.inputs) > 2:
            bias = graph.add_const(f"{conv.name}.bias", b64.astype(dtype))
            if len(conv.inputs) > 2:
                conv.replace_input(2, bias)
            else:
                conv.add_input(bias)
        out = node.outputs[0]
        y.type = out.type
        graph.replace_value(out, y)
        graph.remove(node, drop_dead_consts=True)
        y.meta.pop(RANGE, None)
        return f"folded_{node.op.lower()}_into_conv"
    return apply


# ---- 5. Sum -> Add chain ---------------------------------------------------------------------
def _broadcast(a: tuple | None, b: tuple | None) -> tuple | None:
    if a is None or b is None:
        return None
    n = max(len(a), len(b))
    a, b = (1,) * (n - len(a)) + a, (1,) * (n - len(b)) + b
    out = []
    for x, y in zip(a, b):
        if x == y or y == 1:
            out.append(x)
        elif x == 1:
            out.append(y)
        else:
            return None
    return tuple(out)


def sum_to_add(graph: Graph, node: Node) -> Rewrite | None:
    """``Sum(x1..xn) = (..((x1 + x2) + x3) .. + xn)``; ``Sum(x) = Identity(x)`` (cleanup drops it)."""
    xs = [v for v in node.inputs if v is not None]
    out = node.outputs[0]
    types = [xs[0].type]
    for v in xs[1:-1]:
        shape = _broadcast(types[-1].shape, v.type.shape)
        if shape is None:
            raise Decline("sum_shapes", f"the broadcast shape of {types[-1]} and {v.type} is "
                                        "not known")
        types.append(TensorType(out.type.dtype, shape))

    def apply() -> str:
        if len(xs) == 1:
            new = [Node("Identity", xs, [out.type], name=f"{node.name}_id")]
        else:
            new, acc = [], xs[0]
            for k, v in enumerate(xs[1:], start=1):
                t = out.type if k == len(xs) - 1 else types[k]
                new.append(Node("Add", [acc, v], [t], name=f"{node.name}_add{k}"))
                acc = new[-1].output
        graph.insert_before(node, *new)
        replace(graph, out, new[-1].output)
        graph.remove(node)
        return "sum_to_add"
    return apply


# ---- 6. Clip bounds ---------------------------------------------------------------------------
def clip_bounds(graph: Graph, node: Node) -> Rewrite | None:
    """Bounds as scalar constants of x's type in inputs 1, 2 (attribute form converted)."""
    x = node.inputs[0]
    if x is None or not x.type.dtype.is_float:
        return None
    dt = x.type.dtype.to_numpy()
    attr_form = "min" in node.attrs or "max" in node.attrs
    if attr_form and graph.opset < 11:
        return None  # the attribute form is the canonical one below opset 11
    bounds: list[np.ndarray | None] = []
    for i in (1, 2):
        v = node.inputs[i] if i < len(node.inputs) else None
        if attr_form:
            key = "min" if i == 1 else "max"
            bounds.append(None if key not in node.attrs else np.array(node.attrs[key], dt))
            continue
        if v is None:
            bounds.append(None)
            continue
        val = const_value(v)
        if val is None:
            raise Decline("clip_bounds", f"its {'min' if i == 1 else 'max'} bound %{v.name} is "
                                         "not a constant")
        if val.size != 1:
            raise Decline("clip_bounds", f"its bound %{v.name} has {val.size} elements")
        canonical = v.is_const and v.const.shape == () and v.const.dtype == dt
        bounds.append(None if canonical else val.reshape(()).astype(dt))
    if not attr_form and all(b is None for b in bounds):
        return None

    def apply() -> str:
        node.attrs.pop("min", None)
        node.attrs.pop("max", None)
        for i, val in enumerate(bounds, start=1):
            if val is None:
                continue
            const = graph.add_const(f"{node.name}_{'min' if i == 1 else 'max'}", val)
            while len(node.inputs) <= i:
                node.add_input(None)
            old = node.inputs[i]
            node.replace_input(i, const)
            if old is not None and old.is_const and not old.uses() \
                    and graph.initializers.get(old.name) is old:
                graph.remove_const(old)
        return "normalised_clip"
    return apply


# ---- 7. HardSwish / Swish ---------------------------------------------------------------------
def _scalar(v: Value | None, x: Value) -> float | None:
    c = const_value(v)
    if c is None or c.size != 1 or c.ndim > (x.type.rank or 0):
        return None
    return float(c.reshape(-1)[0])


def _sixth(v: Value | None) -> Value | None:
    """``a`` when ``v = a / 6`` or ``a * (1/6)``."""
    n = _producer(v, "Div", "Mul")
    if n is None:
        return None
    for a, c in ((0, 1), (1, 0)) if n.op == "Mul" else ((0, 1),):
        s = _scalar(n.inputs[c], n.inputs[a])  # type: ignore[arg-type]
        if s is not None and (s == 6.0 if n.op == "Div" else abs(s - 1 / 6) <= SIXTH_TOL):
            return n.inputs[a]
    return None


def _relu6_shift(r: Value | None) -> Value | None:
    """``x`` when ``r = Clip(x + 3, 0, 6)``."""
    clip = _producer(r, "Clip")
    add = _producer(clip.inputs[0], "Add") if clip is not None else None
    if add is None:
        return None
    lo = [_scalar(v, add.inputs[0]) for v in clip.inputs[1:3]]  # type: ignore[union-attr]
    if "min" in clip.attrs or "max" in clip.attrs:  # type: ignore[union-attr]
        lo = [clip.attrs.get("min"), clip.attrs.get("max")]  # type: ignore[union-attr]
    if len(lo) != 2 or lo[0] != 0.0 or lo[1] != 6.0:
        return None
    for a, c in ((0, 1), (1, 0)):
        if _scalar(add.inputs[c], add.inputs[a]) == 3.0:  # type: ignore[arg-type]
            return add.inputs[a]
    return None


def _relu6_values(r: Value) -> list[Value]:
    """The values of ``Clip(x + 3, 0, 6)`` that the fusion makes dead: the Clip's and the Add's."""
    return [r, r.producer.inputs[0]]  # type: ignore[union-attr,list-item]


def _hard_sigmoid_of(h: Value | None) -> Value | None:
    n = _producer(h, "HardSigmoid")
    if n is None or abs(float(n.attrs.get("alpha", 0.2)) - 1 / 6) > SIXTH_TOL \
            or float(n.attrs.get("beta", 0.5)) != 0.5:
        return None
    return n.inputs[0]


def _hardswish_input(root: Node) -> tuple[Value, list[Value]] | None:
    """``(x, intermediates)`` when ``root`` computes ``x * relu6(x + 3) / 6`` in some form."""
    inner = _sixth(root.outputs[0])
    m = _producer(inner, "Mul")
    if m is not None:  # (x * relu6(x + 3)) / 6
        for a, r in ((0, 1), (1, 0)):
            if _relu6_shift(m.inputs[r]) is m.inputs[a] is not None:
                return m.inputs[a], [inner, *_relu6_values(m.inputs[r])]  # type: ignore
    if root.op == "Mul":  # x * (relu6(x + 3) / 6)  or  x * HardSigmoid(x)
        for a, h in ((0, 1), (1, 0)):
            x = root.inputs[a]
            if x is None:
                continue
            if _hard_sigmoid_of(root.inputs[h]) is x:
                return x, [root.inputs[h]]  # type: ignore[list-item]
            r = _sixth(root.inputs[h])
            if _relu6_shift(r) is x:
                return x, [root.inputs[h], *_relu6_values(r)]  # type: ignore
    return None


def activation(graph: Graph, node: Node, fuse_hardswish: bool, key: MetaKey) -> Rewrite | None:
    """HardSwish fusion (``fuse_hardswish``) at its last Mul/Div; Swish marking at its Mul."""
    if node.op == "Mul":
        for a, s in ((0, 1), (1, 0)):
            sig = _producer(node.inputs[s], "Sigmoid")
            if sig is not None and sig.inputs[0] is node.inputs[a]:
                if a == 0 and node.meta.get(key) == "Swish":
                    return None
                return lambda: _mark_swish(node, a, key)
    if not fuse_hardswish:
        return None
    found = _hardswish_input(node)
    if found is None:
        return None
    x, mids = found
    if graph.opset < 14:
        raise Decline("hardswish_opset", f"HardSwish needs opset 14; the graph is {graph.opset}")
    if not all(_private(v, graph) for v in mids):
        raise Decline("hardswish_shared", "an intermediate of its x*relu6(x+3)/6 is also used "
                                          "elsewhere")
    out = node.outputs[0]

    def apply() -> str:
        hs = Node("HardSwish", [x], [out.type], name=f"{node.name}_hardswish")
        graph.insert_before(node, hs)
        replace(graph, out, hs.output)
        graph.remove(node, drop_dead_consts=True)
        return "fused_hardswish"
    return apply


def _mark_swish(node: Node, a: int, key: MetaKey) -> str:
    if a == 1:  # Mul(Sigmoid(x), x) -> Mul(x, Sigmoid(x))
        x, s = node.inputs[1], node.inputs[0]
        node.replace_input(0, x)
        node.replace_input(1, s)
    node.meta[key] = "Swish"
    return "marked_swish"


# ---- 8. Transpose pairs -----------------------------------------------------------------------
def _perm(n: Node) -> list[int] | None:
    if "perm" in n.attrs:
        return [int(p) for p in n.attrs["perm"]]
    r = n.outputs[0].type.rank
    return None if r is None else list(reversed(range(r)))


def transpose_pair(graph: Graph, node: Node) -> Rewrite | None:
    """``Transpose(Transpose(x, p), q) = Transpose(x, [p[q[i]]])``; dropped when the identity."""
    t1 = _producer(node.inputs[0], "Transpose")
    if t1 is None:
        return None
    p, q = _perm(t1), _perm(node)
    if p is None or q is None or len(p) != len(q):
        raise Decline("transpose_rank", "the ranks of the two Transposes are not known")
    comp = [p[i] for i in q]
    src, mid, out = t1.inputs[0], t1.outputs[0], node.outputs[0]
    if comp != list(range(len(comp))):
        if not _private(mid, graph):
            return None  # merging would not remove a node

        def merge() -> str:
            node.replace_input(0, src)
            node.attrs["perm"] = tuple(comp)
            graph.remove(t1)
            return "merged_transposes"
        return merge
    if out in graph.outputs and (src.producer is None or src in graph.outputs):  # type: ignore
        raise Decline("public_transpose", "it connects a graph input to a graph output")

    def cancel() -> str:
        graph.replace_value(out, src)  # type: ignore[arg-type]
        graph.remove(node)
        if not mid.uses() and mid not in graph.outputs:
            graph.remove(t1)
        return "cancelled_transposes"
    return cancel
