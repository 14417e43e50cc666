"""bias_correct: structure unchanged (golden), declines with reasons, restores the output mean."""

from __future__ import annotations

import numpy as np
import pytest

from qcompile.backends.ort.executor import OrtExecutor
from qcompile.data import open_dataset
from qcompile.ir import format_graph
from qcompile.passes import PassContext, parse_pipeline, run_pipeline
from qcompile.passes._layerwise import float_reference
from qcompile.testing import zoo
from tests.passes.int8_helpers import compile_graph, tiny_npz

PIPE = "fold,calibrate{images=32},quantize{weights=int4,reduce_range=false}"


@pytest.fixture
def data(tmp_path):
    return tiny_npz(tmp_path / "tiny.npz", n=32)


def _mean_error(g, fg, data):
    """max over layers and channels of |mean(quantised conv output) - mean(float)|."""
    ex = OrtExecutor()
    convs = [n for n in g.nodes if n.op == "Conv"]
    fnodes = {n.name: n for n in fg.nodes}
    x = next(open_dataset(data).batches(32)).x
    q = ex.run(g, {"input": x}, [n.output for n in convs])
    f = ex.run(fg, {"input": x}, [fnodes[n.name].output for n in convs])
    return max(float(np.abs(q[n.output].mean(axis=(0, 2, 3))
                            - f[fnodes[n.name].output].mean(axis=(0, 2, 3))).max())
               for n in convs)


@pytest.mark.parametrize("mode", ["empirical", "empirical,sequential=false", "analytic"])
def test_golden_and_mean_restored(data, golden, check, mode):
    g, _ = compile_graph(zoo.residual_block(), data, PIPE)
    before_text = format_graph(g, digests=False)
    fg = float_reference(g)  # before the correction changes the (shared) bias values
    err0 = _mean_error(g, fg, data)
    ctx = PassContext(calib_data=open_dataset(data), executor=OrtExecutor())
    res = run_pipeline(g, parse_pipeline(f"bias_correct{{mode={mode},images=32}}"),
                       ctx).results[-1][1]
    check(g)
    assert res.modified and res.stats["corrected"] == 4  # 3 Conv + the Gemm
    assert format_graph(g, digests=False) == before_text  # only bias constants change
    golden("bias_correct/residual_block.after", format_graph(g, digests=False))
    err1 = _mean_error(g, fg, data)
    assert err1 < (0.2 if mode == "empirical" else 0.7) * err0, (err0, err1)
    assert err1 < 0.7 * err0


def test_layers_without_bias_decline():
    from tests.passes.test_absorb import tiny_graph  # c1 has a bias, c2 has none

    g = tiny_graph()
    x = np.random.default_rng(1).standard_normal((16, 4, 3, 3)).astype(np.float32)
    ctx = PassContext(calib_data=[x], executor=OrtExecutor())
    run_pipeline(g, parse_pipeline("calibrate,quantize"), ctx)
    res = run_pipeline(g, parse_pipeline("bias_correct"), ctx).results[-1][1]
    assert res.stats["skipped_no_bias"] == 1 and res.stats["corrected"] == 1
    assert any("'c2'" in n and "no bias constant" in n for n in res.notes)
    g2 = tiny_graph()
    g2.find_node("c1").replace_input(2, None)  # no bias anywhere: nothing to do
    run_pipeline(g2, parse_pipeline("calibrate,quantize"), ctx)
    before = format_graph(g2)
    res2 = run_pipeline(g2, parse_pipeline("bias_correct"), ctx).results[-1][1]
    assert res2.modified is False and format_graph(g2) == before
