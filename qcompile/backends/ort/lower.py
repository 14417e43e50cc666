"""Lowering: qcompile Graph -> ONNX ModelProto, through the per-op table in ``rules.py``.

Every node is lowered by its rule (a default-domain op passes through as it is; qcompile ops
have explicit rules). Unsupported ops are reported all at once before anything is built. A rule
that emits an op newer than the graph's opset asks for an upgrade (``ctx.require_opset``); the
built model is then converted up (:func:`qcompile.backends.ort.opset.upgrade_opset`). The
result passes ``onnx.checker``; ``save_model`` writes atomically (temp file, then rename).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from qcompile.backends.ort.opset import restore_source_opset, upgrade_opset
from qcompile.backends.ort.proto import to_tensor, value_info
from qcompile.backends.ort.rules import LOWER, LoweringContext, refuse_float_formats
from qcompile.errors import QCompileError
from qcompile.files import atomic_write
from qcompile.frontend.proto import skeleton
from qcompile.ir import DType, Graph, Value


def lower(graph: Graph, *, check: bool = True) -> onnx.ModelProto:
    """Build a ModelProto from ``graph``; raise UnsupportedOpError listing every unlowerable op."""
    refuse_float_formats(graph)
    LOWER.check(graph.nodes)
    ctx = LoweringContext(graph)
    for node in graph.nodes:
        LOWER.lookup(node)(node, ctx)
    g = helper.make_graph(
        ctx.nodes,
        graph.name,
        [value_info(v) for v in graph.inputs],
        [value_info(v) for v in graph.outputs],
        initializer=[_tensor(v) for v in graph.initializers.values()
                     if v.name not in ctx.skip_initializers] + ctx.initializers,
        doc_string=graph.doc_string or None,
        value_info=[value_info(v) for n in graph.nodes for v in n.outputs
                    if v.type.dtype != DType.UNDEFINED and v not in graph.outputs
                    and v.uses()],
    )
    opsets = dict(graph.opsets)
    opsets.update(ctx.extra_opsets)
    opsets.pop(_QC, None)  # qcompile-domain ops never survive lowering
    model = helper.make_model(
        g, opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(opsets.items())],
        functions=[_function(b) for b in graph.functions],
    )
    props = graph.model_props
    model.ir_version = _ir_version(props.get("ir_version"), opsets.get("", 17))
    model.producer_name = "qcompile"
    model.producer_version = _version()
    if props.get("doc_string"):
        model.doc_string = props["doc_string"]
    if props.get("domain"):
        model.domain = props["domain"]
    if props.get("model_version", "0") not in ("", "0"):
        model.model_version = int(props["model_version"])
    helper.set_model_props(model, dict(graph.metadata))
    if ctx.upgrade is not None:
        model = upgrade_opset(model, *ctx.upgrade)
    model = restore_source_opset(model, graph)
    if check:
        try:
            onnx.checker.check_model(skeleton(model))  # structure only: weights need no check
        except onnx.checker.ValidationError as e:
            raise QCompileError(f"lowering produced an invalid model: {str(e).splitlines()[0]}") from None
    return model


_QC = "qcompile"


def _version() -> str:
    from qcompile._version import __version__

    return __version__


def _ir_version(orig: str | None, opset: int) -> int:
    # Keep the source's IR version when it is new enough for the opset; ORT reads IR <= 10.
    need = 8 if opset <= 18 else (9 if opset <= 20 else 10)
    try:
        return max(int(orig or 0), need)
    except ValueError:
        return need


def _function(data: bytes) -> onnx.FunctionProto:
    f = onnx.FunctionProto()
    f.ParseFromString(data)
    return f


def _tensor(v: Value) -> onnx.TensorProto:
    assert v.const is not None
    return to_tensor(v.const, v.name, v.type.dtype)


def save_model(model: onnx.ModelProto, path: str | os.PathLike, *, check: bool = True) -> Path:
    """Write ``model`` atomically (:func:`qcompile.files.atomic_write`: a temp file in the
    target folder, then rename over ``path``).

    ``check``: before the rename, the written file must pass ``onnx.checker`` with strict shape
    inference and load into an ONNX Runtime session (and run once on zeros when its input
    shapes are static but for the batch), so a successful save means a file ORT can run."""
    return atomic_write(path, model.SerializeToString(), "output",
                        check=check_saved_model if check else None)


def check_saved_model(path: Path) -> None:
    """Raise a one-line QCompileError unless the ONNX file at ``path`` is usable (see
    :func:`save_model`)."""
    from qcompile.backends.ort.runtime import run, session

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:  # ValidationError, InferenceError
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise QCompileError(f"lowering produced a model that fails onnx.checker with strict "
                            f"shape inference, so it was not written: {first}") from None
    sess = session(path)
    feeds = {}
    for i in sess.get_inputs():
        dims = [d if isinstance(d, int) else (1 if k == 0 else None) for k, d in enumerate(i.shape)]
        kind = _ORT_TYPES.get(i.type)
        if kind is None or None in dims or np.prod(dims, dtype=np.int64) > _PROBE_ELEMENTS:
            return  # symbolic spatial dims or an unusual input: the session check is all we do
        feeds[i.name] = np.zeros(dims, kind)
    run(sess, feeds)


# ORT input type strings -> numpy, for the probe run; inputs beyond 16 M elements skip it.
_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
              "tensor(double)": np.float64, "tensor(uint8)": np.uint8, "tensor(int8)": np.int8,
              "tensor(int64)": np.int64, "tensor(int32)": np.int32}
_PROBE_ELEMENTS = 1 << 24
