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


# -- declines and edge cases, one per rewrite -------------------------------------------------------
def _one(build, opset=13, x_shape=("N", 4, 8, 8), out_shape=None, x_name="x"):
    m = M()
    out = build(m, x_name)
    out_shape = list(x_shape) if out_shape is None else out_shape
    return m.model("y", opset, list(x_shape), out_shape, x_name=x_name), out


def _unchanged(model, key, detail):
    g = lift(model)
    text = format_graph(g)
    r = canon(g)
    assert r.modified is False and r.stats == {f"skipped_{key}": 1}, r.stats
    assert detail in r.notes[0], r.notes
    assert format_graph(g) == text
    return g


def _view(m, x):
    n = m.node("Gather", [m.node("Shape", [x]), m.c(0, np.int64)], axis=0)
    shape = m.node("Concat", [m.node("Unsqueeze", [n, m.c([0], np.int64)]),
                              m.c([-1], np.int64)], axis=0)
    return m.node("Reshape", [x, shape])


def test_shape_fold_declines_a_symbolic_spatial_dim():
    model, _ = _one(_view, x_shape=("N", 4, "H", "W"), out_shape=["N", None])
    _unchanged(model, "dynamic_dims", "dimension 2 of %x is symbolic (H)")


def test_shape_fold_declines_data_dependent_targets():
    def build(m, x):  # target = Shape(x) / 1: integer Div is refused (not polynomial in N)
        return m.node("Reshape", [x, m.node("Div", [m.node("Shape", [x]), m.c(1, np.int64)])])
    model, _ = _one(build, out_shape=[None] * 4)
    _unchanged(model, "not_constant", "not from shape arithmetic")


def test_shape_fold_static_batch_writes_the_static_target():
    model, _ = _one(_view, x_shape=(2, 4, 8, 8), out_shape=[2, 256])
    g = lift(model)
    r = canon(g, flatten=False)
    assert r.stats["folded_shape_subgraph"] == 1
    assert g.nodes[-1].inputs[1].const.tolist() == [2, 256]
    assert_equivalent(model, g, batches=(2,))


def test_shape_fold_to_one_dim_and_batch_times_channels():
    def build(m, x):  # view(N*C, H*W) and view(-1): the varying dim is not the batch itself
        nc = m.node("Mul", [m.node("Gather", [m.node("Shape", [x]), m.c([0], np.int64)], axis=0),
                            m.c([4], np.int64)])
        y = m.node("Reshape", [x, m.node("Concat", [nc, m.c([64], np.int64)], axis=0)])
        return m.node("Reshape", [y, m.node("Slice", [m.c([-1, 7], np.int64), m.c([0], np.int64),
                                                     m.c([1], np.int64)])])
    model, _ = _one(build, out_shape=[None])
    g = lift(model)
    r = canon(g)
    assert r.stats["folded_shape_subgraph"] == 2
    assert [n.inputs[1].const.tolist() for n in g.nodes] == [[-1, 64], [-1]]
    assert_equivalent(model, g)


def test_reducemean_other_axes_is_left():
    model, _ = _one(lambda m, x: m.node("ReduceMean", [x], axes=[1, 2], keepdims=1),
                    out_shape=["N", 1, 1, 8])
    g = lift(model)
    r = canon(g)
    assert r.modified is False and r.stats == {}


def test_gemm_declines_a_3d_input():
    model, _ = _one(lambda m, x: m.node("Add", [m.node("MatMul", [x, m.w(8, 5)]), m.w(5)]),
                    out_shape=["N", 4, 8, 5])
    _unchanged(model, "gemm_rank", "is not 2-D")


def test_affine_declines_shared_output_and_non_channel_constants():
    def shared(m, x):
        y = m.conv(x, 4, 4)
        return m.node("Add", [m.node("Mul", [y, m.w(4, 1, 1)]), y])
    _unchanged(_one(shared)[0], "affine_shared", "is also used elsewhere")
    model, _ = _one(lambda m, x: m.node("Mul", [m.conv(x, 4, 4), m.w(1, 4, 8, 8)]))
    _unchanged(model, "affine_shape", "is not per channel")


def test_hardswish_declines_below_opset_14():
    model = paddle(opset=13)
    g = lift(model)
    r = canon(g)
    assert r.stats["skipped_hardswish_opset"] == 3 and "fused_hardswish" not in r.stats
    assert_equivalent(model, g)


def test_hardsigmoid_with_other_constants_is_not_hardswish():
    model, _ = _one(lambda m, x: m.node("Mul", [x, m.node("HardSigmoid", [x])]), opset=14)
    g = lift(model)
    assert canon(g).modified is False


def test_clip_with_a_computed_bound_declines():
    model, _ = _one(lambda m, x: m.node("Clip", [x, m.c(0.0), m.node("ReduceMax", [x],
                                                                        keepdims=0)]))
    _unchanged(model, "clip_bounds", "max bound")


def test_attribute_clip_becomes_inputs():
    g = lift(_one(lambda m, x: m.node("Relu", [x]))[0])
    (relu,) = g.nodes
    relu.op, relu.attrs = "Clip", {"min": 0.0, "max": 6.0}  # the opset-6 form, as an old IR has
    r = canon(g)
    assert r.stats == {"normalised_clip": 1} and relu.attrs == {}
    assert [v.const.tolist() for v in relu.inputs[1:]] == [0.0, 6.0]


def test_transposes_merge_and_public_pair_is_kept():
    def build(m, x):
        return m.node("Transpose", [m.node("Transpose", [x], perm=[0, 2, 3, 1])], perm=[0, 2, 1, 3])
    model, _ = _one(build, out_shape=["N", 8, 8, 4])
    g = lift(model)
    r = canon(g)
    assert r.stats == {"merged_transposes": 1}
    assert [tuple(n.attrs["perm"]) for n in g.nodes] == [(0, 3, 2, 1)]
    assert_equivalent(model, g)

    def cancel(m, x):
        return m.node("Transpose", [m.node("Transpose", [x], perm=[0, 2, 3, 1])], perm=[0, 3, 1, 2])
    g = _unchanged(_one(cancel)[0], "public_transpose", "graph input to a graph output")


def test_unary_sum_is_removed():
    model, _ = _one(lambda m, x: m.node("Sum", [m.node("Relu", [x])]))
    g = lift(model)
    r = canon(g)
    assert r.stats["sum_to_add"] == 1 and [n.op for n in g.nodes] == ["Relu"]
    assert_equivalent(model, g)


@pytest.mark.parametrize("builder", [zoo.all_ops_model, zoo.identity_dropout_model])
def test_zoo_models_stay_equivalent(builder):
    model = builder()
    g = lift(model)
    canon(g)
    assert canonical(g) is None
    assert_equivalent(model, g, batches=(2, 5))
