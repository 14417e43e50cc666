"""``qcompile report`` and ``qcompile run --report``: every layer in the table, declines with their
reasons, the PNG, float stages checked on the outputs, one-line errors and no partial output."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from qcompile.cli import app
from qcompile.driver.pass_report import layer_names, stage_value
from qcompile.frontend import lift
from qcompile.testing import zoo
from tests.passes.int8_helpers import tiny_npz

runner = CliRunner()
PIPE = "fold,calibrate{images=8},quantize{keep_float=first,reduce_range=false},clip_search"


@pytest.fixture
def files(tmp_path):
    model = tmp_path / "mini.onnx"
    onnx.save(zoo.mini_resnet(), model)
    return model, tiny_npz(tmp_path / "tiny.npz", n=24)


def invoke(*args):
    # the fixtures are raw uint8 pixels for random-weight models: say so (#17 refuses a guess)
    args = [str(a) for a in args]
    pre = [] if "--preprocess" in args or "--help" in args else ["--preprocess", "none"]
    return runner.invoke(app, args + pre)


def assert_user_error(result, *needles):
    assert result.exit_code == 2, result.output
    # progress logs may precede it; the error is one line, the last, with no traceback
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    assert "Traceback" not in result.output
    for n in needles:
        assert n in errors[0], errors[0]


def test_report_table_declines_and_png(files, tmp_path):
    model, data = files
    md, png = tmp_path / "r.md", tmp_path / "r.png"
    r = invoke("report", model, "-p", PIPE, "--calib", data, "--limit", 8, "-o", md,
               "--plot", png)
    assert r.exit_code == 0, r.output
    text = md.read_text()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    g = lift(model)
    from qcompile.passes import PassContext, parse_pipeline, run_pipeline

    run_pipeline(g, parse_pipeline("fold"), PassContext())
    rows = [ln for ln in text.splitlines() if ln.startswith("| ") and ln[2].isdigit()]
    layers = [name for name, _ in layer_names(g)]
    assert [row.split(" | ")[1] for row in rows[:len(layers)]] == layers  # every layer, in order
    for col in ("0:fold", "1:calibrate", "2:quantize", "3:clip_search"):
        assert f"{col} (dB)" in text
    first_conv = next(n for n in g.nodes if n.op == "Conv").output.name
    row = next(r for r in rows if r.split(" | ")[1] == first_conv)
    assert "quantize: kept in float (keep_float)" in row
    assert "clip_search: its weight is not quantised" in row
    # float stages: only the graph outputs are compared, and they are preserved
    logits = next(r for r in rows if r.split(" | ")[1] == "logits").split(" | ")
    assert float(logits[3]) > 90 and float(logits[4]) > 90
    assert rows[1].split(" | ")[3] == "-"


def test_report_json_has_numbers_that_move(files):
    model, data = files
    r = invoke("report", model, "-p", "fold,calibrate{images=8},quantize{weights=int4,"
               "reduce_range=false}", "--calib", data, "--limit", 8, "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["images"] == 8  # 24 images, 8 used for calibration, limit 8
    rows = rep["layers"]["layers"]
    quant = [row["2:quantize"] for row in rows]
    assert all(isinstance(v, float) for v in quant), quant
    assert 0 < np.median(quant) < 60  # int4 weights: a real, finite error on every layer
    assert [p["pass"].split("{")[0] for p in rep["passes"]] == ["fold", "calibrate", "quantize"]


def test_stage_value_prefers_the_qdq_output(files, tmp_path):
    from qcompile.backends.ort.executor import OrtExecutor
    from qcompile.data import open_dataset
    from qcompile.passes import PassContext, parse_pipeline, run_pipeline

    model, data = files
    g = lift(model)
    ctx = PassContext(calib_data=open_dataset(data), executor=OrtExecutor())
    run_pipeline(g, parse_pipeline("fold,calibrate{images=8},quantize"), ctx)
    relu = next(n for n in g.nodes if n.op == "Relu").output
    assert stage_value(g, relu.name).producer.op == "QDQ"
    assert stage_value(g, "no such value") is None


def test_run_report_writes_md_and_png(files, tmp_path):
    model, data = files
    out, md = tmp_path / "m.onnx", tmp_path / "run.md"
    r = invoke("run", model, "-p", PIPE, "--target", "ort-int8", "--calib", data, "-o", out,
               "--report", md)
    assert r.exit_code == 0, r.output
    assert out.exists() and "2:quantize (dB)" in md.read_text()
    assert (tmp_path / "run.png").exists()


@pytest.mark.parametrize("extra,needle", [
    (["--plot", "{tmp}/r.jpg"], "--plot"),
    (["-o", "{tmp}/missing/r.md"], "does not exist"),
    (["--limit", "0"], "--limit"),
    (["-p", "fold,clip_serch"], "did you mean 'clip_search'"),
    (["-p", "fold,clip_search"], "run 'quantize' first"),
])
def test_bad_options_one_line_no_output(files, tmp_path, extra, needle):
    model, data = files
    extra = [e.replace("{tmp}", str(tmp_path)) for e in extra]
    args = ["report", model, "--calib", data, "-o", tmp_path / "r.md",
            "--plot", tmp_path / "r.png"]
    if "-p" not in extra:
        args += ["-p", "fold,calibrate{images=8},quantize"]
    r = invoke(*args, *extra)
    assert_user_error(r, needle)
    assert not (tmp_path / "r.md").exists() and not (tmp_path / "r.png").exists()
    assert not list(tmp_path.glob("*.tmp*"))


def test_no_evaluation_images_left(files, tmp_path):
    model, data = files
    r = invoke("report", model, "-p", "fold,calibrate{images=24},quantize", "--calib", data,
               "-o", tmp_path / "r.md")
    assert_user_error(r, "no evaluation images left")
    assert not (tmp_path / "r.md").exists()


def test_report_needs_images(files, tmp_path):
    model, _ = files
    r = invoke("report", model, "-p", "fold", "-o", tmp_path / "r.md")
    assert_user_error(r, "--calib", "--data")
    assert not (tmp_path / "r.md").exists()


def test_run_report_needs_calib(files, tmp_path):
    model, _ = files
    r = invoke("run", model, "-p", "fold", "-o", tmp_path / "m.onnx", "--report",
               tmp_path / "r.md")
    assert_user_error(r, "--report needs --calib")
    assert not (tmp_path / "m.onnx").exists()
