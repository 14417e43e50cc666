"""clip_search: structure unchanged (golden), declines/no-ops, MSE never worse than min-max,
agreement with a brute-force search, bias scales kept in accumulator units, and property tests
of the numerics helpers against naive references."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from qcompile.backends.ort import lower
from qcompile.backends.ort.executor import OrtExecutor
from qcompile.backends.ort.runtime import run
from qcompile.data import open_dataset
from qcompile.errors import OptionError
from qcompile.ir import RANGE, format_graph
from qcompile.numerics import clipping, quant
from qcompile.passes import PassContext, PreconditionError, parse_pipeline, run_pipeline
from qcompile.passes._layerwise import quantised_layers
from qcompile.passes.base import Stats
from qcompile.testing import zoo
from tests.passes.int8_helpers import compile_graph, tiny_npz

PIPE = "fold,calibrate{images=16},quantize{weights=int4,reduce_range=false}"


@pytest.fixture
def data(tmp_path):
    return tiny_npz(tmp_path / "tiny.npz", n=16)


def _ctx(data):
    return PassContext(calib_data=open_dataset(data), executor=OrtExecutor())


def _run(g, data, spec):
    return run_pipeline(g, parse_pipeline(spec), _ctx(data)).results[-1][1]


def _err(w, s, qt, axis):
    d = np.asarray(w, np.float64) - quant.fake_quant(w, s, np.zeros(np.shape(s), qt.storage),
                                                      qt, axis)
    axes = tuple(i for i in range(w.ndim) if i != axis)
    return (d * d).sum(axis=axes)


# -- pass ----------------------------------------------------------------------------------
def test_golden_structure_unchanged(data, golden, check):
    g, _ = compile_graph(zoo.residual_block(), data, PIPE)
    before = format_graph(g, digests=False)
    res = _run(g, data, "clip_search")
    check(g)
    assert res.modified and res.stats["layers_clipped"] == 4
    assert format_graph(g, digests=False) == before  # only scale constants change
    golden("clip_search/residual_block.after", format_graph(g, digests=False))


def test_weights_mse_never_worse_and_bias_scale_follows(data):
    g, _ = compile_graph(zoo.mini_resnet(), data, PIPE)
    qt4 = quant.qtype("int4")
    start = {}
    for la in quantised_layers(g, Stats()):
        s, _, _, axis = la.weight_qparams()
        start[la.name] = (s.copy(), _err(la.weight.const, s, qt4, axis))
    res = _run(g, data, "clip_search{metric=mse,grid=50}")
    assert res.stats["mse_reduction_permille"] > 0
    for la in quantised_layers(g, Stats()):
        s, z, qt, axis = la.weight_qparams()
        s0, e0 = start[la.name]
        e1 = _err(la.weight.const, s, qt, axis)
        assert np.all(e1 <= e0), la.name  # per channel, never worse than min-max
        assert np.all(s <= s0)  # alpha <= 1
        b = la.node.inputs[2].producer  # the int32 bias QDQ: s_b = s_in * s_w
        s_in = la.node.inputs[0].producer.inputs[1].const
        np.testing.assert_array_equal(b.inputs[1].const, quant.bias_qparams(s_in, s)[0])
    # the lowered model runs and its weights are exactly the clipped fake-quantised ones
    x = open_dataset(data).batches(8).__next__().x
    out = run(lower(g), {"input": x})["logits"]
    assert np.all(np.isfinite(out))


def test_matches_brute_force_on_small_layer(data):
    g, _ = compile_graph(zoo.residual_block(), data, PIPE)
    la = quantised_layers(g, Stats())[0]
    w = la.weight.const.copy()
    s0, _, qt, axis = la.weight_qparams()
    _run(g, data, "clip_search{metric=mse,grid=20,alpha_min=0.5}")
    s_new = la.weight_qparams()[0]
    for c in range(w.shape[0]):  # brute force: every grid alpha, scalar maths per channel
        errs = []
        for k in range(21):
            a = 1 - k / 20 * 0.5
            s = np.float32(np.float64(s0[c]) * a)
            q = np.clip(np.rint(w[c].astype(np.float32) / s), qt.qmin, qt.qmax)
            errs.append(float(((w[c].astype(np.float64) - q * np.float64(s)) ** 2).sum()))
        best = min(range(21), key=lambda k: (errs[k], k))
        want = np.float32(np.float64(s0[c]) * (1 - best / 20 * 0.5))
        assert s_new[c] == want or errs[best] == pytest.approx(
            _err(w[c:c + 1], s_new[c:c + 1], qt, 0)[0], rel=1e-12), c


def test_activation_ranges_shrink_and_quantize_uses_them(data):
    g, _ = compile_graph(zoo.residual_block(), data, "fold,calibrate{images=16}")
    values = list(g.inputs) + [v for n in g.nodes for v in n.outputs]
    before = {v.name: v.meta[RANGE] for v in values if RANGE in v.meta}
    structure = format_graph(g, digests=False)
    res = _run(g, data, "clip_search{target=activations,activations=uint4,images=16}")
    assert res.modified and res.stats["tensors_clipped"] >= 1
    assert format_graph(g, digests=False).count("\n") == structure.count("\n")
    changed = 0
    for v in values:
        if v.name in before:
            r0, r1 = before[v.name], v.meta[RANGE]
            assert abs(r1.lo) <= abs(r0.lo) and abs(r1.hi) <= abs(r0.hi)
            changed += (r1.hi, r1.lo) != (r0.hi, r0.lo)
    assert changed == res.stats["tensors_clipped"]
    _run(g, data, "quantize{weights=int4,activations=uint4,reduce_range=false}")
    v = g.find_value("block.relu1")
    q = v.uses()[0].node  # quantize took the clipped range: s = hi / 15 for a Relu output
    assert q.op == "QDQ"
    assert float(q.inputs[1].const) == pytest.approx(v.meta[RANGE].hi / 15, rel=1e-6)


# -- declines and preconditions --------------------------------------------------------------
def test_no_quantised_layer_is_a_noop(data):
    g, _ = compile_graph(zoo.residual_block(), data,
                         "fold,calibrate{images=16},quantize{keep_float=block.conv1,"
                         "block.conv2,block.downsample.0,fc}")
    before = format_graph(g)
    res = _run(g, data, "clip_search")
    assert res.modified is False and format_graph(g) == before
    assert res.stats["skipped_float_layer"] == 4 and len(res.notes) == 4


def test_already_optimal_and_on_grid_and_reduce_range_decline(data):
    g, _ = compile_graph(zoo.residual_block(), data, PIPE)
    las = quantised_layers(g, Stats())
    # layer 0: weights in {+-m, +-0.999 m} per channel: off the grid, yet any clipping to the
    # grid's alpha <= 0.992 moves every weight further than min-max rounding does
    w = las[0].weight.const
    m = np.abs(w).max(axis=(1, 2, 3), keepdims=True)
    near = np.where(np.random.default_rng(0).random(w.shape) < 0.5, 1.0, 0.999)
    las[0].weight.const = (np.where(w < 0, -1, 1) * m * near).astype(np.float32)
    # layer 1: weights pre-rounded onto the grid (what adaround leaves)
    las[1].weight.const = las[1].dequantized_weight()
    # layers 2, 3: a 7-bit-range (reduce_range) scale
    for la in las[2:]:
        la.wq.inputs[1].const = (la.wq.inputs[1].const * 2).astype(np.float32)
    before = format_graph(g)
    res = _run(g, data, "clip_search{metric=mse}")
    assert res.modified is False and format_graph(g) == before
    assert res.stats == {"skipped_already_optimal": 1, "skipped_on_grid": 1,
                         "skipped_reduce_range": 2}, res.stats
    assert any("already optimal (weight error)" in n for n in res.notes)
    assert any("adaround" in n for n in res.notes)
    assert sum("reduce_range=false" in n for n in res.notes) == 2


def test_preconditions_name_the_check_and_the_fix(data):
    g, _ = compile_graph(zoo.residual_block(), data, "fold,calibrate{images=16}")
    with pytest.raises(PreconditionError, match=r"'quantized'.*run 'quantize' first"):
        _run(g, data, "clip_search")
    g, _ = compile_graph(zoo.residual_block(), data, PIPE)
    with pytest.raises(PreconditionError, match=r"'not_quantized'.*between 'calibrate'"):
        _run(g, data, "clip_search{target=activations}")
    g, _ = compile_graph(zoo.residual_block(), data, "fold")
    with pytest.raises(PreconditionError, match=r"'calibrated'.*run 'calibrate' first"):
        _run(g, data, "clip_search{target=activations}")


def test_output_metric_lowers_the_layer_output_error(data):
    g, _ = compile_graph(zoo.residual_block(), data, PIPE)
    start = {la.name: la.weight_qparams()[0] for la in quantised_layers(g, Stats())}
    res = _run(g, data, "clip_search{metric=output,images=16,rows=256}")
    assert res.modified and res.stats["mse_reduction_permille"] > 0
    # the conv1 input is the graph input: check E[(x . d)^2] directly on its patches
    from qcompile.numerics import patches as pt

    la = next(la for la in quantised_layers(g, Stats()) if la.name == "block.conv1")
    x = open_dataset(data).batches(16).__next__().x
    rows = pt.gather_rows(x, la.geom, pt.sample_positions(la.geom, len(x), 64,
                                                          np.random.default_rng(1)))[0]
    w2 = la.weight.const.reshape(la.weight.const.shape[0], -1)

    def out_err(s):
        z = np.zeros(s.shape, np.int8)
        d = w2 - quant.fake_quant(w2, s, z, quant.qtype("int4"), 0)
        return ((rows.astype(np.float64) @ d.T.astype(np.float64)) ** 2).mean()

    assert out_err(la.weight_qparams()[0]) < out_err(start[la.name])


def test_two_bit_weights_are_clipped_not_declined(data):
    g, _ = compile_graph(zoo.residual_block(), data, "fold,calibrate{images=16},quantize{"
                         "weights=int2,reduce_range=false}")
    res = _run(g, data, "clip_search{metric=mse}")
    assert res.stats.get("layers_clipped") == 4, (res.stats, res.notes)


def test_per_tensor_weights_fall_back_to_weight_mse(data):
    g, _ = compile_graph(zoo.residual_block(), data, "fold,calibrate{images=16},quantize{"
                         "weights=int4,per_channel=false,symmetric_weights=true,"
                         "reduce_range=false}")
    before = {la.name: la.weight_qparams()[0] for la in quantised_layers(g, Stats())}
    res = _run(g, data, "clip_search")  # metric=output needs per-channel rows: weight MSE
    assert res.modified
    for la in quantised_layers(g, Stats()):
        s, _, qt, axis = la.weight_qparams()
        assert axis is None and s.shape == ()
        w = la.weight.const.reshape(1, -1)
        assert _err(w, s.reshape(1), qt, 0) <= _err(w, before[la.name].reshape(1), qt, 0)


@pytest.mark.parametrize("spec", ["clip_search{grid=0}", "clip_search{alpha_min=1.5}",
                                  "clip_search{target=both}", "clip_search{samples=0}"])
def test_bad_options(spec):
    with pytest.raises(OptionError, match="clip_search"):
        parse_pipeline(spec)


# -- numerics helpers: property tests against naive references -------------------------------
def _naive_weight(w, s0, qt, grid, amin):
    """Per channel, per alpha, element by element with Python's round-half-even."""
    out_s, out_e = [], []
    for c in range(w.shape[0]):
        best = (np.inf, None)
        for k in range(grid + 1):
            s = np.float32(np.float64(s0[c]) * (1 - k / grid * (1 - amin)))
            e = 0.0
            for x in w[c].reshape(-1):
                q = min(max(round(float(np.float32(x) / s)), qt.qmin), qt.qmax)
                e += (float(x) - float(np.float32(q) * s)) ** 2
            if e < best[0]:
                best = (e, s)
        out_e.append(best[0])
        out_s.append(best[1])
    return np.array(out_s, np.float32), np.array(out_e)


@settings(max_examples=30, deadline=None)
@given(seed=hs.integers(0, 10_000), bits=hs.sampled_from([2, 4, 8]),
       channels=hs.integers(1, 3), size=hs.integers(1, 12), grid=hs.integers(1, 12),
       heavy=hs.booleans())
def test_search_weight_clip_matches_naive(seed, bits, channels, size, grid, heavy):
    rng = np.random.default_rng(seed)
    w = (rng.standard_t(2, (channels, size)) if heavy else rng.standard_normal((channels, size)))
    w = w.astype(np.float32)
    qt = quant.QType(bits, True)
    lo, hi = quant.channel_minmax(w, 0)
    s0, _ = quant.qparams(lo, hi, qt, symmetric=True)
    res = clipping.search_weight_clip(w, s0, 0, qt, grid=grid, alpha_min=0.3)
    s_ref, e_ref = _naive_weight(w, s0, qt, grid, 0.3)
    np.testing.assert_allclose(res.err, e_ref, rtol=1e-9, atol=1e-30)
    assert np.all(res.err <= res.err_start)
    # same scale unless two grid points tie to rounding (then both are optimal)
    same = res.scale == s_ref
    assert np.all(same | np.isclose(res.err, e_ref, rtol=1e-9))
    np.testing.assert_allclose(_err(w, res.scale, qt, 0), res.err, rtol=1e-9, atol=1e-30)
    # output error with a Gram matrix: d^T H d == mean over rows of (x . d)^2
    x = rng.standard_normal((50, size))
    gram = (x.T @ x / 50)[None]
    out = clipping.search_weight_clip(w, s0, 0, qt, grid=grid, alpha_min=0.3, gram=gram)
    d = w.astype(np.float64) - quant.fake_quant(w, out.scale, np.zeros(channels, np.int8), qt, 0)
    np.testing.assert_allclose(out.err, ((x @ d.T) ** 2).mean(axis=0), rtol=1e-9, atol=1e-30)
    assert np.all(out.err <= out.err_start * (1 + 1e-12))


@settings(max_examples=25, deadline=None)
@given(seed=hs.integers(0, 10_000), qname=hs.sampled_from(["uint8", "uint4", "int4"]),
       relu=hs.booleans(), grid=hs.integers(1, 10))
def test_search_activation_clip_matches_naive(seed, qname, relu, grid):
    rng = np.random.default_rng(seed)
    x = rng.standard_t(3, 200).astype(np.float32)
    if relu:
        x = np.maximum(x, 0)
    lo, hi = float(x.min()), float(x.max())
    qt = quant.qtype(qname)
    res = clipping.search_activation_clip(x, lo, hi, qt, grid=grid, alpha_min=0.4)
    errs = []
    for k in range(grid + 1):
        a = 1 - k / grid * 0.6
        s, z = quant.qparams(a * lo, a * hi, qt)
        s, z = float(s), float(z)
        e = 0.0
        for v in x.tolist():
            q = min(max(round(float(np.float32(v) / np.float32(s))) + z, qt.qmin), qt.qmax)
            e += (v - float(np.float32((q - z) * s))) ** 2
        errs.append(e)
    assert float(res.err) == pytest.approx(min(errs), rel=1e-9)
    assert float(res.err) <= float(res.err_start)
    assert float(res.err_start) == pytest.approx(errs[0], rel=1e-9)
