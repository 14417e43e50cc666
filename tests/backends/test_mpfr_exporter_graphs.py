"""Exporter ops (#12) in small onnx.helper graphs: fp32 emulation equals ONNX Runtime (and a
float32 sequential numpy loop) within 1e-5; shape chains run with int64 tensors exactly; the
listeners (stats, --verify) handle integer outputs; unsupported attributes are refused up
front in one report."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper, shape_inference

from qcompile.backends.mpfr.config import make_config
from qcompile.backends.mpfr.interpreter import Interpreter
from qcompile.backends.mpfr.listeners import LayerStats, Verifier, same_bits
from qcompile.errors import UnsupportedOpError
from qcompile.frontend import lift

F = TensorProto.FLOAT


def model(nodes, x_shape, inits=(), opset=18, out="y", out_type=F, y_shape=None):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, x_shape)],
                          [helper.make_tensor_value_info(out, out_type, y_shape)],
                          [numpy_helper.from_array(np.asarray(v), k) for k, v in inits])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m if y_shape is not None else shape_inference.infer_shapes(m, strict_mode=True)


def run_both(m, x, engine="fast", listeners=(), fmt="fp32"):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    want = ort.InferenceSession(m.SerializeToString(), so,
                                providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    it = Interpreter(lift(m), make_config(format=fmt), engine, listeners=listeners)
    got = it.run_numpy({"x": x}) if want.dtype.kind == "f" else it.run({"x": x})
    return np.asarray(next(iter(got.values()))), want


def _x(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _close(got, want):
    assert got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


N = helper.make_node
CASES = {
    "ReduceMean": ([N("ReduceMean", ["x", "ax"], ["y"], keepdims=1)], [("ax", np.array([2, 3]))]),
    "ReduceSum": ([N("ReduceSum", ["x", "ax"], ["y"], keepdims=0)], [("ax", np.array([1]))]),
    "Softmax": ([N("Softmax", ["x"], ["y"], axis=1)], []),
    "HardSigmoid": ([N("HardSigmoid", ["x"], ["y"], alpha=1 / 6, beta=0.5)], []),
    "HardSwish": ([N("HardSwish", ["x"], ["y"])], []),
    "Sum": ([N("Sum", ["x", "b", "x"], ["y"])], [("b", _x((4, 5), 1))]),
    "Max": ([N("Max", ["x", "b"], ["y"])], [("b", _x((5,), 2))]),
    "Min": ([N("Min", ["x", "b", "x"], ["y"])], [("b", _x((5,), 3))]),
    "LRN": ([N("LRN", ["x"], ["y"], size=3, alpha=1e-2, beta=0.75, bias=1.0)], []),
    "AvgCeil": ([N("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
                   pads=[1, 1, 1, 1], ceil_mode=1, count_include_pad=1)], []),
    "AvgCeilExcl": ([N("AveragePool", ["x"], ["y"], kernel_shape=[2, 3], strides=[2, 2],
                       pads=[0, 1, 0, 1], ceil_mode=1)], []),
    "AvgDil": ([N("AveragePool", ["x"], ["y"], kernel_shape=[2, 2], dilations=[2, 1],
                  pads=[1, 0, 1, 0], count_include_pad=1)], []),
    "MaxCeilDil": ([N("MaxPool", ["x"], ["y"], kernel_shape=[3, 2], strides=[2, 2],
                      dilations=[1, 2], pads=[1, 0, 1, 1], ceil_mode=1)], []),
    "CastRound": ([N("Cast", ["x"], ["i"], to=TensorProto.INT64),
                   N("Cast", ["i"], ["y"], to=TensorProto.FLOAT)], []),
}
for _m, _t in (("nearest", "asymmetric"), ("nearest", "half_pixel"), ("linear", "half_pixel"),
               ("linear", "align_corners"), ("linear", "pytorch_half_pixel"),
               ("linear", "asymmetric")):
    CASES[f"Resize-{_m}-{_t}"] = (
        [N("Resize", ["x", "", "sc"], ["y"], mode=_m, coordinate_transformation_mode=_t,
           nearest_mode="floor")], [("sc", np.array([1, 1, 2, 1.5], np.float32))])
CASES["Resize-sizes"] = ([N("Resize", ["x", "", "", "sz"], ["y"], mode="linear")],
                         [("sz", np.array([2, 3, 7, 3]))])


@pytest.mark.parametrize("name", list(CASES))
def test_fp32_emulation_equals_onnxruntime(name):
    nodes, inits = CASES[name]
    shape = (4, 5) if name in ("Sum", "Max", "Min") else (2, 3, 6, 5)
    x = _x(shape) * (4 if name.startswith("Cast") else 1)
    _close(*run_both(model(nodes, shape, inits, opset=19 if "Dil" in name else 18), x))


def test_softmax_and_reduce_mean_equal_float32_loops():
    x = _x((3, 7))
    got, _ = run_both(model([N("Softmax", ["x"], ["y"], axis=-1)], (3, 7)), x)
    m = x.max(axis=1, keepdims=True)
    e = np.exp(x - m)
    s = np.zeros((3, 1), np.float32)
    for k in range(7):  # left to right
        s = s + e[:, k:k + 1]
    _close(got, e / s)
    x4 = _x((2, 3, 4, 5))
    got, _ = run_both(model([N("ReduceMean", ["x"], ["y"], axes=[2, 3])], x4.shape, opset=17),
                      x4)
    acc = np.zeros((2, 3), np.float32)
    for v in x4.reshape(2, 3, -1).transpose(2, 0, 1):  # row-major order
        acc = acc + v
    want = (acc / np.float32(20)).reshape(2, 3, 1, 1)
    assert same_bits(got, want.astype(np.float64)).all()


def _shape_chain():
    """How exporters flatten / split: Shape -> Gather -> Unsqueeze -> Concat -> Reshape, with
    ConstantOfShape, Cast, Split, Transpose, Squeeze and integer shape arithmetic."""
    inits = [("i0", np.array(0)), ("z", np.array([0])), ("m1", np.array([-1])),
             ("two", np.array(2)), ("sp", np.array([1, 1]))]
    nodes = [N("Shape", ["x"], ["s"]), N("Gather", ["s", "i0"], ["n"], axis=0),
             N("Mul", ["n", "two"], ["n2"]), N("Div", ["n2", "two"], ["n1"]),
             N("Unsqueeze", ["n1", "z"], ["nu"]), N("Concat", ["nu", "m1"], ["shp"], axis=0),
             N("Reshape", ["x", "shp"], ["f"]), N("Transpose", ["f"], ["ft"], perm=[1, 0]),
             N("Split", ["ft", "sp"], ["a", "b"], axis=1), N("ConstantOfShape", ["s"], ["c"],
                                                               value=numpy_helper.from_array(
                                                                   np.array([0.5], np.float32))),
             N("ReduceSum", ["c"], ["cs"], keepdims=0), N("Cast", ["n"], ["nf"], to=F),
             N("Add", ["cs", "nf"], ["k"]), N("Squeeze", ["b"], ["bs"]),
             N("Mul", ["bs", "k"], ["y"])]
    return model(nodes, (2, 3, 4), inits, y_shape=(12,))


@pytest.mark.parametrize("engine", ["fast", "reference"])
def test_shape_chain(engine):
    m = _shape_chain()
    x = _x((2, 3, 4))
    c = make_config(format="bf16")
    stats, ver = LayerStats(c), Verifier(c, 3)
    got, want = run_both(m, x, engine, listeners=[stats, ver], fmt="bf16")
    np.testing.assert_allclose(got, want, rtol=2e-2)
    assert ver.report()["mismatches"] == 0 and ver.report()["layers"] >= 3
    ops = {r["op"] for r in stats.report()}
    assert "Shape" not in ops and "Mul" in ops


def test_unsupported_attributes_reported_at_once():
    nodes = [N("Resize", ["x", "", "sc"], ["r"], mode="cubic"),
             N("Resize", ["r", "", "sc"], ["s"], mode="linear", antialias=1),
             N("Cast", ["s"], ["y"], to=TensorProto.STRING)]
    m = model(nodes, (1, 1, 2, 2), [("sc", np.array([1, 1, 2, 2], np.float32))],
              out_type=TensorProto.STRING, y_shape=(1, 1, 8, 8))  # 2x2 scaled 2x twice
    with pytest.raises(UnsupportedOpError) as e:
        Interpreter(lift(m), make_config(format="fp16"))
    msg = str(e.value)
    assert "mode=cubic" in msg and "antialias" in msg and "Cast to ONNX type 8" in msg
    assert "\n" not in msg.strip()
