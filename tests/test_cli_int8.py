"""CLI for int8: run --target ort-int8, eval, compare; one-line errors with no output file."""

from __future__ import annotations

import json

import onnx
import pytest
from onnx import TensorProto, helper
from typer.testing import CliRunner

from qcompile.cli import app
from qcompile.testing import zoo
from tests.passes.int8_helpers import tiny_npz

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def files(tmp_path):
    model = tmp_path / "mini.onnx"
    onnx.save(zoo.mini_resnet(), model)
    return model, tiny_npz(tmp_path / "tiny.npz", n=40)


def assert_user_error(result, out, *needles):
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    assert not out.exists()


@pytest.mark.parametrize("passes", ["fold,calibrate,quantize", "fold,calibrate"])
def test_run_ort_int8_adds_quantize_with_cpu_defaults(files, tmp_path, passes):
    model, data = files
    out = tmp_path / "q.onnx"
    r = invoke("run", model, "--passes", passes, "--target", "ort-int8", "--calib", data,
               "--preprocess", "none", "--cpu", "avx2", "-o", out, "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["pipeline"].endswith("quantize{reduce_range=true}")
    assert rep["ort_ops"]["com.microsoft.QLinearConv"] == 6
    onnx.checker.check_model(onnx.load(out))
    # every image was used for calibration: evaluation refuses to measure on them
    assert_user_error(invoke("eval", out, "--data", data), tmp_path / "none", "no evaluation images")


def test_eval_and_compare_reports(files, tmp_path):
    model, data = files
    out = tmp_path / "q.onnx"
    r = invoke("run", model, "-p", "fold,calibrate{images=16}", "-t", "ort-int8", "--calib", data,
               "--preprocess", "none",
               "-o", out)
    assert r.exit_code == 0, r.output
    assert "QLinearConv=6" in r.stderr and "calibrate: 16 of 40 images" in r.stderr
    r = invoke("eval", out, "--data", data, "--json")
    ev = json.loads(r.stdout)
    assert ev["images"] == 24 and ev["excluded_calibration_images"] == 16
    assert set(ev["latency_ms"]) == {"1", "8"} and 0 <= ev["top1"] <= ev["top5"] <= 1
    assert ev["size_bytes"] == out.stat().st_size and ev["int8"] is True
    r = invoke("compare", model, out, "--data", data, "--json")
    cmp = json.loads(r.stdout)
    assert cmp["images"] == 24 and cmp["logits_sqnr_db"] > 10
    assert abs(cmp["top1_delta"] - (cmp["top1_b"] - cmp["top1_a"])) < 1e-12
    r = invoke("eval", out, "--data", data, "--no-latency")
    assert r.exit_code == 0 and "top-1" in r.stdout


def test_user_errors(files, tmp_path):
    model, data = files
    out = tmp_path / "q.onnx"
    base = ["run", model, "-t", "ort-int8", "-o", out]
    assert_user_error(invoke(*base, "-p", "fold,calibrate", "--calib", tmp_path / "nope.npz"),
                      out, "does not exist")
    (tmp_path / "empty").mkdir()
    assert_user_error(invoke(*base, "-p", "fold,calibrate", "--calib", tmp_path / "empty"), out)
    assert_user_error(invoke(*base, "-p", "fold,calibrate,quantize{activations=fp8}",
                             "--calib", data), out, "fp8")
    assert_user_error(invoke(*base, "-p", "fold,calibrate", "--calib", data, "--cpu", "z80"),
                      out, "z80")
    relu = tmp_path / "relu.onnx"
    g = helper.make_graph([helper.make_node("Relu", ["input"], ["logits"])], "relu_only",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 16, 16])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3, 16, 16])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), relu)
    assert_user_error(invoke("run", relu, "-t", "ort-int8", "-p", "calibrate", "--calib", data,
                             "-o", out), out, "no quantisable op")
    assert_user_error(invoke("eval", out, "--data", data), out, "does not exist")
