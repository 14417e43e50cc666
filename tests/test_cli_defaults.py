"""Defaults that are right or refuse (#17): recorded/detected preprocessing, the target's default
pipeline, --limit as one seeded stratified draw, outputs checked before the work, the verify
summary, the FP32 baseline of eval."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from qcompile.cli import app
from qcompile.data.recipe import PREPROCESS_KEY, detect_preprocess, resolve_preprocess
from qcompile.data.select import draw_limit
from qcompile.testing import zoo

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_error(r, *needles):
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.fixture
def files(tmp_path):
    model = tmp_path / "mini.onnx"
    onnx.save(zoo.mini_resnet(), model)
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 6)  # sorted by class, as the CIFAR file is
    data = tmp_path / "sorted.npz"
    np.savez(data, images=rng.integers(0, 256, (60, 16, 16, 3), dtype=np.uint8), labels=labels)
    return model, data


def test_uint8_data_without_preprocess_is_refused_naming_presets(files, tmp_path):
    model, data = files
    one_error(invoke("eval", model, "--data", data), "--preprocess imagenet|cifar|lite0|none")
    one_error(invoke("run", model, "-t", "ort-int8", "--calib", data, "-o", tmp_path / "q.onnx"),
              "--preprocess imagenet|cifar|lite0|none")
    assert not (tmp_path / "q.onnx").exists()
    r = invoke("eval", model, "--data", data, "--preprocess", "none", "--no-latency")
    assert r.exit_code == 0, r.output  # none stays available explicitly


def test_int8_target_default_pipeline_records_preprocess_and_eval_needs_no_flag(files, tmp_path):
    model, data = files
    out = tmp_path / "q.onnx"
    r = invoke("run", model, "-t", "ort-int8", "--calib", data, "--preprocess", "imagenet",
               "-o", out, "--json")  # no --passes: fold,calibrate,quantize
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert [p["pass"].split("{")[0] for p in rep["passes"]] == ["fold", "calibrate", "quantize"]
    meta = {p.key: p.value for p in onnx.load(out).metadata_props}
    assert meta[PREPROCESS_KEY] == "imagenet"
    # calibrate{images=512} on a 60-image set says so in one line
    assert "images=512 asked for, 60 there: using all 60" in r.stderr
    # every image calibrated: add other images of the same kind for eval
    other = tmp_path / "other.npz"
    rng = np.random.default_rng(1)
    np.savez(other, images=rng.integers(0, 256, (30, 16, 16, 3), dtype=np.uint8),
             labels=np.repeat(np.arange(10), 3))
    plain = json.loads(invoke("eval", out, "--data", other, "--json", "--no-latency").stdout)
    given = json.loads(invoke("eval", out, "--data", other, "--json", "--no-latency",
                              "--preprocess", "imagenet").stdout)
    assert plain["top1"] == given["top1"] and plain["per_class"] == given["per_class"]
    # the FP32 baseline: the float model run recorded, evaluated on the same images
    base = json.loads(invoke("eval", model, "--data", other, "--json", "--no-latency",
                             "--preprocess", "imagenet").stdout)
    assert plain["fp32_baseline"]["top1"] == base["top1"]
    text = invoke("eval", out, "--data", other, "--no-latency").stdout
    assert "FP32" in text and "same images" in text


def test_int8_without_calib_names_the_flag(files, tmp_path):
    model, _ = files
    one_error(invoke("run", model, "-t", "ort-int8", "-o", tmp_path / "q.onnx"), "--calib")


def test_int8_with_passes_lacking_calibrate_gets_it(files, tmp_path):
    model, data = files
    r = invoke("run", model, "-t", "ort-int8", "-p", "fold", "--calib", data, "--preprocess",
               "none", "-o", tmp_path / "q.onnx", "--json")
    assert r.exit_code == 0, r.output
    assert "calibrate" in json.loads(r.stdout)["pipeline"]


def test_preset_detected_from_the_model_description(tmp_path):
    m = zoo.mini_resnet()
    m.doc_string = "EfficientNet-Lite0. input = (rgb - 127)/128, NCHW float32 224x224"
    path = tmp_path / "lite.onnx"
    onnx.save(m, path)
    assert detect_preprocess(m.doc_string) == "lite0"
    doc = "input = (rgb/255 - (0.485, 0.456, 0.406)) / (0.229, 0.224, 0.225)"
    assert detect_preprocess(doc, 32) == "cifar" and detect_preprocess(doc, 224) == "imagenet"
    assert detect_preprocess("a model") is None
    data = tmp_path / "d.npz"
    np.savez(data, images=np.zeros((4, 16, 16, 3), np.uint8), labels=np.arange(4))
    r = invoke("eval", path, "--data", data, "--no-latency")
    assert r.exit_code == 0, r.output
    assert "preprocess: lite0 (detected" in r.stderr


def test_resolve_rules():
    md = {PREPROCESS_KEY: "cifar"}
    assert resolve_preprocess("none", [("m", md, None, None)]) == "none"  # given wins
    assert resolve_preprocess(None, [("m", md, None, None)], "x.png") == "cifar"
    with pytest.raises(ValueError, match="different preprocessing"):
        resolve_preprocess(None, [("a", md, None, None),
                                  ("b", {PREPROCESS_KEY: "imagenet"}, None, None)])
    assert resolve_preprocess(None, [("m", {}, None, None)], "x.png", raw_input=True) == "none"


def test_limit_is_a_seeded_stratified_draw_recorded_in_json(files):
    model, data = files
    r = invoke("eval", model, "--data", data, "--preprocess", "none", "--limit", "20",
               "--no-latency", "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["limit"] == {"n": 20, "seed": 0, "rule": "stratified"}
    # the data is sorted by class: the first 20 would be 4 classes; the draw covers all 10
    assert len(rep["per_class"]) == 10 and all(v["images"] == 2 for v in rep["per_class"].values())
    a, rec = draw_limit(np.arange(60), 20, 3, np.repeat(np.arange(10), 6))
    b, _ = draw_limit(np.arange(60), 20, 3, np.repeat(np.arange(10), 6))
    assert (a == b).all() and rec["seed"] == 3
    c, rec = draw_limit(np.arange(60), 20, 3)
    assert rec["rule"] == "random" and len(set(c.tolist())) == 20
    assert draw_limit(np.arange(5), None)[1] is None


def test_outputs_checked_before_any_pass(files, tmp_path):
    model, data = files
    missing = tmp_path / "no" / "x.png"
    args = ("report", model, "-p", "fold,calibrate,quantize", "--calib", data,
            "--preprocess", "none")
    one_error(invoke(*args, "--plot", missing), "x.png")
    one_error(invoke(*args, "--plot", tmp_path / "x.txt"), ".png")
    one_error(invoke("run", model, "-p", "fold,calibrate,quantize", "-t", "ort-int8", "--calib",
                     data, "--preprocess", "none", "--report", missing.with_suffix(".md"),
                     "-o", tmp_path / "q.onnx"), "x.md")
    one_error(invoke("sweep", model, "--data", data, "--preprocess", "none", "--plot", missing),
              "x.png")
    one_error(invoke("run", model, "-p", "fold", "--dump", tmp_path / "no" / "d",
                     "-o", tmp_path / "f.onnx"), "--dump")
    assert not (tmp_path / "q.onnx").exists() and not (tmp_path / "f.onnx").exists()


def test_dump_and_old_dump_dir_spelling(files, tmp_path):
    model, _ = files
    for flag in ("--dump", "--dump-dir"):
        d = tmp_path / flag.strip("-")
        r = invoke("run", model, "-p", "fold", flag, d, "-o", tmp_path / "f.onnx")
        assert r.exit_code == 0, r.output
        assert any(d.iterdir())
    assert "--dump-dir" not in invoke("run", "--help").stdout


def test_verify_summary_first_line_is_plain(files, tmp_path):
    model, data = files
    out = tmp_path / "q.onnx"
    assert invoke("run", model, "-t", "ort-int8", "--calib", data, "--preprocess", "none",
                  "-o", out).exit_code == 0
    r = invoke("verify", out, "--data", data, "--limit", "8")
    first = r.stdout.splitlines()[0]
    assert first.startswith(("ORT matches", "ORT first departs", "Each layer matches")), first
    assert "verdict:" in r.stdout
    if not first.startswith("ORT matches the exact network bit for bit"):
        assert "expected" in first


@pytest.mark.slow
def test_emulate_lite0_on_the_128_photo_resizes_and_says_so(shared_data):
    r = invoke("emulate", shared_data / "efficientnet_lite0.onnx", "--bits", "15", "--image",
               shared_data / "tiger128.jpg", "--preprocess", "lite0", "--json")
    assert r.exit_code == 0, r.output
    assert "128x128 images resized/cropped to it" in r.stderr
    assert json.loads(r.stdout)["results"][0]["top5"][0][0] == 292  # tiger


def test_version_and_headline_examples():
    from qcompile._version import __version__

    r = invoke("--version")
    assert r.exit_code == 0 and r.stdout.strip() == f"qcompile {__version__}"
    text = " ".join(invoke("--help").stdout.split())
    for cmd in ("qcompile run ../shared/data/cifar10_resnet56.onnx -t ort-int8",
                "qcompile emulate ../shared/data/efficientnet_lite0.onnx",
                "qcompile verify resnet56_int8.onnx"):
        assert cmd in text, cmd


def test_sweep_format_and_old_arith_spelling(files):
    model, data = files
    help_text = invoke("sweep", "--help").stdout
    assert "--format" in help_text and "--arith" not in help_text
    one_error(invoke("sweep", model, "--data", data, "--preprocess", "none", "--format", "bf16",
                     "--arith", "fp16"), "--arith")
