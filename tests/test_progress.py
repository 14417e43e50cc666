"""Progress on every wait: each driver advances the callback's bar by the images of every
batch (rate = images/s, ETA from it) and closes it; the CLI draws bars on a terminal only, so
captured output never holds one."""

from __future__ import annotations

import onnx
import pytest
from typer.testing import CliRunner

from qcompile.cli import app
from qcompile.cli.common import images_progress, show_progress
from qcompile.driver.progress import track
from qcompile.testing import zoo
from tests.passes.int8_helpers import tiny_npz


class Recorder:
    """A ``progress(total=, desc=)`` callback remembering every bar and its updates."""

    def __init__(self) -> None:
        self.bars: list[dict] = []

    def __call__(self, total: int, desc: str, unit: str = "images"):
        bar = {"total": total, "desc": desc, "unit": unit, "updates": [], "closed": False}
        self.bars.append(bar)

        class _Bar:
            def update(self, n: int) -> None:
                bar["updates"].append(n)

            def close(self) -> None:
                bar["closed"] = True

        return _Bar()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("progress")
    model = d / "mini.onnx"
    onnx.save(zoo.mini_resnet(), model)
    data = tiny_npz(d / "tiny.npz", n=30)
    q = d / "q.onnx"
    import qcompile

    qcompile.quantize(model, passes="fold,calibrate{images=10}", calib=data, preprocess="none",
                      output=q)
    return model, data, q


def _one_full_bar(rec: Recorder, images: int, batch: int, desc: str) -> None:
    bars = [b for b in rec.bars if b["desc"].startswith(desc)]  # (a kernel bar may come first)
    assert len(bars) == 1
    bar = bars[0]
    assert bar["total"] == images and bar["closed"]
    assert sum(bar["updates"]) == images
    assert len(bar["updates"]) == -(-images // batch)  # one update per batch


def test_track_updates_per_batch_and_closes_on_break():
    rec = Recorder()
    for i, _ in enumerate(track(iter([[1, 2], [3, 4], [5]]), 5, "x", rec, size=len)):
        if i == 1:
            break
    assert rec.bars[0]["updates"] == [2] and rec.bars[0]["closed"]
    assert list(track([1, 2], 2, "x", None)) == [1, 2]  # no callback: no bar


def test_eval_compare_verify_emulate_report_every_batch(files):
    from qcompile.driver.emulate import emulate, make_config
    from qcompile.driver.evaluate import compare_models, evaluate_model
    from qcompile.driver.verify import verify_model

    model, data, q = files
    rec = Recorder()
    evaluate_model(str(model), str(data), preprocess="none", batch=8, latency=False,
                   progress=rec)
    _one_full_bar(rec, 30, 8, "eval")
    rec = Recorder()
    evaluate_model(str(q), str(data), batch=8, latency=False, progress=rec)
    assert [b["total"] for b in rec.bars] == [20, 20]  # the int8 model, then its FP32 baseline
    rec = Recorder()
    compare_models(str(model), str(q), str(data), batch=7, progress=rec)
    _one_full_bar(rec, 20, 7, "compare")
    rec = Recorder()
    verify_model(str(q), str(data), preprocess="none", limit=6, batch=4, progress=rec)
    _one_full_bar(rec, 6, 4, "verify")
    rec = Recorder()
    emulate(str(model), make_config(format="bf16"), data=str(data), preprocess="none",
            limit=9, batch=4, progress=rec)
    _one_full_bar(rec, 9, 4, "emulate bf16")


def test_no_bar_in_captured_output(files, monkeypatch):
    model, data, _ = files
    monkeypatch.delenv("QCOMPILE_PROGRESS", raising=False)
    assert not show_progress()  # pytest's stderr is not a terminal
    r = CliRunner().invoke(app, ["eval", str(model), "--data", str(data), "--preprocess",
                                 "none", "--no-latency"])
    assert r.exit_code == 0, r.output
    assert "images/s" not in r.stderr and "ETA" not in r.stderr
    monkeypatch.setenv("QCOMPILE_PROGRESS", "1")
    assert show_progress()
    monkeypatch.setenv("QCOMPILE_PROGRESS", "0")
    bar = images_progress(10, "x")
    bar.update(3)
    bar.close()


class _SlowKernels:
    """An arithmetic whose kernel warm-up takes over the 1 s announcement delay."""

    def warmup(self, progress) -> None:
        import time

        time.sleep(1.3)
        for i in range(3):
            progress(i + 1, 3)


def test_kernel_compilation_is_announced_with_a_bar():
    from qcompile.driver.emulate import warm_kernels

    lines: list[str] = []
    rec = Recorder()
    warm_kernels(_SlowKernels(), lines.append, rec)
    assert lines == ["compiling kernels (first run only) ..."]
    assert rec.bars[0]["desc"].startswith("compiling kernels") and rec.bars[0]["total"] == 3
    assert sum(rec.bars[0]["updates"]) == 3 and rec.bars[0]["closed"]
    assert rec.bars[0]["unit"] == "kernels"
    lines.clear()
    warm_kernels(_SlowKernels(), lines.append)  # no bar: one log line per kernel
    assert lines[0].startswith("compiling kernels (first") and len(lines) == 4
