"""The pass contract: ``Pass.run(graph, ctx) -> PassResult(graph, modified, stats)``.

A pass is a frozen dataclass whose fields are its options (the CLI keys of
``name{key=value,...}``). ``requires``/``ensures`` are named graph predicates (:class:`Check`),
evaluated on the graph itself so they cannot go stale. ``passes/`` never imports a backend: what
a pass needs to execute a graph (calibration) arrives as ``ctx.executor``.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np

from qcompile.errors import InternalError, QCompileError
from qcompile.ir import Graph, Value


@dataclass(frozen=True)
class Check:
    """A named graph predicate: ``fn(graph)`` returns None when it holds, else the reason."""

    name: str
    fn: Callable[[Graph], str | None]
    doc: str = ""

    def __call__(self, graph: Graph) -> str | None:
        return self.fn(graph)


@dataclass(frozen=True)
class PassResult:
    graph: Graph
    modified: bool
    stats: Mapping[str, int] = field(default_factory=dict)
    notes: tuple[str, ...] = ()  # human-readable reasons for every decline


class Executor(Protocol):
    """Runs a float graph and returns the requested values (injected by the driver)."""

    def run(self, graph: Graph, feeds: Mapping[str, np.ndarray],
            outputs: Sequence[Value]) -> dict[Value, np.ndarray]: ...


class Instrument(Protocol):
    def before(self, p: Pass, graph: Graph) -> None: ...

    def after(self, p: Pass, graph: Graph, result: PassResult, seconds: float) -> None: ...


@dataclass
class PassContext:
    calib_data: Any = None  # a qcompile.data Dataset (or any iterable of feeds)
    executor: Executor | None = None
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))
    verify_each: bool = True
    instruments: Sequence[Instrument] = ()
    progress: Callable[..., Any] | None = None  # progress(total=..., desc=...) -> updater
    log: Callable[[str], None] = lambda msg: None


class PassError(InternalError):
    """A pass crashed (an internal error, not a user mistake); names the pass and the history.
    The CLI reports it in one line with exit code 1 (``--debug``: the traceback)."""


class PreconditionError(QCompileError):
    """A pass's ``requires`` check does not hold; the message says which pass establishes it."""


class Pass(abc.ABC):
    """Base class. Subclasses are ``@dataclass(frozen=True)`` with option fields."""

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    requires: ClassVar[tuple[Check, ...]] = ()
    ensures: ClassVar[tuple[Check, ...]] = ()
    #: Does the pass read ``ctx.calib_data`` (through ``ctx.executor``)? ``"yes"``: it cannot run
    #: without (the driver refuses up front, naming the pass); ``"optional"``: it uses data
    #: when given; ``"no"``. Every driver reads this; none keeps a list of pass names.
    needs_data: ClassVar[str] = "no"
    #: Scheduling: a pass written before the first pass named here is moved just after it
    #: (``passes.pipeline.schedule``), whatever the command.
    runs_after: ClassVar[str | None] = None
    #: The target option defaults this pass takes (e.g. ``ort-int8``'s CPU-aware ``activations``,
    #: ``weights``, ``reduce_range``) for every such option the user did not write.
    target_options: ClassVar[frozenset[str]] = frozenset()

    @abc.abstractmethod
    def run(self, graph: Graph, ctx: PassContext) -> PassResult: ...

    def spec(self) -> str:
        """The pipeline string that recreates this pass with its non-default options."""
        from dataclasses import fields

        opts = [f"{f.name}={format_option(getattr(self, f.name))}" for f in fields(self)  # type: ignore[arg-type]
                if getattr(self, f.name) != f.default]
        return self.name + ("{" + ",".join(opts) + "}" if opts else "")


def format_option(v: Any) -> str:
    """An option value as the pipeline grammar writes it (true/false, comma lists)."""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, tuple):
        return ",".join(map(str, v))
    return str(v)


class Stats:
    """Counter + notes helper so every decline is counted *and* explained."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.notes: list[str] = []

    def count(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    def skip(self, reason: str, where: str, detail: str) -> None:
        self.count(f"skipped_{reason}")
        self.notes.append(f"{where}: {detail}")

    def result(self, graph: Graph, modified: bool) -> PassResult:
        return PassResult(graph, modified, dict(self.counts), tuple(self.notes))
