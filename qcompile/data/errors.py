"""Errors and warnings raised by :mod:`qcompile.data`.

Every problem with a user-supplied data source (``--calib``, ``--data``, ``--image``) is a
:class:`DataError`.  It subclasses both the project-wide :class:`qcompile.errors.QCompileError`
(so the CLI reports it like any other input mistake, exit code 2) and :class:`ValueError` (so
generic callers can still catch it), and its message is always ONE line of the form ``"data: <what is wrong with PATH>; <fix>"`` so
the CLI can print it verbatim next to a non-zero exit code without a traceback.
"""

from __future__ import annotations

import re

from qcompile.errors import QCompileError

__all__ = ["DataError", "DataWarning"]

_PREFIX = "data: "


class DataError(QCompileError, ValueError):
    """A data source cannot be used; the message is one line naming the path and the fix."""

    def __init__(self, message: str) -> None:
        # Collapse embedded newlines (e.g. from a wrapped PIL/numpy exception text) so the
        # one-line guarantee holds whatever the caller interpolated into the message.
        text = re.sub(r"\s*[\r\n]+\s*", " ", str(message)).strip()
        if not text.startswith(_PREFIX):
            text = _PREFIX + text
        super().__init__(text)


class DataWarning(UserWarning):
    """A recoverable data problem, e.g. an unreadable image that was skipped."""
