"""The one-call Python API (qcompile.driver.api): the command's defaults and bytes, typed
results, nothing written without output= (the cheap package root: tests/test_startup.py)."""

from __future__ import annotations

import json
from dataclasses import FrozenInstanceError

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

import qcompile
from qcompile.cli import app
from qcompile.testing import zoo
from tests.passes.int8_helpers import tiny_npz

runner = CliRunner()


@pytest.fixture
def files(tmp_path):
    model = tmp_path / "mini.onnx"
    onnx.save(zoo.mini_resnet(), model)
    return model, tiny_npz(tmp_path / "tiny.npz", n=40)


def test_quantize_writes_the_same_bytes_as_run(files, tmp_path):
    model, data = files
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    r = runner.invoke(app, ["run", str(model), "-t", "ort-int8", "--calib", str(data),
                            "--preprocess", "none", "--cpu", "avx2", "-o", str(a)])
    assert r.exit_code == 0, r.output
    proto = qcompile.quantize(model, calib=data, preprocess="none", cpu="avx2", output=b)
    assert a.read_bytes() == b.read_bytes()
    assert proto.SerializeToString() == onnx.load(b).SerializeToString()
    # the CPU-aware types of the CLI: AVX2 without VNNI gets reduce_range on the weights
    vnni = qcompile.quantize(model, calib=data, preprocess="none", cpu="vnni")
    assert vnni.SerializeToString() != proto.SerializeToString()


def test_quantize_writes_nothing_without_output(files, tmp_path):
    model, data = files
    before = sorted(p.name for p in tmp_path.iterdir())
    proto = qcompile.quantize(str(model), calib=str(data), preprocess="none", cpu="generic")
    assert isinstance(proto, onnx.ModelProto)
    assert any(n.op_type == "QuantizeLinear" for n in proto.graph.node)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    # a ModelProto in, too (no source path to record)
    again = qcompile.quantize(onnx.load(model), calib=data, preprocess="none", cpu="generic")
    keys = {p.key for p in again.metadata_props}
    assert "qcompile.source_model" not in keys and "qcompile.preprocess" in keys


def test_quantize_refuses_like_the_cli(files):
    model, data = files
    with pytest.raises(qcompile.QCompileError, match="calib"):
        qcompile.quantize(model, preprocess="none")
    with pytest.raises(qcompile.QCompileError, match="both given"):
        qcompile.quantize(model, calib=data, preset="w8a8", passes="fold")


def test_emulate_evaluate_verify_results_are_typed_and_frozen(files, tmp_path):
    model, data = files
    res = qcompile.emulate(model, data=data, fmt="bf16", preprocess="none", limit=8)
    assert isinstance(res, qcompile.EmulationResult) and res.images == 8
    assert res.format == "bf16" and 0.0 <= res.top1 <= 1.0
    assert json.loads(json.dumps(res.to_json(), default=str))["images"] == 8
    with pytest.raises(FrozenInstanceError):
        res.images = 0  # type: ignore[misc]
    q = tmp_path / "q.onnx"
    qcompile.quantize(model, passes="fold,calibrate{images=16}", calib=data, preprocess="none",
                      output=q)
    ev = qcompile.evaluate(q, data, latency=False)  # preprocessing read back from the model
    assert isinstance(ev, qcompile.EvaluationResult) and ev.int8
    assert ev.images == 40 - 16 and ev.fp32_baseline is not None
    assert ev.to_json()["top1"] == ev.top1
    v = qcompile.verify_model(q, data, limit=4)
    assert isinstance(v, qcompile.VerifyResult) and v.images == 4
    assert v.ok == (v.verdict != "diverged") and v.summary
    assert v.to_json()["verdict"] == v.verdict


def test_emulate_matches_the_cli_json(files):
    model, data = files
    r = runner.invoke(app, ["emulate", str(model), "--format", "e4m3", "--data", str(data),
                            "--preprocess", "none", "--limit", "6", "--json"])
    assert r.exit_code == 0, r.output
    cli = json.loads(r.stdout)
    api = qcompile.emulate(model, data=data, fmt="e4m3", preprocess="none", limit=6)
    np.testing.assert_array_equal([x["logits"] for x in cli["results"]],
                                  [x["logits"] for x in api.results])
    assert api.top1 == cli["accuracy"]["top1"]


def test_ir_verify_keeps_its_meaning():
    from qcompile.ir import verify

    assert qcompile.verify is verify
