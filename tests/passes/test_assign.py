"""assign / sensitivity: per-layer weight formats, budget search, ORT lowering, clipping maths."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcompile.backends.ort import lower
from qcompile.backends.ort.runtime import run
from qcompile.errors import OptionError, QCompileError
from qcompile.ir import QCOMPILE_DOMAIN
from qcompile.numerics import quant
from qcompile.numerics.clipping import symmetric_weight_scale
from qcompile.passes import parse_pipeline
from qcompile.passes._precision import avg_bits, weight_layers
from tests.passes.int8_helpers import compile_graph, tiny_npz
from tests.passes.test_quantize import clip_pool_pad_model


@pytest.fixture
def data(tmp_path):
    return tiny_npz(tmp_path / "tiny.npz", n=64)


def _weight_bits(g):
    return {la.name: la.bits for la in weight_layers(g)}


def _bias_scale_ok(g):
    for n in g.nodes:
        if n.op == "Conv" and len(n.inputs) > 2:
            x_q, w_q, b_q = (v.producer for v in n.inputs)
            want = quant.bias_qparams(x_q.inputs[1].const, w_q.inputs[1].const)[0]
            np.testing.assert_array_equal(b_q.inputs[1].const, want)


def test_uniform_and_first_last_structure(data, check):
    g, _ = compile_graph(clip_pool_pad_model(), data,
                         "fold,calibrate{images=16},assign{policy=uniform,weights=int4,keep=}")
    check(g)
    assert _weight_bits(g) == {"conv1": 4, "conv2": 4, "fc": 4}
    _bias_scale_ok(g)
    g, res = compile_graph(clip_pool_pad_model(), data,
                           "fold,calibrate{images=16},assign{policy=first-last,weights=int4,int8}")
    assert _weight_bits(g) == {"conv1": 8, "conv2": 4, "fc": 8}
    assert res[-1][1].stats["layers_int4"] == 1 and res[-1][1].stats["layers_int8"] == 2
    assert json.loads(g.metadata["qcompile.assign"])["layers"]["conv2"] == "int4"


def test_uniform_int8_minmax_equals_quantize(data):
    a, _ = compile_graph(clip_pool_pad_model(), data, "fold,calibrate{images=16},quantize")
    b, _ = compile_graph(clip_pool_pad_model(), data,
                         "fold,calibrate{images=16},assign{policy=uniform,weights=int8,"
                         "weight_scale=minmax,keep=}")
    x = np.random.default_rng(3).standard_normal((4, 3, 16, 16)).astype(np.float32)
    ya, yb = (run(lower(g), {"input": x})["logits"] for g in (a, b))
    np.testing.assert_array_equal(ya, yb)


def test_mixed_model_lowers_to_int4_and_int8(data):
    g, _ = compile_graph(clip_pool_pad_model(), data,
                         "fold,calibrate{images=16},assign{policy=first-last,weights=int4,int8}")
    m = lower(g)
    types = {t.name: t.data_type for t in m.graph.initializer}
    assert onnx.TensorProto.INT4 in types.values() and onnx.TensorProto.INT8 in types.values()
    x = np.random.default_rng(3).standard_normal((4, 3, 16, 16)).astype(np.float32)
    y = run(m, {"input": x})["logits"]
    assert y.shape == (4, 10) and np.all(np.isfinite(y))


def test_budget_search_meets_bits_and_caches(data, tmp_path):
    spec = (f"fold,calibrate{{images=16}},assign{{policy=budget,avg_bits=6,images=32,"
            f"sens_images=16,keep=,cache={tmp_path / 'c'}}}")
    logs: list[str] = []
    g, res = compile_graph(clip_pool_pad_model(), data, spec, log=logs.append)
    assert avg_bits(weight_layers(g)) <= 6
    rep = json.loads(g.metadata["qcompile.assign"])
    assert rep["front"][0]["avg_bits"] == 8 and rep["chosen"]["avg_bits"] <= 6
    assert list((tmp_path / "c" / "sensitivity").glob("*.json"))
    calib = json.loads(g.metadata["qcompile.calibration"])
    assert calib["assign_images"] == 32 and len(calib["indices"]) == 16 + 32
    logs.clear()
    compile_graph(clip_pool_pad_model(), data, spec, log=logs.append)
    assert any("cached" in m for m in logs)


def test_budget_infeasible_is_one_line_with_best_point(data, tmp_path):
    spec = (f"fold,calibrate{{images=16}},assign{{policy=budget,avg_bits=3,images=16,"
            f"sens_images=8,cache={tmp_path}}}")
    with pytest.raises(QCompileError, match="out of reach.*narrowest assignment") as e:
        compile_graph(clip_pool_pad_model(), data, spec)
    assert "\n" not in str(e.value)
    spec = (f"fold,calibrate{{images=16}},assign{{policy=budget,avg_bits=4,max_drop=-50,"
            f"images=16,sens_images=8,keep=,cache={tmp_path}}}")
    with pytest.raises(QCompileError, match="no assignment meets"):
        compile_graph(clip_pool_pad_model(), data, spec)


def test_options_are_checked():
    with pytest.raises(OptionError, match="needs avg_bits"):
        parse_pipeline("assign{policy=budget}")
    with pytest.raises(OptionError, match="policy=budget only"):
        parse_pipeline("assign{policy=uniform,avg_bits=4}")
    with pytest.raises(OptionError, match="int4, int8 or int16"):
        parse_pipeline("assign{policy=uniform,weights=uint4}")
    parse_pipeline("assign{policy=uniform,weights=e4m3}")  # float formats: test_assign_float


def test_sensitivity_pass_reports_every_layer(data, tmp_path):
    g, res = compile_graph(clip_pool_pad_model(), data,
                           f"fold,calibrate{{images=16}},sensitivity{{images=16,cache={tmp_path}}}")
    rep = json.loads(g.metadata["qcompile.sensitivity"])
    assert [r["layer"] for r in rep["layers"]] == ["conv1", "conv2", "fc"]
    assert not any(n.domain == QCOMPILE_DOMAIN for n in g.nodes)  # graph left float


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), bits=st.sampled_from([4, 8]))
def test_mse_scale_never_worse_than_minmax(seed, bits):
    rng = np.random.default_rng(seed)
    w = (rng.standard_t(3, (6, 5, 3, 3)) * 0.1).astype(np.float32)
    qt = quant.QType(bits, True)

    def err(method):
        s = symmetric_weight_scale(w, 0, qt, method=method)
        z = np.zeros(s.shape, np.int8)
        return ((quant.fake_quant(w, s, z, qt, 0) - w) ** 2).sum(axis=(1, 2, 3))

    assert np.all(err("mse") <= err("minmax") + 1e-12)


@pytest.mark.parametrize("refine", ["none", "clip", "adaround"])
def test_budget_refine_verifies_the_model_it_writes(data, tmp_path, refine):
    """refine: the narrowed weights are refined (clip_search [+ adaround]) both in the verified
    point and in the result, so the stored drop is that of the written model."""
    spec = (f"fold,calibrate{{images=16}},assign{{policy=budget,avg_bits=6,images=32,"
            f"sens_images=16,keep=,refine={refine},cache={tmp_path / 'c'}}}")
    g, res = compile_graph(clip_pool_pad_model(), data, spec)
    stats = {k: v for p, r, _ in res if p.name == "assign" for k, v in r.stats.items()}
    refined = {k.split("_")[1] for k in stats if k.startswith("refine_")}
    assert refined == {"none": set(), "clip": {"clip"}, "adaround": {"clip", "adaround"}}[refine]
    narrow = [la for la in weight_layers(g) if la.bits == 4]
    assert narrow
    _bias_scale_ok(g)
    with pytest.raises(OptionError, match="refine="):
        parse_pipeline("assign{policy=budget,avg_bits=5,refine=brecq}")


def test_budget_refine_result_equals_refining_afterwards(data, tmp_path):
    """The result reuses the verified point's refined weights: the same model as choosing
    formats with refine=none and running clip_search + adaround after assign."""
    opts = "policy=budget,avg_bits=6,images=32,sens_images=16,keep=,cache=" + str(tmp_path / "c")
    g1, _ = compile_graph(clip_pool_pad_model(), data,
                          f"fold,calibrate{{images=16}},assign{{{opts}}}")
    g2, _ = compile_graph(clip_pool_pad_model(), data,
                          f"fold,calibrate{{images=16}},assign{{{opts},refine=none}},"
                          "clip_search,adaround{iterations=400,batch=512}")
    assert g1.initializers.keys() == g2.initializers.keys()
    for name, v in g1.initializers.items():
        np.testing.assert_array_equal(v.const, g2.initializers[name].const, err_msg=name)
