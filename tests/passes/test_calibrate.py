"""calibrate: ranges in meta, determinism, streaming = one shot, errors, precondition hint."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qcompile.backends.ort.executor import OrtExecutor
from qcompile.data import open_dataset
from qcompile.data.calibration import CALIB_KEY
from qcompile.errors import OptionError, QCompileError
from qcompile.frontend import lift
from qcompile.ir import RANGE
from qcompile.passes import PassContext, PreconditionError, parse_pipeline, run_pipeline
from qcompile.passes.calibrate import Calibrate, observed_values
from qcompile.testing import zoo
from tests.passes.int8_helpers import compile_graph, tiny_npz


@pytest.fixture
def data(tmp_path):
    return tiny_npz(tmp_path / "tiny.npz")


def _ranges(g):
    return {v.name: (v.meta[RANGE].lo, v.meta[RANGE].hi) for v in g.values() if RANGE in v.meta}


def test_ranges_cover_every_quantisable_input_and_skip_pre_activations(data):
    g, results = compile_graph(zoo.mini_resnet(), data, "fold,calibrate{images=16,batch=4}")
    stats = results[-1][1].stats
    assert stats["images"] == 16
    ranges = _ranges(g)
    assert "input" in ranges and "relu" in ranges
    conv1 = g.find_node("conv1")
    assert conv1.output.name not in ranges  # feeds only a Relu: fused, never quantised
    assert all(lo <= 0 <= hi or lo >= 0 for lo, hi in ranges.values())
    assert ranges["relu"][0] >= 0.0
    rec = json.loads(g.metadata[CALIB_KEY])
    assert rec["images"] == 16 and len(rec["indices"]) == 16 and rec["seed"] == 0


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy", "mse"])
def test_streaming_is_batch_size_independent(data, method):
    a, _ = compile_graph(zoo.mini_resnet(), data, f"fold,calibrate{{method={method},batch=1,images=12,bins=256}}")
    b, _ = compile_graph(zoo.mini_resnet(), data, f"fold,calibrate{{method={method},batch=12,images=12,bins=256}}")
    assert _ranges(a) == _ranges(b)


def test_deterministic_for_a_seed_and_logged(data):
    logs: list[str] = []
    a, _ = compile_graph(zoo.mini_resnet(), data, "fold,calibrate{images=8,seed=3}", log=logs.append)
    b, _ = compile_graph(zoo.mini_resnet(), data, "fold,calibrate{images=8,seed=3}")
    c, _ = compile_graph(zoo.mini_resnet(), data, "fold,calibrate{images=8,seed=4}")
    assert _ranges(a) == _ranges(b)
    ia = json.loads(a.metadata[CALIB_KEY])["indices"]
    assert ia == json.loads(b.metadata[CALIB_KEY])["indices"]
    assert ia != json.loads(c.metadata[CALIB_KEY])["indices"]
    assert any("8 of 24 images" in m and str(ia[0]) in m for m in logs)


def test_errors_are_one_line_user_errors(data, tmp_path):
    g = lift(zoo.mini_resnet())
    with pytest.raises(QCompileError, match="no calibration data"):
        run_pipeline(g, [Calibrate()], PassContext(executor=OrtExecutor()))
    with pytest.raises(QCompileError, match="no executor"):
        run_pipeline(g, [Calibrate()], PassContext(calib_data=open_dataset(data)))
    empty = tmp_path / "empty.npz"
    np.savez(empty, images=np.zeros((0, 16, 16, 3), np.uint8))
    try:
        ds = open_dataset(empty)
    except QCompileError:
        return  # the data layer already refuses an empty file: fine
    with pytest.raises(QCompileError, match="empty"):
        run_pipeline(g, [Calibrate()], PassContext(calib_data=ds, executor=OrtExecutor()))


def test_bad_options():
    for spec in ("calibrate{images=0}", "calibrate{bins=100}", "calibrate{percentile=0}",
                 "calibrate{method=kl}"):
        with pytest.raises(OptionError):
            parse_pipeline(spec)


def test_quantize_without_calibrate_says_run_calibrate_first():
    g = lift(zoo.mini_resnet())
    with pytest.raises(PreconditionError, match="run 'calibrate' first"):
        run_pipeline(g, parse_pipeline("fold,quantize"), PassContext())


def test_in_memory_feeds_and_nothing_to_observe():
    g = lift(zoo.conv_bn_relu())
    rng = np.random.default_rng(0)
    feeds = [rng.standard_normal((2, 3, 8, 8)).astype(np.float32) for _ in range(3)]
    res = run_pipeline(g, parse_pipeline("fold,calibrate"),
                       PassContext(calib_data=feeds, executor=OrtExecutor()))
    assert res.results[-1][1].stats["images"] == 6
    assert observed_values(g)


def test_relu_range_capped_by_per_channel_clip():
    """After cle{clip=scale}, Relu -> Min(x, B): the Relu's range ends where the Min's does."""
    from qcompile.backends.ort.executor import OrtExecutor
    from qcompile.frontend import lift
    from qcompile.ir import RANGE
    from qcompile.passes import PassContext, parse_pipeline, run_pipeline
    from qcompile.testing import zoo

    m = zoo.depthwise_block()
    feeds = [20 * zoo.random_input(m, batch=8, seed=i)["input"] for i in range(2)]
    r = run_pipeline(lift(m), parse_pipeline("fold,cle{clip=scale},calibrate"),
                     PassContext(calib_data=feeds, executor=OrtExecutor()))
    assert r.results[-1][1].stats["ranges_capped_by_clip"] >= 1
    for n in r.graph.nodes:
        if n.op == "Min":
            relu_out = n.inputs[0]
            assert relu_out.meta[RANGE].hi == n.outputs[0].meta[RANGE].hi
            assert n.outputs[0].meta[RANGE].hi <= float(n.inputs[1].const.max()) + 1e-6
