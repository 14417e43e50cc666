"""The op vocabulary: which ops qcompile understands, with arity and required attributes.

Ops not listed here are *opaque*: lifted, carried through passes untouched and lowered as they
came. ``qcompile.QDQ(x, scale, zero_point){bits, signed, axis}`` is our own quantise-dequantise
op: ``y = (clamp(round(x / scale) + zp, qmin, qmax) - zp) * scale`` with the rounding and range
defined in ``qcompile.numerics``. ``qcompile.FQ(x[, scale]){format, rounding, saturate, axis}``
rounds a tensor into a float or posit format: ``y = round_F(x / scale) * scale`` (``format`` is a
spec string such as ``e4m3``, ``bf16``, ``posit8_1`` or ``p=..,emin=..,emax=..``; maths and exact
semantics in ``qcompile.numerics.fq``). Only the MPFR backend runs FQ; ORT refuses it.
"""

from __future__ import annotations

from dataclasses import dataclass

from qcompile.ir.core import DEFAULT_DOMAIN, QCOMPILE_DOMAIN, Node

INF = 1 << 30


@dataclass(frozen=True)
class OpSchema:
    min_inputs: int
    max_inputs: int
    min_outputs: int = 1
    max_outputs: int = 1
    required_attrs: tuple[str, ...] = ()


_S = OpSchema
ONNX_OPS: dict[str, OpSchema] = {
    "Conv": _S(2, 3),
    "ConvTranspose": _S(2, 3),
    "BatchNormalization": _S(5, 5, 1, 3),
    "InstanceNormalization": _S(3, 3),
    "Relu": _S(1, 1),
    "LeakyRelu": _S(1, 1),
    "Clip": _S(1, 3),
    "Sigmoid": _S(1, 1),
    "HardSwish": _S(1, 1),
    "Tanh": _S(1, 1),
    "Add": _S(2, 2),
    "Sub": _S(2, 2),
    "Mul": _S(2, 2),
    "Div": _S(2, 2),
    "MaxPool": _S(1, 1, 1, 2, ("kernel_shape",)),
    "AveragePool": _S(1, 1, 1, 1, ("kernel_shape",)),
    "GlobalAveragePool": _S(1, 1),
    "Flatten": _S(1, 1),
    "Reshape": _S(2, 2),
    "Gemm": _S(2, 3),
    "MatMul": _S(2, 2),
    "Slice": _S(3, 5),
    "Pad": _S(1, 4),
    "Concat": _S(1, INF, 1, 1, ("axis",)),
    "Identity": _S(1, 1),
    "Constant": _S(0, 0),
    "Softmax": _S(1, 1),
    "Dropout": _S(1, 3, 1, 2),
    "QuantizeLinear": _S(2, 3),
    "DequantizeLinear": _S(2, 3),
}

QCOMPILE_OPS: dict[str, OpSchema] = {
    "QDQ": _S(3, 3, 1, 1, ("bits", "signed")),
    "FQ": _S(1, 2, 1, 1, ("format",)),
}


def schema(node: Node) -> OpSchema | None:
    """The schema of a known op, or None for an opaque one."""
    if node.domain in (DEFAULT_DOMAIN, "ai.onnx"):
        return ONNX_OPS.get(node.op)
    if node.domain == QCOMPILE_DOMAIN:
        return QCOMPILE_OPS.get(node.op)
    return None


def is_op(node: Node | None, *ops: str, domain: str = QCOMPILE_DOMAIN) -> bool:
    """``node`` is one of ``ops`` in ``domain`` (default: ours), e.g. ``is_op(n, "QDQ")``,
    ``is_op(n, "QDQ", "FQ")``, ``is_op(n, "Conv", domain=DEFAULT_DOMAIN)``."""
    return node is not None and node.domain == domain and node.op in ops


def is_known(node: Node) -> bool:
    return schema(node) is not None
