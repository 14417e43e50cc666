"""Lowering rule for ``qcompile.QDQ(x, scale, zero_point){bits, signed, axis}``.

* ``x`` an activation: ``QuantizeLinear(x, s, z) -> DequantizeLinear(., s, z)``. ONNX Runtime's
  QDQ transformers then fuse ``DQ -> Conv -> [Relu|Clip] -> Q`` into QLinearConv,
  ``DQ, DQ -> Add -> Q`` into QLinearAdd, and so on.
* ``x`` a constant (weights, bias): quantised offline with :mod:`qcompile.numerics.quant` into an
  integer initializer ``x_quantized`` followed by ``DequantizeLinear`` only; the float constant
  is dropped from the model when nothing else uses it. int32 bias likewise.

``axis`` (per-channel) becomes the ``axis`` attribute, which DequantizeLinear has from opset 13:
a graph at opset 11/12 with a per-channel QDQ is lowered and then converted to opset 13 with
``onnx.version_converter`` (Unsqueeze/Squeeze/Split axes become inputs and so on; relabelling
the number alone would give an invalid or different model). 2-bit (ternary) weights are stored
as INT4 codes in ``[-1, 1]`` (ONNX has no 2-bit type; the codes are exact). 16-bit and 4-bit
types need QuantizeLinear/DequantizeLinear from opset 21: from opset 17 the number is relabelled
to 21 (the CNN ops qcompile emits are unchanged between 17 and 21), below 17 the model is
converted.
"""

from __future__ import annotations

import numpy as np
from onnx import helper

from qcompile.backends.ort.proto import to_tensor
from qcompile.backends.ort.rules import LOWER, LoweringContext
from qcompile.ir import QCOMPILE_DOMAIN, DType, Node, is_op
from qcompile.numerics import quant

_DTYPE = {(2, True): DType.INT4, (4, True): DType.INT4, (4, False): DType.UINT4,
          (8, True): DType.INT8,
          (8, False): DType.UINT8, (16, True): DType.INT16, (16, False): DType.UINT16,
          (32, True): DType.INT32}


def qtype_of(node: Node) -> quant.QType:
    return quant.QType(int(node.attrs["bits"]), bool(node.attrs["signed"]))


@LOWER.register("QDQ", QCOMPILE_DOMAIN)
def lower_qdq(node: Node, ctx: LoweringContext) -> None:
    x, s, z = node.inputs
    assert x is not None and s is not None and z is not None
    qt = qtype_of(node)
    dtype = _DTYPE[(qt.bits, qt.signed)]
    axis = node.attrs.get("axis")
    kw = {} if axis is None else {"axis": int(axis)}
    if qt.bits == 2 and x.const is None:
        raise ValueError(f"QDQ {node.name!r}: 2-bit activations have no ONNX type (2-bit "
                         "weights are stored as int4 codes in [-1, 1])")
    if qt.bits in (2, 4, 16) and ctx.graph.opset < 21:
        if ctx.graph.opset >= 17:
            ctx.extra_opsets[""] = 21
        else:
            ctx.require_opset(21, f"{qt.bits}-bit QuantizeLinear/DequantizeLinear")
    if axis is not None:
        ctx.require_opset(13, "per-channel DequantizeLinear (its axis attribute)")
    if s.const is None or z.const is None:
        raise ValueError(f"QDQ {node.name!r}: scale and zero point must be constants")
    scale = np.asarray(s.const, np.float32)
    zp = np.asarray(z.const).astype(qt.storage)
    scale_name, zp_name = s.name, z.name
    if qt.bits <= 4:  # the IR stores 4-bit zero points widened to int8: emit them as (u)int4
        ctx.skip_initializers.add(z.name)
        if all(t.name != zp_name for t in ctx.initializers):
            ctx.initializers.append(to_tensor(zp, zp_name, dtype))
    out = node.output.name
    if x.const is not None:
        q = quant.quantize(x.const, scale, zp, qt, axis)
        qname = f"{node.output.name}_quantized"
        ctx.initializers.append(to_tensor(q, qname, dtype))
        ctx.nodes.append(helper.make_node("DequantizeLinear", [qname, scale_name, zp_name], [out],
                                          name=f"{node.name}_dq", **kw))
        if all(is_op(u.node, "QDQ") for u in x.uses()) \
                and x not in ctx.graph.outputs:
            ctx.skip_initializers.add(x.name)
        return
    qname = f"{out}_q"
    ctx.nodes.append(helper.make_node("QuantizeLinear", [x.name, scale_name, zp_name], [qname],
                                      name=f"{node.name}_q", **kw))
    ctx.nodes.append(helper.make_node("DequantizeLinear", [qname, scale_name, zp_name], [out],
                                      name=f"{node.name}_dq", **kw))
