"""reconstruct: structure unchanged (golden), declines without quantised layers, the learned
block beats nearest rounding and what is written into the QDQ ops is what ORT computes, and the
hand-written backward pass agrees with finite differences."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as hs

from qcompile.backends.ort import lower
from qcompile.backends.ort.executor import OrtExecutor
from qcompile.backends.ort.runtime import run
from qcompile.data import open_dataset
from qcompile.errors import OptionError
from qcompile.ir import format_graph
from qcompile.numerics import quant
from qcompile.numerics import reconstruct as rc
from qcompile.numerics import reconstruct_ops as rops
from qcompile.numerics.error import sqnr_db
from qcompile.numerics.patches import LinearGeometry
from qcompile.passes import PassContext, parse_pipeline, run_pipeline
from qcompile.passes._layerwise import quantised_layers
from qcompile.passes._reconstruct_graph import block_plans, build_block
from qcompile.passes.base import Stats
from qcompile.testing import zoo
from tests.passes.int8_helpers import compile_graph, tiny_npz

PIPE = ("fold,calibrate{images=32,bits=4},quantize{weights=int4,activations=uint4,"
        "reduce_range=false}")


@pytest.fixture
def data(tmp_path):
    return tiny_npz(tmp_path / "tiny.npz", n=32)


def _ctx(data):
    return PassContext(calib_data=open_dataset(data), executor=OrtExecutor())


def test_golden_structure_unchanged_and_codes_exact(data, golden, check):
    g, _ = compile_graph(zoo.residual_block(), data, PIPE)
    before = format_graph(g, digests=False)
    res = run_pipeline(g, parse_pipeline("reconstruct{iterations=60,images=32,batch=8}"),
                       _ctx(data)).results[-1][1]
    check(g)
    assert format_graph(g, digests=False) == before  # only constants change
    golden("reconstruct/residual_block.after", format_graph(g, digests=False))
    assert res.modified and res.stats["blocks"] >= 1
    for la in quantised_layers(g, Stats()):  # pre-rounded: the lowering gives the learned codes
        s, z, qt, axis = la.weight_qparams()
        np.testing.assert_array_equal(quant.fake_quant(la.weight.const, s, z, qt, axis),
                                      la.weight.const)
    for n in g.nodes:  # the int32 bias follows the (possibly learned) input step
        if n.op == "Conv" and len(n.inputs) > 2 and n.inputs[2] is not None:
            s_in = n.inputs[0].producer.inputs[1].const
            s_w = n.inputs[1].producer.inputs[1].const
            np.testing.assert_array_equal(n.inputs[2].producer.inputs[1].const,
                                          quant.bias_qparams(s_in, s_w)[0])


def test_no_quantised_layer_declines(data):
    g, _ = compile_graph(zoo.residual_block(), data,
                         "fold,calibrate{images=32},quantize{keep_float=block.conv1,"
                         "block.conv2,block.downsample.0,fc}")
    before = format_graph(g)
    res = run_pipeline(g, parse_pipeline("reconstruct{iterations=10}"), _ctx(data)).results[-1][1]
    assert res.modified is False and format_graph(g) == before
    assert res.stats["skipped_float_layer"] == 4
    assert all("not quantised" in n for n in res.notes)


def test_bad_options():
    with pytest.raises(OptionError, match="granularity"):
        parse_pipeline("reconstruct{granularity=net}")
    with pytest.raises(OptionError, match="iterations"):
        parse_pipeline("reconstruct{iterations=0}")


def test_blocks_are_residual_blocks(data):
    g, _ = compile_graph(zoo.mini_resnet(), data, PIPE)
    blocks = block_plans(g, "block", Stats())
    layers = block_plans(g, "layer", Stats())
    assert len(layers) == len(quantised_layers(g, Stats()))
    assert len(blocks) < len(layers)
    for p in blocks:  # one input; a residual Add is inside the block that reads its operands
        assert len(p.inputs) == 1
    assert sum(len(p.layers) for p in blocks) == len(layers)


@pytest.mark.slow
@pytest.mark.parametrize("granularity", ["block", "layer"])
def test_loss_drops_and_ort_matches_the_block_program(data, granularity):
    model = zoo.mini_resnet()
    g, _ = compile_graph(model, data, PIPE)
    nearest = lower(g.clone())
    ctx = _ctx(data)
    res = run_pipeline(g, parse_pipeline(f"reconstruct{{granularity={granularity},"
                                         "iterations=150,images=32,batch=8}"), ctx)
    st = res.results[-1][1]
    assert st.stats["blocks"] >= 2 and st.stats["loss_reduction_permille"] > 0
    for note in st.notes:  # "loss A -> B" for every kept block: never worse
        if " -> " in note:
            a, b = note.split("loss ")[1].split(",")[0].split(" -> ")
            assert float(b) <= float(a)
    x = next(open_dataset(data).batches(32)).x
    ref = run(model, {"input": x})["logits"]
    a = sqnr_db(ref, run(nearest, {"input": x})["logits"])
    b = sqnr_db(ref, run(lower(g), {"input": x})["logits"])
    assert b > a, (a, b)
    for n in g.nodes:  # every int32 bias follows its (possibly learned) input step
        if n.op in ("Conv", "Gemm") and len(n.inputs) > 2 and n.inputs[2] is not None:
            s_in = n.inputs[0].producer.inputs[1].const
            s_w = n.inputs[1].producer.inputs[1].const
            np.testing.assert_array_equal(n.inputs[2].producer.inputs[1].const,
                                          quant.bias_qparams(s_in, s_w)[0])
    # what was written into the QDQ ops is what the numpy block computes (nearest = learned now)
    plan = block_plans(g, granularity, Stats())[1]
    blk, _, _ = build_block(plan)
    vals = [g.find_value(k) for k in plan.inputs] + [g.find_value(plan.output)]
    outs = ctx.executor.run(g, {"input": x}, vals)
    y, _ = blk.forward({v.name: outs[v] for v in vals[:-1]}, "nearest")
    assert sqnr_db(outs[vals[-1]], y) > 30


def test_depthwise_block_program_matches_ort(data):
    g, _ = compile_graph(zoo.depthwise_block(), data,
                         "fold,calibrate{images=32},quantize{weights=int4,reduce_range=false}")
    ctx = _ctx(data)
    st = run_pipeline(g, parse_pipeline("reconstruct{granularity=layer,iterations=40,images=32,"
                                        "batch=8}"), ctx).results[-1][1]
    assert st.stats.get("blocks", 0) + st.stats.get("skipped_no_gain", 0) >= 2
    x = next(open_dataset(data).batches(32)).x
    grouped = 0
    for plan in block_plans(g, "layer", Stats()):
        built = build_block(plan)
        assert not isinstance(built, str), built
        blk = built[0]
        grouped += any(op.kind == "conv" and op.arg[0].groups > 1 for op in blk.ops)
        vals = [g.find_value(k) for k in plan.inputs] + [g.find_value(plan.output)]
        outs = ctx.executor.run(g, {"input": x}, vals)
        y, _ = blk.forward({v.name: outs[v] for v in vals[:-1]}, "nearest")
        assert sqnr_db(outs[vals[-1]], y) > 30, plan.name
    assert grouped >= 1


# -- gradient checks of the hand-written backward pass ---------------------------------------
def _tiny_block(rng, depthwise: bool) -> tuple[rc.Block, dict]:
    c = 4
    g1 = LinearGeometry("Conv", groups=c if depthwise else 1, kernel=(3, 3), strides=(2, 1),
                        pads=(1, 1, 1, 1), out_hw=(3, 5))
    g2 = LinearGeometry("Conv", kernel=(1, 1), out_hw=(3, 5))
    ws = [rng.normal(size=(c, 1, 9) if depthwise else (1, c, c * 9)),
          rng.normal(size=(1, c, c)), rng.normal(size=(1, 3, c))]
    sws = []
    for w in ws:
        s = np.full(w.shape[:2] + (1,), 0.25)
        sws.append(rc.SoftWeight(w, s, np.zeros_like(s), -8, 7))
        sws[-1].v = rng.normal(scale=0.3, size=w.shape)  # away from the clamps of h
    ops = [rc.Op("conv", ("x",), "a", (g1, 0, rng.normal(size=c))),
           rc.Op("relu", ("a",), "b"),
           rc.Op("conv", ("b",), "c", (g2, 1, None)),
           rc.Op("add", ("c", "skip"), "d"),
           rc.Op("clip", ("d",), "e", (-3.0, 3.0)),
           rc.Op("gap", ("e",), "f"),
           rc.Op("reshape", ("f",), "h", (c,)),
           rc.Op("gemm", ("h",), "y", (LinearGeometry("Gemm"), 2, None))]
    feeds = {"x": rng.normal(size=(2, c, 6, 5)), "skip": rng.normal(size=(2, c, 3, 5))}
    return rc.Block(ops, sws, [], "y"), feeds


def _loss(blk, feeds, t):
    y, _ = blk.forward(feeds, "soft")
    return float(((y - t) ** 2).sum())


@settings(max_examples=6, deadline=None)
@given(seed=hs.integers(0, 2**16), depthwise=hs.booleans())
def test_backward_matches_finite_differences(seed, depthwise):
    rng = np.random.default_rng(seed)
    blk, feeds = _tiny_block(rng, depthwise)
    t = rng.normal(size=(2, 3))
    y, caches = blk.forward(feeds, "soft", keep=True)
    gw, _ = blk.backward(2 * (y - t), caches)
    for sw, g in zip(blk.weights, gw, strict=True):
        gv = sw.grad_v(g, 0.0, None)
        for _ in range(5):
            i = tuple(rng.integers(0, d) for d in sw.v.shape)
            old = sw.v[i]
            sw.v[i] = old + 1e-6
            up = _loss(blk, feeds, t)
            sw.v[i] = old - 1e-6
            dn = _loss(blk, feeds, t)
            sw.v[i] = old
            assert gv[i] == pytest.approx((up - dn) / 2e-6, rel=1e-4, abs=1e-7)


@settings(max_examples=20, deadline=None)
@given(seed=hs.integers(0, 2**16), bits=hs.sampled_from([4, 8]))
@example(seed=1056, bits=4)  # an element 7e-10 from the lower clamp bound
def test_lsq_gradient_matches_its_surrogate(seed, bits):
    """The QDQ backward is the exact derivative of the straight-through (LSQ) surrogate
    ``s (clamp(x/s + z, qmin, qmax) - z + c [inside])``, ``c = round(x0/s0) - x0/s0`` and
    ``inside = qmin < x0/s0 + z < qmax`` held fixed at the evaluation point."""
    rng = np.random.default_rng(seed)
    qmax = (1 << bits) - 1
    st = rc.Step(float(rng.uniform(0.05, 0.5)), float(rng.integers(0, 3)), 0, qmax)
    blk = rc.Block([rc.Op("qdq", ("x",), "y", 0)], [], [st], "y")
    x = rng.normal(scale=2.0, size=(3, 50))
    t = rng.normal(size=x.shape)
    y, caches = blk.forward({"x": x}, "soft", keep=True)
    _, gs = blk.backward(2 * (y - t), caches)
    c = np.rint(x / st.s) - x / st.s
    inside = (x / st.s + st.z > 0) & (x / st.s + st.z < qmax)

    def sur(s, xx):
        return s * (np.clip(xx / s + st.z, 0, qmax) - st.z + c * inside)

    np.testing.assert_allclose(sur(st.s, x), y, atol=1e-12)
    e = 1e-7
    fd = (((sur(st.s + e, x) - t) ** 2).sum() - ((sur(st.s - e, x) - t) ** 2).sum()) / (2 * e)
    assert gs[0] == pytest.approx(fd, rel=1e-5, abs=1e-6)
    _, caches = blk.forward({"x": x}, "soft", keep=True)
    gx = rops.BWD["qdq"](blk, blk.ops[0], np.ones_like(x), caches[0], [], [], np.zeros(1))[0]
    fdx = (sur(st.s, x + e) - sur(st.s, x - e)) / (2 * e)
    # the surrogate has kinks at the clamp bounds: a central difference straddling one
    # (|x/s + z - bound| < e/s) measures neither side's derivative, so those points are skipped
    u = x / st.s + st.z
    smooth = (np.abs(u) > 2 * e / st.s) & (np.abs(u - qmax) > 2 * e / st.s)
    np.testing.assert_allclose(gx[smooth], fdx[smooth], atol=1e-5)


def test_reconstruct_block_lowers_the_loss():
    rng = np.random.default_rng(0)
    blk, feeds = _tiny_block(rng, False)
    for sw in blk.weights:  # start at the float weights, as the pass does
        sw.__post_init__()
    feeds = {k: np.concatenate([v] * 8).astype(np.float32)
             + rng.normal(scale=0.1, size=(16,) + v.shape[1:]).astype(np.float32)
             for k, v in feeds.items()}
    fp = rc.Block(blk.ops, [rc.SoftWeight(sw.w2, sw.s * 1e-6, sw.z, -2**30, 2**30)
                            for sw in blk.weights], [], "y")
    target, _ = fp.forward(feeds, "nearest")
    before = rc.block_loss(blk, feeds, target, "nearest")
    rc.reconstruct_block(blk, feeds, target, rc.ReconstructConfig(iterations=300, batch=8), rng)
    assert rc.block_loss(blk, feeds, target, "hard") < before


def test_qdrop_keeps_a_random_half_float_with_identity_gradient():
    rng = np.random.default_rng(3)
    st = rc.Step(0.2, 1.0, 0, 15)
    blk = rc.Block([rc.Op("qdq", ("x",), "y", 0)], [], [st], "y")
    x = rng.normal(scale=2.0, size=(4, 500))
    q, cq = blk.forward({"x": x}, "soft", keep=True)
    blk.drop, blk.rng = 0.5, np.random.default_rng(0)
    y, caches = blk.forward({"x": x}, "soft", keep=True)
    keep = caches[0][3]
    assert 0.45 < keep.mean() < 0.55
    np.testing.assert_array_equal(y[keep], q[keep])
    np.testing.assert_array_equal(y[~keep], x[~keep])
    g = rng.normal(size=x.shape)
    gs = np.zeros(1)
    gx = rops.BWD["qdq"](blk, blk.ops[0], g, caches[0], [], [], gs)[0]
    np.testing.assert_array_equal(gx[~keep], g[~keep])
    full = np.zeros(1)
    g_full = rops.BWD["qdq"](blk, blk.ops[0], g * keep, cq[0], [], [], full)[0]
    np.testing.assert_allclose(gs, full)  # the step learns from the quantised elements only
    np.testing.assert_array_equal(gx[keep], g_full[keep])


def test_qdrop_reconstruction_lowers_the_loss_and_ends_without_drop():
    rng = np.random.default_rng(0)
    blk, feeds = _tiny_block(rng, False)
    blk.steps.append(rc.Step(0.1, 0.0, 0, 15))
    blk.ops.insert(2, rc.Op("qdq", ("b",), "b2", 0))
    blk.ops[3] = rc.Op("conv", ("b2",), "c", blk.ops[3].arg)
    for sw in blk.weights:
        sw.__post_init__()
    feeds = {k: np.concatenate([v] * 8) + rng.normal(scale=0.1, size=(16,) + v.shape[1:])
             for k, v in feeds.items()}
    fp = rc.Block([o for o in blk.ops if o.kind != "qdq"] , [rc.SoftWeight(
        sw.w2, sw.s * 1e-6, sw.z, -2**30, 2**30) for sw in blk.weights], [], "y")
    fp.ops[2] = rc.Op("conv", ("b",), "c", fp.ops[2].arg)
    target, _ = fp.forward(feeds, "nearest")
    before = rc.block_loss(blk, feeds, target, "nearest")
    rc.reconstruct_block(blk, feeds, target, rc.ReconstructConfig(iterations=200, batch=8,
                                                                  drop=0.5), rng)
    assert blk.drop == 0.0 and blk.rng is None
    assert rc.block_loss(blk, feeds, target, "hard") < before


def test_rounding_regulariser_scales_per_weight():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(1, 4, 9))
    s = np.full((1, 4, 1), 0.25)
    a, b = (rc.SoftWeight(w, s, np.zeros_like(s), -8, 7, reg_scale=k) for k in (1.0, 10.0))
    zero = np.zeros_like(w)
    np.testing.assert_allclose(b.grad_v(zero, 0.01, 3.0), 10 * a.grad_v(zero, 0.01, 3.0))
