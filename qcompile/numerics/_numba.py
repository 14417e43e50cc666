"""Loading numba kernel modules (``@njit(cache=True)``), the one home of the cache fallback.

numba's disk cache needs a writable place: beside the sources, else the user cache dir; when
neither is writable numba refuses to decorate ("cannot cache function ...: no locator
available", a RuntimeError at import), and the kernels then compile into a private temporary
cache (first-run compile on every run, nothing lost).  Without numba: None, and every caller
keeps its exact numpy path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def load_kernels(load: Callable[[], T]) -> T | None:
    """``load()`` (a function importing the kernel modules), retried with a private cache dir
    when numba finds no writable one; None where numba is not installed."""
    try:
        return load()
    except ImportError:  # pragma: no cover - only where numba is not installed
        return None
    except RuntimeError:  # "cannot cache function ...: no locator available"
        import tempfile

        import numba

        numba.config.CACHE_DIR = tempfile.mkdtemp(prefix="qcompile-numba-")
        return load()
