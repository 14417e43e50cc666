"""adaround: structure unchanged (golden), declines when nothing is quantised, learned rounding
beats nearest rounding and lowers to exactly the learned integer codes in ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest

from qcompile.backends.ort import lower
from qcompile.backends.ort.executor import OrtExecutor
from qcompile.backends.ort.runtime import run
from qcompile.data import open_dataset
from qcompile.errors import OptionError
from qcompile.frontend import lift
from qcompile.ir import format_graph
from qcompile.numerics import quant
from qcompile.numerics.adaround import AdaRoundConfig, adaround, reconstruction_loss
from qcompile.numerics.error import sqnr_db
from qcompile.passes import PassContext, PreconditionError, parse_pipeline, run_pipeline
from qcompile.passes._layerwise import quantised_layers
from qcompile.passes.base import Stats
from qcompile.testing import zoo
from tests.passes.int8_helpers import compile_graph, tiny_npz

PIPE = "fold,calibrate{images=32},quantize{weights=int4,reduce_range=false}"


@pytest.fixture
def data(tmp_path):
    return tiny_npz(tmp_path / "tiny.npz", n=32)


def test_golden_structure_unchanged_and_codes_exact(data, golden, check):
    g, _ = compile_graph(zoo.residual_block(), data, PIPE)
    before = format_graph(g, digests=False)
    near = {la.name: la.dequantized_weight() for la in quantised_layers(g, Stats())}
    ctx = PassContext(calib_data=open_dataset(data), executor=OrtExecutor())
    res = run_pipeline(g, parse_pipeline("adaround{iterations=200,images=32,rows=512}"),
                       ctx).results[-1][1]
    check(g)
    assert format_graph(g, digests=False) == before  # only constants change
    golden("adaround/residual_block.after", format_graph(g, digests=False))
    assert res.modified and res.stats["adarounded"] >= 1
    declined = " ".join(res.notes)
    for la in quantised_layers(g, Stats()):
        if f"'{la.name}'" in declined:  # no gain over nearest: the float weight is kept
            continue
        s, z, qt, axis = la.weight_qparams()
        w = la.weight.const
        # pre-rounded: the lowering's quantize(w) gives exactly the learned codes
        np.testing.assert_array_equal(quant.fake_quant(w, s, z, qt, axis), w)
        # every weight moved by at most one step from nearest rounding
        step = s.reshape((-1,) + (1,) * (w.ndim - 1)) if axis is not None else s
        assert np.all(np.abs(w - near[la.name]) <= step * 1.0001)


def test_no_quantised_weight_declines(data):
    g, _ = compile_graph(zoo.residual_block(), data,
                         "fold,calibrate{images=32},quantize{keep_float=block.conv1,"
                         "block.conv2,block.downsample.0,fc}")
    before = format_graph(g)
    ctx = PassContext(calib_data=open_dataset(data), executor=OrtExecutor())
    res = run_pipeline(g, parse_pipeline("adaround{iterations=10}"), ctx).results[-1][1]
    assert res.modified is False and format_graph(g) == before
    assert res.stats["skipped_float_layer"] == 4
    assert all("not quantised" in n for n in res.notes)


def test_learned_rounding_beats_nearest_in_ort(data):
    model = zoo.mini_resnet()
    g, _ = compile_graph(model, data, PIPE)
    nearest = lower(g.clone())
    ctx = PassContext(calib_data=open_dataset(data), executor=OrtExecutor())
    run_pipeline(g, parse_pipeline("adaround{iterations=300,images=32,rows=2048}"), ctx)
    x = open_dataset(data).batches(32).__next__().x
    ref = run(model, {"input": x})["logits"]
    a = sqnr_db(ref, run(nearest, {"input": x})["logits"])
    b = sqnr_db(ref, run(lower(g), {"input": x})["logits"])
    assert b > a + 0.5, (a, b)


def test_numerics_reduce_loss_on_a_random_layer():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((1, 8, 27)).astype(np.float32)
    s = (np.abs(w).max(-1) / 7).astype(np.float32)
    z = np.zeros_like(s)
    # correlated inputs (for white inputs nearest rounding is already MSE-optimal)
    mix = rng.standard_normal((27, 27)) + 0.5
    x = (rng.standard_normal((1, 2048, 27)) @ mix).astype(np.float32)
    t = np.matmul(x, w.transpose(0, 2, 1))
    q = adaround(w, s, z, -8, 7, x, t, None, None, AdaRoundConfig(iterations=1000), rng)
    near = np.clip(np.rint(w / s[..., None]), -8, 7)
    assert np.all(np.abs(q - near) <= 1)
    l_near = reconstruction_loss(x, s[..., None] * near, None, t, None)
    l_ada = reconstruction_loss(x, s[..., None] * q, None, t, None)
    assert l_ada < 0.95 * l_near


def test_options_are_checked():
    with pytest.raises(OptionError, match="iterations=0 must be >= 1"):
        parse_pipeline("adaround{iterations=0}")
    with pytest.raises(PreconditionError, match="needs 'quantized'"):
        g = lift(zoo.residual_block())
        run_pipeline(g, parse_pipeline("fold,adaround"), PassContext())
