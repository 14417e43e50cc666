"""Lifting any opset 7..22 and the old exporters' shapes: IR 3/4 weights listed as graph inputs,
paddle2onnx's Constant-node weights, float16 models. Each lifted model, lowered to ONNX, must
equal the original under ONNX Runtime (max |diff| <= 1e-5 on random inputs)."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcompile.backends.ort import lower
from qcompile.errors import ModelError
from qcompile.frontend import LiftWarning, lift
from qcompile.frontend.opsets import min_ir_version
from qcompile.ir import DType, verify

OPSETS = [7, 8, 9, 10, 13, 17, 18, 21, 22]
BATCH, C, HW, CLASSES = 2, 4, 8, 5


def cnn(opset: int, *, weights_as_inputs: bool | None = None, paddle: bool = False,
        fp16: bool = False, ir: int | None = None) -> onnx.ModelProto:
    """Conv -> BatchNormalization -> Relu -> Sum -> MaxPool [-> Upsample] -> Dropout ->
    GlobalAveragePool -> Flatten -> Reshape(shape Constant) -> Gemm, each op in the form the
    opset's exporters wrote it. ``paddle``: every weight a Constant node and no initializer.
    ``weights_as_inputs`` (default: IR < 4 requires it): initializers also listed as inputs."""
    ft = np.float16 if fp16 else np.float32
    et = TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT
    rng = np.random.default_rng(opset)
    w = {"conv.w": rng.standard_normal((C, 3, 3, 3)) * 0.3, "conv.b": rng.standard_normal(C) * .1,
         "bn.g": rng.uniform(0.5, 1.5, C), "bn.b": rng.standard_normal(C) * .1,
         "bn.m": rng.standard_normal(C) * .1, "bn.v": rng.uniform(0.5, 1.5, C),
         "fc.w": rng.standard_normal((CLASSES, C)) * 0.5, "fc.b": rng.standard_normal(CLASSES)}
    w = {k: v.astype(ft) for k, v in w.items()}
    shape = np.array([-1, C], np.int64)
    nodes = []
    if paddle:
        nodes += [helper.make_node("Constant", [], [k], value=numpy_helper.from_array(v, k))
                  for k, v in w.items()]
    nodes += [helper.make_node("Constant", [], ["shape"], value=numpy_helper.from_array(shape)),
              helper.make_node("Conv", ["x", "conv.w", "conv.b"], ["c"], name="conv",
                               pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
              helper.make_node("BatchNormalization", ["c", "bn.g", "bn.b", "bn.m", "bn.v"],
                               ["bn"], name="bn", epsilon=1e-5,
                               **({"spatial": 1} if opset < 9 else {})),
              helper.make_node("Relu", ["bn"], ["r"], name="relu"),
              helper.make_node("Sum", ["r", "c"], ["s"], name="sum"),
              helper.make_node("MaxPool", ["s"], ["p"], name="pool", kernel_shape=[2, 2],
                               strides=[2, 2])]
    inits = []
    last = "p"
    if opset <= 9:  # Upsample: deprecated at 10, attribute scales until 9's input form
        if opset < 9:
            nodes.append(helper.make_node("Upsample", ["p"], ["u"], name="up", mode="nearest",
                                          scales=[1.0, 1.0, 2.0, 2.0]))
        else:
            inits.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"))
            nodes.append(helper.make_node("Upsample", ["p", "scales"], ["u"], name="up",
                                          mode="nearest"))
        last = "u"
    nodes += [helper.make_node("Dropout", [last], ["d"], name="drop",
                               **({"ratio": 0.5} if opset < 12 else {})),
              helper.make_node("GlobalAveragePool", ["d"], ["gap"], name="gap"),
              helper.make_node("Flatten", ["gap"], ["flat"], name="flat", axis=1),
              helper.make_node("Reshape", ["flat", "shape"], ["rs"], name="reshape"),
              helper.make_node("Gemm", ["rs", "fc.w", "fc.b"], ["logits"], name="fc",
                               transB=1)]
    if not paddle:
        inits += [numpy_helper.from_array(v, k) for k, v in w.items()]
    ir = ir or min_ir_version(opset)
    as_inputs = ir < 4 if weights_as_inputs is None else weights_as_inputs
    inputs = [helper.make_tensor_value_info("x", et, [BATCH, 3, HW, HW])]
    if as_inputs:
        inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits]
    g = helper.make_graph(nodes, f"cnn{opset}", inputs,
                          [helper.make_tensor_value_info("logits", et, [BATCH, CLASSES])],
                          initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)],
                          producer_name="exporter")
    m.ir_version = ir
    onnx.checker.check_model(m)
    return m


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    so = ort.SessionOptions()
    so.log_severity_level = 3  # IR 3 weights-as-inputs warnings are expected on the original
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def lift_lower(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    notes: list[str] = []
    g = lift(model, warn=notes.append)
    verify(g)
    lowered = lower(g)
    onnx.checker.check_model(lowered, full_check=True)
    return lowered, notes


def assert_equivalent(model: onnx.ModelProto, lowered: onnx.ModelProto, fp16: bool = False):
    x = np.random.default_rng(7).standard_normal((BATCH, 3, HW, HW))
    x = x.astype(np.float16 if fp16 else np.float32)
    want, got = run(model, x), run(lowered, x)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert np.abs(got.astype(np.float64) - want.astype(np.float64)).max() <= 1e-5


def default_opset(m: onnx.ModelProto) -> int:
    return {o.domain: o.version for o in m.opset_import}[""]


@pytest.mark.parametrize("opset", OPSETS)
def test_exporter_shaped_model_lifts_and_stays_equivalent(opset):
    model = cnn(opset)
    lowered, notes = lift_lower(model)
    assert_equivalent(model, lowered)
    assert [i.name for i in lowered.graph.input] == ["x"]  # IR 3 weights became constants
    if 11 <= opset <= 21:
        assert notes == [] and default_opset(lowered) == opset
    else:
        target = 13 if opset < 11 else 21
        assert notes == [f"note: converted opset {opset} -> {target} with "
                         "onnx.version_converter (qcompile reads opsets 11..21)"]
        # 22 goes back up with the converter; old CNN ops (Conv, Relu, Gemm...) were redefined
        # by 13, so those models keep the converted opset
        assert default_opset(lowered) == (22 if opset == 22 else 13)
    if opset <= 9:
        assert "Resize" in {n.op_type for n in lowered.graph.node}


@pytest.mark.parametrize("opset,ir", [(7, 3), (8, 3), (9, 4), (13, 4)])
def test_weights_listed_as_graph_inputs_become_constants(opset, ir):
    model = cnn(opset, weights_as_inputs=True, ir=ir)
    g = lift(model, warn=lambda _: None)
    assert [v.name for v in g.inputs] == ["x"]
    assert {"conv.w", "fc.w", "bn.v"} <= set(g.initializers)
    lowered, _ = lift_lower(model)
    assert [i.name for i in lowered.graph.input] == ["x"]
    assert lowered.ir_version >= 4
    assert_equivalent(model, lowered)


@pytest.mark.parametrize("opset", [9, 13])
def test_paddle_style_constant_node_weights_become_constants(opset):
    model = cnn(opset, paddle=True)
    assert not model.graph.initializer or opset <= 9  # only Upsample's scales at 9
    g = lift(model, warn=lambda _: None)
    assert "Constant" not in {n.op for n in g.nodes}
    assert g.initializers["conv.w"].const.shape == (C, 3, 3, 3)
    lowered, _ = lift_lower(model)
    assert "Constant" not in {n.op_type for n in lowered.graph.node}
    assert_equivalent(model, lowered)


@pytest.mark.parametrize("opset", [9, 17])
def test_float16_model_keeps_float16(opset):
    """fp16 stays fp16 (the IR has FLOAT16): ORT then runs the same fp16 kernels on the same
    fp16 weights, which widening to fp32 would not (different rounding, not equivalent)."""
    model = cnn(opset, fp16=True)
    g = lift(model, warn=lambda _: None)
    assert g.inputs[0].type.dtype == DType.FLOAT16
    assert g.initializers["conv.w"].type.dtype == DType.FLOAT16
    lowered, _ = lift_lower(model)
    assert lowered.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert_equivalent(model, lowered, fp16=True)


def test_source_opset_given_back_when_every_op_is_defined_the_same():
    # GlobalAveragePool and Flatten-9... only ops unchanged between 10 and 13 relabel
    g = helper.make_graph([helper.make_node("GlobalAveragePool", ["x"], ["y"])], "gap",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 1, 1])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 10)])
    model.ir_version = 5
    lowered, notes = lift_lower(model)
    assert notes and "10 -> 13" in notes[0]
    assert default_opset(lowered) == 10
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32)
    assert np.abs(run(lowered, x) - run(model, x)).max() <= 1e-6


def test_default_warn_is_a_lift_warning():
    with pytest.warns(LiftWarning, match=r"converted opset 9 -> 13"):
        lift(cnn(9))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lift(cnn(13))  # nothing to say at a native opset


def test_converter_failure_is_one_line_naming_the_op(monkeypatch):
    def fail(model, target):
        raise RuntimeError("/project/onnx/version_converter/BaseConverter.h:63: adapter_lookup: "
                           "Assertion `false` failed: No Adapter For Current Version $10 for "
                           "Upsample\n  more C++ detail")

    monkeypatch.setattr(onnx.version_converter, "convert_version", fail)
    with pytest.raises(ModelError) as err:
        lift(cnn(9), warn=lambda _: None)
    msg = str(err.value)
    assert "\n" not in msg
    assert "opset 9" in msg and "Upsample" in msg and "re-export" in msg


@pytest.mark.parametrize("opset", [6, onnx.defs.onnx_opset_version() + 1])
def test_opsets_nobody_can_convert_refused_in_one_line(opset):
    model = cnn(13)
    model.opset_import[0].version = opset
    with pytest.raises(ModelError) as err:
        lift(model)
    msg = str(err.value)
    assert "\n" not in msg and f"opset {opset}" in msg and "7.." in msg


def test_invalid_old_model_refused_before_converting():
    model = cnn(9)
    model.graph.node[1].input[1] = "missing"  # Conv weight nobody defines
    with pytest.raises(ModelError) as err:
        lift(model, warn=lambda _: None)
    msg = str(err.value)
    assert "\n" not in msg and "opset 9" in msg and "not a valid ONNX model" in msg
