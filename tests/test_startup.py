"""Start-up stays cheap: importing the command line (and the package root with the API names)
loads no heavy module, and a one-line error on a missing model answers before any driver import.
Timings are in benchmarks/bench_startup.py, never in a test."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = {"onnx", "onnxruntime", "numba", "gmpy2", "PIL", "matplotlib", "distributed"}
LIST = f"sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})"


def _py(code: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


def test_cli_import_loads_no_heavy_module():
    out = _py(f"import qcompile.cli; import sys; print({LIST})")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_package_root_and_api_names_load_no_heavy_module():
    out = _py("import qcompile, sys; qcompile.quantize, qcompile.emulate, qcompile.verify_model,"
              f" qcompile.evaluate, qcompile.VerifyResult; print({LIST})")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("argv", [["inspect", "missing.onnx"],
                                  ["run", "missing.onnx", "-o", "x.onnx"],
                                  ["eval", "missing.onnx", "--data", "d.npz"],
                                  ["compare", "missing.onnx", "b.onnx", "--data", "d.npz"],
                                  ["emulate", "missing.onnx", "--bits", "8", "--image", "x.jpg"],
                                  ["verify", "missing.onnx", "--data", "d.npz"]])
def test_missing_model_is_one_line_before_any_heavy_import(argv, tmp_path):
    code = ("import sys\nfrom qcompile.cli import app\ntry:\n    app(" + repr(argv) + ")\n"
            "except SystemExit as e:\n    code = e.code\n"
            f"print(code, {LIST})")
    out = _py(code, cwd=tmp_path)
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert lines == ["error: model: missing.onnx does not exist; check the path"], out.stderr
    assert out.stdout.strip() == "2 []"
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["emulate", "--help"]])
def test_help_loads_no_heavy_module(argv):
    code = ("import sys\nfrom qcompile.cli import app\ntry:\n    app(" + repr(argv) + ")\n"
            "except SystemExit as e:\n    code = e.code\n"
            f"print('CODE', code, {LIST})")
    out = _py(code)
    assert out.stdout.strip().splitlines()[-1] == "CODE 0 []", out.stdout[-500:]
