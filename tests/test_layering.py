"""House rule 8, enforced: which layers may import onnx/onnxruntime/gmpy2, and passes never import
a backend (the executor is injected). Imports inside functions count too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "qcompile"

ALLOWED = {
    "onnx": ("frontend", "backends/ort", "testing"),
    "onnxruntime": ("backends/ort",),
    "gmpy2": ("numerics", "backends/mpfr"),
}


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


FILES = sorted(PKG.rglob("*.py"))


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(PKG)) for p in FILES])
def test_layering(path):
    rel = path.relative_to(PKG).as_posix()
    for mod in imports(path):
        top = mod.split(".")[0]
        if top in ALLOWED:
            assert any(rel.startswith(d + "/") for d in ALLOWED[top]), \
                f"{rel} imports {mod}; only {ALLOWED[top]} may"
        if rel.startswith("passes/"):
            assert not mod.startswith("qcompile.backends"), \
                f"{rel} imports {mod}: passes get an executor injected instead"
        if rel.startswith("ir/"):
            assert not mod.startswith(("qcompile.passes", "qcompile.backends", "qcompile.frontend")), \
                f"{rel} imports {mod}: the IR depends on nothing above it"
