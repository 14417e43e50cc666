"""Feeding models their input as declared (#12 items 4-5): fixed batch 1, NHWC, uint8, float16,
several inputs; calibrate -> quantize -> ORT, evaluate and emulate on such models."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from qcompile.data import DataError, open_dataset
from qcompile.data.model_input import ModelInput, run_batched
from qcompile.driver.compile import compile_model
from qcompile.driver.emulate import emulate, make_config
from qcompile.driver.evaluate import evaluate_model
from qcompile.errors import QCompileError
from qcompile.testing import zoo

HW = 8


@pytest.fixture
def npz(tmp_path):
    rng = np.random.default_rng(0)
    p = tmp_path / "calib.npz"
    np.savez(p, images=rng.integers(0, 256, (13, HW, HW, 3), dtype=np.uint8),
             labels=rng.integers(0, 10, 13).astype(np.int64))
    return str(p)


def _save(m: onnx.ModelProto, path) -> str:
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return str(path)


def _with_front(m: onnx.ModelProto, new_input, node) -> onnx.ModelProto:
    """Replace the graph input 'input' by ``new_input``, converted by ``node`` into 'input'."""
    g = m.graph
    old = [i for i in g.input if i.name == "input"][0]
    g.input.remove(old)
    g.input.insert(0, new_input)
    g.node.insert(0, node)
    return m


def nhwc_model(batch="N") -> onnx.ModelProto:
    m = zoo.conv_bn_relu(batch=batch)
    inp = helper.make_tensor_value_info("x_nhwc", TensorProto.FLOAT, [batch, HW, HW, 3])
    return _with_front(m, inp, helper.make_node("Transpose", ["x_nhwc"], ["input"],
                                                perm=[0, 3, 1, 2], name="to_nchw"))


def cast_model(elem: int) -> onnx.ModelProto:
    m = zoo.conv_bn_relu()
    inp = helper.make_tensor_value_info("x_in", elem, ["N", 3, HW, HW])
    return _with_front(m, inp, helper.make_node("Cast", ["x_in"], ["input"],
                                                to=TensorProto.FLOAT, name="cast_in"))


def _int8(tmp_path, m, npz, logs=None, name="m"):
    src = _save(m, tmp_path / f"{name}.onnx")
    out = tmp_path / f"{name}_int8.onnx"
    compile_model(src, out, target="ort-int8", passes="fold,calibrate,quantize", calib=npz,
                  preprocess="none",
                  log=(logs.append if logs is not None else lambda s: None))
    return src, str(out)


# -- the rules ------------------------------------------------------------------------------
def test_layout_batch_and_size_are_read_from_the_declared_shape():
    assert ModelInput("x", (1, 3, 224, 224)).layout == "NCHW"
    nhwc = ModelInput("x", ("N", 224, 224, 3))
    assert nhwc.layout == "NHWC" and nhwc.spatial == (224, 224) and nhwc.batch is None
    assert ModelInput("x", (1, "h", "w", 1)).layout == "NHWC"
    assert ModelInput("x", ("N", 3, 8, 3)).layout == "NCHW"  # channel dim 1 wins
    assert ModelInput("x", (4, 3, "h", "w")).batch == 4
    assert ModelInput("x", None).layout == "NCHW" and ModelInput("x", None).batch is None


def test_run_batched_chunks_exactly_and_drops_nothing():
    seen: list[int] = []

    def run(f):
        seen.append(len(f["x"]))
        return [f["x"] * 2]

    x = np.arange(10, dtype=np.float32).reshape(10, 1)
    (y,) = run_batched(run, {"x": x}, 4)
    assert seen == [4, 4, 4] and np.array_equal(y, x * 2)  # last chunk padded, pad rows cut
    seen.clear()
    run_batched(run, {"x": x}, 1)
    assert seen == [1] * 10
    seen.clear()
    run_batched(run, {"x": x}, None)
    assert seen == [10]


def test_uint8_view_gives_raw_pixels_nhwc_and_is_logged(npz):
    from qcompile.data import preset

    ds = open_dataset(npz, preset("cifar"))
    logs: list[str] = []
    view = ds.for_model(ModelInput("x", ("N", HW, HW, 3), "uint8"), log=logs.append)
    b = next(view.batches(4))
    raw = np.load(npz)["images"][:4]
    assert b.x.dtype == np.uint8 and np.array_equal(b.x, raw)
    assert len(view) == len(ds) and view.source == ds.source
    assert any("raw 0..255" in s for s in logs)
    assert ds.for_model(ModelInput("x", ("N", HW, HW, 3), "uint8")) is view  # logged once


def test_fixed_spatial_size_resizes_and_says_so(npz):
    logs: list[str] = []
    view = open_dataset(npz).for_model(ModelInput("x", (1, 3, 16, 16)), log=logs.append)
    assert next(view.batches(2)).x.shape == (2, 3, 16, 16)
    assert any("16x16" in s for s in logs)


def test_unsupported_dtype_is_one_line():
    with pytest.raises(DataError, match="int32") as e:
        ModelInput("x", ("N", 3, 8, 8), "int32").check_dtype()
    assert "\n" not in str(e.value)


# -- whole pipeline ----------------------------------------------------------------------
def test_fixed_batch_1_calibrates_quantises_and_runs(tmp_path, npz):
    src, out = _int8(tmp_path, zoo.conv_bn_relu(batch=1), npz)
    sess = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape[0] == 1
    y = sess.run(None, {sess.get_inputs()[0].name: np.zeros((1, 3, HW, HW), np.float32)})[0]
    assert y.shape == (1, 10) and np.all(np.isfinite(y))
    import json
    meta = sess.get_modelmeta().custom_metadata_map
    assert json.loads(meta["qcompile.calibration"])["images"] == 13  # none dropped
    for m in (src, out):
        rep = evaluate_model(m, npz, preprocess="none", latency=True, exclude_calibration=False)
        assert rep["images"] == 13 and set(rep["latency_ms"]) == {"1"}
    rep = emulate(src, make_config(format="fp32"), data=npz, preprocess="none", limit=3)
    assert rep["images"] == 3 and rep["accuracy"]["top1_agreement"] == 1.0


def test_fixed_batch_4_pads_only_for_the_run(tmp_path, npz):
    _, out = _int8(tmp_path, zoo.conv_bn_relu(batch=4), npz)  # 13 = 4+4+4+1
    rep = evaluate_model(out, npz, preprocess="none", latency=False, exclude_calibration=False)
    assert rep["images"] == 13


def test_nhwc_input_calibrates_quantises_evaluates_emulates(tmp_path, npz):
    logs: list[str] = []
    src, out = _int8(tmp_path, nhwc_model(), npz, logs)
    assert any("NHWC" in s for s in logs)
    fp = evaluate_model(src, npz, preprocess="none", latency=False, exclude_calibration=False)
    q = evaluate_model(out, npz, preprocess="none", latency=False, exclude_calibration=False)
    assert fp["images"] == q["images"] == 13
    rep = emulate(src, make_config(format="fp32"), data=npz, preprocess="none", limit=4)
    assert rep["images"] == 4 and rep["accuracy"]["top1_agreement"] == 1.0
    # same logits as the NCHW model fed the same pixels
    nchw = evaluate_model(_save(zoo.conv_bn_relu(), tmp_path / "nchw.onnx"), npz,
                          preprocess="none", latency=False, exclude_calibration=False)
    assert nchw["top1"] == fp["top1"] and nchw["per_class"] == fp["per_class"]


def test_nhwc_fixed_batch_1(tmp_path, npz):
    src, out = _int8(tmp_path, nhwc_model(batch=1), npz)
    assert evaluate_model(out, npz, preprocess="none", latency=False, exclude_calibration=False)["images"] == 13
    assert emulate(src, make_config(format="fp32"), data=npz, preprocess="none", limit=2)["images"] == 2


def test_uint8_input_calibrates(tmp_path, npz):
    logs: list[str] = []
    src, out = _int8(tmp_path, cast_model(TensorProto.UINT8), npz, logs)
    assert sum("raw 0..255" in s for s in logs) == 1
    rep = evaluate_model(out, npz, preprocess="none", latency=False, exclude_calibration=False)
    assert rep["images"] == 13


def test_float16_input_works_or_is_one_line(tmp_path, npz):
    try:
        _, out = _int8(tmp_path, cast_model(TensorProto.FLOAT16), npz)
    except QCompileError as e:
        assert "\n" not in str(e)
    else:
        assert evaluate_model(out, npz, preprocess="none", latency=False, exclude_calibration=False)["images"] == 13


def test_several_inputs_by_name_or_one_line_error(tmp_path, npz):
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 3, HW, HW])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 3, HW, HW])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, HW, HW])
    g = helper.make_graph([helper.make_node("Add", ["a", "b"], ["s"], name="add"),
                           helper.make_node("Relu", ["s"], ["y"], name="relu")], "two", [a, b], [y])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    src = _save(m, tmp_path / "two.onnx")
    with pytest.raises(QCompileError, match="%a, %b") as e:
        compile_model(src, tmp_path / "o.onnx", target="ort-fp32", passes="calibrate", calib=npz,
                      preprocess="none")
    assert "\n" not in str(e.value)
    rng = np.random.default_rng(1)
    named = tmp_path / "named.npz"
    np.savez(named, images=rng.integers(0, 256, (6, HW, HW, 3), dtype=np.uint8),
             a=rng.normal(size=(6, 3, HW, HW)).astype(np.float32),
             b=rng.normal(size=(6, 3, HW, HW)).astype(np.float32))
    rep = compile_model(src, tmp_path / "o.onnx", target="ort-fp32", passes="calibrate",
                        calib=str(named), preprocess="none")
    assert rep is not None
