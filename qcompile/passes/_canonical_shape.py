"""Constant and shape-subgraph evaluation for ``canonicalize`` (numpy, exact ONNX semantics).

A *shape chain* is a subgraph of Shape / Gather / Unsqueeze / Squeeze / Concat / Slice / Cast /
ConstantOfShape / Reshape / Add / Sub / Mul nodes whose leaves are constants or ``Shape(x)`` of a
value with a known rank. It is evaluated with the folders of ``cleanup`` (plus Gather, Cast and
ConstantOfShape here), with the batch dimension of every ``Shape`` leaf replaced by a sample
value ``b``. Only dimension 0 may be symbolic, and all leaves (and the Reshape's data) must
share its symbol (an unnamed dimension 0 counts only when it is the one value read): one free
variable. Any other symbolic dimension declines.

Reshape fold. For each sample ``b in SAMPLES`` the target is evaluated and resolved against the
data shape ``(b, d1, ..., dk)`` with Reshape's rules (0 copies the input dimension unless
``allowzero``; one -1 takes ``prod(in) / prod(rest)``), giving ``out(b)``. The element ops allowed
are polynomial in ``b`` (copies, products, sums; integer Div is refused), so a dimension equal at
the three samples does not depend on ``b`` for polynomials of degree <= 2. If no dimension
varies the target is the static ``out``. If exactly one dimension ``j`` varies, the target is
``out`` with ``-1`` at ``j``: Reshape then computes ``prod(in(N)) / prod(static) = out_j(N)``, the
same as the original for every batch ``N`` for which the original is valid. Otherwise it declines.
"""

from __future__ import annotations

import numpy as np

from qcompile.ir import DType, Node, Value
from qcompile.passes.cleanup import FOLD_ATTRS, FOLDERS

SAMPLES = (2, 3, 5)  # batch values substituted for the symbolic dimension 0
_SHAPE_OPS = frozenset({"Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Slice", "Cast",
                        "ConstantOfShape", "Reshape", "Identity", "Add", "Sub", "Mul"})
_MAX_NODES = 64  # a shape chain larger than this is not an exporter's shape arithmetic


class Decline(Exception):
    """A matched pattern that cannot be rewritten exactly: (stat key, human reason)."""

    def __init__(self, key: str, detail: str) -> None:
        super().__init__(detail)
        self.key, self.detail = key, detail


def _gather(data: np.ndarray, indices: np.ndarray, axis: int = 0) -> np.ndarray:
    idx = np.asarray(indices)
    idx = np.where(idx < 0, idx + data.shape[axis], idx)  # ONNX allows negative indices
    return np.take(data, idx, axis=axis)


def _cast(x: np.ndarray, to: int) -> np.ndarray:
    return x.astype(DType(to).to_numpy())


def _constant_of_shape(shape: np.ndarray, value: np.ndarray | None = None) -> np.ndarray:
    v = np.zeros(1, np.float32) if value is None else np.asarray(value).reshape(-1)
    return np.full(tuple(int(d) for d in shape), v[0], dtype=v.dtype)


_EXTRA = {"Gather": (_gather, ("axis",)), "Cast": (_cast, ("to",)),
          "ConstantOfShape": (_constant_of_shape, ("value",)),
          "Identity": (lambda x: x, ())}


class ShapeEvaluator:
    """Evaluates a value's shape chain at batch ``b``; raises :class:`Decline` when it cannot."""

    def __init__(self, allow_shape: bool = True) -> None:
        self.allow_shape = allow_shape
        self.batch_symbols: set[str] = set()
        self.unnamed: set[Value] = set()
        self._seen: set[Node] = set()
        self._memo: dict[tuple[Value, int], np.ndarray] = {}  # a DAG is evaluated once per b

    def shape_of(self, x: Value, b: int) -> tuple[int, ...]:
        """``x``'s shape with dimension 0 set to ``b`` when it is symbolic."""
        shape = x.type.shape
        if shape is None:
            raise Decline("unknown_shape", f"the rank of %{x.name} is unknown")
        dims = []
        for i, d in enumerate(shape):
            if isinstance(d, int):
                dims.append(d)
            elif i == 0 and isinstance(d, str):
                self.batch_symbols.add(d)
                dims.append(b)
            elif i == 0 and d is None:  # unnamed: a free variable only if it is the only one
                self.unnamed.add(x)
                dims.append(b)
            else:
                what = "unknown" if d is None else f"symbolic ({d})"
                raise Decline("dynamic_dims", f"dimension {i} of %{x.name} is {what}; only the "
                                              "batch dimension 0 may vary")
        if len(self.batch_symbols) + len(self.unnamed) > 1:
            names = sorted(self.batch_symbols) + [f"dim 0 of %{v.name}" for v in self.unnamed]
            raise Decline("dynamic_dims", "the shape chain reads several independent leading "
                                          f"dims ({', '.join(names)})")
        return tuple(dims)

    def value(self, v: Value | None, b: int, depth: int = 0) -> np.ndarray | None:
        """The array ``v`` holds at batch ``b``; None for an omitted optional input."""
        if v is None:
            return None
        if v.is_const:
            return np.asarray(v.const)
        if (v, b) not in self._memo:
            self._memo[v, b] = self._eval(v, b, depth)
        return self._memo[v, b]

    def _eval(self, v: Value, b: int, depth: int) -> np.ndarray:
        node = v.producer
        if node is None:
            raise Decline("not_constant", f"%{v.name} is a graph input")
        self._seen.add(node)
        if node.domain != "" or node.op not in _SHAPE_OPS or len(node.outputs) != 1:
            raise Decline("not_constant", f"%{v.name} comes from {node.qualified_op} "
                                          f"{node.name!r}, not from shape arithmetic")
        if depth > _MAX_NODES or len(self._seen) > _MAX_NODES:
            raise Decline("not_constant", f"the subgraph computing %{v.name} is too large")
        if node.op == "Shape":
            if not self.allow_shape:
                raise Decline("not_constant", f"%{v.name} depends on a tensor's shape")
            shape = np.array(self.shape_of(node.inputs[0], b), np.int64)  # type: ignore[arg-type]
            start, end = node.attrs.get("start", 0), node.attrs.get("end")
            return shape[start:end]
        args = [self.value(u, b, depth + 1) for u in node.inputs]
        if node.op in _EXTRA:
            fn, keys = _EXTRA[node.op]
            attrs = {k: node.attrs[k] for k in keys if k in node.attrs}
        else:
            fn = FOLDERS[node.op]
            attrs = {k: val for k, val in node.attrs.items() if k in FOLD_ATTRS.get(node.op, ())}
            if node.op in ("Squeeze", "Unsqueeze") and "axes" in node.attrs:  # opset < 13 form
                attrs["axes"] = np.array(node.attrs["axes"])
        while args and args[-1] is None:
            args.pop()
        return np.asarray(fn(*args, **attrs))


def const_value(v: Value | None) -> np.ndarray | None:
    """The value of ``v`` if it is a constant or a constant-only chain of shape ops, else None."""
    if v is None:
        return None
    if v.is_const:
        return np.asarray(v.const)
    try:
        return ShapeEvaluator(allow_shape=False).value(v, SAMPLES[0])
    except Decline:
        return None


def _resolve(target: np.ndarray, in_shape: tuple[int, ...], allowzero: int) -> list[int]:
    t = [int(d) for d in np.asarray(target).reshape(-1)]
    out = [in_shape[i] if d == 0 and not allowzero and i < len(in_shape) else d
           for i, d in enumerate(t)]
    total = int(np.prod(in_shape))
    if out.count(-1) > 1 or any(d < -1 for d in out):
        raise Decline("invalid_target", f"the target {t} is not a valid Reshape shape")
    if -1 in out:
        known = int(np.prod([d for d in out if d != -1]))
        if known == 0 or total % known:
            raise Decline("invalid_target", f"the target {t} does not fit input {in_shape}")
        out[out.index(-1)] = total // known
    elif int(np.prod(out)) != total:
        raise Decline("invalid_target", f"the target {t} does not fit input {in_shape}")
    return out


def fold_reshape_target(reshape: Node) -> tuple[list[int], int | None, str | None]:
    """``(target, batch_pos, symbol)``: a batch-agnostic constant target equal to ``reshape``'s.

    ``batch_pos`` is the one dimension that varies with the batch (written as -1), or None when
    the result is static; ``symbol`` is the batch's name when that dimension is the batch itself.
    """
    data, shape_in = reshape.inputs[0], reshape.inputs[1]
    ev = ShapeEvaluator()
    allowzero = int(reshape.attrs.get("allowzero", 0))
    outs = []
    for b in SAMPLES:
        target = ev.value(shape_in, b)
        outs.append(_resolve(target, ev.shape_of(data, b), allowzero))  # type: ignore[arg-type]
    if len({len(o) for o in outs}) != 1:
        raise Decline("rank_varies", "the target's rank depends on the batch size")
    varying = [j for j in range(len(outs[0])) if len({o[j] for o in outs}) > 1]
    if len(varying) > 1:
        raise Decline("several_dynamic", f"dimensions {varying} of the result all depend on "
                                         "the batch size")
    result = list(outs[0])
    if any(d == 0 for d in result):
        raise Decline("zero_dim", f"the result {result} has a zero-sized dimension")
    if not varying:
        if ev.batch_symbols or ev.unnamed:
            raise Decline("invalid_target", "the result does not follow the symbolic batch")
        return result, None, None
    j = varying[0]
    result[j] = -1
    is_batch = all(o[j] == b for o, b in zip(outs, SAMPLES))
    return result, j, (next(iter(ev.batch_symbols)) if is_batch and ev.batch_symbols else None)
