"""Progress of a driver's batch loop, the one home of the rule.

The library is silent: a driver gets ``progress`` from its caller (the CLI passes
:func:`qcompile.cli.common.images_progress`) and wraps its batch iterator in :func:`track`.
``progress(total=N, desc=TEXT)`` returns a bar with ``update(n)`` and ``close()`` (a driver
counting something other than images passes ``unit=``, e.g. the kernel bar); ``None`` means no
progress at all. A bar advances by the images of each finished batch, so its rate is
images/s and its ETA is (N - done) / rate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["track"]


def _images(batch: Any) -> int:
    for name in ("indices", "x"):
        v = getattr(batch, name, None)
        if v is not None:
            return len(v)
    return len(batch[0]) if isinstance(batch, tuple) else 1


def track(batches: Iterable[T], total: int | None, desc: str, progress: Callable | None,
          size: Callable[[T], int] = _images) -> Iterator[T]:
    """Yield ``batches`` unchanged; with ``progress``, advance a bar of ``total`` images by
    ``size(batch)`` after each (closed when the loop ends, breaks or raises)."""
    if progress is None or not total:
        yield from batches
        return
    bar = progress(total=int(total), desc=desc)
    try:
        for b in batches:
            yield b
            bar.update(size(b))
    finally:
        bar.close()
