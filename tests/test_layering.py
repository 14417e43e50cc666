"""House rule 8, enforced from the data in docs/architecture.json: every import inside qcompile/
follows an allowed arrow between parts, no forbidden arrow appears, third-party packages stay in
their parts, there is no import cycle outside the allow-list, and no private name is imported
across modules. Imports inside functions count too; ``if TYPE_CHECKING:`` imports do not."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "qcompile"
ARCH = json.loads((ROOT / "docs" / "architecture.json").read_text())
FILES = sorted(PKG.rglob("*.py"))


def rel(path: Path) -> str:
    return path.relative_to(PKG).as_posix()


def module_name(path: Path) -> str:
    parts = ["qcompile", *path.relative_to(PKG).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in FILES}


def module_file(mod: str) -> str | None:
    """The file (relative to qcompile/) that defines module ``mod``, if it is ours."""
    p = MODULES.get(mod)
    return rel(p) if p is not None else None


def part_of(relpath: str) -> str:
    best, best_len = None, -1
    for name, spec in ARCH["parts"].items():
        for p in spec["paths"]:
            hit = relpath == p if p.endswith(".py") else relpath.startswith(p)
            if hit and len(p) > best_len:
                best, best_len = name, len(p)
    assert best is not None, f"{relpath} belongs to no part of docs/architecture.json"
    return best


def _type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or \
        (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, imported names) for every absolute import, TYPE_CHECKING blocks skipped."""
    out: list[tuple[str, list[str]]] = []

    def walk(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child):
                for o in child.orelse:
                    walk(o)
                continue
            if isinstance(child, ast.Import):
                out.extend((a.name, []) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                out.append((child.module, [a.name for a in child.names]))
            walk(child)

    walk(ast.parse(path.read_text(), str(path)))
    return out


def targets(mod: str, names: list[str]) -> list[str]:
    """Our modules an import statement reaches: ``from pkg import sub`` reaches ``pkg.sub``."""
    out = [m for m in [mod] if m in MODULES]
    out += [f"{mod}.{n}" for n in names if f"{mod}.{n}" in MODULES]
    return out


def _allowed(src_part: str, dst_file: str) -> bool:
    dst_part = part_of(dst_file)
    if dst_part == src_part:
        return True
    for a in ARCH["allowed"].get(src_part, []):
        name, _, only = a.partition(":")
        if name == dst_part and (not only or dst_file == only):
            return True
    return False


@pytest.mark.parametrize("path", FILES, ids=[rel(p) for p in FILES])
def test_layering(path):
    src = rel(path)
    sp = part_of(src)
    forbidden = {(f["from"], f["to"]): f["why"] for f in ARCH["forbidden"]}
    for mod, names in imports(path):
        top = mod.split(".")[0]
        if top in ARCH["third_party"]:
            ok = ARCH["third_party"][top]["parts"]
            assert sp in ok, f"{src} imports {mod}; only {ok} may ({ARCH['third_party'][top]['why']})"
        for t in targets(mod, names):
            dst = module_file(t)
            dp = part_of(dst)
            assert (sp, dp) not in forbidden, f"{src} imports {t}: {forbidden[(sp, dp)]}"
            assert _allowed(sp, dst), (f"{src} ({sp}) imports {t} ({dp}): no such arrow in "
                                       "docs/architecture.json")


def import_graph() -> nx.DiGraph:
    g = nx.DiGraph()
    for m, p in MODULES.items():
        for mod, names in imports(p):
            for t in targets(mod, names):
                # a submodule importing its own package's facade (__init__) is not a cycle
                if t != m and not m.startswith(t + "."):
                    g.add_edge(m, t)
    return g


def test_no_import_cycles():
    allow = {frozenset(c) for c in ARCH["cycle_allow"]}
    cycles = [sorted(c) for c in nx.strongly_connected_components(import_graph())
              if len(c) > 1 and frozenset(c) not in allow]
    assert not cycles, f"import cycles (break them, or allow-list them with a reason): {cycles}"


def test_no_private_names_across_modules():
    bad = []
    for m, p in MODULES.items():
        for mod, names in imports(p):
            if not mod.startswith("qcompile"):
                continue
            for n in names:
                if n.startswith("_") and not n.startswith("__") and f"{mod}.{n}" not in MODULES:
                    bad.append(f"{rel(p)}: from {mod} import {n}")
    assert not bad, "private names imported across modules (make them public): " + "; ".join(bad)


def test_every_file_has_a_part():
    for p in FILES:
        part_of(rel(p))


def test_architecture_data_is_consistent():
    parts = set(ARCH["parts"])
    for src, dsts in ARCH["allowed"].items():
        assert src in parts
        assert all(d.partition(":")[0] in parts for d in dsts)
    for f in ARCH["forbidden"]:
        assert {f["from"], f["to"]} <= parts and f["why"]
        assert not any(a.partition(":")[0] == f["to"] for a in ARCH["allowed"].get(f["from"], [])), \
            f"{f} is both allowed and forbidden"


def test_the_check_can_fail(tmp_path):
    """The arrow check is not vacuous: a passes/ file importing a backend is refused."""
    forbidden = {(f["from"], f["to"]) for f in ARCH["forbidden"]}
    assert ("Passes", "ORT") in forbidden
    assert not _allowed("Passes", "backends/ort/lower.py")
    assert not _allowed("Face", "passes/__init__.py")
    assert _allowed("Driver", "backends/ort/lower.py")
