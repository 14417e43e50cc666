"""The input boundary of :mod:`qcompile.data`: what a data file may ask us to allocate or open.

Every check runs before the allocation or the ``open`` it guards, so a lying header costs
nothing:

* :func:`check_regular_file`: only regular files are opened (``os.stat`` first: opening a FIFO
  named ``x.png`` would block forever waiting for a writer; a device could stream forever).
* :func:`check_pixels`: an image's declared ``width x height`` (read from its header by
  ``Image.open``, nothing decoded yet) is at most :data:`MAX_IMAGE_PIXELS` and its decoded RGB
  size within the memory budget. Pillow's own decompression-bomb limit is set to the same
  number, so the two can never disagree.
* :func:`check_array_bytes`: an ``.npz``/``.npy`` member's declared ``prod(shape) * itemsize``
  is within the memory budget (:func:`qcompile.errors.memory_budget`: 4 GiB by default,
  ``$QCOMPILE_MEMORY_BUDGET`` overrides) and, for zip members, within the member's declared
  uncompressed size (a header claiming more than the member holds is a truncated file).
* :data:`MAX_SIDE`: the largest image side a preprocessing recipe may resize to.
"""

from __future__ import annotations

import math
import os
import stat

from PIL import Image

from qcompile.data.errors import DataError
from qcompile.errors import fmt_bytes, memory_budget, shorten

__all__ = ["MAX_IMAGE_PIXELS", "MAX_SIDE", "MIN_SIDE", "check_array_bytes", "check_pixels",
           "check_regular_file", "is_regular_file", "read_small_file"]

#: Largest image (in pixels) that is decoded: 8192 x 8192. Above it Pillow refuses too.
MAX_IMAGE_PIXELS = 8192 * 8192
#: Bounds of a preprocessing side (``--size``, ``resize``, ``crop``), in pixels.
MIN_SIDE, MAX_SIDE = 1, 4096

# Pillow warns between 1x and 2x its limit and raises above 2x: set it so it raises at ours.
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS // 2


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def is_regular_file(path: str | os.PathLike) -> bool:
    """True when ``path`` (symlinks followed) is a regular file; never opens it."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def check_regular_file(path: str | os.PathLike, what: str = "data file") -> None:
    """Raise :class:`DataError` unless ``path`` is a regular file (checked with ``os.stat``,
    without opening it)."""
    try:
        st = os.stat(path)
    except (OSError, ValueError) as exc:
        why = getattr(exc, "strerror", None) or type(exc).__name__
        raise DataError(f"data: cannot read {what} {shorten(path)} ({why}); check the path") from None
    if not stat.S_ISREG(st.st_mode):
        raise DataError(f"data: {what} {shorten(path)} is {_kind(st.st_mode)}, not a regular "
                        "file; give a .npz, .npy or image file")


def read_small_file(path: str | os.PathLike, what: str = "image") -> bytes:
    """The bytes of the regular file ``path`` (at most the memory budget).

    Decoders are given these bytes, not the file: a PNG chunk declaring 512 MiB made Pillow call
    ``file.read(2**29)``, which allocates the full 512 MiB before finding the file is 300 bytes;
    ``BytesIO.read`` allocates only what is there."""
    check_regular_file(path, what)
    size = os.stat(path).st_size
    if size > memory_budget():
        raise DataError(f"data: {what} {shorten(path)} is {fmt_bytes(size)}, above the memory "
                        f"budget of {fmt_bytes(memory_budget())}; shrink it first")
    with open(path, "rb") as f:
        return f.read(size)


def check_pixels(size: tuple[int, int], path: str | os.PathLike) -> None:
    """Raise :class:`DataError` when an image of ``size = (width, height)`` is too large to
    decode (more than :data:`MAX_IMAGE_PIXELS` pixels or an RGB copy above the budget)."""
    w, h = (int(s) for s in size)
    if w <= 0 or h <= 0:
        raise DataError(f"data: image {shorten(path)} declares size {w}x{h}; it is corrupt")
    pixels = w * h
    need = pixels * 3 * 2  # the decoded image and its RGB conversion
    if pixels > MAX_IMAGE_PIXELS or need > memory_budget():
        raise DataError(f"data: image {shorten(path)} is {w}x{h} ({pixels:,} pixels), above the "
                        f"limit of {MAX_IMAGE_PIXELS:,} pixels (a decompression bomb?); shrink it "
                        "first")


def check_array_bytes(shape: tuple[int, ...], itemsize: int, where: str,
                      stored: int | None = None) -> None:
    """Raise :class:`DataError` when an array of ``shape`` and ``itemsize`` would exceed the
    memory budget, or needs more than the ``stored`` bytes its container declares."""
    if any(int(d) < 0 for d in shape):
        raise DataError(f"data: {where} declares a negative dimension {tuple(shape)}; the file "
                        "is corrupt")
    need = math.prod(int(d) for d in shape) * int(itemsize)
    budget = memory_budget()
    if need > budget:
        raise DataError(f"data: {where} declares shape {tuple(shape)} ({fmt_bytes(need)}), above "
                        f"the memory budget of {fmt_bytes(budget)}; use a smaller file (or raise "
                        "QCOMPILE_MEMORY_BUDGET)")
    if stored is not None and need > stored:
        raise DataError(f"data: {where} declares shape {tuple(shape)} ({need:,} bytes) but holds "
                        f"only {stored:,} bytes; the file is truncated or corrupt, re-save it")
