"""Shared plumbing of the ``qcompile`` command line: the Typer app, the one-line error wrapper,
JSON printing and progress bars.  Command modules (``cli.py``, ``cli_*.py``) register on ``app``.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import typer

from qcompile.errors import QCompileError

#: ``qcompile --help``'s headline examples, on the shipped files (repo root, ../shared/data beside)
EXAMPLES = (
    "Examples (from the repo root, ../shared/data beside it):\n\n"
    "qcompile run ../shared/data/cifar10_resnet56.onnx -t ort-int8 --calib "
    "../shared/data/cifar10_test_dev.npz --preprocess cifar -o resnet56_int8.onnx\n\n"
    "qcompile emulate ../shared/data/efficientnet_lite0.onnx --bits 15 --image "
    "../shared/data/tiger128.jpg --preprocess lite0\n\n"
    "qcompile verify resnet56_int8.onnx --data ../shared/data/cifar10_test_dev.npz --limit 100")

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="qcompile: quantise CNNs as a compiler does. ONNX in -> IR -> passes -> ONNX Runtime or MPFR.",
    epilog=EXAMPLES,
)


def err(msg: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {msg}", err=True)
    return typer.Exit(code)


#: CLI-level bounds of the numeric options, by parameter name: (flag, lowest, highest); None
#: is open. Checked by :func:`user_errors` before the command runs, so every command gets them
#: with one spelling (format parameters beyond these are the numerics' own checks).
OPTION_BOUNDS: dict[str, tuple[str, int | None, int | None]] = {
    "seed": ("--seed", 0, 2**32 - 1),
    "size": ("--size", 8, 4096),
    "limit": ("--limit", 1, None),
    "batch": ("--batch", 1, 65536),
    "bits": ("--bits", 3, 64),
    "exp_bits": ("--exp-bits", 2, 16),
    "threads": ("--threads", 0, 1024),
    "verify": ("--verify", 0, 10**6),
    "calib_images": ("--calib-images", 1, None),
}

#: Set by the global ``--debug`` flag (or QCOMPILE_DEBUG=1): internal errors print their traceback.
DEBUG = {"on": False}


def _print_version(value: bool) -> None:
    if value:
        from qcompile._version import __version__

        typer.echo(f"qcompile {__version__}")
        raise typer.Exit()


@app.callback()
def _global(debug: bool = typer.Option(False, "--debug", help="on an internal error, print "
                                       "the traceback (for a bug report)"),
            version: bool = typer.Option(False, "--version", callback=_print_version,
                                         is_eager=True, help="print the version and exit"),
            ) -> None:
    """qcompile: quantise CNNs as a compiler does. ONNX in -> IR -> passes -> ONNX Runtime or MPFR."""
    import os

    DEBUG["on"] = debug or os.environ.get("QCOMPILE_DEBUG", "") not in ("", "0")


def check_bounds(values: dict[str, Any]) -> None:
    """Raise OptionError naming the flag and its range for an out-of-range numeric option."""
    from qcompile.errors import OptionError

    for name, (flag, lo, hi) in OPTION_BOUNDS.items():
        v = values.get(name)
        if v is None or isinstance(v, bool) or not isinstance(v, int):
            continue
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
            raise OptionError(f"{flag} {v} is out of range; give a value in {rng}")


#: The parameters that name an input model file (``compare A B``): checked to exist before the
#: command imports a driver, so a mistyped path is one line without ~3 s of onnx/ORT imports.
MODEL_ARGS = ("model", "a", "b")


def check_model_args(values: dict[str, Any]) -> None:
    from qcompile.files import check_model_file_path

    for name in MODEL_ARGS:
        if isinstance(values.get(name), str):
            check_model_file_path(values[name])


def _node_of(exc: BaseException) -> str:
    """' at node NAME (OP)' for the innermost frame of ``exc``'s traceback holding an IR node
    in a local ``node``, else ''."""
    where = ""
    tb = exc.__traceback__
    while tb is not None:
        node = tb.tb_frame.f_locals.get("node")
        if node is not None and hasattr(node, "op") and hasattr(node, "name"):
            where = f" at node {node.name!r} ({node.op})"
        tb = tb.tb_next
    return where


def internal_error(e: BaseException) -> typer.Exit:
    """One line for a bug (exit 1); the traceback only with --debug."""
    import traceback

    from qcompile.errors import InternalError, one_line

    if DEBUG["on"]:
        traceback.print_exception(type(e), e, e.__traceback__)
    cause = e.__cause__ if isinstance(e, InternalError) and e.__cause__ is not None else e
    text = str(e)
    if isinstance(e, InternalError) and text.startswith("pass '"):
        name, _, rest = text[len("pass '"):].partition("'")
        where = f"internal error in pass '{name}'{_node_of(cause)}"
        text = rest.lstrip(" :")
    else:
        where = f"internal error{_node_of(cause)}"
        text = f"{type(e).__name__}: {text}"
    hint = "" if DEBUG["on"] else " with --debug output"
    return err(one_line(f"{where} (a bug: please report it{hint}): {text}"), 1)


def user_errors(fn):
    """Turn QCompileError / DataError into one line on stderr and exit code 2; a bug
    (any other exception, e.g. a pass's PassError) into one line saying so and exit code 1
    (``--debug``: with the traceback); out-of-range numeric options (:data:`OPTION_BOUNDS`)
    are refused before the command runs."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import click

        try:
            check_bounds(kwargs)
            check_model_args(kwargs)
            return fn(*args, **kwargs)
        except QCompileError as e:  # DataError too (a subclass; importing data/ costs 0.4 s)
            raise err(str(e), getattr(e, "exit_code", 2)) from None
        except KeyboardInterrupt:
            raise err("interrupted", 130) from None
        except (typer.Exit, click.exceptions.ClickException, click.exceptions.Abort):
            raise
        except MemoryError:
            raise err("out of memory: the input needs more memory than this machine has "
                      "(fewer images, a smaller --batch or a smaller model)", 2) from None
        except Exception as e:
            if type(e).__module__.startswith("onnxruntime"):
                # ORT refusing a model or a feed is about the input, wherever it surfaced
                # (the ORT backend wraps its own calls in backends/ort/guard.py).
                import re

                text = re.sub(r"^\s*\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*", "",
                              str(e).strip().splitlines()[0] if str(e).strip() else "")
                raise err(str(QCompileError(f"ONNX Runtime failed: {text or type(e).__name__}; "
                                            "the model or its input is not one ORT can run")),
                          2) from None
            raise internal_error(e) from None

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

        cols = _rate_columns(unit or "it")  # done/total, rate and ETA on every bar
        self._p = Progress(*cols, console=Console(stderr=True), transient=True)
        self._p.start()
        self._task = self._p.add_task(desc, total=total)

    def update(self, n: int) -> None:
        self._p.update(self._task, advance=n)

    def close(self) -> None:
        self._p.stop()


class _NoBar:
    """What :func:`progress` returns when no bar is shown (not a terminal)."""

    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def show_progress() -> bool:
    """Bars are drawn on a terminal only (stderr is a TTY), so captured output (tests, pipes,
    --json into a file) never holds one; QCOMPILE_PROGRESS=1 forces them, =0 turns them off."""
    import os
    import sys

    env = os.environ.get("QCOMPILE_PROGRESS")
    if env is not None:
        return env not in ("", "0")
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def progress(total: int, desc: str, unit: str | None = None) -> Bar | _NoBar:
    """A bar on stderr (:func:`show_progress`); with ``unit`` (e.g. "images") it also shows
    done/total, unit/s and the ETA. Drivers get this as their ``progress`` callback and call
    ``update`` every batch (:func:`qcompile.driver.progress.track`)."""
    return Bar(total, desc, unit) if show_progress() else _NoBar()


def images_progress(total: int, desc: str, unit: str = "images") -> Bar | _NoBar:
    """The bar for image loops (a driver may name another ``unit``, e.g. kernels)."""
    return progress(total, desc, unit)


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
PREPROCESS_HELP = ("imagenet|cifar|lite0|none. Default: what the model records (models written "
                   "by `qcompile run`) or describes; uint8 images without either are refused "
                   "(none = raw 0..255 pixels). Images are resized to a fixed model input.")


def preprocess_option():
    return typer.Option(None, "--preprocess", help=PREPROCESS_HELP, show_default=False)


def json_option(help: str = "machine-readable report"):
    return typer.Option(False, "--json", help=help)


def cluster_option():
    return typer.Option(None, "--cluster", help="run the images on a Dask cluster: local:N "
                        "(N worker processes here, 1 thread each), tcp://HOST:PORT or "
                        "scheduler-file:PATH; results equal a local run's")


def data_option(help: str = "labelled images: .npz/.npy or class folders", required: bool = True):
    return typer.Option(... if required else None, "--data", help=help)


def calib_option(help: str = "calibration data: .npz/.npy, image folder or image"):
    return typer.Option(None, "--calib", help=help)


def limit_option(default: int | None = None, what: str = "images"):
    return typer.Option(default, "--limit", help=f"at most N {what}: a seeded class-stratified "
                        "draw (--seed) of the held-out images, recorded in --json")


def seed_option(help: str = "random seed (--limit draw, calibration image choice)"):
    return typer.Option(0, "--seed", help=help)


def batch_option(default: int = 64, help: str = "images per batch (does not change results)"):
    return typer.Option(default, "--batch", help=help)


def dump_option(help: str = "write each layer's output to this folder"):
    """``--dump DIR`` everywhere (run's old ``--dump-dir``: :func:`alias_option`)."""
    return typer.Option(None, "--dump", help=help)


def format_option(default: str | None = None, help: str = "number format"):
    """``--format F`` everywhere (sweep's old ``--arith``: :func:`alias_option`)."""
    return typer.Option(default, "--format", help=help)


def alias_option(old: str):
    """An old spelling kept working but not shown in --help; merge it with :func:`merged`."""
    return typer.Option(None, old, hidden=True)


def merged(new, old, new_flag: str, old_flag: str, default=None):
    """The value of an option given under its name or its hidden old spelling (not both)."""
    from qcompile.errors import OptionError

    if old is not None and new not in (None, default) and new != old:
        raise OptionError(f"{new_flag} and {old_flag} (its old name) both given; use {new_flag}")
    return old if old is not None else new


# ---------------------------------------------------------------------------------------------
# Up-front checks: every output path, plot backend and folder before any pass runs.
def check_outputs(*paths: tuple[str | None, str]) -> None:
    """``(path, flag)`` pairs: each given path must be a writable file location."""
    from qcompile.files import check_output_path

    for path, flag in paths:
        if path is not None:
            check_output_path(path, flag)


def check_plot(path: str | None, flag: str = "--plot") -> None:
    """A PNG output: ends in .png, writable, and matplotlib importable, before the work."""
    if path is None:
        return
    from pathlib import Path

    from qcompile.driver.report import pyplot

    if Path(path).suffix.lower() != ".png":
        raise QCompileError(f"{flag} {path}: the plot is a PNG; give a path ending in .png")
    check_outputs((path, flag))
    pyplot()


def check_folder(path: str | None, flag: str) -> None:
    """A folder output (``--dump``): its parent exists and it is not a file."""
    if path is None:
        return
    from pathlib import Path

    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise QCompileError(f"{flag} {path}: exists and is not a folder; give a folder path")
    if not p.exists() and not p.parent.is_dir():
        raise QCompileError(f"{flag} {path}: its parent folder {p.parent} does not exist; "
                            "create it first")
