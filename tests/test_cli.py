"""CLI tests through typer's CliRunner: happy paths and one-line errors (exit 2, no output file)."""

from __future__ import annotations

import json

import onnx
import pytest
from typer.testing import CliRunner

from qcompile.cli import app
from qcompile.testing import zoo

runner = CliRunner()


@pytest.fixture
def mini(tmp_path):
    path = tmp_path / "mini.onnx"
    onnx.save(zoo.mini_resnet(), path)
    return path


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_user_error(result, *needles):
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output
    for n in needles:
        assert n in lines[0], lines[0]


def test_run_fold_writes_model_without_bn(mini, tmp_path):
    out = tmp_path / "out.onnx"
    r = invoke("run", mini, "--passes", "fold,cleanup", "--target", "ort-fp32", "-o", out)
    assert r.exit_code == 0, r.output
    m = onnx.load(out)
    onnx.checker.check_model(m)
    assert not [n for n in m.graph.node if n.op_type == "BatchNormalization"]
    assert "folded=" in r.stderr


def test_run_json_report(mini, tmp_path):
    r = invoke("run", mini, "-p", "fold", "-o", tmp_path / "o.onnx", "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["passes"][0]["pass"] == "fold" and rep["passes"][0]["stats"]["folded"] > 0


def test_print_after_and_dump_dir(mini, tmp_path):
    dump = tmp_path / "dumps"
    r = invoke("run", mini, "-p", "fold,cleanup", "--print-after", "fold", "--dump-dir", dump,
               "-o", tmp_path / "o.onnx")
    assert r.exit_code == 0, r.output
    assert "// IR after 'fold'" in r.stdout
    assert sorted(p.name for p in dump.iterdir()) == ["00-input.txt", "01-fold.txt", "02-cleanup.txt"]
    assert "BatchNormalization" in (dump / "00-input.txt").read_text()
    assert "BatchNormalization" not in (dump / "01-fold.txt").read_text()


@pytest.mark.parametrize("content", [b"", b"hello, not a model", None])
def test_bad_model_files(tmp_path, content, mini):
    bad = tmp_path / "bad.onnx"
    if content is None:  # truncated real model
        bad.write_bytes(mini.read_bytes()[: mini.stat().st_size // 2])
    else:
        bad.write_bytes(content)
    out = tmp_path / "o.onnx"
    assert_user_error(invoke("run", bad, "-o", out), "bad.onnx")
    assert not out.exists()


def test_missing_model(tmp_path):
    out = tmp_path / "o.onnx"
    assert_user_error(invoke("run", tmp_path / "nope.onnx", "-o", out), "does not exist")
    assert not out.exists()


def test_unknown_pass_and_option(mini, tmp_path):
    out = tmp_path / "o.onnx"
    assert_user_error(invoke("run", mini, "-p", "fodl", "-o", out), "did you mean 'fold'")
    assert_user_error(invoke("run", mini, "-p", "cleanup{fold_constant=1}", "-o", out),
                      "fold_constants")
    assert_user_error(invoke("run", mini, "-p", "cleanup{fold_constants=maybe}", "-o", out),
                      "boolean")
    assert_user_error(invoke("run", mini, "-t", "ort-fp33", "-o", out), "ort-fp32")
    assert not out.exists()


def test_output_in_missing_folder(mini, tmp_path):
    out = tmp_path / "missing" / "o.onnx"
    assert_user_error(invoke("run", mini, "-o", out), "does not exist")
    assert not out.parent.exists()


def test_escaping_external_data_refused(tmp_path):
    model = zoo.conv_bn_relu()
    sub = tmp_path / "models"
    sub.mkdir()
    onnx.save(model, sub / "m.onnx", save_as_external_data=True, location="m.bin",
              size_threshold=0)
    (tmp_path / "secret.bin").write_bytes((sub / "m.bin").read_bytes())
    m = onnx.load(sub / "m.onnx", load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../secret.bin"
    onnx.save(m, sub / "evil.onnx")
    out = tmp_path / "o.onnx"
    assert_user_error(invoke("run", sub / "evil.onnx", "-o", out), "outside the model's folder")
    assert not out.exists()
    ok = invoke("run", sub / "m.onnx", "-o", out)  # in-folder external data is fine
    assert ok.exit_code == 0, ok.output


def test_inspect_resnet18_macs(tmp_path):
    path = tmp_path / "r18.onnx"
    onnx.save(zoo.resnet(18), path)
    r = invoke("inspect", path, "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert abs(rep["gmacs"] - 1.82) / 1.82 < 0.01
    assert rep["op_counts"]["Conv"] == 20 and rep["op_counts"]["Gemm"] == 1
    human = invoke("inspect", path)
    assert human.exit_code == 0 and "GMACs" in human.stdout


def test_passes_lists_registry():
    r = invoke("passes", "--json")
    assert r.exit_code == 0
    names = {p["name"] for p in json.loads(r.stdout)}
    assert {"fold", "cleanup"} <= names
    assert "grammar" in invoke("passes").stdout


def test_help_has_examples():
    r = invoke("run", "--help")
    assert r.exit_code == 0 and "Examples" in r.stdout
