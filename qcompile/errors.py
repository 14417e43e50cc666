"""User-facing errors. Each carries a one-line message that names the cause and the fix.

The CLI prints ``error: <message>`` to stderr and exits with ``exit_code`` (2 for bad input);
internal bugs are not QCompileErrors and keep their tracebacks.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def suggest(word: str, choices: Iterable[str]) -> str:
    """``"did you mean 'x'? "`` for the nearest of ``choices`` (difflib), or ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"did you mean {close[0]!r}? " if close else ""


class QCompileError(Exception):
    """A mistake in the user's input (file, option, model); ``str(err)`` is one line."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split("\n")[0].split()) if message else message)


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
