"""The quantisation scheme of an already quantised model (``qcompile inspect``, issue 13).

Per MAC layer (QDQ Conv/Gemm/MatMul on DequantizeLinear weights, QOperator QLinearConv /
QLinearMatMul / QGemm, dynamic ConvInteger / MatMulInteger): the form (qdq, qoperator,
dynamic), weight and activation types, per-tensor or per-channel weights, symmetric weights
(every weight zero point 0, or 128 for uint8) and ``reduce_range``: int8 weight codes all in
[-64, 64] (7 bits; ORT writes symmetric reduce_range as +-64: 2 * 255 * 64 < 2^15), the remedy for ``vpmaddubsw`` int16 pair saturation on AVX2 without VNNI.
The warning: uint8 activations x int8 weights without reduce_range on such a CPU.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from qcompile.ir import Graph, Node

_QOP = {"QLinearConv": (3, 5, 0), "QLinearMatMul": (3, 5, 0), "QGemm": (3, 5, 0),
        "ConvInteger": (1, 3, 0), "MatMulInteger": (1, 3, 0)}  # weight, weight zp, act input


def _dq_params(v):
    n = v.producer if v is not None else None
    if n is None or n.op != "DequantizeLinear" or not n.inputs[0].is_const:
        return None
    z = n.inputs[2] if len(n.inputs) > 2 else None
    return n.inputs[0].const, n.inputs[1].const, None if z is None else z.const


def _act_type(v) -> str | None:
    n = v.producer if v is not None else None
    if n is not None and n.op == "DequantizeLinear":
        return n.inputs[0].type.dtype.name.lower()
    return None if v is None else v.type.dtype.name.lower()


def _layer(n: Node) -> dict | None:
    if n.op in ("Conv", "Gemm", "MatMul") and len(n.inputs) > 1:
        p = _dq_params(n.inputs[1])
        if p is None:
            return None
        w, s, z = p
        form, act = "qdq", _act_type(n.inputs[0])
    elif n.op in _QOP:
        wi, zi, ai = _QOP[n.op]
        if not n.inputs[wi].is_const:
            return None
        w = n.inputs[wi].const
        s = n.inputs[wi + 1].const if n.op not in ("ConvInteger", "MatMulInteger") else None
        zv = n.inputs[zi] if len(n.inputs) > zi else None
        z = None if zv is None else zv.const
        form = "dynamic" if n.op in ("ConvInteger", "MatMulInteger") else "qoperator"
        azp = n.inputs[ai + 2] if form == "qoperator" else (n.inputs[2] if len(n.inputs) > 2
                                                              else None)
        act = str(azp.const.dtype) if azp is not None and azp.is_const else \
            n.inputs[ai].type.dtype.name.lower()
    else:
        return None
    w = np.asarray(w)
    zarr = np.zeros(1) if z is None else np.asarray(z).reshape(-1)
    signed = np.issubdtype(w.dtype, np.signedinteger)
    per_channel = (s is not None and np.asarray(s).size > 1) or zarr.size > 1
    sym = bool(np.all(zarr == (0 if signed else 128)))
    rr = bool(signed and w.size and w.min() >= -64 and w.max() <= 64)
    return {"name": n.name, "op": n.op, "form": form, "weights": str(w.dtype),
            "activations": act, "granularity": "per-channel" if per_channel else "per-tensor",
            "symmetric": sym, "reduce_range": rr}


def quant_scheme(graph: Graph, *, kernels: Counter | None = None, cpu: str | None = None
                 ) -> dict | None:
    """The scheme report, or None when ``graph`` is not quantised."""
    layers = [la for la in (_layer(n) for n in graph.nodes) if la is not None]
    dyn = any(n.op == "DynamicQuantizeLinear" for n in graph.nodes)
    if not layers and not dyn:
        return None
    from qcompile.backends.ort.cpu import pair_saturates

    warnings = []
    sat = sum(pair_saturates(cpu or "", la["activations"], la["weights"], la["reduce_range"])
              for la in layers)
    if sat:
        warnings.append(f"{sat} U8S8 layers without "
                        "reduce_range on an AVX2 CPU without VNNI: vpmaddubsw sums u8 x s8 "
                        "products in int16 pairs and can saturate; re-quantise with "
                        "-p dequantize,...,quantize{reduce_range=true} or use S8S8")
    forms = Counter(la["form"] for la in layers)
    return {"forms": dict(forms), "layers": layers, "cpu": cpu,
            "ort_kernels": dict(sorted((kernels or {}).items())), "warnings": warnings}
