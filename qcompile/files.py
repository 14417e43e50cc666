"""Output files, the one home of the rule: check the path before any long work, then write
through a temporary file in the target folder and rename it into place, so a reader never sees a
half-written file and a failed run leaves nothing behind.

Ground floor: imports nothing of qcompile but :mod:`qcompile.errors`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from qcompile.errors import QCompileError

__all__ = ["atomic_write", "atomic_write_with", "check_output_path"]


def check_output_path(path: str | os.PathLike, what: str = "") -> Path:
    """``path`` as a Path if a file can be written there (its folder exists, it is no folder).

    ``what`` names the option in the message (e.g. ``"-o"``)."""
    p = Path(path)
    where = f"{what}: " if what else ""
    if not p.parent.exists():
        raise QCompileError(f"{where}cannot write '{p}': folder '{p.parent}' does not exist; "
                            "create it or choose another path")
    if p.is_dir():
        raise QCompileError(f"{where}cannot write '{p}': it is a folder; give a file name")
    return p


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_with(path: str | os.PathLike, write: Callable[[Path], None],
                      what: str = "", suffix: str = ".tmp") -> Path:
    """Call ``write(tmp)`` on a fresh temporary file beside ``path``, then rename it over ``path``.

    The temporary file is made by ``mkstemp`` (no clash between concurrent runs) and given the
    mode a plain ``open()`` would (``0o666 & ~umask``; mkstemp creates it 0600). On any error,
    interrupts included, it is removed and ``path`` is untouched."""
    out = check_output_path(path, what)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=suffix, dir=out.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return out


def atomic_write(path: str | os.PathLike, data: bytes | str, what: str = "") -> Path:
    """Write ``data`` (text is UTF-8 encoded) to ``path`` atomically (:func:`atomic_write_with`)."""
    raw = data.encode() if isinstance(data, str) else data
    return atomic_write_with(path, lambda tmp: tmp.write_bytes(raw), what)
