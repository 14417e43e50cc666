"""Per-op tables shared by the backends: one rule per op; a duplicate registration is an error."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

from qcompile.errors import UnsupportedOpError
from qcompile.ir import Node

R = TypeVar("R", bound=Callable)


class OpTable(Generic[R]):
    """Maps ``(domain, op)`` to a rule. ``fallback`` (if given) handles ops with no entry."""

    def __init__(self, backend: str, fallback: Callable[[Node], R | None] | None = None) -> None:
        self.backend = backend
        self._rules: dict[tuple[str, str], R] = {}
        self._fallback = fallback

    def register(self, op: str, domain: str = "", *, override: bool = False) -> Callable[[R], R]:
        def deco(fn: R) -> R:
            key = (_norm(domain), op)
            if key in self._rules and not override:
                raise ValueError(f"{self.backend}: op {op!r} (domain {domain!r}) registered twice")
            self._rules[key] = fn
            return fn

        return deco

    def lookup(self, node: Node) -> R | None:
        rule = self._rules.get((_norm(node.domain), node.op))
        if rule is None and self._fallback is not None:
            rule = self._fallback(node)
        return rule

    def ops(self) -> set[tuple[str, str]]:
        return set(self._rules)

    def check(self, nodes: Iterable[Node]) -> None:
        """Raise UnsupportedOpError listing every op type without a rule (all at once)."""
        missing: dict[str, list[str]] = {}
        for n in nodes:
            if self.lookup(n) is None:
                missing.setdefault(n.qualified_op, []).append(n.name)
        if missing:
            raise UnsupportedOpError(self.backend, missing)


def _norm(domain: str) -> str:
    return "" if domain == "ai.onnx" else domain
