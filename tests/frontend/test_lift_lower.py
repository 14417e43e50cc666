"""lift -> lower round trip (bit-identical under onnxruntime), opsets, bad files, external data,
atomic saving."""

from __future__ import annotations

import errno
import functools
import os
import stat

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcompile.backends.ort import lower, save_model
from qcompile.errors import ModelError, QCompileError
from qcompile.frontend import lift, load_model
from qcompile.ir import format_graph, is_known, verify
from qcompile.testing import zoo

SHARED_MODELS = ["cifar10_resnet20.onnx", "cifar10_resnet56.onnx", "efficientnet_lite0.onnx"]

ZOO = {
    "conv_bn_relu": zoo.conv_bn_relu,
    "conv_bn_relu_bias": lambda: zoo.conv_bn_relu(True),
    "residual_block": zoo.residual_block,
    "mini_resnet": zoo.mini_resnet,
    "mini_resnet_folded": lambda: zoo.mini_resnet(fold_bn=True),
    "shared_weight_conv_bn": zoo.shared_weight_conv_bn,
    "bn_after_non_foldable": zoo.bn_after_non_foldable,
    "convtranspose_bn_g1": zoo.convtranspose_bn,
    "convtranspose_bn_g2": lambda: zoo.convtranspose_bn(group=2),
    "gemm_bn": zoo.gemm_bn,
    "gemm_bn_no_trans": lambda: zoo.gemm_bn(False),
    "depthwise_block": zoo.depthwise_block,
    "identity_dropout_model": zoo.identity_dropout_model,
    "all_ops_model": zoo.all_ops_model,
    "all_ops_model_opset13": lambda: zoo.all_ops_model(opset=13),
    "resnet18_flatten": lambda: zoo.resnet(18, image_size=32, num_classes=10),
    "resnet18_reshape": lambda: zoo.resnet(18, image_size=32, num_classes=10, head="reshape"),
    "resnet18_folded": lambda: zoo.resnet(18, image_size=32, num_classes=10, fold_bn=True),
    "mini_resnet_batch4": lambda: zoo.mini_resnet(batch=4),
}


@functools.cache
def _zoo_bytes(name: str) -> bytes:
    return ZOO[name]().SerializeToString()


def zoo_model(name: str) -> onnx.ModelProto:
    """A fresh copy each call (onnx.save with external data rewrites the proto it is given)."""
    return onnx.ModelProto.FromString(_zoo_bytes(name))


def run_ort(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"])
    return sess.run(None, feed)


def assert_bit_identical(original: onnx.ModelProto, lowered: onnx.ModelProto, batch: int = 2):
    feed = zoo.random_input(original, batch=batch, seed=1)
    want = run_ort(original, feed)
    got = run_ort(lowered, feed)
    assert len(want) == len(got)
    for w, g in zip(want, got, strict=True):
        assert w.dtype == g.dtype and w.shape == g.shape
        assert np.array_equal(w, g), f"max |diff| {np.abs(w - g).max()}"


def assert_round_trip(model: onnx.ModelProto, batch: int = 2) -> onnx.ModelProto:
    g = lift(model)
    verify(g)
    lowered = lower(g)
    onnx.checker.check_model(lowered, full_check=True)
    assert [i.name for i in lowered.graph.input] == [
        i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    assert [o.name for o in lowered.graph.output] == [o.name for o in model.graph.output]
    assert_bit_identical(model, lowered, batch)
    # lowering then lifting again is a fixpoint of the text form
    assert format_graph(lift(lowered)) == format_graph(g)
    return lowered


def dims(vi: onnx.ValueInfoProto) -> list:
    return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]


# -- round trip ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SHARED_MODELS)
def test_round_trip_shared_models(shared_data, name):
    model = onnx.load(str(shared_data / name))
    lowered = assert_round_trip(model)
    assert dims(lowered.graph.input[0])[0] == "N"
    assert dims(lowered.graph.output[0])[0] == "N"


@pytest.mark.parametrize("name", sorted(ZOO))
def test_round_trip_zoo(name):
    model = zoo_model(name)
    lowered = assert_round_trip(model, batch=4 if name == "mini_resnet_batch4" else 2)
    if name == "mini_resnet_batch4":
        assert dims(lowered.graph.input[0]) == [4, 3, 16, 16]
    else:
        assert dims(lowered.graph.input[0]) == ["N", 3, *dims(model.graph.input[0])[2:]]


def test_all_ops_model_carries_opaque_erf():
    g = lift(zoo_model("all_ops_model"))
    erf = [n for n in g.nodes if n.op == "Erf"]
    assert len(erf) == 1 and not is_known(erf[0])
    assert {n.op for n in g.nodes} >= {"Conv", "ConvTranspose", "BatchNormalization", "Softmax",
                                       "Dropout", "InstanceNormalization", "MatMul", "Slice"}
    # Constant nodes became constants
    assert not any(n.op == "Constant" for n in g.nodes)
    assert "reshape.shape" in g.initializers


def test_lift_path_and_proto_agree(tmp_path):
    model = zoo_model("mini_resnet")
    onnx.save(model, str(tmp_path / "m.onnx"))
    assert format_graph(lift(tmp_path / "m.onnx")) == format_graph(lift(model))
    assert format_graph(lift(str(tmp_path / "m.onnx"))) == format_graph(lift(model))


def test_symbolic_batch_preserved_in_ir_and_lowered():
    g = lift(zoo_model("conv_bn_relu"))
    assert g.inputs[0].type.shape == ("N", 3, 8, 8)
    assert g.outputs[0].type.shape == ("N", 10)
    lowered = lower(g)
    assert dims(lowered.graph.input[0]) == ["N", 3, 8, 8]
    assert dims(lowered.graph.output[0]) == ["N", 10]
    assert lowered.producer_name == "qcompile"


def test_made_up_names_never_take_a_models_name():
    """An omitted ("") output gets a made-up name; it must not be one the model uses later,
    or that later tensor (here the graph output) would be renamed."""
    nodes = [helper.make_node("Dropout", ["x"], ["d", ""], name="drop"),
             helper.make_node("Relu", ["d"], ["drop_out1"], name="relu")]
    g = helper.make_graph(nodes, "names",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                          [helper.make_tensor_value_info("drop_out1", TensorProto.FLOAT, [2, 4])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    lifted = lift(model)
    verify(lifted)
    assert [v.name for v in lifted.outputs] == ["drop_out1"]
    drop = lifted.find_node("drop")
    assert len(drop.outputs) == 2 and drop.outputs[1].name not in {"d", "drop_out1", "x"}
    lowered = lower(lifted)
    assert [o.name for o in lowered.graph.output] == ["drop_out1"]
    assert list(lowered.graph.node[0].output) == ["d"]  # the unused mask stays omitted
    feed = {"x": np.ones((2, 4), np.float32)}
    assert np.array_equal(run_ort(model, feed)[0], run_ort(lowered, feed)[0])


# -- opsets ------------------------------------------------------------------------------------------
def hand_model(opset: int, ir_version: int) -> onnx.ModelProto:
    """Conv -> Relu -> Clip -> ReduceMean -> Dropout, written with the opset's own op forms."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b"),
             numpy_helper.from_array(np.float32(0.0), "lo"),
             numpy_helper.from_array(np.float32(1.5), "hi")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1],
                              kernel_shape=[3, 3]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Clip", ["r", "lo", "hi"], ["k"], name="clip")]
    if opset >= 18:
        inits.append(numpy_helper.from_array(np.array([2, 3], np.int64), "axes"))
        nodes.append(helper.make_node("ReduceMean", ["k", "axes"], ["m"], name="mean",
                                      keepdims=0))
    else:
        nodes.append(helper.make_node("ReduceMean", ["k"], ["m"], name="mean", axes=[2, 3],
                                      keepdims=0))
    if opset >= 12:
        nodes.append(helper.make_node("Dropout", ["m"], ["y"], name="drop"))
    else:
        nodes.append(helper.make_node("Dropout", ["m"], ["y"], name="drop", ratio=0.3))
    g = helper.make_graph(nodes, f"hand{opset}",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                          initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = ir_version
    return m


IR_FOR_OPSET = {11: 6, 12: 7, 13: 7, 14: 7, 15: 8, 16: 8, 17: 8, 18: 8, 19: 9, 20: 9, 21: 10}


@pytest.mark.parametrize("opset", sorted(IR_FOR_OPSET))
def test_opsets_accepted(opset):
    model = hand_model(opset, IR_FOR_OPSET[opset])
    onnx.checker.check_model(model)
    g = lift(model)
    assert g.opset == opset
    lowered = assert_round_trip(model)
    assert {o.domain: o.version for o in lowered.opset_import}[""] == opset
    assert dims(lowered.graph.input[0])[0] == "N"


@pytest.mark.parametrize("opset", [9, 10, 22])
def test_opset_out_of_range_refused(opset):
    m = hand_model(11, 6)
    m.opset_import[0].version = opset
    with pytest.raises(ModelError) as err:
        lift(m)
    msg = str(err.value)
    assert "\n" not in msg
    assert f"opset {opset}" in msg and "11..21" in msg


def test_opset_refused_from_file(tmp_path):
    m = hand_model(11, 6)
    m.opset_import[0].version = 9
    onnx.save(m, str(tmp_path / "old.onnx"))
    msg = one_line_model_error(tmp_path / "old.onnx")
    assert "opset 9" in msg


def test_zoo_model_at_opset_21_round_trips():
    assert_round_trip(zoo.conv_bn_relu(opset=21))


def test_no_default_opset_refused():
    m = hand_model(17, 8)
    del m.opset_import[:]
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(ModelError, match="no default-domain opset"):
        lift(m)


def test_invalid_model_refused_in_one_line():
    m = hand_model(17, 8)
    m.graph.node[1].input[0] = "nowhere"
    with pytest.raises(ModelError) as err:
        lift(m)
    assert "\n" not in str(err.value) and "not a valid ONNX model" in str(err.value)


# -- bad files ----------------------------------------------------------------------------------------
def one_line_model_error(path) -> str:
    with pytest.raises(ModelError) as err:
        lift(path)
    msg = str(err.value)
    assert msg and "\n" not in msg
    assert str(path) in msg or os.path.basename(str(path)) in msg
    return msg


def test_missing_file(tmp_path):
    assert "does not exist" in one_line_model_error(tmp_path / "nope.onnx")


def test_folder_instead_of_file(tmp_path):
    assert "is a folder" in one_line_model_error(tmp_path)


def test_empty_file(tmp_path):
    p = tmp_path / "empty.onnx"
    p.write_bytes(b"")
    one_line_model_error(p)


@pytest.mark.parametrize("content", [
    b"hello, this is not a model\n",
    b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4,
    b"PK\x03\x04" + b"\x00" * 100,
    b"\xff" * 64,
], ids=["text", "png", "zip", "ff"])
def test_not_onnx(tmp_path, content):
    p = tmp_path / "x.onnx"
    p.write_bytes(content)
    one_line_model_error(p)


def test_truncated_file(tmp_path):
    data = zoo_model("conv_bn_relu").SerializeToString()
    p = tmp_path / "t.onnx"
    for cut in sorted({1, 2, 10, 50, len(data) // 3, len(data) // 2, len(data) - 200,
                       len(data) - 20, len(data) - 3, len(data) - 1}):
        p.write_bytes(data[:cut])
        one_line_model_error(p)


def test_truncated_everywhere_never_crashes(tmp_path):
    """Every prefix of a small model is either a ModelError (one line) or never lifts silently."""
    data = zoo_model("gemm_bn").SerializeToString()
    p = tmp_path / "t.onnx"
    for cut in range(0, len(data), 37):
        p.write_bytes(data[:cut])
        one_line_model_error(p)


# -- external data ----------------------------------------------------------------------------------------
def test_external_data_next_to_model(tmp_path):
    model = zoo_model("mini_resnet")
    path = tmp_path / "ext.onnx"
    onnx.save(zoo_model("mini_resnet"), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.bin", size_threshold=0)
    assert (tmp_path / "ext.bin").is_file()
    assert os.path.getsize(path) < 20_000  # weights really are outside
    g = lift(path)
    assert format_graph(g) == format_graph(lift(model))
    assert_bit_identical(model, lower(g))


def test_external_data_in_subfolder(tmp_path):
    model = zoo_model("conv_bn_relu")
    (tmp_path / "weights").mkdir()
    path = tmp_path / "m.onnx"
    onnx.save(zoo_model("conv_bn_relu"), str(path), save_as_external_data=True,
              location="weights/w.bin",
              size_threshold=0)
    assert format_graph(lift(path)) == format_graph(lift(model))


def _point_tensor_at(model: onnx.ModelProto, location: str) -> onnx.ModelProto:
    """Make the first float initializer external, stored at ``location`` (crafted by hand)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    t = m.graph.initializer[0]
    nbytes = len(numpy_helper.to_array(t).tobytes())
    t.ClearField("raw_data")
    t.ClearField("float_data")
    t.data_location = TensorProto.EXTERNAL
    del t.external_data[:]
    for k, v in (("location", location), ("offset", "0"), ("length", str(nbytes))):
        entry = t.external_data.add()
        entry.key, entry.value = k, v
    return m


def test_external_data_escaping_folder_refused(tmp_path):
    model = zoo_model("conv_bn_relu")
    w = numpy_helper.to_array(model.graph.initializer[0])
    (tmp_path / "x.bin").write_bytes(w.tobytes())  # exists, but outside the model's folder
    (tmp_path / "model").mkdir()
    path = tmp_path / "model" / "m.onnx"
    path.write_bytes(_point_tensor_at(model, "../x.bin").SerializeToString())
    msg = one_line_model_error(path)
    assert "outside the model's folder" in msg and "../x.bin" in msg
    with pytest.raises(ModelError):
        load_model(path)


def test_external_data_absolute_path_refused(tmp_path):
    model = zoo_model("conv_bn_relu")
    w = numpy_helper.to_array(model.graph.initializer[0])
    target = tmp_path / "abs.bin"
    target.write_bytes(w.tobytes())
    path = tmp_path / "m.onnx"
    path.write_bytes(_point_tensor_at(model, str(target)).SerializeToString())
    assert "outside the model's folder" in one_line_model_error(path)


def test_external_data_symlink_escaping_refused(tmp_path):
    model = zoo_model("conv_bn_relu")
    w = numpy_helper.to_array(model.graph.initializer[0])
    (tmp_path / "secret.bin").write_bytes(w.tobytes())
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "w.bin").symlink_to(tmp_path / "secret.bin")
    path = tmp_path / "model" / "m.onnx"
    path.write_bytes(_point_tensor_at(model, "w.bin").SerializeToString())
    assert "outside the model's folder" in one_line_model_error(path)


def test_external_data_crafted_inside_folder_lifts(tmp_path):
    model = zoo_model("conv_bn_relu")
    w = numpy_helper.to_array(model.graph.initializer[0])
    (tmp_path / "w.bin").write_bytes(w.tobytes())
    path = tmp_path / "m.onnx"
    path.write_bytes(_point_tensor_at(model, "w.bin").SerializeToString())
    assert format_graph(lift(path)) == format_graph(lift(model))


def test_proto_with_unloaded_external_data_refused(tmp_path, monkeypatch):
    """A ModelProto whose external data is not loaded must not be read relative to the
    working directory (that would bypass the folder check)."""
    path = tmp_path / "m.onnx"
    onnx.save(zoo_model("gemm_bn"), str(path), save_as_external_data=True, location="w.bin",
              size_threshold=0)
    proto = onnx.load(str(path), load_external_data=False)
    monkeypatch.chdir(tmp_path)  # w.bin would be found from here
    with pytest.raises(ModelError) as err:
        lift(proto)
    assert "external" in str(err.value) and "\n" not in str(err.value)
    assert format_graph(lift(path)) == format_graph(lift(zoo_model("gemm_bn")))


def test_external_data_missing_file_refused(tmp_path):
    model = zoo_model("conv_bn_relu")
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path), save_as_external_data=True, location="w.bin", size_threshold=0)
    (tmp_path / "w.bin").unlink()
    msg = one_line_model_error(path)
    assert "missing" in msg and "w.bin" in msg


def test_external_data_short_file_refused(tmp_path):
    model = zoo_model("conv_bn_relu")
    path = tmp_path / "m.onnx"
    path.write_bytes(_point_tensor_at(model, "w.bin").SerializeToString())
    (tmp_path / "w.bin").write_bytes(b"\x00" * 8)  # far shorter than the tensor
    one_line_model_error(path)


# -- save_model ---------------------------------------------------------------------------------------------
def test_save_model_round_trip(tmp_path):
    model = zoo_model("mini_resnet")
    out = save_model(lower(lift(model)), tmp_path / "out.onnx")
    assert out == tmp_path / "out.onnx"
    assert [p.name for p in tmp_path.iterdir()] == ["out.onnx"]  # no temp file left
    assert_bit_identical(model, onnx.load(str(out)))


def test_save_model_missing_folder(tmp_path):
    target = tmp_path / "missing" / "out.onnx"
    with pytest.raises(QCompileError) as err:
        save_model(lower(lift(zoo_model("conv_bn_relu"))), target)
    assert "does not exist" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "missing").exists()
    assert list(tmp_path.iterdir()) == []


def test_save_model_to_a_folder(tmp_path):
    with pytest.raises(QCompileError, match="is a folder"):
        save_model(lower(lift(zoo_model("conv_bn_relu"))), tmp_path)


class _Unserializable:
    def SerializeToString(self) -> bytes:  # noqa: N802
        raise RuntimeError("boom")


def test_save_model_failure_leaves_existing_file(tmp_path):
    target = tmp_path / "out.onnx"
    target.write_bytes(b"previous contents")
    with pytest.raises(RuntimeError, match="boom"):
        save_model(_Unserializable(), target)  # type: ignore[arg-type]
    assert target.read_bytes() == b"previous contents"
    assert [p.name for p in tmp_path.iterdir()] == ["out.onnx"]


def test_save_model_failed_rename_leaves_existing_file(tmp_path, monkeypatch):
    target = tmp_path / "out.onnx"
    target.write_bytes(b"previous contents")

    def fail(*args, **kwargs):
        raise OSError(errno.ENOSPC, "disk full")

    monkeypatch.setattr(os, "replace", fail)
    # an OSError while writing is one line naming the file and the cause (#18)
    with pytest.raises(QCompileError, match="out.onnx.*the disk is full"):
        save_model(lower(lift(zoo_model("conv_bn_relu"))), target)
    monkeypatch.undo()
    assert target.read_bytes() == b"previous contents"
    assert [p.name for p in tmp_path.iterdir()] == ["out.onnx"]


def test_save_model_overwrites_and_uses_normal_permissions(tmp_path):
    target = tmp_path / "out.onnx"
    target.write_bytes(b"old")
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    save_model(lower(lift(zoo_model("conv_bn_relu"))), target)
    assert onnx.load(str(target)).graph.output[0].name == "logits"
    # an atomic write must not leave the model readable by its owner only (mkstemp's 0600)
    assert stat.S_IMODE(target.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)


def test_int4_initializers_lift_and_lower_unchanged():
    """4-bit initializers (what int4 presets write) lift as INT4/UINT4 values held in int8/uint8."""
    from qcompile.ir import DType

    w = helper.make_tensor("w", TensorProto.INT4, [2, 3], [-8, -1, 0, 1, 5, 7])
    zp = helper.make_tensor("zp", TensorProto.UINT4, [], [3])
    s = helper.make_tensor("s", TensorProto.FLOAT, [], [0.5])
    nodes = [helper.make_node("DequantizeLinear", ["w", "s"], ["wf"]),
             helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xf"]),
             helper.make_node("MatMul", ["xf", "wf"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], [w, zp, s])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    g = lift(model)
    assert g.initializers["w"].type.dtype == DType.INT4
    assert g.initializers["w"].const.dtype == np.int8
    assert g.initializers["zp"].type.dtype == DType.UINT4
    back = lower(g)
    x = np.array([[1.3, -0.4]], np.float32)
    a = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    b = ort.InferenceSession(back.SerializeToString()).run(None, {"x": x})[0]
    assert np.array_equal(a, b)
