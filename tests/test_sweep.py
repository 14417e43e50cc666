"""qcompile sweep: format expansion, one-line errors, a small end-to-end run (table, plot, JSON)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from qcompile.cli import app
from qcompile.driver.sweep import expand_formats, family, pipeline_for
from qcompile.errors import OptionError
from qcompile.testing import zoo
from tests.passes.int8_helpers import tiny_npz

runner = CliRunner()


def test_expand_formats_ranges_and_families():
    assert expand_formats("int8, e4m3,b12e4..b14e4,posit8_1..posit9_1") == [
        "int8", "e4m3", "b12e4", "b13e4", "b14e4", "posit8_1", "posit9_1"]
    assert expand_formats("posit(8,1),bf16") == ["posit(8,1)", "bf16"]
    assert [family(f) for f in ("int4", "e4m3", "b12e4", "bf16", "posit16_1")] == [
        "int", "float E=4", "float E=4", "float E=8", "posit es=1"]
    assert pipeline_for("int4").startswith("quantize{weights=int4,activations=uint4")
    assert "assign{policy=uniform,weights=e5m2,activations=e5m2,keep=none}" == pipeline_for("e5m2")


@pytest.mark.parametrize("text,match", [
    ("int8,e9m9", "valid families"), ("b14e4..b12e4", "rising width"),
    ("b12e4..b14e5", "same exponent"), ("int2", "int4, int8 or int16"), ("", "no format")])
def test_bad_formats_are_one_line_errors(text, match):
    with pytest.raises(OptionError, match=match) as e:
        expand_formats(text)
    assert "\n" not in str(e.value)


@pytest.fixture
def mini(tmp_path):
    p = tmp_path / "mini.onnx"
    onnx.save(zoo.mini_resnet(), p)
    return p, tiny_npz(tmp_path / "tiny.npz", n=20)


def test_cli_bad_format_exits_2_before_work(mini):
    m, d = mini
    r = runner.invoke(app, ["sweep", str(m), "--data", str(d), "--formats", "int8,fp7"])
    assert r.exit_code == 2
    assert "error: --formats: unknown number format 'fp7'; valid families:" in r.output
    assert r.output.count("\n") == 1


def test_cli_sweep_int_only_writes_table_and_plot(mini, tmp_path):
    m, d = mini
    md, png = tmp_path / "t.md", tmp_path / "s.png"
    r = runner.invoke(app, ["sweep", str(m), "--data", str(d), "--preprocess", "none", "--limit", "6",
                            "--calib-images", "8", "--formats", "int8,int16", "-o", str(md),
                            "--plot", str(png)])
    assert r.exit_code == 0, r.output
    assert "| int16 | int | 16 | ort |" in md.read_text() and png.stat().st_size > 1000


@pytest.mark.slow
def test_cli_sweep_small_end_to_end(mini, tmp_path):
    m, d = mini
    md, png = tmp_path / "t.md", tmp_path / "s.png"
    r = runner.invoke(app, ["sweep", str(m), "--data", str(d), "--preprocess", "none", "--limit", "6",
                            "--calib-images", "8", "--formats", "int8,b7e3..b8e3,posit8_1",
                            "-o", str(md), "--plot", str(png), "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output[r.output.index("{"):])
    assert rep["images"] == 6 and rep["calibration_images"] == 8
    rows = {x["format"]: x for x in rep["rows"]}
    assert list(rows) == ["int8", "b7e3", "b8e3", "posit8_1"]
    assert rows["int8"]["backend"] == "ort" and rows["posit8_1"]["backend"] == "mpfr-fast"
    assert all(0 <= x["top1"] <= 1 and 0 <= x["agreement"] <= 1 for x in rows.values())
    assert rows["b8e3"]["bits"] == 8 and rows["b8e3"]["family"] == "float E=3"
    assert "| b7e3 | float E=3 | 7 | mpfr-fast |" in md.read_text()
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_sweep_evaluation_images_disjoint_from_calibration(mini):
    from qcompile.driver.sweep import FormatEvaluator

    m, d = mini
    ev = FormatEvaluator(str(m), str(d), "none", 10, 8)
    assert ev.calib_indices.size == 8 and len(ev.labels) == 10
    assert not set(ev.calib_indices.tolist()) & set(ev.indices.tolist())
    assert np.all(ev.score(ev.fp32_logits)["agreement"] == 1.0)
