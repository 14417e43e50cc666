"""The ``qcompile`` command line: parsing, wiring and printing only (logic lives in ``driver/``).

This module is the index: ``COMMANDS`` names the command modules, in the order ``qcompile --help``
lists them. Each module registers its commands on ``app`` (``cli/common.py``). Adding a command
means adding ``cli/<cmd>.py``, ``driver/<cmd>.py`` and one name to ``COMMANDS``.

Every user mistake (bad file, option, path) ends as one line ``error: ...`` on stderr with exit
code 2 and no output file.
"""

from __future__ import annotations

import importlib
import sys

from qcompile.cli.common import app

__all__ = ["app", "main"]

#: The command modules, in the order ``qcompile --help`` lists their commands.
COMMANDS = ("inspect", "compile", "evaluate", "emulate", "report", "verify", "sweep")
for _name in COMMANDS:
    importlib.import_module(f"qcompile.cli.{_name}")


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
