"""Giving a lowered model back the opset its source had, where that is legal.

``lift`` converts opsets outside 11..21 with ``onnx.version_converter`` and records the source
opset in ``graph.model_props["source_opset"]``. After lowering at the converted opset ``t``:

* source ``s > t`` (e.g. 22 lifted at 21): the model is converted up to ``s`` with
  ``onnx.version_converter`` (upgrades are the direction its adapters cover); if that fails the
  model keeps ``t``.
* source ``s < t`` (e.g. 9 lifted at 13): the opset number is relabelled to ``s`` only when every
  default-domain node's op has the same definition at both opsets (equal ``since_version``), so
  the relabelled model means exactly the same. The converter has no downgrade adapters for the
  CNN ops (Relu 13 -> 12 already fails), and Conv, Gemm, Relu, Flatten, MaxPool all changed
  between 9 and 13, so a typical old CNN keeps ``t``; that is a legal, equivalent model.

:func:`upgrade_opset` is the other direction, for a lowering that emitted an op newer than the
graph's opset (per-channel DequantizeLinear needs 13): the whole model is converted with
``onnx.version_converter``, so every other op is rewritten to its definition at the new opset
(a relabelled number would leave e.g. Unsqueeze's ``axes`` attribute, invalid from 13). The
converter does not validate its input, so the DequantizeLinear written at the new definition
passes through its adapters unchanged; the result is checked.
"""

from __future__ import annotations

import onnx
from onnx import version_converter

from qcompile.errors import QCompileError
from qcompile.frontend.proto import SOURCE_OPSET, skeleton
from qcompile.ir import Graph

_DEFAULT = ("", "ai.onnx")


def restore_source_opset(model: onnx.ModelProto, graph: Graph) -> onnx.ModelProto:
    """``model`` at ``graph``'s source opset where legal (rules above), else ``model`` itself."""
    try:
        source = int(graph.model_props.get(SOURCE_OPSET, ""))
    except ValueError:
        return model
    entry = next((o for o in model.opset_import if o.domain in _DEFAULT), None)
    if entry is None or entry.version == source:
        return model
    if source > entry.version:
        try:
            up = version_converter.convert_version(model, source)
            onnx.checker.check_model(skeleton(up))
        except Exception:  # no adapter for some op: the lowered opset is legal too
            return model
        return up
    if all(_same_definition(n.op_type, source, entry.version)
           for n in _default_nodes(model.graph)):
        entry.version = source
    return model


def upgrade_opset(model: onnx.ModelProto, opset: int, why: str) -> onnx.ModelProto:
    """``model`` converted up to default-domain ``opset`` (needed for ``why``); one-line error
    naming the cause and the fix when onnx's converter cannot do it."""
    entry = next((o for o in model.opset_import if o.domain in _DEFAULT), None)
    if entry is None or entry.version >= opset:
        return model
    old = entry.version
    try:
        up = version_converter.convert_version(model, opset)
        onnx.checker.check_model(skeleton(up))
    except Exception as e:  # noqa: BLE001 - the converter raises bare RuntimeErrors
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise QCompileError(
            f"lowering: {why} needs opset {opset} and onnx.version_converter cannot convert "
            f"this opset-{old} model: {detail}; re-export the model at opset {opset} or use "
            "quantize{per_channel=false}") from None
    up.ir_version = max(up.ir_version, onnx.helper.find_min_ir_version_for(
        [onnx.helper.make_opsetid("", opset)]))
    return up


def _default_nodes(g: onnx.GraphProto):
    """Default-domain nodes, including those inside subgraphs (If/Loop/Scan bodies)."""
    for n in g.node:
        if n.domain in _DEFAULT:
            yield n
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _default_nodes(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for sub in a.graphs:
                    yield from _default_nodes(sub)


def _same_definition(op: str, old: int, new: int) -> bool:
    try:
        return onnx.defs.get_schema(op, old).since_version == \
            onnx.defs.get_schema(op, new).since_version
    except Exception:  # the op does not exist at ``old``
        return False
