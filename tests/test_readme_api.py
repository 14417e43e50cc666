"""The README's Python API examples run as written on the shared data (slow: one quantisation
of ResNet-20, an evaluation, a verify and a bf16 emulation)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import REPO


def _blocks() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Python API\n"):text.index("## The IR\n")]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_readme_has_the_api_examples():
    code = "\n".join(_blocks())
    for name in ("qcompile.quantize(", "qcompile.evaluate(", "qcompile.verify_model(",
                 "qcompile.emulate(", "as_onnx_ir_pass(", "FoldBatchNorm()"):
        assert name in code


@pytest.mark.slow
def test_readme_api_examples_run(shared_data, tmp_path):
    pytest.importorskip("onnx_ir")
    for i, block in enumerate(_blocks()):
        code = block.replace("../shared/data", str(shared_data))
        out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                             text=True, timeout=900)
        assert out.returncode == 0, f"README Python API block {i}:\n{out.stderr[-2000:]}"
    assert (tmp_path / "resnet20_int8.onnx").is_file()
    assert (tmp_path / "resnet20_folded.onnx").is_file()
