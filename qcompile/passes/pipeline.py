"""Pipeline strings and the pass manager.

Grammar (xDSL style)::

    pipeline := spec ("," spec)*
    spec     := NAME ("{" key "=" value ("," key "=" value)* "}")?

A comma inside braces that is not followed by ``key=`` continues the previous value, so list
options read naturally: ``quantize{keep_float=first,last,bits=8}``. Values are converted by the
option field's annotation (int, float, bool, str, Literal choices, tuple[str, ...]).
"""

from __future__ import annotations

import re
import time
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, TextIO

from qcompile.errors import OptionError, QCompileError
from qcompile.errors import suggest as _suggest
from qcompile.ir import Graph, VerifyError, format_graph, verify
from qcompile.passes.base import (
    Pass,
    PassContext,
    PassError,
    PassResult,
    PreconditionError,
    format_option,
)

_SPEC = re.compile(r"\s*([A-Za-z_][\w-]*)\s*(?:\{(.*?)\})?\s*$", re.S)


def split_specs(text: str) -> list[str]:
    """Split at commas outside braces."""
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth < 0:
                raise OptionError(f"pipeline: unbalanced '}}' in {text!r}")
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    if depth:
        raise OptionError(f"pipeline: missing '}}' in {text!r}")
    out.append(cur)
    return [s.strip() for s in out]


def option_fields(cls: type[Pass]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, str) for f in fields(cls)}  # type: ignore[arg-type]


def convert(pass_name: str, key: str, raw: str, ann: Any) -> Any:
    """Convert the text ``raw`` to the option type ``ann``; OptionError with the valid forms."""
    origin = typing.get_origin(ann)
    args = typing.get_args(ann)
    where = f"pass '{pass_name}': option {key}={raw!r}"
    if origin in (typing.Union, types.UnionType):
        if raw.lower() in ("none", "") and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return convert(pass_name, key, raw, a)
            except OptionError as e:
                errors.append(str(e))
        raise OptionError(errors[0] if errors else f"{where} is invalid")
    if origin is typing.Literal:
        for a in args:  # choices may be ints (bits: Literal[4, 8]) as well as strings
            if raw == str(a) or (isinstance(a, bool) and raw.lower() == str(a).lower()):
                return a
        raise OptionError(f"{where} is not one of {', '.join(map(str, args))}; "
                          f"{_suggest(raw, [str(a) for a in args])}".rstrip("; "))
    if origin is tuple:
        items = tuple(s.strip() for s in raw.split(",") if s.strip())
        return tuple(convert(pass_name, key, s, args[0]) for s in items) if args else items
    if ann is bool:
        low = raw.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise OptionError(f"{where} is not a boolean (use true or false)")
    if ann in (int, float):
        try:
            return ann(raw)
        except ValueError:
            raise OptionError(f"{where} is not {'an integer' if ann is int else 'a number'}") from None
    return raw


def parse_pipeline(text: str, registry: Mapping[str, type[Pass]] | None = None, *,
                   scheduled: bool = True) -> list[Pass]:
    """Parse ``text`` into configured passes in the order they run (:func:`schedule`; with
    ``scheduled=False`` in the written order); unknown names/options raise OptionError."""
    if registry is None:
        from qcompile.passes import REGISTRY as registry  # noqa: N811
    if not text or not text.strip():
        raise OptionError("pipeline: empty pass list; e.g. --passes fold,cleanup")
    passes: list[Pass] = []
    for spec in split_specs(text):
        m = _SPEC.match(spec)
        if not m:
            raise OptionError(f"pipeline: cannot parse {spec!r}; expected name or name{{key=value,...}}")
        name, body = m.group(1), m.group(2)
        if name not in registry:
            raise OptionError(f"pipeline: unknown pass {name!r}; {_suggest(name, list(registry))}"
                              f"valid passes: {', '.join(sorted(registry))}")
        cls = registry[name]
        opts = option_fields(cls)
        kwargs: dict[str, str] = {}
        last = None
        for item in split_specs(body) if body and body.strip() else []:
            if "=" not in item:
                if last is None:
                    raise OptionError(f"pass '{name}': {item!r} is not key=value")
                kwargs[last] += "," + item
                continue
            key, _, value = item.partition("=")
            key = key.strip()
            if key not in opts:
                valid = ", ".join(opts) or "(none)"
                raise OptionError(f"pass '{name}': unknown option {key!r}; "
                                  f"{_suggest(key, list(opts))}valid options: {valid}")
            if key in kwargs:
                raise OptionError(f"pass '{name}': option {key!r} is given twice; keep one")
            kwargs[key] = value.strip()
            last = key
        typed = {k: convert(name, k, v, opts[k]) for k, v in kwargs.items()}
        try:
            passes.append(cls(**typed))
        except (ValueError, TypeError) as e:
            raise OptionError(f"pass '{name}': {e}") from None
    return schedule(passes) if scheduled else passes


def explicit_options(text: str) -> list[set[str]]:
    """Per spec of ``text`` (written order), the option keys the user wrote."""
    out: list[set[str]] = []
    for spec in split_specs(text):
        m = _SPEC.match(spec)
        body = (m.group(2) or "") if m else ""
        out.append({item.partition("=")[0].strip() for item in split_specs(body)
                    if "=" in item} if body.strip() else set())
    return out


def schedule(pipeline: Sequence[Pass]) -> list[Pass]:
    """The order passes run in: a pass that declares ``runs_after = "X"`` (``bias_correct``: it
    corrects the error of the weight quantisation that ``quantize`` introduces) moves from
    before the first ``X`` to just after it, so ``calibrate,bias_correct,quantize`` means what it
    says. Order is otherwise kept. Every command schedules through here."""
    out = list(pipeline)
    for p in list(out):
        anchor = type(p).runs_after
        if anchor is None:
            continue
        names = [q.name for q in out]
        i = out.index(p)
        if anchor in names[:i] or anchor not in names[i + 1:]:
            continue
        out.pop(i)
        j = names.index(anchor, i + 1)  # position in the list after the pop is j - 1, insert at j
        out.insert(j, p)
    return out


def data_needs(pipeline: Sequence[Pass]) -> tuple[list[str], list[str]]:
    """(passes that cannot run without calibration data, passes that use it when given)."""
    return ([p.name for p in pipeline if type(p).needs_data == "yes"],
            [p.name for p in pipeline if type(p).needs_data == "optional"])


def describe_options(cls: type[Pass]) -> list[tuple[str, str, str]]:
    """(name, type, default) for each option, for ``qcompile passes``."""
    out = []
    hints = option_fields(cls)
    for f in fields(cls):  # type: ignore[arg-type]
        default = f.default if f.default is not MISSING else "(required)"
        out.append((f.name, _type_name(hints[f.name]), format_option(default)))
    return out


def _type_name(ann: Any) -> str:
    if typing.get_origin(ann) is typing.Literal:
        return "|".join(map(str, typing.get_args(ann)))
    return getattr(ann, "__name__", str(ann)).replace("typing.", "")


@dataclass
class PipelineResult:
    graph: Graph
    results: list[tuple[Pass, PassResult, float]] = field(default_factory=list)


def _hint(check_name: str) -> str:
    from qcompile.passes import REGISTRY

    makers = [n for n, c in REGISTRY.items() if any(k.name == check_name for k in c.ensures)]
    return f"run {' or '.join(repr(m) for m in makers)} first" if makers else "fix the model"


def run_pipeline(graph: Graph, passes: Sequence[Pass], ctx: PassContext | None = None) -> PipelineResult:
    """Run ``passes`` in order: requires -> before hooks -> run -> verify + ensures -> after hooks."""
    ctx = ctx or PassContext()
    out = PipelineResult(graph)
    done: list[str] = []
    for p in passes:
        for check in p.requires:
            why = check(graph)
            if why is not None:
                raise PreconditionError(f"'{p.name}' needs '{check.name}' ({why}); "
                                        f"{_hint(check.name)}. Passes so far: {done}")
        for ins in ctx.instruments:
            ins.before(p, graph)
        t0 = time.perf_counter()
        try:
            result = p.run(graph, ctx)
        except QCompileError as e:
            # Prefix in place: keeps the type and its fields (UnsupportedOpError.ops...), whose
            # constructors need not take a single message.
            e.args = (f"pass '{p.name}': {e}",) + e.args[1:]
            raise e from None
        except Exception as e:
            raise PassError(f"pass '{p.name}' failed after {done}: {type(e).__name__}: {e}") from e
        seconds = time.perf_counter() - t0
        graph = result.graph
        if ctx.verify_each:
            try:
                verify(graph)
            except VerifyError as e:
                raise PassError(f"pass '{p.name}' (after {done}) left invalid IR: {e}") from e
            for check in p.ensures:
                why = check(graph)
                if why is not None:
                    raise PassError(f"pass '{p.name}' did not establish '{check.name}': {why}")
        for ins in ctx.instruments:
            ins.after(p, graph, result, seconds)
        out.results.append((p, result, seconds))
        out.graph = graph
        done.append(p.name)
    return out


class PrintAfter:
    """Print the IR after the named passes (``--print-after fold``; 'all' for every pass)."""

    def __init__(self, names: Sequence[str], stream: TextIO) -> None:
        self.names, self.stream = set(names), stream

    def before(self, p: Pass, graph: Graph) -> None:
        pass

    def after(self, p: Pass, graph: Graph, result: PassResult, seconds: float) -> None:
        if p.name in self.names or "all" in self.names:
            self.stream.write(f"// IR after '{p.spec()}'\n{format_graph(graph)}")


class DumpDir:
    """Write ``NN-<pass>.txt`` with the IR before the first pass and after each pass."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.i = 0

    def before(self, p: Pass, graph: Graph) -> None:
        if self.i == 0:
            (self.dir / "00-input.txt").write_text(format_graph(graph))

    def after(self, p: Pass, graph: Graph, result: PassResult, seconds: float) -> None:
        self.i += 1
        (self.dir / f"{self.i:02d}-{p.name}.txt").write_text(format_graph(graph))
