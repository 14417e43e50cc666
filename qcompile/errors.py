"""User-facing errors. Each carries a one-line message that names the cause and the fix.

The CLI prints ``error: <message>`` to stderr and exits with ``exit_code`` (2 for bad input);
internal bugs are not QCompileErrors and keep their tracebacks.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable

#: The default memory budget for any one user-supplied object (a tensor, an npz member, a
#: decoded image, a declared input): 4 GiB, far below the machines qcompile runs on, so a lying
#: header is refused before it is allocated. ``QCOMPILE_MEMORY_BUDGET`` overrides it (bytes, or
#: with a K/M/G/T suffix, powers of 1024).
DEFAULT_MEMORY_BUDGET = 4 << 30
MEMORY_BUDGET_ENV = "QCOMPILE_MEMORY_BUDGET"
#: Longest run of non-space characters an error line echoes (user strings, paths) before "...".
MAX_WORD = 200
#: Longest error line: beyond it, the head and the tail (the fix) are kept around " ... ".
MAX_LINE = 1000


def memory_budget() -> int:
    """The memory budget in bytes (:data:`DEFAULT_MEMORY_BUDGET` or ``$QCOMPILE_MEMORY_BUDGET``)."""
    text = os.environ.get(MEMORY_BUDGET_ENV, "").strip()
    if not text:
        return DEFAULT_MEMORY_BUDGET
    m = re.fullmatch(r"(\d+)\s*([kmgt]?)i?b?", text.lower())
    if m is None or int(m.group(1)) <= 0:
        raise QCompileError(f"{MEMORY_BUDGET_ENV}={shorten(text)!r} is not a size; give bytes "
                            "or a number with K/M/G/T, e.g. 4G")
    return int(m.group(1)) << (10 * " kmgt".index(m.group(2) or " "))


def fmt_bytes(n: int | float) -> str:
    """``n`` bytes as a short human size (``4.0 GiB``)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def shorten(text: object, limit: int = MAX_WORD) -> str:
    """``str(text)`` cut to ``limit`` characters with ``...`` (for echoing user strings)."""
    s = str(text)
    return s if len(s) <= limit else s[:limit] + "..."


def one_line(message: object) -> str:
    """The first line of ``message``, whitespace collapsed, every overlong word and the whole
    line shortened (:data:`MAX_WORD`, :data:`MAX_LINE`), so a 10,000-character user string
    never floods the terminal."""
    text = str(message).strip()
    text = " ".join(text.split("\n")[0].split()) if text else ""
    text = re.sub(r"\S{%d,}" % (MAX_WORD + 1), lambda m: m.group(0)[:MAX_WORD] + "...", text)
    if len(text) > MAX_LINE:
        text = text[:MAX_LINE - 300] + " ... " + text[-295:]
    return text


def suggest(word: str, choices: Iterable[str]) -> str:
    """``"did you mean 'x'? "`` for the nearest of ``choices`` (difflib), or ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"did you mean {close[0]!r}? " if close else ""


class QCompileError(Exception):
    """A mistake in the user's input (file, option, model); ``str(err)`` is one line."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message) if message else message)


class BudgetError(QCompileError):
    """A user-supplied object would need more memory than the budget (:func:`memory_budget`)."""


class InternalError(Exception):
    """A bug in qcompile (not the user's input): the CLI prints one line saying so and exits 1
    (``--debug`` prints the traceback)."""

    exit_code = 1


class ModelError(QCompileError):
    """A model file cannot be read or is not a model qcompile can lift."""


class OptionError(QCompileError):
    """An unknown or malformed option, pass name or pipeline string."""


class UnsupportedOpError(QCompileError):
    """A backend cannot run some ops; every one is listed at once, before any work starts."""

    def __init__(self, backend: str, ops: dict[str, list[str]]) -> None:
        self.ops = ops
        listed = "; ".join(f"{op} ({', '.join(nodes[:3])}{'...' if len(nodes) > 3 else ''})"
                           for op, nodes in sorted(ops.items()))
        super().__init__(f"the {backend} backend does not support {len(ops)} op type(s): {listed}")
