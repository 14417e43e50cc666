"""Shared plumbing of the ``qcompile`` command line: the Typer app, the one-line error wrapper,
JSON printing and progress bars.  Command modules (``cli.py``, ``cli_*.py``) register on ``app``.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import typer

from qcompile.errors import QCompileError

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="qcompile: quantise CNNs as a compiler does. ONNX in -> IR -> passes -> ONNX Runtime or MPFR.",
)


def err(msg: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {msg}", err=True)
    return typer.Exit(code)


def user_errors(fn):
    """Turn QCompileError / DataError into one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from qcompile.data import DataError

        try:
            return fn(*args, **kwargs)
        except (QCompileError, DataError) as e:
            raise err(str(e), getattr(e, "exit_code", 2)) from None
        except KeyboardInterrupt:
            raise err("interrupted", 130) from None

    return wrapper


def echo_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


def console():
    from rich.console import Console

    return Console(stderr=False, highlight=False)


# ---------------------------------------------------------------------------------------------
class Bar:
    """Progress on stderr for long passes (calibration): ``update(n)``, ``close()``."""

    def __init__(self, total: int, desc: str, unit: str | None = None) -> None:
        from rich.console import Console
        from rich.progress import Progress

        cols = () if unit is None else _rate_columns(unit)
        self._p = Progress(*cols, console=Console(stderr=True), transient=True)
        self._p.start()
        self._task = self._p.add_task(desc, total=total)

    def update(self, n: int) -> None:
        self._p.update(self._task, advance=n)

    def close(self) -> None:
        self._p.stop()


def progress(total: int, desc: str, unit: str | None = None) -> Bar:
    """A bar; with ``unit`` (e.g. "images") it also shows done/total, unit/s and the ETA."""
    return Bar(total, desc, unit)


def images_progress(total: int, desc: str) -> Bar:
    return Bar(total, desc, "images")


def _rate_columns(unit: str) -> tuple:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        ProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task) -> Text:
            return Text("" if not task.speed else f"{task.speed:.2f} {unit}/s")

    return (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), Rate(),
            TextColumn("ETA"), TimeRemainingColumn())


# ---------------------------------------------------------------------------------------------
# Shared options: one spelling, default and help text for what every command means the same way.
def preprocess_option():
    return typer.Option("none", "--preprocess", help="imagenet|cifar|lite0|none")


def json_option(help: str = "machine-readable report"):
    return typer.Option(False, "--json", help=help)


def cluster_option():
    return typer.Option(None, "--cluster", help="run the images on a Dask cluster: local:N "
                        "(N worker processes here, 1 thread each), tcp://HOST:PORT or "
                        "scheduler-file:PATH; results equal a local run's")
