"""Determinism (#18 item 9): ``qcompile run`` writes the same bytes run to run, and
``qcompile emulate`` gives the same logits with 1 or 2 threads (numba and ORT)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from qcompile.cli import app
from qcompile.testing import zoo

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("det")
    onnx.save(zoo.mini_resnet(image_size=8), d / "mini.onnx")
    rng = np.random.default_rng(0)
    np.savez(d / "imgs.npz", images=rng.integers(0, 256, (8, 8, 8, 3), dtype=np.uint8),
             labels=rng.integers(0, 10, 8))
    return d


def test_run_writes_identical_bytes_twice(tiny):
    outs = []
    for k in range(2):
        out = tiny / f"int8_{k}.onnx"
        r = runner.invoke(app, ["run", str(tiny / "mini.onnx"), "-p", "fold,calibrate,quantize",
                                "-t", "ort-int8", "--calib", str(tiny / "imgs.npz"),
                                "--preprocess", "none", "-o", str(out)])
        assert r.exit_code == 0, r.output
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]


EMULATE = ("import sys; from qcompile.cli import app; sys.argv = ['qcompile'] + sys.argv[1:]; "
           "app()")


@pytest.mark.slow  # two subprocesses that each import numba and onnxruntime: ~10 s
def test_emulate_logits_identical_with_one_or_two_threads(tiny):
    got = []
    for threads in ("1", "2"):
        env = dict(os.environ, NUMBA_NUM_THREADS=threads, OMP_NUM_THREADS=threads)
        r = subprocess.run([sys.executable, "-c", EMULATE, "emulate", str(tiny / "mini.onnx"),
                            "--format", "bf16", "--data", str(tiny / "imgs.npz"),
                            "--preprocess", "none", "--json"],
                           capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        got.append([res["logits"] for res in json.loads(r.stdout)["results"]])
    assert len(got[0]) == 8 and got[0] == got[1]
