"""cle: structural golden, no-op, numerical equivalence, and the equalisation property."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcompile.backends.ort import lower
from qcompile.backends.ort.executor import OrtExecutor
from qcompile.frontend import lift
from qcompile.ir import format_graph, verify
from qcompile.passes import PassContext, PreconditionError, parse_pipeline, run_pipeline
from qcompile.passes.cle import CrossLayerEqualize, _src_view, sink_slices
from qcompile.testing import zoo


def _run(model, spec="fold,cle", ctx=None):
    g = lift(model)
    r = run_pipeline(g, parse_pipeline(spec), ctx or PassContext())
    return r.graph, r.results[-1][1]


def _max_rel(model_a, model_b, feeds):
    a = ort.InferenceSession(model_a.SerializeToString()).run(None, feeds)[0]
    b = ort.InferenceSession(model_b.SerializeToString()).run(None, feeds)[0]
    return float(np.abs(a - b).max() / np.abs(a).max())


def test_requires_folded_bn():
    with pytest.raises(PreconditionError, match="run 'fold' first"):
        run_pipeline(lift(zoo.mini_resnet()), parse_pipeline("cle"))


def test_golden_clip_relu(golden):
    g, res = _run(zoo.depthwise_block(), "fold,cle{clip=relu}")
    assert res.modified and res.stats["clip_replaced_by_relu"] == 2
    assert any("changes" in n for n in res.notes)
    golden("cle/depthwise_clip_relu", format_graph(g, digests=False))


def test_noop_single_linear_layer():
    g, res = _run(zoo.gemm_bn(), "fold,cle")
    assert res.modified is False
    before = format_graph(g)
    verify(g)
    assert before == format_graph(g)


def test_clip_declined_without_data():
    g, res = _run(zoo.depthwise_block(), "fold,cle")
    assert res.modified is False
    assert res.stats["skipped_clip"] == 2
    assert all("calibration data" in n for n in res.notes)


def test_branch_declined_with_reason():
    _, res = _run(zoo.mini_resnet())
    assert res.stats["skipped_branch"] >= 1
    assert any("residual" in n for n in res.notes)


@pytest.mark.parametrize("model", [
    zoo.mini_resnet(), zoo.resnet(18, image_size=64), zoo.resnet(50, image_size=64),
    zoo.conv_bn_relu(), zoo.residual_block(),
], ids=["mini", "r18", "r50", "conv_bn_relu", "residual"])
def test_numerically_equivalent(model):
    g, res = _run(model)
    assert res.modified
    verify(g)
    assert _max_rel(model, lower(g), zoo.random_input(model, batch=2)) < 1e-5


def test_ranges_equalised():
    g, _ = _run(zoo.resnet(18, image_size=64), "fold,cle{iterations=50,threshold=1e-6}")
    conv1, conv2 = g.find_node("layer1.0.conv1"), g.find_node("layer1.0.conv2")
    r1 = np.abs(_src_view(conv1).reshape(conv1.inputs[1].const.shape[0], -1)).max(1)
    w2 = conv2.inputs[1].const
    r2 = np.array([np.abs(w2[s]).max() for s in sink_slices(conv2, len(r1))])
    np.testing.assert_allclose(r1, r2, rtol=1e-4)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000))
def test_invariance_random_models(seed):
    model = zoo.residual_block(seed=seed)
    g, _ = _run(model)
    assert _max_rel(model, lower(g), zoo.random_input(model, batch=1, seed=seed)) < 1e-5


def test_clip_data_mode_on_real_model(shared_data):
    from qcompile.data import open_dataset, preset

    model = onnx.load(shared_data / "efficientnet_lite0.onnx")
    ds = open_dataset(shared_data / "imagenet_samples_120.npz", preset("lite0"))
    calib, held_out = ds.split(16, seed=0)
    ctx = PassContext(executor=OrtExecutor(), calib_data=ds)
    g, res = _run(model, "fold,cle{images=16}", ctx)
    assert res.stats.get("regions", 0) >= 1
    assert res.stats.get("skipped_clip", 0) + res.stats.get("clip_replaced_by_relu", 0) > 0
    feeds = {"input": next(ds.batches(8, indices=held_out)).x}
    assert _max_rel(model, lower(g), feeds) < 1e-4


def test_options_validated():
    with pytest.raises(ValueError):
        CrossLayerEqualize(iterations=0)


def test_golden_clip_scale(golden):
    g, res = _run(zoo.depthwise_block(), "fold,cle{clip=scale}")
    assert res.modified and res.stats["clip_bound_per_channel"] == 2  # both inside regions
    assert sum(n.op == "Min" for n in g.nodes) == 2 and not any(n.op == "Clip" for n in g.nodes)
    golden("cle/depthwise_clip_scale", format_graph(g, digests=False))


def test_clip_scale_equivalent_where_the_clip_is_active():
    """DFQ's ReLU6 rule is exact, data-free: inputs large enough that every Clip saturates."""
    model = zoo.depthwise_block()
    g, res = _run(model, "fold,cle{clip=scale}")
    feeds = {k: 20 * v for k, v in zoo.random_input(model, batch=4).items()}
    sess = ort.InferenceSession(model.SerializeToString())
    assert sess.run(None, feeds)[0].size
    assert _max_rel(model, lower(g), feeds) < 1e-5
    b = next(n for n in g.nodes if n.op == "Min").inputs[1].const
    assert b.shape == (16, 1, 1) and np.ptp(b) > 0  # per channel, not all 6


def test_clip_scale_on_lite0(shared_data):
    from qcompile.data import open_dataset, preset

    model = onnx.load(shared_data / "efficientnet_lite0.onnx")
    g, res = _run(model, "fold,cle{clip=scale}")
    assert res.stats["regions"] >= 30 and res.stats["clip_bound_per_channel"] >= 30
    ds = open_dataset(shared_data / "imagenet_samples_120.npz", preset("lite0"))
    feeds = {"input": next(ds.batches(4)).x}
    assert _max_rel(model, lower(g), feeds) < 1e-4


def test_clip_scale_still_fuses_on_ort(tmp_path):
    """Relu -> Min after a quantised Conv: ORT still forms QLinearConv (Relu fused), and only
    the per-channel Min runs in float."""
    import collections

    m = zoo.depthwise_block()
    feeds = [zoo.random_input(m, batch=8, seed=i)["input"] for i in range(2)]
    g = run_pipeline(lift(m), parse_pipeline("fold,cle{clip=scale},calibrate,"
                                             "quantize{per_channel=false}"),
                     PassContext(calib_data=feeds, executor=OrtExecutor())).graph
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(lower(g).SerializeToString(), so, providers=["CPUExecutionProvider"])
    ops = collections.Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node)
    assert ops["QLinearConv"] == 2 and ops["Min"] == 2
    assert "Conv" not in ops and "Relu" not in ops
