"""ONNX Runtime's own errors as one line: every InferenceSession creation and run in the ORT
backend goes through :func:`ort_guard`, so a model ORT refuses (a node it cannot build, shapes
that disagree at run time) is a :class:`~qcompile.errors.QCompileError` naming what ORT named
(its messages name the node: ``Node (conv1) Op (Conv) ...``) instead of a traceback."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

from onnxruntime.capi import onnxruntime_pybind11_state as _state

from qcompile.errors import QCompileError

__all__ = ["ORT_ERRORS", "ort_error", "ort_guard"]

#: The exception types onnxruntime raises (they derive from Exception only).
ORT_ERRORS: tuple[type[BaseException], ...] = tuple(
    c for c in (getattr(_state, n, None) for n in (
        "Fail", "InvalidArgument", "InvalidGraph", "RuntimeException", "NotImplemented",
        "NoSuchFile", "InvalidProtobuf", "EPFail", "ModelLoaded", "NoModel", "EngineError",
        "ModelLoadCanceled", "ModelRequiresCompilation", "NotFound"))
    if isinstance(c, type))

_PREFIX = re.compile(r"^\s*\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*")


def ort_error(exc: BaseException, what: str) -> QCompileError:
    """A one-line error for ORT's ``exc`` raised while ``what`` (e.g. 'loading the model')."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return QCompileError(f"ONNX Runtime failed {what}: {_PREFIX.sub('', text)}; the model is "
                         "not one ORT can run (fix the node it names)")


@contextmanager
def ort_guard(what: str) -> Iterator[None]:
    """Turn ORT's exceptions (and ORT's RuntimeErrors from bad feeds) raised inside into
    :func:`ort_error` lines."""
    try:
        yield
    except ORT_ERRORS as e:
        raise ort_error(e, what) from None
