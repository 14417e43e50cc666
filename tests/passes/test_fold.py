"""``fold``: golden structure, declines (no-op cases), numerical equivalence through onnxruntime
(random inputs and real CIFAR-10 images), the bn_folded check, idempotence."""

from __future__ import annotations

import functools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcompile.backends.ort import lower
from qcompile.frontend import lift
from qcompile.ir import Graph, format_graph, verify
from qcompile.passes import (
    FoldBatchNorm,
    PassContext,
    PassResult,
    checks,
    parse_pipeline,
    run_pipeline,
)
from qcompile.testing import zoo

REL_TOL = 1e-5


def run_ort(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feed)


def fold(g: Graph) -> PassResult:
    r = FoldBatchNorm().run(g, PassContext())
    verify(r.graph)
    return r


def assert_equivalent(original: onnx.ModelProto, g: Graph, batch: int = 3, seed: int = 7,
                      rel: float = REL_TOL) -> float:
    feed = zoo.random_input(original, batch=batch, seed=seed)
    want = run_ort(original, feed)
    got = run_ort(lower(g), feed)
    worst = 0.0
    for w, o in zip(want, got, strict=True):
        assert w.shape == o.shape
        scale = float(np.abs(w).max())
        err = float(np.abs(w - o).max())
        assert err <= rel * scale, f"max |diff| {err:.3g} > {rel} * {scale:.3g}"
        worst = max(worst, err / scale)
    return worst


# -- golden structure -------------------------------------------------------------------------------
GOLDEN_CASES = {
    "conv_bn_relu": lambda: zoo.conv_bn_relu(False),
    "conv_bias_bn_relu": lambda: zoo.conv_bn_relu(True),
    "convtranspose_bn_g1": lambda: zoo.convtranspose_bn(1),
    "convtranspose_bn_g2": lambda: zoo.convtranspose_bn(2),
    "gemm_bn_transB": lambda: zoo.gemm_bn(True),
    "gemm_bn_no_transB": lambda: zoo.gemm_bn(False),
}


@pytest.mark.parametrize("case", sorted(GOLDEN_CASES))
def test_golden(case, golden):
    model = GOLDEN_CASES[case]()
    g = lift(model)
    golden(f"fold/{case}.before", format_graph(g, digests=False))
    r = fold(g)
    assert r.modified is True
    assert r.stats == {"folded": 1} and r.notes == ()
    assert not any(n.op == "BatchNormalization" for n in g.nodes)
    golden(f"fold/{case}.after", format_graph(g, digests=False))
    assert_equivalent(model, g)


def test_gemm_output_keeps_public_name():
    g = lift(zoo.gemm_bn())
    fold(g)
    assert [v.name for v in g.outputs] == ["logits"]
    assert g.outputs[0].producer.op == "Gemm"
    assert g.outputs[0].producer.attrs["beta"] == 1.0
    assert lower(g).graph.output[0].name == "logits"


def test_bn_constants_removed_and_bias_added():
    g = lift(zoo.conv_bn_relu(False))
    fold(g)
    assert not any(k.startswith("bn.") for k in g.initializers)
    conv = g.find_node("conv")
    assert len(conv.inputs) == 3 and conv.inputs[2].name == "conv.bias"
    assert conv.inputs[2].type.shape == (8,)


# -- declines -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("builder,key,words", [
    (zoo.shared_weight_conv_bn, "skipped_shared_weight", "shared.weight"),
    (zoo.bn_after_non_foldable, "skipped_not_after_linear", "Relu"),
])
def test_no_op_cases(builder, key, words):
    model = builder()
    g = lift(model)
    before = format_graph(g)
    r = fold(g)
    assert r.modified is False
    assert "folded" not in r.stats
    assert r.stats[key] >= 1 and sum(r.stats.values()) == r.stats[key]
    assert len(r.notes) == r.stats[key]
    assert all(words in n and "BatchNormalization" in n for n in r.notes), r.notes
    assert format_graph(g) == before
    assert checks.bn_folded(g) is None  # a declined BN does not count as foldable
    assert_equivalent(model, g, rel=0.0)


def test_shared_weight_notes_name_both_convs():
    r = fold(lift(zoo.shared_weight_conv_bn()))
    assert r.stats == {"skipped_shared_weight": 2}
    assert any("conv_a" in n for n in r.notes) and any("conv_b" in n for n in r.notes)
    assert all("shared with another node" in n for n in r.notes)


# -- hand-built edge cases --------------------------------------------------------------------------------
def _model(nodes, inits, inputs, outputs, opset=17) -> onnx.ModelProto:
    rng = np.random.default_rng(3)
    tensors = []
    for name, value in inits.items():
        arr = np.asarray(value)
        if arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        tensors.append(numpy_helper.from_array(arr, name))
    g = helper.make_graph(
        nodes, "edge",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
        initializer=tensors)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    del rng
    return m


def _bn_params(prefix: str, c: int, seed: int) -> dict[str, np.ndarray]:
    r = np.random.default_rng(seed)
    return {f"{prefix}.g": r.uniform(0.5, 1.5, c), f"{prefix}.b": r.normal(0, 0.1, c),
            f"{prefix}.m": r.normal(0, 0.1, c), f"{prefix}.v": r.uniform(0.5, 1.5, c)}


def _bn(prefix: str, x: str, y: str, **attrs) -> onnx.NodeProto:
    return helper.make_node("BatchNormalization",
                            [x, f"{prefix}.g", f"{prefix}.b", f"{prefix}.m", f"{prefix}.v"], [y],
                            name=prefix, **attrs)


def _w(*shape, seed=0):
    return np.random.default_rng(seed).normal(0, 0.3, shape)


def gemm_model(*, alpha=1.0, beta=1.0, trans_b=1, bias_shape=(16,), trans_a=0):
    inits = {"w": _w(16, 12) if trans_b else _w(12, 16), **_bn_params("bn", 16, 1)}
    ins = ["a", "w"]
    if bias_shape is not None:
        inits["c"] = _w(*bias_shape, seed=2)
        ins.append("c")
    a_shape = [12, 4] if trans_a else [4, 12]
    nodes = [helper.make_node("Gemm", ins, ["y"], name="gemm", alpha=alpha, beta=beta,
                              transB=trans_b, transA=trans_a),
             _bn("bn", "y", "out", epsilon=1e-3)]
    return _model(nodes, inits, [("a", a_shape)], [("out", [4, 16])])


@pytest.mark.parametrize("kw", [
    {"alpha": 2.0, "beta": 0.5},
    {"alpha": 0.5, "beta": 3.0, "trans_b": 0},
    {"bias_shape": (1,)},
    {"bias_shape": (1, 16), "beta": 2.0},
    {"bias_shape": None},
    {"bias_shape": None, "beta": 0.25, "trans_b": 0},
    {"trans_a": 1, "alpha": 1.5},
], ids=["alpha_beta", "alpha_beta_noTransB", "scalar_bias", "row_bias", "no_bias",
        "no_bias_beta", "transA"])
def test_gemm_variants(kw):
    model = gemm_model(**kw)
    g = lift(model)
    r = fold(g)
    assert r.stats == {"folded": 1}, r.notes
    assert_equivalent(model, g)


def test_gemm_full_bias_declined():
    model = gemm_model(bias_shape=(4, 16))
    r = fold(lift(model))
    assert r.modified is False and r.stats == {"skipped_full_gemm_bias": 1}
    assert "full [M, N] bias" in r.notes[0]


def conv_model(kind: str):
    """Small hand-built Conv/BN graphs for the declines and N-d convs."""
    x4 = ("x", [2, 3, 6, 6])
    conv = lambda name, x, w, y, b=None, **kw: helper.make_node(  # noqa: E731
        "Conv", [x, w] + ([b] if b else []), [y], name=name, **kw)
    if kind == "shared_bias":
        inits = {"w1": _w(4, 3, 3, 3), "w2": _w(4, 3, 3, 3, seed=1), "b": _w(4),
                 **_bn_params("bn", 4, 1)}
        nodes = [conv("c1", "x", "w1", "y1", "b"), conv("c2", "x", "w2", "y2", "b"),
                 _bn("bn", "y1", "z"), helper.make_node("Add", ["z", "y2"], ["out"], name="add")]
        return _model(nodes, inits, [x4], [("out", [2, 4, 4, 4])])
    if kind == "output_used_twice":
        inits = {"w": _w(4, 3, 3, 3), **_bn_params("bn", 4, 1)}
        nodes = [conv("c", "x", "w", "y"), _bn("bn", "y", "z"),
                 helper.make_node("Add", ["z", "y"], ["out"], name="add")]
        return _model(nodes, inits, [x4], [("out", [2, 4, 4, 4])])
    if kind == "conv_output_is_graph_output":
        inits = {"w": _w(4, 3, 3, 3), **_bn_params("bn", 4, 1)}
        nodes = [conv("c", "x", "w", "y"), _bn("bn", "y", "out")]
        return _model(nodes, inits, [x4], [("out", [2, 4, 4, 4]), ("y", [2, 4, 4, 4])])
    if kind == "params_not_constant":
        p = _bn_params("bn", 4, 1)
        del p["bn.g"]
        inits = {"w": _w(4, 3, 3, 3), **p}
        nodes = [conv("c", "x", "w", "y"), _bn("bn", "y", "out")]
        return _model(nodes, inits, [x4, ("bn.g", [4])], [("out", [2, 4, 4, 4])])
    if kind == "weight_not_constant":
        inits = _bn_params("bn", 4, 1)
        nodes = [conv("c", "x", "w", "y"), _bn("bn", "y", "out")]
        return _model(nodes, inits, [x4, ("w", [4, 3, 3, 3])], [("out", [2, 4, 4, 4])])
    if kind == "bn_on_input":
        nodes = [_bn("bn", "x", "out")]
        return _model(nodes, _bn_params("bn", 3, 1), [x4], [("out", [2, 3, 6, 6])])
    if kind == "conv1d":
        inits = {"w": _w(5, 3, 3), "b": _w(5, seed=3), **_bn_params("bn", 5, 1)}
        nodes = [conv("c", "x", "w", "y", "b", pads=[1, 1]), _bn("bn", "y", "out", epsilon=0.01)]
        return _model(nodes, inits, [("x", [2, 3, 7])], [("out", [2, 5, 7])])
    if kind == "conv3d_grouped":
        inits = {"w": _w(6, 1, 2, 2, 2), **_bn_params("bn", 6, 1)}
        nodes = [conv("c", "x", "w", "y", group=3), _bn("bn", "y", "out")]
        return _model(nodes, inits, [("x", [1, 3, 4, 4, 4])], [("out", [1, 6, 3, 3, 3])])
    if kind == "shared_bn_params":  # two BNs share every parameter tensor
        inits = {"w1": _w(4, 3, 3, 3), "w2": _w(4, 3, 3, 3, seed=1), **_bn_params("bn", 4, 1)}
        nodes = [conv("c1", "x", "w1", "y1"), conv("c2", "x", "w2", "y2"),
                 _bn("bn", "y1", "z1"),
                 helper.make_node("BatchNormalization", ["y2", "bn.g", "bn.b", "bn.m", "bn.v"],
                                  ["z2"], name="bn2"),
                 helper.make_node("Add", ["z1", "z2"], ["out"], name="add")]
        return _model(nodes, inits, [x4], [("out", [2, 4, 4, 4])])
    if kind == "convtranspose_bias_g2":
        inits = {"w": _w(4, 3, 2, 2), "b": _w(6, seed=4), **_bn_params("bn", 6, 1)}
        nodes = [helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], name="ct",
                                  group=2, strides=[2, 2]),
                 _bn("bn", "y", "out")]
        return _model(nodes, inits, [("x", [2, 4, 3, 3])], [("out", [2, 6, 6, 6])])
    raise KeyError(kind)


@pytest.mark.parametrize("op", ["Conv", "Gemm"])
def test_explicitly_omitted_bias_slot_is_filled(op):
    """``Conv(x, w, "")``: the folded bias goes into slot 2, not a fourth input."""
    if op == "Conv":
        inits = {"w": _w(4, 3, 3, 3), **_bn_params("bn", 4, 1)}
        node = helper.make_node("Conv", ["x", "w", ""], ["y"], name="c")
        io = [("x", [2, 3, 5, 5])], [("out", [2, 4, 3, 3])]
    else:
        inits = {"w": _w(4, 6), **_bn_params("bn", 4, 1)}
        node = helper.make_node("Gemm", ["x", "w", ""], ["y"], name="c", transB=1, beta=0.5)
        io = [("x", [2, 6])], [("out", [2, 4])]
    model = _model([node, _bn("bn", "y", "out")], inits, *io)
    g = lift(model)
    assert len(g.find_node("c").inputs) == 3 and g.find_node("c").inputs[2] is None
    r = fold(g)
    assert r.stats == {"folded": 1}
    c = g.find_node("c")
    assert len(c.inputs) == 3 and c.inputs[2] is not None and c.inputs[2].is_const
    assert_equivalent(model, g)


@pytest.mark.parametrize("kind,key", [
    ("shared_bias", "skipped_shared_bias"),
    ("output_used_twice", "skipped_shared_output"),
    ("conv_output_is_graph_output", "skipped_shared_output"),
    ("params_not_constant", "skipped_params_not_constant"),
    ("weight_not_constant", "skipped_weight_not_constant"),
    ("bn_on_input", "skipped_not_after_linear"),
])
def test_declines(kind, key):
    model = conv_model(kind)
    g = lift(model)
    before = format_graph(g)
    r = fold(g)
    assert r.modified is False and r.stats == {key: 1}, r.stats
    assert len(r.notes) == 1 and r.notes[0].startswith("BatchNormalization 'bn': ")
    assert format_graph(g) == before


def test_training_mode_declined():
    inits = {"w": _w(4, 3, 3, 3), **_bn_params("bn", 4, 1)}
    bn = _bn("bn", "y", "out", training_mode=1)
    bn.output.extend(["bn.running_mean", "bn.running_var"])  # training mode has 3 outputs
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="c"), bn]
    model = _model(nodes, inits, [("x", [2, 3, 6, 6])], [("out", [2, 4, 4, 4])])
    r = fold(lift(model))
    assert r.stats == {"skipped_training_mode": 1} and "training mode" in r.notes[0]


@pytest.mark.parametrize("kind", ["conv1d", "conv3d_grouped", "shared_bn_params",
                                  "convtranspose_bias_g2"])
def test_folds_nd_and_shared_params(kind):
    model = conv_model(kind)
    g = lift(model)
    r = fold(g)
    assert r.modified and r.stats["folded"] == (2 if kind == "shared_bn_params" else 1)
    assert not any(n.op == "BatchNormalization" for n in g.nodes)
    assert not any(k.startswith("bn.") for k in g.initializers)  # dead once both folded
    assert_equivalent(model, g)


# -- numerical equivalence ---------------------------------------------------------------------------------
NUMERIC_ZOO = {
    "conv_bn_relu": lambda: zoo.conv_bn_relu(False),
    "conv_bias_bn_relu": lambda: zoo.conv_bn_relu(True),
    "convtranspose_bn_g1": lambda: zoo.convtranspose_bn(1),
    "convtranspose_bn_g2": lambda: zoo.convtranspose_bn(2),
    "gemm_bn_transB": lambda: zoo.gemm_bn(True),
    "gemm_bn_no_transB": lambda: zoo.gemm_bn(False),
    "shared_weight_conv_bn": zoo.shared_weight_conv_bn,
    "bn_after_non_foldable": zoo.bn_after_non_foldable,
    "residual_block": zoo.residual_block,
    "mini_resnet": zoo.mini_resnet,
    "depthwise_block": zoo.depthwise_block,
    "all_ops_model": zoo.all_ops_model,
    "resnet18_64": lambda: zoo.resnet(18, image_size=64, num_classes=100),
    "resnet50_64": lambda: zoo.resnet(50, image_size=64, num_classes=100),
}


@pytest.mark.parametrize("name", sorted(NUMERIC_ZOO))
def test_numerical_equivalence_zoo(name):
    model = NUMERIC_ZOO[name]()
    g = lift(model)
    fold(g)
    assert checks.bn_folded(g) is None
    assert_equivalent(model, g, batch=2 if name.startswith("resnet") else 3)


def test_fold_matches_zoo_prefolded_resnet():
    """zoo's fold_bn=True folds the same random BN at build time: same function."""
    g = lift(zoo.mini_resnet(fold_bn=False))
    fold(g)
    ref = zoo.mini_resnet(fold_bn=True)
    assert_equivalent(ref, g)
    assert [n.op for n in g.nodes] == [n.op_type for n in ref.graph.node]


@functools.cache
def _shared(path: str) -> bytes:
    return open(path, "rb").read()


@pytest.mark.parametrize("name", ["cifar10_resnet20.onnx", "cifar10_resnet56.onnx",
                                  "efficientnet_lite0.onnx"])
def test_numerical_equivalence_shared_models(shared_data, name):
    model = onnx.load(str(shared_data / name))
    g = lift(model)
    n_bn = sum(n.op == "BatchNormalization" for n in g.nodes)
    r = fold(g)
    assert r.stats == {"folded": n_bn} and n_bn > 0
    assert checks.bn_folded(g) is None
    assert_equivalent(model, g, batch=2)


def test_resnet20_real_images(shared_data):
    from qcompile.data import open_dataset, preset

    model = onnx.load(str(shared_data / "cifar10_resnet20.onnx"))
    g = lift(model)
    fold(g)
    folded = lower(g)
    ds = open_dataset(shared_data / "cifar10_test_dev.npz", preset("cifar"))
    x = np.concatenate([b.x for b in ds.batches(250, limit=500)])
    assert x.shape == (500, 3, 32, 32) and x.dtype == np.float32
    (want,) = run_ort(model, {"input": x})
    (got,) = run_ort(folded, {"input": x})
    scale = float(np.abs(want).max())
    assert float(np.abs(want - got).max()) <= 1e-4 * scale
    assert np.array_equal(want.argmax(1), got.argmax(1))
    # sanity: these are real images, the model is far better than chance on them
    labels = np.concatenate([b.labels for b in ds.batches(250, limit=500)])
    assert (want.argmax(1) == labels).mean() > 0.6


# -- checks, idempotence, pipeline -----------------------------------------------------------------------
def test_bn_folded_check():
    g = lift(zoo.mini_resnet())
    why = checks.bn_folded(g)
    assert why is not None and "BatchNormalization" in why
    fold(g)
    assert checks.bn_folded(g) is None


def test_fold_twice_second_is_noop():
    g = lift(zoo.resnet(18, image_size=32, num_classes=10))
    first = fold(g)
    assert first.modified and first.stats["folded"] == 20
    text = format_graph(g)
    second = fold(g)
    assert second.modified is False and dict(second.stats) == {} and second.notes == ()
    assert format_graph(g) == text


def test_fold_through_pipeline_reports_modified():
    g = lift(zoo.mini_resnet())
    res = run_pipeline(g, parse_pipeline("fold,fold"))
    (p1, r1, _), (p2, r2, _) = res.results
    assert p1.name == p2.name == "fold"
    assert r1.modified is True and r2.modified is False
    assert checks.bn_folded(res.graph) is None


def test_fold_is_in_place_and_clone_protects_original():
    g = lift(zoo.conv_bn_relu())
    text = format_graph(g)
    g2 = g.clone()
    fold(g2)
    assert format_graph(g) == text
    assert format_graph(g2) != text
