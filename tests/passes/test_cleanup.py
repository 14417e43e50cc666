"""``cleanup``: golden structure, no-op runs, numerical equivalence, and what it must keep."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcompile.backends.ort import lower
from qcompile.frontend import lift
from qcompile.ir import Graph, format_graph, verify
from qcompile.passes import Cleanup, PassContext, PassResult, parse_pipeline, run_pipeline
from qcompile.testing import zoo


def run_ort(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feed)


def cleanup(g: Graph, **opts) -> PassResult:
    r = Cleanup(**opts).run(g, PassContext())
    verify(r.graph)
    return r


def assert_equivalent(original: onnx.ModelProto, g: Graph, feed=None, rel: float = 1e-6):
    feed = feed if feed is not None else zoo.random_input(original, batch=3, seed=5)
    want = run_ort(original, feed)
    got = run_ort(lower(g), feed)
    for w, o in zip(want, got, strict=True):
        assert w.shape == o.shape and w.dtype == o.dtype
        assert np.abs(w - o).max() <= rel * max(np.abs(w).max(), 1e-30)


CASES = {"identity_dropout_model": zoo.identity_dropout_model, "all_ops_model": zoo.all_ops_model}


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_and_numerics(case, golden):
    model = CASES[case]()
    g = lift(model)
    golden(f"cleanup/{case}.before", format_graph(g, digests=False))
    r = cleanup(g)
    assert r.modified is True
    golden(f"cleanup/{case}.after", format_graph(g, digests=False))
    assert not any(n.op in ("Identity", "Dropout") for n in g.nodes)
    assert [v.name for v in g.outputs] == ["logits"]
    assert_equivalent(model, g)


def test_identity_dropout_stats():
    r = cleanup(lift(zoo.identity_dropout_model()))
    assert r.stats == {"removed_identity": 2, "removed_dropout": 1, "folded_constants": 2,
                       "dead_constants": 5}
    assert r.notes == ()


def test_all_ops_keeps_opaque_erf():
    g = lift(zoo.all_ops_model())
    cleanup(g)
    assert sum(n.op == "Erf" for n in g.nodes) == 1


@pytest.mark.parametrize("builder", [zoo.identity_dropout_model, zoo.all_ops_model,
                                     zoo.conv_bn_relu, zoo.mini_resnet])
def test_second_run_is_noop(builder):
    g = lift(builder())
    cleanup(g)
    text = format_graph(g)
    r = cleanup(g)
    assert r.modified is False and dict(r.stats) == {}
    assert format_graph(g) == text


def test_noop_on_clean_model():
    g = lift(zoo.conv_bn_relu())
    text = format_graph(g)
    r = cleanup(g)
    assert r.modified is False and dict(r.stats) == {}
    assert format_graph(g) == text


def test_without_constant_folding():
    g = lift(zoo.identity_dropout_model())
    r = cleanup(g, fold_constants=False)
    assert "folded_constants" not in r.stats
    assert {n.op for n in g.nodes} >= {"Mul", "Concat"}
    assert not any(n.op in ("Identity", "Dropout") for n in g.nodes)
    assert parse_pipeline("cleanup{fold_constants=false}")[0] == Cleanup(fold_constants=False)


# -- hand-built cases ----------------------------------------------------------------------------------------
def _model(nodes, inits, inputs, outputs) -> onnx.ModelProto:
    g = helper.make_graph(
        nodes, "cleanup_case",
        [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs],
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


F, B = TensorProto.FLOAT, TensorProto.BOOL
X = ("x", F, [2, 4])


def dropout_model(training: str) -> onnx.ModelProto:
    inits = {"ratio": np.float32(0.5)}
    inputs = [X]
    if training == "input":
        inputs.append(("training_mode", B, []))
    elif training in ("true", "false"):
        inits["training_mode"] = np.array(training == "true")
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Dropout", ["r", "ratio", "training_mode"], ["d"], name="drop"),
             helper.make_node("Sigmoid", ["d"], ["y"], name="sig")]
    return _model(nodes, inits, inputs, [("y", F, [2, 4])])


@pytest.mark.parametrize("training", ["input", "true"])
def test_dropout_training_mode_not_false_is_kept(training):
    g = lift(dropout_model(training))
    text = format_graph(g)
    r = cleanup(g)
    assert r.modified is False
    assert r.stats == {"skipped_dropout_training": 1}
    assert r.notes == ("Dropout 'drop': training_mode is not a constant false",)
    assert format_graph(g) == text


def test_dropout_training_mode_false_is_removed():
    model = dropout_model("false")
    g = lift(model)
    r = cleanup(g)
    assert r.stats == {"removed_dropout": 1, "dead_constants": 2}
    assert [n.op for n in g.nodes] == ["Relu", "Sigmoid"]
    assert_equivalent(model, g, {"x": np.random.default_rng(0).standard_normal((2, 4))
                                 .astype(np.float32)}, rel=0.0)


def test_dropout_mask_used_is_kept():
    nodes = [helper.make_node("Dropout", ["x"], ["d", "mask"], name="drop"),
             helper.make_node("Cast", ["mask"], ["m"], name="cast", to=F),
             helper.make_node("Add", ["d", "m"], ["y"], name="add")]
    g = lift(_model(nodes, {}, [X], [("y", F, [2, 4])]))
    r = cleanup(g)
    assert r.modified is False and r.stats == {"skipped_dropout_mask_used": 1}
    assert "mask output is used" in r.notes[0]


def test_identity_from_input_to_output_is_kept():
    nodes = [helper.make_node("Identity", ["x"], ["y"], name="id")]
    g = lift(_model(nodes, {}, [X], [("y", F, [2, 4])]))
    r = cleanup(g)
    assert r.modified is False and r.stats == {"skipped_public_identity": 1}
    assert [v.name for v in g.outputs] == ["y"]


def test_identity_before_output_keeps_public_name():
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Identity", ["r"], ["y"], name="id")]
    model = _model(nodes, {}, [X], [("y", F, [2, 4])])
    g = lift(model)
    r = cleanup(g)
    assert r.stats == {"removed_identity": 1}
    assert [n.op for n in g.nodes] == ["Relu"] and g.outputs[0].name == "y"
    assert lower(g).graph.output[0].name == "y"


def test_dead_nodes_and_constants_removed():
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Mul", ["x", "k"], ["dead1"], name="dead_mul"),
             helper.make_node("Sigmoid", ["dead1"], ["dead2"], name="dead_sig"),
             helper.make_node("Add", ["r", "c"], ["y"], name="add")]
    inits = {"k": np.ones(4, np.float32), "c": np.ones(4, np.float32),
             "unused": np.zeros(3, np.float32)}
    model = _model(nodes, inits, [X], [("y", F, [2, 4])])
    g = lift(model)
    r = cleanup(g)
    assert r.stats == {"dead_nodes": 2, "dead_constants": 2}
    assert [n.name for n in g.nodes] == ["relu", "add"]
    assert set(g.initializers) == {"c"}
    assert_equivalent(model, g, {"x": np.ones((2, 4), np.float32)}, rel=0.0)


def test_integer_constant_folding_matches_onnxruntime():
    """ONNX integer Div truncates toward zero; the numpy folder must agree with ORT."""
    a = np.array([-7, 7, -7, 7, -1, 0, 9, -9], np.int64)
    b = np.array([2, 2, -2, -2, 3, 5, -4, 4], np.int64)
    nodes = [helper.make_node("Div", ["a", "b"], ["q"], name="div"),
             helper.make_node("Sub", ["q", "one"], ["q1"], name="sub"),
             helper.make_node("Cast", ["q1"], ["qf"], name="cast", to=F),
             helper.make_node("Add", ["x", "qf"], ["y"], name="add")]
    model = _model(nodes, {"a": a, "b": b, "one": np.int64(1)}, [("x", F, [8])],
                   [("y", F, [8])])
    g = lift(model)
    r = cleanup(g)
    assert r.stats["folded_constants"] == 2
    assert r.stats["skipped_no_folder"] == 1  # Cast has no numpy folder
    feed = {"x": np.zeros(8, np.float32)}
    (want,) = run_ort(model, feed)
    (got,) = run_ort(lower(g), feed)
    assert np.array_equal(want, got), (want, got)
    assert want.tolist() == [-4, 2, 2, -4, -1, -1, -3, -3]


@pytest.mark.parametrize("case", ["reshape_flatten", "transpose_squeeze", "slice_shape"])
def test_shape_op_folding_matches_onnxruntime(case):
    c = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    if case == "reshape_flatten":
        nodes = [helper.make_node("Reshape", ["c", "s"], ["r"], name="reshape"),
                 helper.make_node("Flatten", ["r"], ["f"], name="flatten", axis=-1),
                 helper.make_node("Reshape", ["f", "s2"], ["k"], name="reshape2")]
        inits = {"c": c, "s": np.array([0, -1, 2], np.int64), "s2": np.array([24], np.int64)}
    elif case == "transpose_squeeze":
        nodes = [helper.make_node("Transpose", ["c"], ["t"], name="tr", perm=[2, 0, 1]),
                 helper.make_node("Unsqueeze", ["t", "ax"], ["u"], name="unsq"),
                 helper.make_node("Squeeze", ["u", "ax"], ["q"], name="sq"),
                 helper.make_node("Reshape", ["q", "s2"], ["k"], name="reshape2")]
        inits = {"c": c, "ax": np.array([-1], np.int64), "s2": np.array([24], np.int64)}
    else:
        nodes = [helper.make_node("Slice", ["c", "st", "en", "axs", "sp"], ["sl"], name="slice"),
                 helper.make_node("Shape", ["sl"], ["sh"], name="shape", start=1),
                 helper.make_node("Cast", ["sh"], ["shf"], name="cast", to=F),
                 helper.make_node("Concat", ["shf", "pad"], ["k"], name="cat", axis=0)]
        inits = {"c": c, "st": np.array([-1, 0], np.int64),
                 "en": np.array([-(2**62), 4], np.int64), "axs": np.array([2, 0], np.int64),
                 "sp": np.array([-2, 1], np.int64), "pad": np.zeros(22, np.float32)}
    nodes.append(helper.make_node("Add", ["x", "k"], ["y"], name="add"))
    model = _model(nodes, inits, [("x", F, [24])], [("y", F, [24])])
    g = lift(model)
    r = cleanup(g)
    assert r.stats["folded_constants"] >= 2
    feed = {"x": np.zeros(24, np.float32)}
    (want,) = run_ort(model, feed)
    (got,) = run_ort(lower(g), feed)
    assert np.array_equal(want, got)


def test_constant_graph_output_is_kept():
    nodes = [helper.make_node("Mul", ["a", "b"], ["y"], name="mul"),
             helper.make_node("Relu", ["x"], ["z"], name="relu")]
    g = lift(_model(nodes, {"a": np.float32(2), "b": np.float32(3)}, [X],
                    [("y", F, []), ("z", F, [2, 4])]))
    r = cleanup(g)
    assert r.stats == {"skipped_public_constant": 1} and r.modified is False
    assert [v.name for v in g.outputs] == ["y", "z"]


def test_cleanup_in_pipeline_after_fold():
    model = zoo.all_ops_model()
    g = lift(model)
    res = run_pipeline(g, parse_pipeline("fold,cleanup,cleanup"))
    mods = [r.modified for _, r, _ in res.results]
    assert mods == [True, True, False]
    assert_equivalent(model, res.graph, rel=1e-5)


@pytest.mark.xfail(strict=True, reason="known limitation: values captured by an opaque "
                   "subgraph (If/Loop branches) are invisible uses in the IR, so dead-code "
                   "elimination removes their producers; lowering then fails the ONNX checker")
def test_value_captured_by_subgraph_is_kept():
    then_g = helper.make_graph([helper.make_node("Relu", ["h"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", F, [2, 4])])
    else_g = helper.make_graph([helper.make_node("Neg", ["h"], ["e"])], "else", [],
                               [helper.make_tensor_value_info("e", F, [2, 4])])
    nodes = [helper.make_node("Sigmoid", ["x"], ["h"], name="sig"),
             helper.make_node("If", ["c"], ["y"], name="if", then_branch=then_g,
                              else_branch=else_g)]
    model = _model(nodes, {}, [X, ("c", B, [])], [("y", F, [2, 4])])
    g = lift(model)
    feed = {"x": np.ones((2, 4), np.float32), "c": np.array(True)}
    assert np.array_equal(run_ort(model, feed)[0], run_ort(lower(g), feed)[0])  # no passes: fine
    cleanup(g)
    assert [n.op for n in g.nodes] == ["Sigmoid", "If"]
