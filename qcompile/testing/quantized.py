"""Quantised model builders in the shapes other tools write them (issue 13), for tests and
benchmarks: :func:`torch_qat_model` (torch QAT export idioms, built with ``onnx.helper``).
Models quantised by ONNX Runtime itself come from ``benchmarks/_ortq.py`` (onnxruntime may
only be imported by the ORT backend inside the package)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _zp_chain(name: str, shape: list[int], to: int) -> list[onnx.NodeProto]:
    """A zero point computed as torch exports it: ConstantOfShape(shape) -> Cast(to)."""
    return [helper.make_node("Constant", [], [f"{name}_shape"], value=numpy_helper.from_array(
                np.array(shape, np.int64))),
            helper.make_node("ConstantOfShape", [f"{name}_shape"], [f"{name}_f"],
                             value=numpy_helper.from_array(np.zeros(1, np.float32))),
            helper.make_node("Cast", [f"{name}_f"], [name], to=to)]


def torch_qat_model(seed: int = 0, *, size: int = 8, channels: int = 8) -> onnx.ModelProto:
    """uint8 NCHW input -> Cast -> Sub(mean) -> Div(std) (in-graph normalisation) -> Q ->
    Cast(uint8) -> DQ -> Conv (int8 per-channel weights, int32 bias whose zero point is
    ConstantOfShape -> Cast) -> Relu -> Q -> Cast -> DQ -> GlobalAveragePool -> Flatten ->
    Gemm(10) on DQ weights: the idioms of a torch 2.x QAT export."""
    rng = np.random.default_rng(seed)
    C = channels
    w = rng.standard_normal((C, 3, 3, 3)).astype(np.float32) * 0.3
    ws = (np.abs(w).reshape(C, -1).max(1) / 127).astype(np.float32)
    wq = np.clip(np.round(w / ws[:, None, None, None]), -127, 127).astype(np.int8)
    sx, sy = np.float32(4.0 / 255), np.float32(0.05)
    bq = rng.integers(-2000, 2000, C).astype(np.int32)
    fw = (rng.standard_normal((10, C)) * 0.3).astype(np.float32)
    fs = (np.abs(fw).max(1) / 127).astype(np.float32)
    fq = np.clip(np.round(fw / fs[:, None]), -127, 127).astype(np.int8)
    inits = [numpy_helper.from_array(a, n) for n, a in (
        ("mean", np.float32(127.5).reshape(1)), ("std", np.float32(63.75).reshape(1)),
        ("x_scale", sx), ("w_q", wq), ("w_scale", ws), ("b_q", bq),
        ("b_scale", (sx * ws).astype(np.float32)), ("y_scale", sy),
        ("fc_q", fq), ("fc_scale", fs), ("fc_b", np.zeros(10, np.float32)))]
    nodes = [helper.make_node("Cast", ["image"], ["image_f"], to=TensorProto.FLOAT),
             helper.make_node("Sub", ["image_f", "mean"], ["centred"]),
             helper.make_node("Div", ["centred", "std"], ["x"])]
    nodes += _zp_chain("x_zp", [], TensorProto.UINT8)
    nodes += _zp_chain("w_zp", [C], TensorProto.INT8)
    nodes += _zp_chain("b_zp", [C], TensorProto.INT32)
    nodes += _zp_chain("y_zp", [], TensorProto.UINT8)
    nodes += _zp_chain("fc_zp", [10], TensorProto.INT8)
    nodes += [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["x_q"]),
        helper.make_node("Cast", ["x_q"], ["x_qc"], to=TensorProto.UINT8),
        helper.make_node("DequantizeLinear", ["x_qc", "x_scale", "x_zp"], ["x_dq"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w_dq"], axis=0),
        helper.make_node("DequantizeLinear", ["b_q", "b_scale", "b_zp"], ["b_dq"], axis=0),
        helper.make_node("Conv", ["x_dq", "w_dq", "b_dq"], ["conv"], pads=[1, 1, 1, 1],
                         kernel_shape=[3, 3]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("QuantizeLinear", ["relu", "y_scale", "y_zp"], ["y_q"]),
        helper.make_node("Cast", ["y_q"], ["y_qc"], to=TensorProto.UINT8),
        helper.make_node("DequantizeLinear", ["y_qc", "y_scale", "y_zp"], ["y_dq"]),
        helper.make_node("GlobalAveragePool", ["y_dq"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("DequantizeLinear", ["fc_q", "fc_scale", "fc_zp"], ["fc_w"], axis=0),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1)]
    g = helper.make_graph(nodes, "torch_qat", [helper.make_tensor_value_info(
        "image", TensorProto.UINT8, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)],
                          producer_name="pytorch")
    m.ir_version = 8
    return m
