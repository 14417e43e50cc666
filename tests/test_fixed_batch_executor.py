"""driver.context.FixedBatchExecutor runs the inner executor once per chunk of rows, with every
requested output together (a per-output loop made calibration 20x slower)."""

from __future__ import annotations

import numpy as np

from qcompile.driver.context import FixedBatchExecutor
from qcompile.frontend import lift
from qcompile.testing import zoo


class Counting:
    def __init__(self) -> None:
        self.calls = 0

    def run(self, graph, feeds, outputs):
        self.calls += 1
        x = next(iter(feeds.values()))
        return {v: np.full((x.shape[0], 1), float(i)) for i, v in enumerate(outputs)}


def test_one_inner_run_per_chunk_with_all_outputs():
    g = lift(zoo.conv_bn_relu())  # symbolic batch: one chunk
    outs = [n.output for n in g.nodes][:3]
    inner = Counting()
    res = FixedBatchExecutor(inner).run(g, {"input": np.zeros((5, 3, 8, 8), np.float32)}, outs)
    assert inner.calls == 1 and [float(res[v][0, 0]) for v in outs] == [0.0, 1.0, 2.0]


def test_fixed_batch_runs_each_chunk_once():
    g = lift(zoo.conv_bn_relu(batch=2))
    outs = [n.output for n in g.nodes][:3]
    inner = Counting()
    res = FixedBatchExecutor(inner).run(g, {"input": np.zeros((5, 3, 8, 8), np.float32)}, outs)
    assert inner.calls == 3  # rows 2 + 2 + 1 (padded for the run, cut after)
    assert all(res[v].shape[0] == 5 for v in outs)
