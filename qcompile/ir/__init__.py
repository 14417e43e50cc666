"""qcompile IR facade: everything outside ``qcompile.ir`` imports from here."""

from qcompile.ir.core import (
    DEFAULT_DOMAIN,
    QCOMPILE_DOMAIN,
    Graph,
    IRError,
    Node,
    TensorType,
    Use,
    Value,
)
from qcompile.ir.dtypes import DType
from qcompile.ir.meta import RANGE, MetaKey, Range
from qcompile.ir.ops import ONNX_OPS, QCOMPILE_OPS, OpSchema, is_known, is_op, schema
from qcompile.ir.printer import format_graph
from qcompile.ir.traversal import live_nodes, single_consumer, to_networkx
from qcompile.ir.verify import VerifyError, verify

__all__ = [
    "is_op",
    "DEFAULT_DOMAIN",
    "QCOMPILE_DOMAIN",
    "DType",
    "Graph",
    "IRError",
    "MetaKey",
    "Node",
    "ONNX_OPS",
    "OpSchema",
    "QCOMPILE_OPS",
    "RANGE",
    "Range",
    "TensorType",
    "Use",
    "Value",
    "VerifyError",
    "format_graph",
    "is_known",
    "live_nodes",
    "schema",
    "single_consumer",
    "to_networkx",
    "verify",
]
