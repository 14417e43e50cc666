"""The self-contained HTML report (``--html``): content from the report structures, no URL at
all in the file, sortable tables, and a real headless Chromium that renders it with the sort
script run, no console error and no resource request; plus the plot layout rules (axis fitted
to the data, layer names, series apart, sweep points at equal bits apart)."""

from __future__ import annotations

import html
import json
import math
import re
import shutil
import subprocess

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from qcompile.cli import app
from qcompile.driver import html_report as hr
from qcompile.driver.report import SqnrReport, sqnr_plot
from qcompile.testing import zoo
from tests.passes.int8_helpers import tiny_npz

runner = CliRunner()
PIPE = "fold,calibrate{images=8},quantize{keep_float=first,reduce_range=false},clip_search"
URL = re.compile(r"""(?:src|href|action|srcset|xlink:href)\s*=\s*["']?\s*(?!#)[^"'\s>]*:|"""
                 r"""url\(|https?://|//[a-z0-9-]+\.""", re.I)


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def browse(html_path, tmp_path, *extra: str) -> tuple[str, str]:
    """(DOM after scripts ran, browser stderr with console messages) of a local file."""
    exe = chromium()
    if exe is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium; .ci/run installs "
                    "it when apt is available)")
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr",
           "--v=0", "--host-resolver-rules=MAP * ~NOTFOUND", *extra, "--dump-dom",
           html_path.as_uri()]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout, p.stderr


# Appended to a *copy* of the page: counts resource requests (performance API) after load.
PROBE = ("<script>window.addEventListener('load',function(){document.body.setAttribute("
         "'data-resources',String(performance.getEntriesByType('resource').length));});"
         "</script>")


def console_errors(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln]


@pytest.fixture(scope="module")
def report_files(tmp_path_factory):
    """One real pass report on the mini ResNet, written by the CLI with --html."""
    tmp = tmp_path_factory.mktemp("html")
    model = tmp / "mini.onnx"
    onnx.save(zoo.mini_resnet(), model)
    data = tiny_npz(tmp / "tiny.npz", n=24)
    out = tmp / "r.html"
    r = runner.invoke(app, ["report", str(model), "-p", PIPE, "--calib", str(data), "--preprocess", "none", "--limit",
                            "8", "--html", str(out)])
    assert r.exit_code == 0, r.output
    return tmp, out


def test_report_html_content_and_sidecar(report_files):
    _, out = report_files
    text = out.read_text()
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["kind"] == "report"
    layers = [row["name"] for row in side["sqnr"]["layers"]]
    assert layers and all(f"<td>{n}</td>" in text for n in layers)  # every layer in the table
    for col in ("0:fold", "1:calibrate", "2:quantize", "3:clip_search"):
        assert f"{col} (dB)" in text
    assert text.count("<svg") >= 3  # SQNR plot, weight ranges, activation ranges
    # ranges: weights from the constants, activations calibrated
    rng = {r["layer"]: r for r in side["ranges"]}
    conv = next(r for r in rng.values() if r["op"] == "Conv" and r["w_min"] is not None)
    assert conv["w_min"] < 0 < conv["w_max"]
    assert any(r["activations"] and r["a_hi"] > r["a_lo"] for r in rng.values())
    # every decline of every pass, with its reason
    notes = [n for p in side["passes"] for n in p["notes"]]
    assert notes and all(html.escape(n) in text for n in notes)
    assert "keep_float" in text
    assert not URL.search(text), URL.search(text)


def test_url_check_can_fail():
    for bad in ('<img src="http://x/a.png">', '<link href="https://cdn/x.css">',
                "<style>a{background:url(x.png)}</style>", '<script src="//cdn.x.org/a.js">',
                '<a href="file:///etc/passwd">'):
        assert URL.search(bad), bad
    assert not URL.search('<a href="#sqnr">x</a>')


def test_user_strings_are_escaped(tmp_path):
    rep = SqnrReport("t<script>alert(1)</script>", ["<b>x</b>", "y"], ["Conv", "Relu"])
    rep.add_series("0:quantize", [10.0, 20.0])
    rep.note("<b>x</b>", "declined: <img src=x onerror=alert(1)>")
    page = hr.Page("title <i>", "report")
    hr.sqnr_section(page, rep)
    path, side = hr.write_page(page, tmp_path / "e.html")
    text = path.read_text()
    assert "<script>alert" not in text and "<img" not in text and "<b>x" not in text
    assert "&lt;b&gt;x&lt;/b&gt;" in text and side.exists()


def test_html_path_checked_before_work(tmp_path):
    model = tmp_path / "mini.onnx"
    onnx.save(zoo.mini_resnet(), model)
    data = tiny_npz(tmp_path / "tiny.npz", n=24)
    for bad, needle in ((tmp_path / "r.txt", "should end in .html"),
                        (tmp_path / "nope" / "r.html", "does not exist")):
        r = runner.invoke(app, ["report", str(model), "-p", PIPE, "--calib", str(data), "--preprocess", "none",
                                "--html", str(bad)])
        assert r.exit_code == 2 and needle in r.stderr, r.output
        assert "report:" not in r.stderr  # refused before the pipeline ran


def test_chromium_renders_sorts_no_errors_no_requests(report_files, tmp_path):
    _, out = report_files
    dom, err = browse(out, tmp_path)
    assert 'data-sortable="ready"' in dom  # the inline script ran on every table
    assert dom.count("<svg") >= 3 and 'id="sqnr-table"' in dom
    assert console_errors(err) == [], console_errors(err)
    # a copy with a probe: zero resource requests; a click on a numeric header sorts
    probe = tmp_path / "probe.html"
    click = ("<script>document.querySelector('#sqnr-table th:nth-child(6)').click();"
             "document.querySelector('#sqnr-table th:nth-child(6)').click();</script>")
    probe.write_text(out.read_text().replace("</body>", PROBE + click + "</body>"))
    dom, err = browse(probe, tmp_path)
    assert 'data-resources="0"' in dom, re.findall(r"data-resources=\"\d+\"", dom)
    assert 'aria-sort="descending"' in dom
    table = dom[dom.index('id="sqnr-table"'):]
    table = table[:table.index("</table>")]
    vals = [float(v) for v in re.findall(r'<tr><td data-v="[^"]*" class="n">[^<]*</td>'
                                         r'(?:<td[^>]*>[^<]*</td>){4}<td data-v="([^"]+)"',
                                         table) if v not in ("", "Infinity")]
    assert len(vals) >= 3 and vals == sorted(vals, reverse=True)


def test_chromium_checks_can_fail(report_files, tmp_path):
    """The console and request checks see a page error and a request when there is one."""
    _, out = report_files
    bad = tmp_path / "bad.html"
    bad.write_text(out.read_text().replace(
        "</body>", '<img src="http://127.0.0.1:9/x.png"><script>nosuch();</script>'
        + PROBE + "</body>"))
    dom, err = browse(bad, tmp_path)
    assert any("nosuch" in ln for ln in console_errors(err)), err[-2000:]
    assert 'data-resources="0"' not in dom


def test_sqnr_plot_axis_fitted_names_and_apart():
    layers = [f"layer{i}.conv" for i in range(30)]
    rep = SqnrReport("t", layers, ["Conv"] * 30)
    rep.add_series("0:fold", [None] * 29 + [128.8])
    rep.add_series("1:cle", [None] * 29 + [127.7])
    rep.add_series("2:quantize", list(np.linspace(8, 30, 30)))
    rep.add_series("3:adaround", list(np.linspace(10, 30, 29)) + [math.inf])
    pl = sqnr_plot(rep)
    lo, hi = pl["ylim"]
    assert 0 < lo < 8 and 30 < pl["band"] < 35 and hi < 40  # not 0-100 dB
    labels = [s["label"] for s in pl["series"]]
    assert "128.8" in labels[0] and "127.7" in labels[1]  # clipped values are still told
    heights = [s["y_above"][0] for s in pl["series"][:2]]
    assert heights[0] != heights[1] and all(pl["band"] < h < hi for h in heights)
    xs = {s["x"][29] for s in pl["series"]}
    assert len(xs) == 4  # the four series at the last layer do not sit on one x
    assert pl["ticks"][0] == 0 and len(pl["ticks"]) <= 40


def test_sweep_points_at_equal_bits_apart(tmp_path):
    from qcompile.driver.sweep import plot_points, save_plot

    rows = [dict(format=f, family=fam, bits=b, top1=t, backend="ort", drop=0.0, agreement=1.0)
            for f, fam, b, t in (("int8", "int", 8, .8), ("e4m3", "float E=4", 8, .8),
                                 ("e5m2", "float E=5", 8, .8), ("int4", "int", 4, .1))]
    rep = {"model": "m.onnx", "images": 10, "fp32_top1": .8, "rows": rows,
           "calibration_images": 5, "arith": "fp32"}
    at8 = [x for pts in plot_points(rep).values() for x, _, f in pts if f != "int4"]
    assert len(set(at8)) == 3 and max(at8) - min(at8) >= 0.2
    assert save_plot(rep, tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    path, _ = hr.write_page(hr.sweep_page(rep), tmp_path / "s.html")
    assert "e4m3: 80.00%" in path.read_text()


@pytest.mark.slow
def test_run_verify_eval_sweep_html(tmp_path):
    """--html on run (with --calib), verify, eval and sweep: one page each, with its sidecar,
    no URL, and Chromium renders it with the sort script run and no console error."""
    model = tmp_path / "mini.onnx"
    onnx.save(zoo.mini_resnet(), model)
    data = tiny_npz(tmp_path / "tiny.npz", n=24)
    q = tmp_path / "q.onnx"
    pages = {k: tmp_path / f"{k}.html" for k in ("run", "verify", "eval", "sweep")}
    cmds = {"run": ["run", model, "-t", "ort-int8", "--calib", data, "--preprocess", "none",
                    "-p", "fold,calibrate{images=8},quantize", "-o", q],
            "verify": ["verify", q, "--data", data, "--preprocess", "none", "--limit", 4],
            "eval": ["eval", q, "--data", data, "--preprocess", "none", "--no-latency"],
            "sweep": ["sweep", model, "--data", data, "--preprocess", "none", "--formats",
                      "int8,int4", "--calib-images", 8, "--limit", 8]}
    for k, args in cmds.items():
        r = runner.invoke(app, [str(a) for a in args] + ["--html", str(pages[k])])
        assert r.exit_code in (0, 1) if k == "verify" else r.exit_code == 0, (k, r.output)
    side = {k: json.loads(p.with_suffix(".json").read_text()) for k, p in pages.items()}
    assert side["run"]["sqnr"]["layers"] and side["run"]["passes"][-1]["pass"].split("{")[0] == "quantize"  # + target defaults
    rng = side["eval"]["ranges"]  # from the int8 file: its Q/DQ scales and integer weights
    qdq = [r for r in rng if (r["activations"] or "").startswith("QuantizeLinear")]
    assert qdq and all(r["a_lo"] <= 0 < r["a_hi"] for r in qdq)
    w = [r for r in rng if (r["weights"] or "").startswith("DequantizeLinear")]
    assert w and all(r["w_min"] < 0 < r["w_max"] for r in w)
    assert side["verify"]["verify"]["layers"] and side["verify"]["summary"]["verdict"]
    assert [r["format"] for r in side["sweep"]["sweep"]["rows"]] == ["int8", "int4"]
    assert "per_class" in side["eval"]["eval"]
    for k, p in pages.items():
        text = p.read_text()
        assert not URL.search(text), (k, URL.search(text))
        if chromium() is not None:
            dom, err = browse(p, tmp_path)
            assert 'data-sortable="ready"' in dom and "<svg" in dom, k
            assert console_errors(err) == [], (k, console_errors(err))
