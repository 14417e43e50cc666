"""Tests for the random-weight ONNX model zoo (qcompile.testing.zoo)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from qcompile.testing import zoo

SMALL_BUILDERS = {
    "conv_bn_relu": zoo.conv_bn_relu,
    "conv_bn_relu_bias": lambda **kw: zoo.conv_bn_relu(True, **kw),
    "residual_block": zoo.residual_block,
    "mini_resnet": zoo.mini_resnet,
    "mini_resnet_folded": lambda **kw: zoo.mini_resnet(fold_bn=True, **kw),
    "shared_weight_conv_bn": zoo.shared_weight_conv_bn,
    "bn_after_non_foldable": zoo.bn_after_non_foldable,
    "convtranspose_bn": zoo.convtranspose_bn,
    "convtranspose_bn_g2": lambda **kw: zoo.convtranspose_bn(group=2, **kw),
    "gemm_bn": zoo.gemm_bn,
    "gemm_bn_no_trans": lambda **kw: zoo.gemm_bn(False, **kw),
    "depthwise_block": zoo.depthwise_block,
    "identity_dropout_model": zoo.identity_dropout_model,
    "all_ops_model": zoo.all_ops_model,
}


def _run(model: onnx.ModelProto, batch: int = 2, seed: int = 0) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (out,) = sess.run(["logits"], zoo.random_input(model, batch=batch, seed=seed))
    return out


def _out_dim(model: onnx.ModelProto) -> int:
    return model.graph.output[0].type.tensor_type.shape.dim[1].dim_value


def _ops(model: onnx.ModelProto) -> set[str]:
    return {n.op_type for n in model.graph.node}


def _check_io(model: onnx.ModelProto) -> None:
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["logits"]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "N" and dims[1].dim_value == 3
    names = [n.name for n in model.graph.node]
    assert all(names) and len(names) == len(set(names))


@pytest.mark.parametrize("name", sorted(SMALL_BUILDERS))
def test_small_builder_checks_and_runs(name):
    model = SMALL_BUILDERS[name]()
    onnx.checker.check_model(model, full_check=True)
    _check_io(model)
    out = _run(model, batch=2)
    assert out.shape == (2, _out_dim(model))
    assert out.dtype == np.float32 and np.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(SMALL_BUILDERS))
def test_small_builder_deterministic(name):
    build = SMALL_BUILDERS[name]
    assert build(seed=3).SerializeToString() == build(seed=3).SerializeToString()
    assert build(seed=3).SerializeToString() != build(seed=4).SerializeToString()


@pytest.mark.parametrize("opset", [13, 17, 21])
def test_opset_kwarg(opset):
    model = zoo.mini_resnet(opset=opset)
    assert model.opset_import[0].version == opset and model.ir_version >= 8
    onnx.checker.check_model(model, full_check=True)
    assert np.isfinite(_run(model)).all()
    with pytest.raises(ValueError):
        zoo.conv_bn_relu(opset=11)


def test_fixed_int_batch():
    model = zoo.all_ops_model(batch=3)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 3
    assert _run(model, batch=99).shape == (3, 10)  # a fixed batch wins over random_input's


def test_all_ops_model_coverage():
    wanted = {
        "Conv", "ConvTranspose", "BatchNormalization", "InstanceNormalization", "Relu",
        "LeakyRelu", "Clip", "Sigmoid", "Tanh", "Add", "Sub", "Mul", "Div", "MaxPool",
        "AveragePool", "GlobalAveragePool", "Flatten", "Reshape", "Gemm", "MatMul", "Slice",
        "Pad", "Concat", "Identity", "Constant", "Softmax", "Dropout",
    }
    ops = _ops(zoo.all_ops_model())
    assert wanted <= ops
    assert ops - wanted  # at least one opaque op (Erf)


def test_structural_properties_of_small_models():
    m = zoo.shared_weight_conv_bn()
    convs = [n for n in m.graph.node if n.op_type == "Conv"]
    assert len(convs) == 2 and convs[0].input[1] == convs[1].input[1]
    assert sum(n.op_type == "BatchNormalization" for n in m.graph.node) == 2

    m = zoo.bn_after_non_foldable()
    producer = {o: n for n in m.graph.node for o in n.output}
    (bn,) = [n for n in m.graph.node if n.op_type == "BatchNormalization"]
    assert producer[bn.input[0]].op_type == "Relu"

    m = zoo.convtranspose_bn(group=2)
    (ct,) = [n for n in m.graph.node if n.op_type == "ConvTranspose"]
    assert {a.name: a.i for a in ct.attribute}["group"] == 2

    m = zoo.gemm_bn()
    assert [n.op_type for n in m.graph.node] == ["Flatten", "Gemm", "BatchNormalization"]

    m = zoo.depthwise_block()
    dw = [n for n in m.graph.node if n.name == "depthwise"][0]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in dw.attribute}
    assert attrs["group"] == 16 and list(attrs["pads"]) == [0, 0, 1, 1]

    m = zoo.identity_dropout_model()
    assert {"Identity", "Dropout", "Constant"} <= _ops(m)

    assert 1000 < zoo.count_parameters(zoo.mini_resnet()) < 10000


@pytest.mark.parametrize(
    "depth,expected", [(18, 11_689_512), (34, 21_797_672), (50, 25_557_032), (101, 44_549_160)]
)
def test_resnet_parameter_counts_match_torchvision(depth, expected):
    model = zoo.resnet(depth)
    assert zoo.count_parameters(model) == expected
    bn_stats = sum(
        2 * int(np.prod(next(t.dims for t in model.graph.initializer if t.name == n.input[1])))
        for n in model.graph.node if n.op_type == "BatchNormalization"
    )
    assert zoo.count_parameters(model, include_bn_stats=True) == expected + bn_stats


def test_resnet_names_follow_torchvision():
    model = zoo.resnet(18)
    _check_io(model)
    nodes = {n.name for n in model.graph.node}
    inits = {t.name for t in model.graph.initializer}
    assert {"conv1", "bn1", "maxpool", "layer1.0.conv1", "layer1.0.bn1", "layer2.0.downsample.0",
            "layer4.1.add", "avgpool", "flatten", "fc"} <= nodes
    assert {"conv1.weight", "bn1.running_var", "layer1.0.conv1.weight",
            "layer2.0.downsample.1.weight", "fc.weight", "fc.bias"} <= inits
    (fc,) = [n for n in model.graph.node if n.op_type == "Gemm"]
    assert any(a.name == "transB" and a.i == 1 for a in fc.attribute)
    assert len(fc.input) == 3


def test_resnet18_224_runs():
    model = zoo.resnet(18)
    onnx.checker.check_model(model, full_check=True)
    out = _run(model, batch=1)
    assert out.shape == (1, 1000)
    assert np.isfinite(out).all() and np.abs(out).max() < 1e3


@pytest.mark.parametrize("depth", [18, 50])
def test_resnet_fold_bn_equivalent(depth):
    plain = zoo.resnet(depth, image_size=64, num_classes=10)
    folded = zoo.resnet(depth, image_size=64, num_classes=10, fold_bn=True)
    onnx.checker.check_model(folded, full_check=True)
    assert "BatchNormalization" in _ops(plain) and "BatchNormalization" not in _ops(folded)
    assert all(len(n.input) == 3 for n in folded.graph.node if n.op_type == "Conv")
    assert all(len(n.input) == 2 for n in plain.graph.node if n.op_type == "Conv")
    a, b = _run(plain, batch=2), _run(folded, batch=2)
    assert a.shape == (2, 10) and np.isfinite(a).all() and np.abs(a).max() < 1e3
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("head", ["flatten", "reshape"])
def test_resnet_heads(head):
    model = zoo.resnet(18, image_size=32, num_classes=7, head=head)
    onnx.checker.check_model(model, full_check=True)
    assert ("Reshape" if head == "reshape" else "Flatten") in _ops(model)
    assert _run(model, batch=3).shape == (3, 7)


def test_resnet_rejects_bad_arguments():
    with pytest.raises(ValueError):
        zoo.resnet(20)
    with pytest.raises(ValueError):
        zoo.resnet(18, head="pool")


def test_random_input_resolves_symbolic_batch():
    feed = zoo.random_input(zoo.conv_bn_relu(), batch=5, seed=1)
    assert list(feed) == ["input"]
    assert feed["input"].shape == (5, 3, 8, 8) and feed["input"].dtype == np.float32
    np.testing.assert_array_equal(feed["input"], zoo.random_input(zoo.conv_bn_relu(), 5, 1)["input"])
