"""Presets: every preset parses into known passes, the CLI shows and applies them."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from qcompile.cli import app
from qcompile.driver.presets import PRESETS, preset_pipeline
from qcompile.driver.targets import configure_pipeline, get_target
from qcompile.passes import parse_pipeline

INT_PRESETS = [n for n in PRESETS if any(p.name == "quantize" for p in parse_pipeline(PRESETS[n]))]


@pytest.mark.parametrize("name", INT_PRESETS)
def test_presets_parse_and_keep_their_options_under_the_int8_target(name):
    passes = configure_pipeline(get_target("ort-int8"), PRESETS[name], cpu="avx2")
    assert [p.name for p in passes] == [p.name for p in parse_pipeline(PRESETS[name])]
    q = next(p for p in passes if p.name == "quantize")
    if name.startswith("w4") or name.startswith("w2"):
        assert q.weights in ("int4", "int2") and q.reduce_range is False
    if name.endswith("a4"):
        assert q.activations == "uint4" and q.keep_8bit == ("first", "last")
    assert q.per_channel is (name != "w8a8-per-tensor")
    if name == "w2a4":  # 2-bit weights need block reconstruction (see qcompile/presets.py)
        assert passes[-1].name == "reconstruct"


def test_cli_lists_presets_and_rejects_unknown_or_both(tmp_path):
    r = CliRunner().invoke(app, ["passes", "--presets", "--json"])
    assert r.exit_code == 0 and json.loads(r.output) == PRESETS
    import onnx

    from qcompile.testing import zoo

    m = str(tmp_path / "m.onnx")  # a real model: a missing file is refused before the options
    onnx.save(zoo.mini_resnet(), m)
    r = CliRunner().invoke(app, ["run", m, "--preset", "w4a9", "-o", str(tmp_path / "o")])
    assert r.exit_code == 2 and "unknown preset 'w4a9'" in r.output
    r = CliRunner().invoke(app, ["run", m, "--preset", "w4a8", "-p", "fold",
                                 "-o", str(tmp_path / "o")])
    assert r.exit_code == 2 and "--preset and --passes" in r.output
    assert preset_pipeline("w8a8") == PRESETS["w8a8"]
