"""Bringing a model's default-domain opset into the range the IR and the passes are written for.

Rules:

* ``NATIVE_MIN..NATIVE_MAX`` (11..21) are lifted as they are.
* Opsets ``CONVERT_MIN..10`` are converted with ``onnx.version_converter`` to ``UP_TARGET`` (13):
  from 13 on, Dropout takes ``ratio`` as an input, Squeeze/Unsqueeze/Split take axes as inputs
  and ReduceMean still has its ``axes`` attribute (the forms the passes read); Upsample becomes
  Resize, BatchNormalization loses ``spatial``.
* Opsets above 21 (up to what the installed onnx knows) are converted down to 21.
* The model's own opset is recorded in ``graph.model_props["source_opset"]`` so the ORT lowering
  can give it back where that is legal (see ``qcompile.backends.ort.opset``).

Each conversion is reported in one line through ``warn``; a converter failure is a one-line
:class:`ModelError` naming the op it stopped at and the fix.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import onnx
from onnx import version_converter

from qcompile.errors import ModelError
from qcompile.frontend.proto import SOURCE_OPSET  # noqa: F401  (documented here)

NATIVE_MIN, NATIVE_MAX = 11, 21
CONVERT_MIN = 7  # the oldest opset the tests cover (ONNX 1.2 exporters)
UP_TARGET = 13

WarnFn = Callable[[str], object]


def default_opset(model: onnx.ModelProto, src: str) -> int:
    """The model's default-domain (``""``/``ai.onnx``) opset version."""
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return int(o.version)
    raise ModelError(f"model: {src} imports no default-domain opset; re-export it")


def target_opset(opset: int, src: str) -> int:
    """The opset ``opset`` is lifted at; a one-line error when no conversion can reach it."""
    if NATIVE_MIN <= opset <= NATIVE_MAX:
        return opset
    newest = onnx.defs.onnx_opset_version()
    if opset < CONVERT_MIN or opset > newest:
        raise ModelError(f"model: {src} uses opset {opset}; qcompile reads opsets "
                         f"{NATIVE_MIN}..{NATIVE_MAX} and converts {CONVERT_MIN}..{newest}; "
                         f"re-export it at opset {UP_TARGET}..{NATIVE_MAX}")
    return UP_TARGET if opset < NATIVE_MIN else NATIVE_MAX


def convert(model: onnx.ModelProto, opset: int, target: int, src: str,
            warn: WarnFn) -> onnx.ModelProto:
    """``model`` converted from ``opset`` to ``target`` with ``onnx.version_converter``."""
    try:
        out = version_converter.convert_version(model, target)
    except Exception as e:  # the converter raises RuntimeError/ValidationError with C++ text
        text = " ".join(str(e).split())
        m = re.search(r"\bfor (?:op )?'?([A-Za-z_][\w.]*)'?|op_type:\s*([A-Za-z_]\w*)", text)
        op = (m.group(1) or m.group(2)) if m else _first_op_changed(model, opset, target)
        detail = re.sub(r"^.*?(Assertion|No Adapter|Unsupported)", r"\1", text)[:160].rstrip(" .;")
        raise ModelError(
            f"model: {src} uses opset {opset} (qcompile reads {NATIVE_MIN}..{NATIVE_MAX}) and "
            f"onnx.version_converter cannot convert it to {target} at op {op}: {detail}; "
            f"re-export the model at opset {UP_TARGET}..{NATIVE_MAX} (or replace {op})") from None
    # The converter keeps the IR version; newer opsets need a newer one for checker/ORT.
    out.ir_version = max(out.ir_version, min_ir_version(target))
    warn(f"note: converted opset {opset} -> {target} with onnx.version_converter "
         f"(qcompile reads opsets {NATIVE_MIN}..{NATIVE_MAX})")
    return out


def min_ir_version(opset: int) -> int:
    """The lowest IR version that may declare default-domain ``opset`` (onnx's release table)."""
    return onnx.helper.find_min_ir_version_for([onnx.helper.make_opsetid("", opset)])


def _first_op_changed(model: onnx.ModelProto, opset: int, target: int) -> str:
    """The first node whose op's definition differs between the two opsets (for messages)."""
    lo, hi = sorted((opset, target))
    for n in model.graph.node:
        if n.domain not in ("", "ai.onnx"):
            continue
        try:
            if onnx.defs.get_schema(n.op_type, hi).since_version > lo:
                return n.op_type
        except Exception:
            return n.op_type
    return "?"
