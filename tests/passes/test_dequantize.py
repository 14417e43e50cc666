"""``dequantize`` (#13 item 4): golden structure, no-op on a float model, numerical equivalence
(the float graph equals the source float model with its weights replaced by ORT's DQ(Q(w)),
for quantize_static QDQ/QOperator and quantize_dynamic; the torch-QAT graph equals its own
QDQ graph with the activation pairs removed), the ``run`` refusal and the re-quantise round
trip on ORT."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from benchmarks._ortq import ort_quantized
from qcompile.backends.ort import lower
from qcompile.errors import QCompileError
from qcompile.frontend import lift
from qcompile.ir import format_graph, verify
from qcompile.passes import PassContext, parse_pipeline, run_pipeline
from qcompile.passes.dequantize import Dequantize, quantised_ops
from qcompile.testing import zoo
from qcompile.testing.quantized import torch_qat_model

CASES = [dict(fmt="QDQ"), dict(fmt="QDQ", per_channel=True, activations="int8"),
         dict(fmt="QDQ", reduce_range=True), dict(fmt="QOperator"),
         dict(fmt="QOperator", per_channel=True), dict(dynamic=True),
         dict(dynamic=True, per_channel=True)]


def _run(model: onnx.ModelProto, feed: dict) -> np.ndarray:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"]).run(None, feed)[0]


def _dequantized(model: onnx.ModelProto):
    r = run_pipeline(lift(model), parse_pipeline("dequantize"), PassContext())
    verify(r.graph)
    return r.graph, r.results[0][1]


@pytest.fixture(scope="module")
def float_model():
    return zoo.mini_resnet(fold_bn=True)


def _init(m: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}


def _bias_scales(q: onnx.ModelProto, qi: dict) -> dict[str, np.ndarray]:
    """QOperator biases are int32 in units of s_x s_w (no initializer holds that scale)."""
    out = {}
    for n in q.graph.node:
        if n.op_type == "QLinearConv" and len(n.input) > 8:
            out[n.input[8]] = qi[n.input[1]].astype(np.float32) * qi[n.input[4]]
        if n.op_type == "QGemm" and len(n.input) > 6 and n.input[6]:
            out[n.input[6]] = qi[n.input[1]].astype(np.float32) * qi[n.input[4]]
    return out


def _reference(f: onnx.ModelProto, q: onnx.ModelProto) -> onnx.ModelProto:
    """``f`` with every weight/bias ORT quantised replaced by its DQ(Q(w)), read by name from
    ``q``'s initializers (independent of the pass)."""
    qi = _init(q)
    bias_scale = _bias_scales(q, qi)
    ref = onnx.ModelProto()
    ref.CopyFrom(f)
    for t in ref.graph.initializer:
        for base, transposed in ((t.name, False), (t.name + "_Transposed", True)):
            codes = qi.get(base + "_quantized")
            if codes is None:
                continue
            s = qi.get(base + "_scale", qi.get(base + "_quantized_scale", bias_scale.get(
                base + "_quantized")))
            z = qi.get(base + "_zero_point", qi.get(base + "_quantized_zero_point", 0))
            s, z = np.asarray(s, np.float32), np.asarray(z).astype(np.float32)
            axis = 1 if transposed else 0
            shape = [1] * codes.ndim
            if s.size > 1 or z.size > 1:
                shape[axis] = -1
            w = ((codes.astype(np.float32) - z.reshape(shape)) * s.reshape(shape))
            w = w.T if transposed else w
            t.CopyFrom(numpy_helper.from_array(w.astype(np.float32).reshape(t.dims), t.name))
            break
        else:
            if t.name.endswith(".weight"):
                raise AssertionError(f"{t.name}: no quantised counterpart in the model")
    return ref


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_float_equivalent_equals_dequantised_weights(float_model, case):
    q = ort_quantized(float_model, **case)
    g, res = _dequantized(q)
    assert quantised_ops(g) == 0, res.notes
    ops = {n.op for n in g.nodes}
    assert not ops & {"DequantizeLinear", "QuantizeLinear", "ConvInteger", "MatMulInteger"}
    assert all(n.inputs[1].is_const for n in g.nodes if n.op in ("Conv", "Gemm", "MatMul"))
    x = np.random.default_rng(3).standard_normal((2, 3, 16, 16)).astype(np.float32)
    got = _run(lower(g), {"input": x})
    want = _run(_reference(float_model, q), {"input": x})
    # the same float network: only float32 summation order differs
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    # and it is not the float model itself (the weights did change)
    assert np.abs(_run(float_model, {"input": x}) - want).max() > 1e-4


def test_torch_qat_graph_without_activation_pairs():
    q = torch_qat_model()
    g, res = _dequantized(q)
    assert res.stats["pairs_removed"] == 2 and res.stats["weights_dequantized"] == 3
    # reference: the same model with the two activation Q -> Cast -> DQ chains cut out; the
    # input Q has z = 0 = qmin (uint8), so it clamps at 0: a Relu in the float equivalent
    keep = [n for n in q.graph.node if n.output[0] not in
            ("x_q", "x_qc", "x_dq", "y_q", "y_qc", "y_dq")]
    keep = [onnx.NodeProto.FromString(n.SerializeToString()) for n in keep]
    for n in keep:
        n.input[:] = [{"x_dq": "x_relu", "y_dq": "relu"}.get(i, i) for i in n.input]
    keep.append(onnx.helper.make_node("Relu", ["x"], ["x_relu"]))
    from onnx import helper
    nodes, known, rest = [], {"image"} | {i.name for i in q.graph.initializer}, list(keep)
    while rest:
        n = next(n for n in rest if all(i in known or not i for i in n.input))
        nodes.append(n)
        known |= set(n.output)
        rest.remove(n)
    ref = helper.make_model(helper.make_graph(nodes, "ref", list(q.graph.input),
                                              list(q.graph.output), list(q.graph.initializer)),
                            opset_imports=list(q.opset_import))
    ref.ir_version = q.ir_version
    img = np.random.default_rng(0).integers(0, 256, (3, 3, 8, 8), np.uint8)
    np.testing.assert_allclose(_run(lower(g), {"image": img}), _run(ref, {"image": img}),
                               rtol=1e-5, atol=1e-6)


def test_golden_structure(golden):
    g, _ = _dequantized(torch_qat_model())
    golden("dequantize/torch_qat.after", format_graph(g, digests=False))


def test_noop_on_float_model(float_model):
    g = lift(float_model)
    before = format_graph(g, digests=True)
    r = Dequantize().run(g, PassContext())
    assert not r.modified and dict(r.stats) == {} and format_graph(r.graph, digests=True) == before


def test_declines_say_why():
    # the codes of a Q that is a graph output are observable: the pair stays, with a note
    from onnx import TensorProto, helper
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"])]
    m = helper.make_model(helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, [1, 4])],
        [numpy_helper.from_array(np.float32(0.1), "s"),
         numpy_helper.from_array(np.uint8(3), "z")]),
        opset_imports=[helper.make_opsetid("", 17)])
    r = Dequantize().run(lift(m), PassContext())
    assert not r.modified and r.stats == {"skipped_codes_used": 1}
    assert "graph output" in r.notes[0]


def test_run_refuses_a_quantised_model_without_dequantize(tmp_path, float_model):
    from qcompile.driver.compile import compile_model

    p = tmp_path / "q.onnx"
    onnx.save(ort_quantized(float_model), p)
    with pytest.raises(QCompileError, match=r"already quantised \(\d+ QuantizeLinear/QLinear "
                       r"ops\); add 'dequantize' first: -p dequantize,calibrate,quantize"):
        compile_model(p, tmp_path / "o.onnx", passes="fold,calibrate,quantize",
                      target="ort-int8", calib=None)


def test_cli_refusal_is_one_line_exit_2_and_writes_nothing(tmp_path, float_model):
    from typer.testing import CliRunner

    from qcompile.cli import app

    p = tmp_path / "q.onnx"
    onnx.save(ort_quantized(float_model, fmt="QOperator"), p)
    out = tmp_path / "o.onnx"
    r = CliRunner().invoke(app, ["run", str(p), "-p", "fold", "-o", str(out)])
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.exit_code == 2 and len(lines) == 1, r.output
    assert lines[0].startswith("error: ") and "add 'dequantize' first" in lines[0]
    assert not out.exists()


@pytest.mark.parametrize("case", [dict(fmt="QOperator"), dict(dynamic=True)],
                         ids=["qoperator", "dynamic"])
def test_requantise_round_trip_runs_on_ort(tmp_path, float_model, case):
    from qcompile.driver.compile import compile_model

    p = tmp_path / "q.onnx"
    onnx.save(ort_quantized(float_model, **case), p)
    calib = tmp_path / "c.npy"
    x = np.random.default_rng(5).standard_normal((8, 3, 16, 16)).astype(np.float32)
    np.save(calib, x)
    out = tmp_path / "r.onnx"
    rep = compile_model(p, out, passes="dequantize,fold,calibrate,quantize{reduce_range=true}",
                        target="ort-int8", calib=str(calib))
    assert rep["passes"][0]["pass"] == "dequantize" and rep["passes"][0]["modified"]
    m = onnx.load(out)
    assert any(n.op_type == "QuantizeLinear" for n in m.graph.node)
    y = _run(m, {"input": x[:2]})
    ref = _run(_reference(float_model, ort_quantized(float_model, **case)), {"input": x[:2]})
    # re-quantised int8 network vs its float equivalent: int8 error, not a broken graph
    assert np.abs(y - ref).max() < 0.1 * np.abs(ref).max()
