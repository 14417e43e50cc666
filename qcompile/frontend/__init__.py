"""ONNX -> IR. ``lift(path_or_model) -> Graph``."""

from qcompile.frontend.onnx_import import OpaqueAttr, lift, load_model

__all__ = ["OpaqueAttr", "lift", "load_model"]
