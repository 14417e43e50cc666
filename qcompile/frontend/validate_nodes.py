"""Per-node structural rules that ONNX's shape inference does not enforce but ONNX Runtime (or
our MPFR engines) would fail on later, mid-calibration: checked here on the inferred shapes of
the weight-free skeleton, only where the dims are known integers (a symbolic dim is never
guessed).

Rules, per default-domain node (``k`` kernel side, ``d`` dilation, ``p`` pads, ``x`` input side):

* Conv / ConvTranspose: ``group >= 1``; Conv: ``C_in == W.shape[1] * group`` and
  ``group | W.shape[0]``; ConvTranspose: ``W.shape[0] == C_in`` and ``group | C_in``;
  ``kernel_shape == W.shape[2:]``; Conv with explicit pads: ``x + p_begin + p_end >= d (k - 1) + 1``.
* Conv / ConvTranspose / MaxPool / AveragePool: strides and dilations in ``1..MAX_WINDOW``,
  pads in ``0..MAX_WINDOW``, list lengths equal to the spatial rank.
* Gemm: the inner dims of A and B (after transA/transB) equal; MatMul (rank 2 both): same.
* BatchNormalization: scale, B, mean, var are 1-D with C entries.
* Conv / ConvTranspose / Gemm / MatMul / BatchNormalization / pooling: no zero-size operand.
"""

from __future__ import annotations

import onnx

from qcompile.errors import ModelError, shorten

MAX_WINDOW = 1 << 16
_WINDOWED = ("Conv", "ConvTranspose", "MaxPool", "AveragePool")
_ZERO_CHECKED = _WINDOWED + ("Gemm", "MatMul", "BatchNormalization", "GlobalAveragePool")


def _shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    out: dict[str, list[int | None]] = {}
    g = model.graph
    for vi in list(g.value_info) + list(g.input) + list(g.output):
        tt = vi.type.tensor_type
        if vi.type.HasField("tensor_type") and tt.HasField("shape"):
            # a negative dim_value (paddle's -1) is dynamic: never checked
            out[vi.name] = [d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else None
                            for d in tt.shape.dim]
    for t in g.initializer:
        out[t.name] = list(t.dims)
    return out


def _ints(node: onnx.NodeProto, name: str) -> list[int] | None:
    for a in node.attribute:
        if a.name == name:
            return list(a.ints) if a.type == onnx.AttributeProto.INTS else [int(a.i)]
    return None


def _int(node: onnx.NodeProto, name: str, default: int) -> int:
    for a in node.attribute:
        if a.name == name:
            return int(a.i)
    return default


def _str(node: onnx.NodeProto, name: str, default: str) -> str:
    for a in node.attribute:
        if a.name == name:
            return a.s.decode("utf-8", "replace")
    return default


def check_nodes(model: onnx.ModelProto, src: str) -> None:
    """Apply the module's rules to every default-domain node of ``model`` (shapes inferred)."""
    shapes = _shapes(model)
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        why = _rule(node, shapes)
        if why:
            raise ModelError(f"model: {src}: node {shorten(node.name or '(unnamed)')!r} "
                             f"({node.op_type}): {why}; fix the model (re-export it)")


def _rule(node: onnx.NodeProto, shapes: dict[str, list[int | None]]) -> str | None:
    op = node.op_type
    ins = [shapes.get(i) if i else None for i in node.input]
    if op in _ZERO_CHECKED:
        for i, s in zip(node.input, ins):
            if s is not None and any(d == 0 for d in s):
                return f"input {shorten(i)!r} is a zero-size tensor {s}"
    if op in _WINDOWED:
        why = _window(node, ins)
        if why:
            return why
    if op == "Gemm" and len(ins) >= 2 and ins[0] is not None and ins[1] is not None:
        a, b = ins[0], ins[1]
        if len(a) == 2 and len(b) == 2:
            ka = a[0] if _int(node, "transA", 0) else a[1]
            kb = b[1] if _int(node, "transB", 0) else b[0]
            if ka is not None and kb is not None and ka != kb:
                return f"the inner dims of A {a} and B {b} differ ({ka} != {kb})"
    if op == "MatMul" and len(ins) == 2 and ins[0] is not None and ins[1] is not None:
        a, b = ins
        if len(a) >= 1 and len(b) >= 2 and a[-1] is not None and b[-2] is not None \
                and a[-1] != b[-2]:
            return f"the inner dims of A {a} and B {b} differ ({a[-1]} != {b[-2]})"
    if op == "BatchNormalization" and len(ins) >= 5 and ins[0] is not None and len(ins[0]) >= 2:
        c = ins[0][1]
        for name, s in zip(("scale", "B", "mean", "var"), ins[1:5]):
            if s is not None and c is not None and (len(s) != 1 or s[0] not in (None, c)):
                return f"{name} has shape {s}, not [{c}] (one entry per channel)"
    return None


def _window(node: onnx.NodeProto, ins: list) -> str | None:
    op = node.op_type
    x = ins[0] if ins else None
    rank = len(x) - 2 if x is not None and len(x) >= 3 else None
    w = ins[1] if op in ("Conv", "ConvTranspose") and len(ins) > 1 else None
    if rank is None and w is not None and len(w) >= 3:
        rank = len(w) - 2
    kernel = _ints(node, "kernel_shape")
    if rank is None and kernel is not None:
        rank = len(kernel)
    for name in ("strides", "dilations"):
        v = _ints(node, name)
        if v is None:
            continue
        if any(s < 1 or s > MAX_WINDOW for s in v):
            return f"{name} {v} must each be in 1..{MAX_WINDOW}"
        if rank is not None and len(v) != rank:
            return f"{name} {v} has {len(v)} entries for {rank} spatial dims"
    pads = _ints(node, "pads")
    if pads is not None:
        if any(p < 0 or p > MAX_WINDOW for p in pads):
            return f"pads {pads} must each be in 0..{MAX_WINDOW}"
        if rank is not None and len(pads) != 2 * rank:
            return f"pads {pads} has {len(pads)} entries; {rank} spatial dims need {2 * rank}"
    if kernel is not None and any(k < 1 or k > MAX_WINDOW for k in kernel):
        return f"kernel_shape {kernel} must each be in 1..{MAX_WINDOW}"
    if op in ("Conv", "ConvTranspose"):
        group = _int(node, "group", 1)
        if group < 1:
            return f"group={group}; it must be >= 1"
        if w is not None and x is not None and len(w) >= 2 and len(x) >= 2:
            c_in = x[1]
            if op == "Conv":
                if c_in is not None and w[1] is not None and c_in != w[1] * group:
                    return (f"input has {c_in} channels but W {w} with group={group} expects "
                            f"{w[1] * group}")
                if w[0] is not None and w[0] % group:
                    return f"group={group} does not divide W's {w[0]} output channels"
            else:
                if c_in is not None and w[0] is not None and c_in != w[0]:
                    return f"input has {c_in} channels but W {w} expects {w[0]}"
                if c_in is not None and c_in % group:
                    return f"group={group} does not divide the {c_in} input channels"
        if w is not None and kernel is not None and len(w) >= 3 and list(w[2:]) != kernel \
                and None not in w[2:]:
            return f"kernel_shape {kernel} disagrees with W's spatial dims {list(w[2:])}"
        if kernel is None and w is not None and len(w) >= 3:
            kernel = list(w[2:])
    if op == "ConvTranspose" or x is None or kernel is None or rank is None or len(x) != rank + 2:
        return None
    if _str(node, "auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return None
    dil = _ints(node, "dilations") or [1] * rank
    pads = pads if pads is not None and _str(node, "auto_pad", "NOTSET") == "NOTSET" else [0] * (2 * rank)
    for i in range(min(rank, len(kernel), len(dil))):
        side = x[2 + i]
        if side is None:
            continue
        padded = side + pads[i] + pads[i + rank]
        span = dil[i] * (kernel[i] - 1) + 1
        if span > padded:
            return (f"the kernel spans {span} along spatial axis {i} but the padded input has "
                    f"only {padded}")
    return None
