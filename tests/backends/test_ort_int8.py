"""ORT int8 lowering: checker, pre-quantised weights, fused kernels, 4/16-bit, CPU, TensorRT."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto

from qcompile.backends.ort import lower
from qcompile.backends.ort.cpu import detect_cpu, int8_defaults
from qcompile.backends.ort.executor import OrtExecutor
from qcompile.backends.ort.measure import node_providers, optimized_op_counts
from qcompile.backends.ort.runtime import run
from qcompile.errors import OptionError
from qcompile.frontend import lift
from qcompile.numerics.error import sqnr_db
from qcompile.testing import zoo
from tests.passes.int8_helpers import compile_graph, tiny_npz


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_npz(tmp_path_factory.mktemp("d") / "tiny.npz", n=32)


def test_weights_are_prequantised_and_checker_passes(data):
    g, _ = compile_graph(zoo.mini_resnet(), data, "fold,calibrate,quantize")
    m = lower(g)
    onnx.checker.check_model(m, full_check=True)
    inits = {t.name: t for t in m.graph.initializer}
    q_inputs = {n.input[0] for n in m.graph.node if n.op_type == "QuantizeLinear"}
    assert not any(name in inits for name in q_inputs)  # no Q on constants at runtime
    for n in m.graph.node:
        if n.op_type == "Conv":
            w_dq = next(p for p in m.graph.node if p.output[0] == n.input[1])
            assert w_dq.op_type == "DequantizeLinear"
            assert inits[w_dq.input[0]].data_type == TensorProto.INT8
            b_dq = next(p for p in m.graph.node if p.output[0] == n.input[2])
            assert inits[b_dq.input[0]].data_type == TensorProto.INT32
    assert not any(t.data_type == TensorProto.FLOAT and t.name.endswith(".weight")
                   for t in m.graph.initializer)  # float weights dropped


def test_qdq_model_matches_numpy_fake_quant(tmp_path):
    """With optimisations off ORT runs our QDQ graph op by op: compare with quant.py maths."""
    from qcompile.ir import QCOMPILE_DOMAIN
    from qcompile.numerics import quant

    data8 = tiny_npz(tmp_path / "d8.npz", n=8, size=8)
    g, _ = compile_graph(zoo.conv_bn_relu(), data8, "fold,calibrate{images=8},quantize")
    x = np.random.default_rng(0).integers(0, 256, (2, 3, 8, 8)).astype(np.float32)
    qdq = next(n for n in g.nodes if n.domain == QCOMPILE_DOMAIN and n.inputs[0].name == "input")
    s, z = qdq.inputs[1].const, qdq.inputs[2].const
    m = lower(g)
    m.graph.output.append(onnx.helper.make_tensor_value_info(qdq.output.name, TensorProto.FLOAT, None))
    from qcompile.backends.ort.runtime import session

    sess = session(m, opt_level="none")
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"input": x}), strict=True))
    np.testing.assert_array_equal(got[qdq.output.name],
                                  quant.fake_quant(x, s, z, quant.qtype("uint8")))


@pytest.mark.parametrize("spec,opset", [("quantize{weights=int4}", 21),
                                        ("quantize{activations=uint16}", 21),
                                        ("quantize{activations=int16}", 21)])
def test_4_and_16_bit_lower_to_opset_21_and_run(data, spec, opset):
    model = zoo.mini_resnet()
    g, _ = compile_graph(model, data, f"fold,calibrate,{spec}")
    m = lower(g)
    onnx.checker.check_model(m)
    assert {o.domain: o.version for o in m.opset_import}[""] == opset
    x = np.random.default_rng(1).integers(0, 256, (4, 3, 16, 16)).astype(np.float32)
    assert sqnr_db(run(model, {"input": x})["logits"], run(m, {"input": x})["logits"]) > 5


def test_executor_caches_session_per_graph_and_outputs():
    g = lift(zoo.conv_bn_relu())
    ex = OrtExecutor()
    x = {"input": np.zeros((1, 3, 8, 8), np.float32)}
    relu = next(n for n in g.nodes if n.op == "Relu").output
    a = ex.run(g, x, [relu])
    s1 = ex._session(g, [relu])
    ex.run(g, x, [relu])
    assert ex._session(g, [relu]) is s1 and a[relu].shape == (1, 8, 8, 8)
    ex.run(g, x, [relu, g.outputs[0]])  # another set of outputs: its own (pruned) session
    assert ex._session(g, [relu, g.outputs[0]]) is not s1
    assert ex._session(g, [relu]) is s1  # kept (one session per output set, LRU)
    g2 = lift(zoo.conv_bn_relu())
    ex.run(g2, x, [next(n for n in g2.nodes if n.op == "Relu").output])
    assert ex._session(g, [relu]) is not s1  # another graph: sessions rebuilt


def test_cpu_detection_and_defaults():
    assert detect_cpu("flags\t: fpu avx avx2 fma", "x86_64") == "avx2"
    assert detect_cpu("flags\t: avx2 avx512f avx512_vnni", "x86_64") == "vnni"
    assert detect_cpu("", "aarch64") == "arm"
    assert detect_cpu("flags: sse4_2", "x86_64") == "generic"
    assert int8_defaults("avx2")["reduce_range"] is True
    assert int8_defaults("vnni")["reduce_range"] is False
    assert int8_defaults("arm")["activations"] == "int8"
    with pytest.raises(OptionError):
        int8_defaults("sparc")


def test_node_providers_report_cpu(data, tmp_path):
    g, _ = compile_graph(zoo.mini_resnet(), data, "fold,calibrate,quantize")
    path = tmp_path / "q.onnx"
    onnx.save(lower(g), path)
    eps = node_providers(path, np.zeros((1, 3, 16, 16), np.float32))
    assert eps and set(eps.values()) == {"CPUExecutionProvider"}
    assert "com.microsoft.QLinearConv" in optimized_op_counts(path)


@pytest.mark.skipif("TensorrtExecutionProvider" not in ort.get_available_providers(),
                    reason="needs onnxruntime-gpu with the TensorRT EP and a GPU")
def test_tensorrt_runs_int8(data, tmp_path):  # pragma: no cover - GPU only
    g, _ = compile_graph(zoo.mini_resnet(), data, "fold,calibrate,quantize{activations=int8}")
    path = tmp_path / "q.onnx"
    onnx.save(lower(g), path)
    eps = node_providers(path, np.zeros((1, 3, 16, 16), np.float32), device="cuda")
    assert "TensorrtExecutionProvider" in set(eps.values())


def test_cuda_without_tensorrt_says_so_plainly():
    from qcompile.backends.ort.measure import providers

    if "TensorrtExecutionProvider" in ort.get_available_providers():
        pytest.skip("TensorRT present")
    with pytest.raises(Exception, match="TensorRT"):
        providers("cuda", int8=True)
