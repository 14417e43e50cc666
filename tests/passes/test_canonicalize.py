"""``canonicalize``: exporter-shaped graphs (dynamo, TorchScript, tf2onnx, Caffe2/CNTK, paddle).

For every rewrite: a structural golden (before/after), a no-op run, and numerical equivalence on
ONNX Runtime (within 1e-5, at batch sizes other than the one the exporter traced with).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcompile.backends.ort import lower
from qcompile.frontend import lift
from qcompile.ir import Graph, format_graph, verify
from qcompile.passes import REGISTRY, PassContext, PassResult, parse_pipeline, run_pipeline
from qcompile.passes.canonicalize import ACTIVATION, Canonicalize, canonical
from qcompile.testing import zoo

F, I64 = TensorProto.FLOAT, TensorProto.INT64
RNG = np.random.default_rng(0)


def canon(g: Graph, **opts) -> PassResult:
    r = Canonicalize(**opts).run(g, PassContext())
    verify(r.graph)
    return r


def run_ort(model: onnx.ModelProto, feed):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"]).run(None, feed)


def assert_equivalent(original: onnx.ModelProto, g: Graph, batches=(1, 3, 7), tol=1e-5):
    lowered = lower(g)
    inp = original.graph.input[0]
    dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    for n in batches:
        x = np.random.default_rng(n).standard_normal([n] + dims[1:]).astype(np.float32) * 3
        want, got = run_ort(original, {inp.name: x}), run_ort(lowered, {inp.name: x})
        for w, o in zip(want, got, strict=True):
            assert w.shape == o.shape and w.dtype == o.dtype
            assert np.abs(w - o).max() <= tol * max(np.abs(w).max(), 1.0), n


# -- exporter-shaped builders -------------------------------------------------------------------
class M:
    """A tiny graph builder: ``m.node(op, inputs, **attrs)`` returns its output name."""

    def __init__(self, prefix: str = "val_") -> None:
        self.nodes, self.inits, self.prefix, self.k = [], [], prefix, 0

    def c(self, value, dtype=np.float32) -> str:
        name = f"{self.prefix}c{len(self.inits)}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def w(self, *shape) -> str:
        return self.c(RNG.standard_normal(shape) * 0.3)

    def node(self, op, inputs, n_out=1, **attrs) -> str:
        self.k += 1
        outs = [f"{self.prefix}{self.k}" + (f"_{i}" if i else "") for i in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=f"{op.lower()}_{self.k}",
                                           **attrs))
        return outs[0]

    def constant(self, value, dtype=np.int64) -> str:  # TorchScript: a Constant node
        t = numpy_helper.from_array(np.asarray(value, dtype))
        return self.node("Constant", [], value=t)

    def conv(self, x, cin, cout, bias=True) -> str:
        ins = [x, self.w(cout, cin, 3, 3)] + ([self.w(cout)] if bias else [])
        return self.node("Conv", ins, pads=[1, 1, 1, 1], kernel_shape=[3, 3])

    def model(self, out, opset, x_shape, out_shape, x_name="x") -> onnx.ModelProto:
        self.nodes[-1].output[0] = out
        g = helper.make_graph(self.nodes, "exported",
                              [helper.make_tensor_value_info(x_name, F, x_shape)],
                              [helper.make_tensor_value_info(out, F, out_shape)], self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
        m.ir_version = 8
        onnx.checker.check_model(m)
        return m


def dynamo() -> onnx.ModelProto:
    """opset 18: Clip with initializer bounds, ReduceMean(keepdims=1), view(x.size(0), -1)."""
    m = M()
    y = m.conv("x", 3, 4)
    y = m.node("Clip", [y, m.c([0.0]), m.c(6.0)])
    y = m.node("ReduceMean", [y, m.c([-1, -2], np.int64)], keepdims=1)
    n = m.node("Gather", [m.node("Shape", [y]), m.c(0, np.int64)], axis=0)
    shape = m.node("Concat", [m.node("Unsqueeze", [n, m.c([0], np.int64)]),
                              m.c([-1], np.int64)], axis=0)
    y = m.node("Reshape", [y, shape])
    m.node("Gemm", [y, m.w(5, 4), m.w(5)], transB=1)
    return m.model("logits", 18, ["s0", 3, 8, 8], ["s0", 5])


def torchscript() -> onnx.ModelProto:
    """opset 11: Constant nodes, Clip bounds from Constants, ReduceMean(keepdims=0) attribute
    axes, Dropout, Identity, and a view(N, C*H*W) through Shape/Gather/Unsqueeze(axes attr)."""
    m = M(prefix="")
    y = m.conv("input.1", 3, 4)
    y = m.node("Clip", [y, m.constant(0.0, np.float32), m.constant(6.0, np.float32)])
    n = m.node("Gather", [m.node("Shape", [y]), m.constant(0)], axis=0)
    shape = m.node("Concat", [m.node("Unsqueeze", [n], axes=[0]), m.constant([256])], axis=0)
    flat = m.node("Reshape", [y, shape])
    z = m.node("Gemm", [flat, m.w(4, 256), m.w(4)], transB=1)
    p = m.node("ReduceMean", [y], axes=[2, 3], keepdims=0)
    p = m.node("Identity", [m.node("Dropout", [p], ratio=0.5)])
    m.node("Add", [p, z])
    return m.model("output", 11, ["batch", 3, 8, 8], ["batch", 4], x_name="input.1")


def tf2onnx() -> onnx.ModelProto:
    """opset 13, NHWC input: Transpose in, a cancelling Transpose pair, NHWC flatten through
    Shape->Slice->Concat, MatMul + Add, Softmax."""
    m = M(prefix="model/")
    t = m.node("Transpose", ["input"], perm=[0, 3, 1, 2])
    y = m.node("Relu", [m.conv(t, 3, 4)])
    y = m.node("Transpose", [y], perm=[0, 2, 3, 1])
    y = m.node("Transpose", [y], perm=[0, 3, 1, 2])
    y = m.node("Transpose", [m.node("Relu", [m.conv(y, 4, 4)])], perm=[0, 2, 3, 1])
    lead = m.node("Slice", [m.node("Shape", [y]), m.c([0], np.int64), m.c([1], np.int64)])
    y = m.node("Reshape", [y, m.node("Concat", [lead, m.c([256], np.int64)], axis=0)])
    y = m.node("Add", [m.node("MatMul", [y, m.w(256, 6)]), m.w(6)])
    m.node("Softmax", [y], axis=-1)
    return m.model("Identity:0", 13, ["unk__5", 8, 8, 3], ["unk__5", 6], x_name="input")


def caffe2() -> onnx.ModelProto:
    """opset 13: Caffe "Scale" as Mul/Add of Unsqueezed per-channel constants after a bias-free
    Conv, a CNTK [1,C,1,1] bias Add, a 3-ary and a binary Sum."""
    m = M(prefix="")
    ax = m.c([1, 2], np.int64)
    a = m.node("Mul", [m.conv("data", 3, 4, bias=False), m.node("Unsqueeze", [m.w(4), ax])])
    a = m.node("Relu", [m.node("Add", [m.node("Unsqueeze", [m.w(4), ax]), a])])
    b = m.node("Relu", [m.node("Add", [m.conv("data", 3, 4), m.w(1, 4, 1, 1)])])
    s = m.node("Sum", [a, b, m.node("Sigmoid", [b])])
    s = m.node("Sum", [s, a])
    m.node("Flatten", [m.node("GlobalAveragePool", [s])], axis=1)
    return m.model("prob", 13, ["N", 3, 8, 8], ["N", 4], x_name="data")


def paddle(opset: int = 14) -> onnx.ModelProto:
    """HardSwish decomposed three ways (/6, *1/6, HardSigmoid) and a Swish, Sigmoid first."""
    m = M(prefix="tmp_")

    def relu6_shift(x):
        return m.node("Clip", [m.node("Add", [x, m.c(3.0)]), m.c(0.0), m.c(6.0)])

    x = m.conv("image", 3, 4)
    x = m.node("Div", [m.node("Mul", [x, relu6_shift(x)]), m.c(6.0)])
    x = m.conv(x, 4, 4)
    x = m.node("Mul", [m.node("Mul", [relu6_shift(x), x]), m.c(1 / 6)])
    x = m.conv(x, 4, 4)
    x = m.node("Mul", [x, m.node("HardSigmoid", [x], alpha=1 / 6, beta=0.5)])
    x = m.conv(x, 4, 4)
    x = m.node("Mul", [m.node("Sigmoid", [x]), x])
    m.node("Flatten", [m.node("GlobalAveragePool", [x])], axis=1)
    return m.model("save_infer_model/scale_0.tmp_0", opset, ["B", 3, 8, 8], ["B", 4],
                   x_name="image")


CASES = {"dynamo": dynamo, "torchscript": torchscript, "tf2onnx": tf2onnx, "caffe2": caffe2,
         "paddle": paddle}
STATS = {
    "dynamo": {"normalised_clip": 1, "reducemean_to_gap": 1, "reshape_to_flatten": 1},
    "torchscript": {"normalised_clip": 0, "reshape_to_flatten": 1, "reducemean_to_gap": 1,
                    "removed_identity": 1, "removed_dropout": 1},
    "tf2onnx": {"cancelled_transposes": 1, "reshape_to_flatten": 1, "matmul_add_to_gemm": 1},
    "caffe2": {"folded_mul_into_conv": 1, "folded_add_into_conv": 2, "sum_to_add": 2},
    "paddle": {"fused_hardswish": 3, "marked_swish": 1},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_numerics_and_noop(case, golden):
    model = CASES[case]()
    g = lift(model)
    golden(f"canonicalize/{case}.before", format_graph(g, digests=False))
    r = canon(g)
    assert r.modified is True
    golden(f"canonicalize/{case}.after", format_graph(g, digests=False))
    want = {k: v for k, v in STATS[case].items() if v}
    assert {k: r.stats.get(k, 0) for k in want} == want, r.stats
    assert canonical(g) is None
    assert [v.name for v in g.outputs] == [o.name for o in model.graph.output]
    assert_equivalent(model, g)
    text = format_graph(g)
    again = canon(g)
    assert again.modified is False and dict(again.stats) == {} and format_graph(g) == text


def test_results_are_canonical_ops():
    ops = {c: [n.op for n in lift(CASES[c]()).nodes] for c in CASES}
    after = {}
    for c in CASES:
        g = lift(CASES[c]())
        canon(g)
        after[c] = [n.op for n in g.nodes]
    assert after["dynamo"] == ["Conv", "Clip", "GlobalAveragePool", "Flatten", "Gemm"]
    assert after["torchscript"] == ["Conv", "Clip", "Flatten", "Gemm", "GlobalAveragePool",
                                    "Flatten", "Add"]
    assert after["tf2onnx"] == ["Transpose", "Conv", "Relu", "Conv", "Relu", "Transpose",
                                "Flatten", "Gemm", "Softmax"]
    assert after["caffe2"] == ["Conv", "Relu", "Conv", "Relu", "Sigmoid", "Add", "Add", "Add",
                               "GlobalAveragePool", "Flatten"]
    assert after["paddle"] == ["Conv", "HardSwish", "Conv", "HardSwish", "Conv", "HardSwish",
                               "Conv", "Sigmoid", "Mul", "GlobalAveragePool", "Flatten"]
    assert "Shape" in ops["dynamo"] and "Sum" in ops["caffe2"]


@pytest.mark.parametrize("builder", [zoo.conv_bn_relu, zoo.mini_resnet, zoo.depthwise_block,
                                     zoo.gemm_bn])
def test_noop_on_canonical_models(builder):
    g = lift(builder())
    text = format_graph(g)
    r = canon(g)
    assert r.modified is False and dict(r.stats) == {} and r.notes == ()
    assert format_graph(g) == text


def test_registered_and_options():
    assert REGISTRY["canonicalize"] is Canonicalize
    assert parse_pipeline("canonicalize{flatten=false,hardswish=false}")[0] == \
        Canonicalize(flatten=False, hardswish=False)
    assert Canonicalize.ensures == (canonical,)


def test_flatten_off_folds_to_a_batch_agnostic_constant():
    model = dynamo()
    g = lift(model)
    r = canon(g, flatten=False)
    assert r.stats["folded_shape_subgraph"] == 1
    (reshape,) = [n for n in g.nodes if n.op == "Reshape"]
    assert reshape.inputs[1].const.tolist() == [-1, 4]
    assert str(reshape.output.type) == "f32[s0,4]"
    assert not any(n.op in ("Shape", "Gather", "Concat", "Unsqueeze") for n in g.nodes)
    assert_equivalent(model, g)


def test_hardswish_off_keeps_the_decomposition():
    g = lift(paddle())
    r = canon(g, hardswish=False)
    assert "fused_hardswish" not in r.stats and r.stats["marked_swish"] == 1
    assert not any(n.op == "HardSwish" for n in g.nodes)
    (swish,) = [n for n in g.nodes if n.meta.get(ACTIVATION) == "Swish"]
    assert swish.inputs[1].producer.op == "Sigmoid"


def test_in_pipeline_before_fold():
    model = caffe2()
    res = run_pipeline(lift(model), parse_pipeline("canonicalize,fold,cleanup"))
    assert [r.modified for _, r, _ in res.results][0] is True
    assert_equivalent(model, res.graph)
