"""``--verify K`` (listeners.Verifier) on a batch: the K elements of a layer come from one
image, only that image's rows go to the reference, and a wrong element in any image of the
batch is still found (the image is drawn at random, so every image can be the one checked)."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from qcompile.backends.mpfr.config import make_config
from qcompile.backends.mpfr.interpreter import Interpreter
from qcompile.backends.mpfr.listeners import Verifier, _batch_rows
from qcompile.frontend import lift

N = 6


def _graph():
    rng = np.random.default_rng(1)
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 3, 3],
                           rng.standard_normal(108).astype(np.float32))
    fw = helper.make_tensor("fw", TensorProto.FLOAT, [64, 5],
                            rng.standard_normal(320).astype(np.float32))
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Add", ["r", "r"], ["a"]),
             helper.make_node("Flatten", ["a"], ["f"]),
             helper.make_node("Gemm", ["f", "fw"], ["y"])]
    g = helper.make_graph(nodes, "v", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                     [N, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [N, 5])],
                          [w, fw])
    return lift(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


def _x():
    return np.random.default_rng(2).standard_normal((N, 3, 8, 8)).astype(np.float32)


def test_batch_verify_finds_no_mismatch_and_checks_every_layer():
    g = _graph()
    cfg = make_config(format="b15e4")
    v = Verifier(cfg, 7, seed=3)
    Interpreter(g, cfg, "fast", listeners=[v]).run({"x": _x()})
    rep = v.report()
    assert rep["mismatches"] == 0
    # Conv, Relu, Add: 7 elements of one image each; Gemm: one image has only 5 outputs
    assert rep["layers"] == 4 and rep["elements"] == 3 * 7 + 5


def test_a_wrong_element_in_any_image_is_found():
    """Corrupt every element of one image's Conv output: over many draws the verifier checks
    that image and reports the place (b, ...) of the bad elements, and never flags another."""
    g = _graph()
    cfg = make_config(format="b15e4")
    conv = next(n for n in g.nodes if n.op == "Conv")
    x = _x()
    outs = {}
    Interpreter(g, cfg, "fast", listeners=[
        lambda node, ins, o: outs.setdefault(node.name, (ins, o))]).run({"x": x})
    ins, o = outs[conv.name]
    bad = 4
    y = np.array(o[0], np.float64, copy=True)
    y[bad] += 1.0
    seen_bad = 0
    for seed in range(12):
        v = Verifier(cfg, 5, seed=seed)
        v(conv, ins, [y])
        rep = v.report()
        places = {tuple(m["index"])[0] for m in v.mismatches}
        assert places <= {bad}
        if places:
            assert rep["mismatches"] == 5
            seen_bad += 1
    assert seen_bad >= 1  # P(image 4 never drawn in 12 draws of 6) = (5/6)^12 = 11%, seed-fixed


def test_rows_rule_declines_batch_mixing_nodes():
    g = _graph()
    gemm = next(n for n in g.nodes if n.op == "Gemm")
    y = np.zeros((N, 5))
    assert _batch_rows(gemm, [np.zeros((N, 64)), np.zeros((64, 5))], y) == [True, False]

    class Fake:  # a Concat on axis 0 mixes images: no slicing
        op, attrs = "Concat", {"axis": 0}
        inputs = gemm.inputs
    assert _batch_rows(Fake, [np.zeros((N, 5)), np.zeros((N, 5))], np.zeros((2 * N, 5))) is None
    Fake.attrs = {"axis": -2}
    assert _batch_rows(Fake, [np.zeros((N, 5)), np.zeros((N, 5))], np.zeros((N, 5))) is None
