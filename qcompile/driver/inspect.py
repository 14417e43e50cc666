"""Model statistics for ``qcompile inspect``: op counts, parameters, per-layer shapes and MACs.

MACs are counted per sample (symbolic dims, e.g. the batch N, taken as 1):

* Conv: ``Cout * prod(out_spatial) * (Cin / group) * prod(kernel)``
* ConvTranspose: ``Cin * prod(in_spatial) * (Cout / group) * prod(kernel)``
* Gemm: ``K * N`` per row of A; MatMul: ``prod(out) * K``

Only these multiply-accumulate ops count (the usual convention: a torchvision ResNet-18 at
224x224 is 1.82 GMACs).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from math import prod

import numpy as np

from qcompile.ir import Graph, Node


@dataclass
class Layer:
    name: str
    op: str
    input_shape: list
    output_shape: list
    params: int
    macs: int


def _dims(shape) -> list:
    return [] if shape is None else [d if isinstance(d, int) else 1 for d in shape]


def macs(node: Node) -> int:
    """Multiply-accumulates per sample of one node (0 for ops that are not MAC ops)."""
    if not node.inputs or node.inputs[0] is None:
        return 0
    x = _dims(node.inputs[0].type.shape)
    y = _dims(node.outputs[0].type.shape)
    w = node.inputs[1] if len(node.inputs) > 1 else None
    ws = _dims(w.type.shape) if w is not None else []
    if not x or not y or not ws:
        return 0
    if node.op == "Conv":
        return y[1] * prod(y[2:]) * ws[1] * prod(ws[2:])
    if node.op == "ConvTranspose":
        return x[1] * prod(x[2:]) * ws[1] * prod(ws[2:])
    if node.op == "Gemm":
        k = x[0] if node.attrs.get("transA", 0) else x[-1]
        n = ws[0] if node.attrs.get("transB", 0) else ws[-1]
        rows = x[-1] if node.attrs.get("transA", 0) else x[0]
        return k * n * rows
    if node.op == "MatMul":
        return prod(y) * x[-1]
    return 0


def inspect_graph(graph: Graph) -> dict:
    """A JSON-ready report: op counts, parameter count, MAC layers, totals."""
    ops = Counter(n.qualified_op for n in graph.nodes)
    float_params = sum(int(v.const.size) for v in graph.initializers.values()
                       if v.const is not None and np.issubdtype(v.const.dtype, np.floating))
    layers = []
    for n in graph.nodes:
        m = macs(n) if n.domain == "" else 0
        if m or n.op in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            params = sum(int(v.const.size) for v in n.inputs[1:] if v is not None and v.is_const)
            layers.append(Layer(n.name, n.op, list(n.inputs[0].type.shape or []),
                                list(n.outputs[0].type.shape or []), params, m))
    total = sum(layer.macs for layer in layers)
    return {
        "name": graph.name,
        "opset": graph.opset,
        "nodes": len(graph.nodes),
        "op_counts": dict(sorted(ops.items())),
        "parameters": float_params,
        "inputs": [{"name": v.name, "shape": list(v.type.shape or []), "dtype": v.type.dtype.name}
                   for v in graph.inputs],
        "outputs": [{"name": v.name, "shape": list(v.type.shape or []), "dtype": v.type.dtype.name}
                    for v in graph.outputs],
        "layers": [asdict(layer) for layer in layers],
        "total_macs": total,
        "gmacs": total / 1e9,
    }


def inspect_model(model, log=lambda m: None) -> dict:
    """:func:`inspect_graph` of the lifted ``model`` (a path or ModelProto)."""
    from qcompile.frontend import lift

    graph = lift(model, warn=log)
    report = inspect_graph(graph)
    from qcompile.driver.quant_scheme import quant_scheme

    if quant_scheme(graph) is not None:  # quantised: the scheme and ORT's fused kernels (#13)
        from qcompile.backends.ort.cpu import detect_cpu
        from qcompile.backends.ort.measure import optimized_op_counts

        try:
            kernels = optimized_op_counts(model)
        except Exception as e:  # noqa: BLE001 - the scheme stands without ORT's view
            log(f"inspect: ONNX Runtime cannot load the model ({str(e).splitlines()[0]})")
            kernels = None
        report["quantization"] = quant_scheme(graph, kernels=kernels, cpu=detect_cpu())
    return report
