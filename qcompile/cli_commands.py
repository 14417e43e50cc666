"""Imports the command modules that live outside ``cli.py`` so that they register on ``app``.

One import per module; each module defines its commands with ``@app.command`` from
``qcompile.cli_common``.
"""

from __future__ import annotations
from qcompile import cli_report  # noqa: F401
from qcompile import cli_verify  # noqa: F401
from qcompile import cli_sweep  # noqa: F401
