"""Models quantised by ONNX Runtime itself (``onnxruntime.quantization``, the peer tool), for the
issue-13 tests and ``bench_verify_peer``: used only to produce inputs, never as a building block
(it lives outside ``qcompile/``, where only the ORT backend may import onnxruntime)."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import onnx


class _Reader:
    def __init__(self, name: str, shape: tuple[int, ...], n: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self._it = iter([{name: rng.standard_normal(shape).astype(np.float32)}
                         for _ in range(n)])

    def get_next(self):
        return next(self._it, None)


def ort_quantized(model: onnx.ModelProto, *, fmt: str = "QDQ", per_channel: bool = False,
                  activations: str = "uint8", reduce_range: bool = False,
                  dynamic: bool = False, calib=None, seed: int = 0) -> onnx.ModelProto:
    """``model`` quantised by onnxruntime.quantization (``quantize_static`` with ``fmt`` QDQ or
    QOperator, int8 weights, uint8/int8 activations; or ``quantize_dynamic``).  ``calib``: a
    list of input arrays (default four random batches of two)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    inp = model.graph.input[0]
    dims = [d.dim_value or 2 for d in inp.type.tensor_type.shape.dim]
    with tempfile.TemporaryDirectory(prefix="qcompile-ortq-") as d:
        src, dst = os.path.join(d, "f.onnx"), os.path.join(d, "q.onnx")
        onnx.save(model, src)
        if dynamic:
            quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=per_channel,
                             reduce_range=reduce_range)
        else:
            reader = _Reader(inp.name, tuple(dims), 4, seed) if calib is None else None

            class _List(CalibrationDataReader):
                def __init__(self):
                    self._it = iter([{inp.name: np.asarray(c, np.float32)} for c in calib])

                def get_next(self):
                    return next(self._it, None)

            quantize_static(src, dst, reader if calib is None else _List(),
                            quant_format=getattr(QuantFormat, fmt), per_channel=per_channel,
                            activation_type=QuantType.QUInt8 if activations == "uint8"
                            else QuantType.QInt8, weight_type=QuantType.QInt8,
                            reduce_range=reduce_range)
        return onnx.load(dst)
