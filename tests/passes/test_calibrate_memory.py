"""Calibration memory does not grow with the depth of the graph (#18 item 8): each executor
run exposes at most ``exposed_budget()`` bytes of intermediates, so a 2,000-node chain whose
intermediates total 250 MiB per batch calibrates within a fixed peak."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from onnx import TensorProto, helper

from qcompile.backends.ort.executor import OrtExecutor
from qcompile.frontend import lift
from qcompile.ir import RANGE
from qcompile.passes import PassContext, parse_pipeline, run_pipeline
from qcompile.passes.calibrate import MAX_EXPOSED, exposure_chunks, observed_values, value_bytes

MiB = 1 << 20


def chain(n: int, c: int):
    """Relu/Add chain x -> Relu -> Add(., x) -> Relu ...: every Relu output is observed."""
    nodes, prev = [], "x"
    for i in range(n):
        op = "Relu" if i % 2 == 0 else "Add"
        nodes.append(helper.make_node(op, [prev] if op == "Relu" else [prev, "x"], [f"v{i}"],
                                      name=f"n{i}"))
        prev = f"v{i}"
    shape = ["N", c, 32, 32]
    g = helper.make_graph(nodes, "chain",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                          [helper.make_tensor_value_info(prev, TensorProto.FLOAT, shape)])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


class Recording(OrtExecutor):
    def __init__(self) -> None:
        super().__init__(threads=1)
        self.exposed: list[int] = []

    def run(self, graph, feeds, outputs):
        out = super().run(graph, feeds, outputs)
        self.exposed.append(sum(a.nbytes for a in out.values()))
        return out


def test_chunks_respect_budget_and_count():
    g = lift(chain(40, 4))
    vals = observed_values(g)
    assert all(value_bytes(v, 16) == 16 * 4 * 32 * 32 * 4 for v in vals)
    chunks = exposure_chunks(vals, 16, 3 * value_bytes(vals[0], 16))
    assert [v for c in chunks for v in c] == vals and max(len(c) for c in chunks) == 3
    assert len(exposure_chunks(vals, 16, 1)) == len(vals)  # larger than the budget: alone
    many = lift(chain(2 * MAX_EXPOSED + 10, 1))
    assert max(len(c) for c in exposure_chunks(observed_values(many), 1, 1 << 40)) == MAX_EXPOSED


def test_calibration_runs_stay_within_budget_same_ranges(monkeypatch):
    g = lift(chain(200, 4))
    x = np.random.default_rng(0).normal(size=(16, 4, 32, 32)).astype(np.float32)
    ranges = []
    for budget in ("64G", "4M"):  # 4M -> 1 MiB per run: 4 values of 256 KiB
        monkeypatch.setenv("QCOMPILE_MEMORY_BUDGET", budget)
        ex = Recording()
        out = run_pipeline(g.clone(), parse_pipeline("calibrate{images=16}"),
                           PassContext(calib_data=[x], executor=ex)).graph
        ranges.append([(v.name, v.meta[RANGE]) for v in observed_values(out)])
        if budget == "4M":
            n = len(observed_values(g))
            assert max(ex.exposed) <= MiB and len(ex.exposed) == -(-n // 4), ex.exposed
        else:
            assert len(ex.exposed) == 1
    assert ranges[0] == ranges[1]


SCRIPT = textwrap.dedent("""
    import resource, sys
    import numpy as np
    from qcompile.backends.ort.executor import OrtExecutor
    from qcompile.frontend import lift
    from qcompile.passes import PassContext, parse_pipeline, run_pipeline
    from tests.passes.test_calibrate_memory import chain
    g = lift(chain(2000, 4))
    x = np.random.default_rng(0).normal(size=(16, 4, 32, 32)).astype(np.float32)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run_pipeline(g, parse_pipeline("calibrate{images=16}"),
                 PassContext(calib_data=[x], executor=OrtExecutor(threads=1)))
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
""")


@pytest.mark.slow  # a 2,000-node chain in a subprocess: ~6 s on 2 loaded cores
def test_deep_chain_peak_rss_bounded():
    """1,000 observed values of 256 KiB per batch = 250 MiB if exposed at once (measured
    +275 MiB before chunking); with a 256 MiB memory budget (16 MiB per run) the growth of
    peak RSS during calibration stays under 160 MiB (measured ~100 MiB: sessions, graph)."""
    total = 1000 * 16 * 4 * 32 * 32 * 4
    env = dict(os.environ, QCOMPILE_MEMORY_BUDGET="256M", OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                       env=env, cwd=os.path.dirname(os.path.dirname(os.path.dirname(
                           os.path.abspath(__file__)))), timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    grew = int(r.stdout.split()[-1])
    assert total > 240 * MiB and grew < 160 * MiB, f"peak RSS grew {grew / MiB:.0f} MiB"
