"""``blas_threads(n)``: cap the BLAS thread pool inside a block (best effort, no dependency).

The layer-wise optimisers do thousands of small matrix products; with OpenBLAS's spinning
worker threads on a loaded 2-core machine each product was measured 4-7x slower than on one
thread. This finds the OpenBLAS that numpy loaded (``/proc/self/maps``) and calls its
``*set_num_threads*``; where none is found (another BLAS, another OS) it does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Iterator
from pathlib import Path

_SETTERS = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
            "openblas_set_num_threads64_", "openblas_set_num_threads")
_GETTERS = ("scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads",
            "openblas_get_num_threads64_", "openblas_get_num_threads")
_found: list | None = None


def _libs() -> list:
    global _found
    if _found is not None:
        return _found
    import numpy  # noqa: F401  (make sure numpy's BLAS is loaded)

    _found = []
    try:
        paths = {line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines()
                 if "openblas" in line.lower() and line.split()[-1].startswith("/")}
    except OSError:
        return _found
    for p in sorted(paths):
        try:
            lib = ctypes.CDLL(p)
        except OSError:
            continue
        setter = next((getattr(lib, s) for s in _SETTERS if hasattr(lib, s)), None)
        getter = next((getattr(lib, g) for g in _GETTERS if hasattr(lib, g)), None)
        if setter is not None and getter is not None:
            _found.append((setter, getter))
    return _found


@contextlib.contextmanager
def blas_threads(n: int = 1) -> Iterator[None]:
    libs = _libs()
    old = []
    for setter, getter in libs:
        try:
            old.append(int(getter()))
            setter(int(n))
        except Exception:  # pragma: no cover - exotic builds
            old.append(None)
    try:
        yield
    finally:
        for (setter, _), o in zip(libs, old):
            if o is not None:
                setter(o)
