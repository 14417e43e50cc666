"""Targets: what ``qcompile run --target NAME`` lowers to, and passes the target needs.

A target names a backend and a list of passes it appends when the user's pipeline lacks them
(``ort-int8`` adds ``quantize`` with defaults). Lowering itself lives in the backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from qcompile.errors import OptionError


@dataclass(frozen=True)
class Target:
    name: str
    backend: str
    description: str
    implied_passes: tuple[str, ...] = field(default=())  # appended when missing


TARGETS: dict[str, Target] = {
    "ort-fp32": Target("ort-fp32", "ort", "float ONNX model for ONNX Runtime (no quantisation)"),
}


def get_target(name: str) -> Target:
    if name not in TARGETS:
        import difflib

        close = difflib.get_close_matches(name, list(TARGETS), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise OptionError(f"target: unknown target {name!r}; {hint}valid: {', '.join(TARGETS)}")
    return TARGETS[name]
