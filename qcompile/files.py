"""Output files, the one home of the rule: check the path before any long work, then write
through a temporary file in the target folder and rename it into place, so a reader never sees a
half-written file and a failed run leaves nothing behind.

Ground floor: imports nothing of qcompile but :mod:`qcompile.errors`.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

from qcompile.errors import QCompileError, shorten

__all__ = ["atomic_write", "atomic_write_with", "check_model_file_path", "check_output_path",
           "write_error"]

# Why a write failed, in words, with the fix (errno -> text).
_WRITE_ERRORS = {
    errno.ENOSPC: "the disk is full; free space or write elsewhere",
    errno.EDQUOT: "the disk quota is exhausted; free space or write elsewhere",
    errno.EFBIG: "the file is larger than this file system or ulimit -f allows; write elsewhere",
    errno.ENAMETOOLONG: "the file name is too long; choose a shorter one",
    errno.EROFS: "the file system is read-only; write elsewhere",
    errno.EACCES: "permission denied; choose a folder you can write to",
    errno.EPERM: "permission denied; choose a folder you can write to",
    errno.ENOTDIR: "a part of the path is a file, not a folder; check the path",
    errno.EISDIR: "it is a folder; give a file name",
    errno.ENOENT: "its folder does not exist; create it or choose another path",
    errno.EIO: "an I/O error on the device; check the disk",
}


def write_error(path: str | os.PathLike, exc: OSError, what: str = "") -> QCompileError:
    """A one-line QCompileError for an OSError ``exc`` raised while writing ``path``."""
    where = f"{what}: " if what else ""
    why = _WRITE_ERRORS.get(exc.errno or 0, f"{exc.strerror or type(exc).__name__}; check the path")
    return QCompileError(f"{where}cannot write '{shorten(path)}': {why}")


def path_exists(p: Path, error: type[QCompileError], what: str) -> bool:
    """``p.exists()``, with a path that cannot even be asked about (a name too long, a NUL
    byte) as one ``error`` line naming ``what`` (e.g. ``"model"``, ``"data"``)."""
    try:
        return p.exists()
    except (OSError, ValueError) as e:
        raise error(f"{what}: cannot read {shorten(p)} ({getattr(e, 'strerror', None) or e}); "
                    "check the path") from None


def check_model_file_path(path: str | os.PathLike) -> Path:
    """``path`` as a Path if a model file can be read there: it exists and is not a folder.
    Ground floor on purpose: the command line checks its model arguments with it before it
    imports onnx (a missing file is one line in a fraction of a second)."""
    from qcompile.errors import ModelError

    p = Path(path)
    if not path_exists(p, ModelError, "model"):
        raise ModelError(f"model: {p} does not exist; check the path")
    if p.is_dir():
        raise ModelError(f"model: {p} is a folder; give the .onnx file inside it")
    return p


def check_output_path(path: str | os.PathLike, what: str = "") -> Path:
    """``path`` as a Path if a regular file can be written there: its folder exists and is a
    folder, its name fits the file system, and it is a regular file or does not exist yet
    (devices, FIFOs, sockets and folders are refused, also behind a symlink: renaming over
    ``/dev/full`` as root would replace the device). A symlink to a regular file is resolved,
    so the write replaces the file it points to and the link keeps working.

    ``what`` names the option in the message (e.g. ``"-o"``)."""
    p = Path(path)
    where = f"{what}: " if what else ""
    name = shorten(p)
    if "\0" in str(p):
        raise QCompileError(f"{where}cannot write {name!r}: the path contains a NUL byte")
    if not str(p) or p.name in ("", ".", ".."):
        raise QCompileError(f"{where}cannot write '{name}': give a file name")
    try:
        st = os.stat(p)  # follows symlinks: what a write would reach
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise write_error(p, e, what) from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise QCompileError(f"{where}cannot write '{name}': it is a folder; give a file name")
    if st is not None and not stat.S_ISREG(st.st_mode):
        kind = ("a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else
                "a FIFO" if stat.S_ISFIFO(st.st_mode) else
                "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
        raise QCompileError(f"{where}cannot write '{name}': it is {kind}; outputs are only "
                            "written as regular files, give a file path")
    if p.is_symlink():
        p = Path(os.path.realpath(p))
    parent = p.parent
    if not parent.exists():
        raise QCompileError(f"{where}cannot write '{name}': folder '{shorten(parent)}' does not "
                            "exist; create it or choose another path")
    if not parent.is_dir():
        raise QCompileError(f"{where}cannot write '{name}': '{shorten(parent)}' is a file, not "
                            "a folder; choose another path")
    try:
        name_max = os.pathconf(parent, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    if len(os.fsencode(p.name)) > name_max:
        raise QCompileError(f"{where}cannot write '{name}': the file name is longer than "
                            f"{name_max} bytes; choose a shorter one")
    return p


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_with(path: str | os.PathLike, write: Callable[[Path], None],
                      what: str = "", suffix: str = ".tmp",
                      check: Callable[[Path], None] | None = None) -> Path:
    """Call ``write(tmp)`` on a fresh temporary file beside ``path``, then ``check(tmp)`` (which
    raises if the written file is unusable), then rename it over ``path``.

    The temporary file is made by ``mkstemp`` (no clash between concurrent runs) and given the
    mode a plain ``open()`` would (``0o666 & ~umask``; mkstemp creates it 0600). On any error,
    interrupts included, it is removed and ``path`` is untouched; an OSError (full disk, file
    size limit, read-only file system...) becomes one line (:func:`write_error`)."""
    out = check_output_path(path, what)
    # The temp name stays short enough for NAME_MAX whatever the output's name.
    prefix = "." + os.fsdecode(os.fsencode(out.name)[:100]) + "."
    try:
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=out.parent)
    except OSError as e:
        raise write_error(out, e, what) from None
    os.close(fd)
    try:
        write(Path(tmp))
        if check is not None:
            check(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, out)
    except OSError as e:
        _remove(tmp)
        raise write_error(out, e, what) from None
    except BaseException:
        _remove(tmp)
        raise
    return out


def _remove(tmp: str) -> None:
    try:
        if os.path.lexists(tmp):
            os.unlink(tmp)
    except OSError:
        pass


def atomic_write(path: str | os.PathLike, data: bytes | str, what: str = "",
                 check: Callable[[Path], None] | None = None) -> Path:
    """Write ``data`` (text is UTF-8 encoded) to ``path`` atomically (:func:`atomic_write_with`)."""
    raw = data.encode() if isinstance(data, str) else data
    return atomic_write_with(path, lambda tmp: tmp.write_bytes(raw), what, check=check)
