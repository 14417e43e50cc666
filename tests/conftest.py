"""Shared test helpers: the real data folder, golden text files and a verify shortcut.

* ``shared_data``: the folder with the real models and images ($QCOMPILE_DATA, else
  ``<repo>/../shared/data``); tests that need it are skipped when it is absent.
* ``golden(name, text)``: compare ``text`` with ``tests/passes/golden/<name>.txt`` (``name`` is
  ``"<pass>/<case>"``); ``pytest --update-goldens`` rewrites the files instead.
* ``check(graph)``: ``qcompile.ir.verify`` (raises VerifyError listing every problem).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from qcompile.ir import Graph, verify

REPO = Path(__file__).resolve().parents[1]
GOLDEN_DIR = Path(__file__).resolve().parent / "passes" / "golden"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-goldens", action="store_true", default=False,
                     help="rewrite tests/passes/golden/*.txt from the current output")


def find_shared_data() -> Path | None:
    env = os.environ.get("QCOMPILE_DATA")
    for cand in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data"]:
        if cand.is_dir() and (cand / "cifar10_resnet20.onnx").is_file():
            return cand
    return None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """shared/data: $QCOMPILE_DATA, else <repo>/../shared/data; skip if neither exists."""
    found = find_shared_data()
    if found is None:
        pytest.skip("shared data dir not found (set QCOMPILE_DATA)")
    return found


@pytest.fixture
def golden(request: pytest.FixtureRequest) -> Callable[[str, str], None]:
    """``golden("fold/conv_bn_relu.after", text)``: assert ``text`` equals the stored golden."""
    update = request.config.getoption("--update-goldens")

    def compare(name: str, text: str) -> None:
        path = GOLDEN_DIR / f"{name}.txt"
        if update:
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists() or path.read_text() != text:
                path.write_text(text)
            return
        if not path.exists():
            pytest.fail(f"golden {path.relative_to(REPO)} is missing; run pytest --update-goldens")
        want = path.read_text()
        if want != text:
            diff = "".join(difflib.unified_diff(want.splitlines(True), text.splitlines(True),
                                                f"golden/{name}.txt", "actual"))
            pytest.fail(f"output differs from golden {name} (pytest --update-goldens to accept):"
                        f"\n{diff}", pytrace=False)

    return compare


@pytest.fixture
def check() -> Callable[[Graph], None]:
    """``check(graph)``: verify the IR invariants (no autouse; call it where it matters)."""
    return verify
