"""calibrate{select=random|stratified|diverse}: indices recorded, classes covered, determinism,
the default unchanged, fallbacks explained, bad option values refused; the selection maths."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcompile.backends.ort.executor import OrtExecutor
from qcompile.data import open_dataset
from qcompile.data import select as sel
from qcompile.data.calibration import CALIB_KEY
from qcompile.errors import OptionError
from qcompile.frontend import lift
from qcompile.ir import RANGE
from qcompile.passes import PassContext, parse_pipeline
from qcompile.passes._layerwise import calibration_inputs
from qcompile.passes._select import feature_value, recorded_selection
from qcompile.passes.calibrate import Calibrate
from qcompile.testing import zoo
from tests.passes.int8_helpers import compile_graph


@pytest.fixture
def data(tmp_path):
    """60 labelled 16x16 images, 6 classes of very different sizes (30, 15, 8, 4, 2, 1)."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(6), [30, 15, 8, 4, 2, 1])
    rng.shuffle(labels)
    p = tmp_path / "imbalanced.npz"
    np.savez(p, images=rng.integers(0, 256, (60, 16, 16, 3), dtype=np.uint8),
             labels=labels.astype(np.int64))
    return p


def _run(data, spec, **kw):
    g, results = compile_graph(zoo.mini_resnet(), data, f"fold,calibrate{{{spec}}}", **kw)
    return g, results[-1][1], json.loads(g.metadata[CALIB_KEY])


def _ranges(g):
    return {v.name: (v.meta[RANGE].lo, v.meta[RANGE].hi) for v in g.values() if RANGE in v.meta}


@pytest.mark.parametrize("select", ["stratified", "diverse"])
def test_every_class_covered_and_indices_recorded(data, select):
    labels = open_dataset(data).labels
    g, res, rec = _run(data, f"images=12,select={select},seed=1")
    idx = np.asarray(rec["indices"])
    assert rec["select"] == select and rec["images"] == 12 == res.stats["images"]
    assert len(set(idx.tolist())) == 12 and idx.min() >= 0 and idx.max() < 60
    assert set(labels[idx].tolist()) == set(range(6))  # the single image of class 5 included
    assert res.stats["classes_covered"] == 6
    if select == "stratified":  # round-robin: class counts differ by at most one where possible
        counts = np.bincount(labels[idx], minlength=6)
        assert counts.max() - counts[counts < [30, 15, 8, 4, 2, 1]].min() <= 1


def test_random_is_the_default_and_unchanged(data):
    a, _, ra = _run(data, "images=12,seed=2")
    b, _, rb = _run(data, "images=12,seed=2,select=random")
    split = open_dataset(data).split(12, seed=2)[0]
    assert ra["indices"] == rb["indices"] == split.tolist()
    assert _ranges(a) == _ranges(b)


@pytest.mark.parametrize("select", ["random", "stratified", "diverse"])
def test_deterministic_by_seed(data, select):
    _, _, r1 = _run(data, f"images=10,select={select},seed=3")
    _, _, r2 = _run(data, f"images=10,select={select},seed=3")
    _, _, r3 = _run(data, f"images=10,select={select},seed=4")
    assert r1["indices"] == r2["indices"]
    assert r1["indices"] != r3["indices"]


def test_diverse_names_its_feature_and_beats_random_coverage(data):
    _, res, rec = _run(data, "images=10,select=diverse")
    (note,) = [n for n in res.notes if n.startswith("select: diverse")]
    assert "k-center" in note and "input of Gemm" in note
    radius, rnd = (float(t.split()[0].rstrip(")")) for t in
                   (note.split("coverage radius ")[1], note.split("same size: ")[1]))
    assert radius <= rnd


def test_stratified_without_labels_falls_back_with_a_note(tmp_path):
    p = tmp_path / "unlabelled.npz"
    np.savez(p, images=np.random.default_rng(0).integers(0, 256, (20, 16, 16, 3), np.uint8))
    g, res, rec = _run(p, "images=6,select=stratified,seed=5")
    assert any("fell back to random" in n and "no labels" in n for n in res.notes)
    assert rec["indices"] == open_dataset(p).split(6, seed=5)[0].tolist()
    _, res, rec = _run(p, "images=6,select=diverse")  # no labels: seeded start, still 6 images
    assert len(set(rec["indices"])) == 6 and "per class" not in " ".join(res.notes)


def test_no_op_when_all_images_are_taken(data):
    """take == n: every mode calibrates on the whole set, so the ranges are identical."""
    got = [_run(data, f"images=60,select={s}") for s in ("random", "stratified", "diverse")]
    assert all(sorted(r["indices"]) == list(range(60)) for _, _, r in got)
    assert _ranges(got[0][0]) == _ranges(got[1][0]) == _ranges(got[2][0])


def test_invalid_select_is_a_one_line_option_error():
    with pytest.raises(OptionError) as ei:
        parse_pipeline("calibrate{select=best}")
    msg = str(ei.value)
    assert "\n" not in msg and all(v in msg for v in ("random", "stratified", "diverse"))
    with pytest.raises(OptionError, match="random, stratified, diverse"):
        Calibrate(select="best")


def test_layerwise_passes_reuse_a_recorded_selection(data):
    g, _, rec = _run(data, "images=12,select=diverse")
    ds = open_dataset(data)
    assert recorded_selection(g, ds, 12).tolist() == sorted(rec["indices"])
    assert recorded_selection(g, ds, 5).tolist() == sorted(rec["indices"][:5])
    assert recorded_selection(g, ds, 40) is None  # more than were selected: own draw
    feeds = calibration_inputs(g, PassContext(calib_data=ds, executor=OrtExecutor()), 12, 0)
    chosen = np.concatenate([f["input"] for f in feeds])
    want = np.concatenate([b.x for b in ds.batches(32, indices=np.sort(rec["indices"]))])
    assert np.array_equal(chosen, want)
    r, _, _ = _run(data, "images=12")
    assert recorded_selection(r, ds, 12) is None  # random: the passes keep their own seed


def _conv_only():
    """input [N,3,16,16] -> Conv 3->4 -> Relu: no classifier, no global pool."""
    import onnx
    from onnx import TensorProto, helper

    w = onnx.numpy_helper.from_array(
        np.random.default_rng(0).normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["input", "w"], ["c"], name="conv", pads=[1] * 4),
             helper.make_node("Relu", ["c"], ["out"], name="relu")]
    X = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 16, 16])
    Y = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 4, 16, 16])
    return helper.make_model(helper.make_graph(nodes, "g", [X], [Y], initializer=[w]),
                             opset_imports=[helper.make_opsetid("", 17)])


def test_feature_value_and_pixel_fallback(data):
    v, what = feature_value(lift(zoo.mini_resnet()))
    assert v is not None and "Gemm" in what
    assert feature_value(lift(_conv_only())) == (None, "pixels")
    g, results = compile_graph(_conv_only(), data, "calibrate{images=8,select=diverse}")
    assert any("pixels downsampled" in n for n in results[-1][1].notes)
    assert len(json.loads(g.metadata[CALIB_KEY])["indices"]) == 8


# ----------------------------------------------------------------------------- maths
@settings(max_examples=40, deadline=None)
@given(n_cls=st.integers(1, 8), per=st.lists(st.integers(1, 6), min_size=8, max_size=8),
       take=st.integers(1, 30), seed=st.integers(0, 100))
def test_stratified_order_is_round_robin(n_cls, per, take, seed):
    labels = np.repeat(np.arange(n_cls), per[:n_cls])
    order = sel.stratified_order(labels, seed)
    assert sorted(order.tolist()) == list(range(len(labels)))  # a permutation
    pick = order[:take]
    counts = np.bincount(labels[pick], minlength=n_cls)
    if take >= n_cls:
        assert (counts >= 1).all()
    full = np.asarray(per[:n_cls])
    short = counts < full  # classes not exhausted differ by at most one
    if short.any():
        assert counts.max() - counts[short].min() <= 1


@settings(max_examples=30, deadline=None)
@given(m=st.integers(2, 40), d=st.integers(1, 5), k=st.integers(1, 10), seed=st.integers(0, 99))
def test_k_center_is_farthest_point_against_brute_force(m, d, k, seed):
    f = np.random.default_rng(seed).normal(size=(m, d))
    got = sel.k_center(f, k, seed)
    assert len(set(got.tolist())) == min(k, m)
    z = sel.standardise(f)  # brute force: each new point maximises the distance to the set
    for j in range(1, len(got)):
        dist = np.min(((z[:, None] - z[got[:j]][None]) ** 2).sum(-1), axis=1)
        assert dist[got[j]] >= dist.max() - 1e-9
    if m <= 9 and k <= 3:  # Gonzalez: within a factor 2 of the optimal k-center radius
        from itertools import combinations

        best = min(sel.coverage_radius(f, np.asarray(c)) for c in combinations(range(m), min(k, m)))
        assert sel.coverage_radius(f, got) <= 2 * best + 1e-9
