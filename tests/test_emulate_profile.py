"""emulate's per-op profile (--json, --verbose) and the first-run compile notice (#14)."""

from __future__ import annotations

import json
import time

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from qcompile.cli import app
from qcompile.driver.emulate import warm_kernels
from qcompile.testing import zoo

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("prof")
    onnx.save(zoo.mini_resnet(image_size=8, batch=1), d / "mini.onnx")
    rng = np.random.default_rng(0)
    np.savez(d / "imgs.npz", images=rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8),
             labels=rng.integers(0, 10, 2))
    return d


@pytest.mark.parametrize("fmt", ["fp32", "bf16"])
def test_json_profile_covers_every_op_and_the_evaluation(tiny, fmt):
    r = runner.invoke(app, ["emulate", str(tiny / "mini.onnx"), "--format", fmt, "--data",
                            str(tiny / "imgs.npz"), "--json", "--verify", "3",
                            "--preprocess", "cifar"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    prof = rep["profile"]
    g = onnx.load(tiny / "mini.onnx").graph
    assert {n.op_type for n in g.node} <= set(prof) and "Conv" in prof
    assert all(v >= 0 for v in prof.values())
    assert sum(prof.values()) <= rep["seconds"] * 1.05 + 1e-3  # kernels only, no listeners
    assert rep["verify"]["mismatches"] == 0


def test_verbose_prints_the_profile_line(tiny):
    args = ["emulate", str(tiny / "mini.onnx"), "--format", "fp32", "--data",
            str(tiny / "imgs.npz"), "--preprocess", "cifar"]
    plain = runner.invoke(app, args)
    verbose = runner.invoke(app, [*args, "--verbose"])
    assert plain.exit_code == verbose.exit_code == 0, verbose.output
    assert "profile " not in plain.output
    line = next(ln for ln in verbose.output.splitlines() if ln.startswith("profile "))
    assert "Conv" in line and "%" in line


class _SlowArith:
    def __init__(self, seconds):
        self.seconds = seconds

    def warmup(self, progress=None):
        for i in range(2):
            time.sleep(self.seconds / 2)
            progress(i + 1, 2)


def test_compile_notice_only_when_warmup_is_slow():
    slow, fast = [], []
    warm_kernels(_SlowArith(1.4), slow.append)
    warm_kernels(_SlowArith(0.0), fast.append)
    assert slow[0] == "compiling kernels (first run only) ..." and "2/2" in slow[-1]
    assert fast == []
