"""ONNX -> IR. ``lift(path_or_model, warn=...) -> Graph``."""

from qcompile.frontend.onnx_import import LiftWarning, lift, load_model
from qcompile.frontend.proto import OpaqueAttr

__all__ = ["LiftWarning", "OpaqueAttr", "lift", "load_model"]
