"""ONNX Runtime backend: lower a Graph to ONNX (QDQ for quantised graphs) and run it."""

from qcompile.backends.ort import qdq  # noqa: F401  (registers the qcompile.QDQ rule)
from qcompile.backends.ort.lower import lower, save_model
from qcompile.backends.ort.rules import LOWER
from qcompile.backends.ort.runtime import run, session

__all__ = ["LOWER", "lower", "run", "save_model", "session"]
