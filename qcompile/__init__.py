"""qcompile: a graph-compiler-style quantisation pipeline for CNNs.

The public API, importable from the package root (loaded lazily, so ``import qcompile`` is cheap)::

    from qcompile import lift, run_pipeline, parse_pipeline, lower, save_model, verify

and the main jobs of the command line in one call each (:mod:`qcompile.driver.api`)::

    from qcompile import quantize, emulate, verify_model, evaluate

``verify`` is the IR verifier; ``verify_model`` is ``qcompile verify`` (ORT vs the exact network).
"""

from __future__ import annotations

import importlib
from typing import Any

from qcompile._version import __version__

_EXPORTS = {
    "Graph": "qcompile.ir",
    "Node": "qcompile.ir",
    "Value": "qcompile.ir",
    "TensorType": "qcompile.ir",
    "DType": "qcompile.ir",
    "verify": "qcompile.ir",
    "format_graph": "qcompile.ir",
    "lift": "qcompile.frontend",
    "lower": "qcompile.backends.ort",
    "save_model": "qcompile.backends.ort",
    "Pass": "qcompile.passes",
    "PassContext": "qcompile.passes",
    "PassResult": "qcompile.passes",
    "REGISTRY": "qcompile.passes",
    "parse_pipeline": "qcompile.passes",
    "run_pipeline": "qcompile.passes",
    "compile_model": "qcompile.driver.compile",
    "quantize": "qcompile.driver.api",
    "emulate": "qcompile.driver.api",
    "verify_model": "qcompile.driver.api",
    "evaluate": "qcompile.driver.api",
    "EmulationResult": "qcompile.driver.api",
    "VerifyResult": "qcompile.driver.api",
    "EvaluationResult": "qcompile.driver.api",
    "QCompileError": "qcompile.errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'qcompile' has no attribute {name!r}")
