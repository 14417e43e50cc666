"""The frontend's input boundary: a model file is checked here before anything trusts it.

Three layers, each before the work it guards:

* **Tensors** (:func:`check_tensor`), before any array is built: a known, numeric data type;
  dims >= 0 whose ``prod(dims) * itemsize`` fits the memory budget
  (:func:`qcompile.errors.memory_budget`); the payload (``raw_data`` bytes, or the count of
  ``float_data``/``int32_data``/``int64_data``/... entries) exactly what the dims and type need
  (4-bit types pack two elements per byte / per int32 entry).
* **External data** (:func:`check_external`), before it is read: the location has no NUL byte,
  stays inside the model's folder, names a regular file that is not the model itself, and
  ``offset + length`` lies within the file, with ``length`` the tensor's byte size.
* **Structure** (:func:`check_structure`), before calibration: the graph has outputs; graph
  inputs declare no zero or absurd dims; ``onnx``'s shape inference in strict mode (declared
  ``value_info`` that disagrees with inference is refused); and the rules ONNX Runtime enforces
  only when it builds a session, checked per node on the inferred shapes: ``group >= 1``
  dividing the channels, ``W``'s channels times ``group`` equal to the input's,
  ``kernel_shape == W.shape[2:]``, strides and dilations >= 1, pads >= 0 and bounded, the
  (dilated) kernel no larger than the padded input, Gemm/MatMul inner dims equal,
  BatchNormalization parameters one per channel, no zero-size operands.

Every failure is one :class:`~qcompile.errors.ModelError` line naming the tensor or node and
the rule.
"""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path

import onnx

from qcompile.errors import ModelError, fmt_bytes, memory_budget, shorten
from qcompile.frontend.validate_nodes import check_nodes
from qcompile.ir import DType

__all__ = ["check_external", "check_finite", "check_model_file", "check_structure",
           "check_tensor", "check_tensors", "tensor_nbytes"]

T = onnx.TensorProto
# Payload field -> how many entries one element takes (complex: two floats).
_PER_ELEMENT = {T.COMPLEX64: 2, T.COMPLEX128: 2}
_PACKED4 = (T.INT4, T.UINT4, T.FLOAT4E2M1)


def _itemsize(code: int) -> float:
    if code in _PACKED4:
        return 0.5
    return onnx.helper.tensor_dtype_to_np_dtype(code).itemsize


def _dtype_name(code: int) -> str:
    try:
        return T.DataType.Name(code)
    except ValueError:
        return str(code)


def tensor_nbytes(t: onnx.TensorProto, where: str) -> int:
    """The bytes ``t``'s dims and type need; raise ModelError for an unknown or unsupported
    type, negative dims or a size above the memory budget."""
    try:
        DType(t.data_type)
    except ValueError:
        raise ModelError(f"model: {where}: unknown data type code {t.data_type}; the file is "
                         "corrupt or from a newer ONNX, re-export it") from None
    if t.data_type in (T.UNDEFINED, T.STRING):
        raise ModelError(f"model: {where} has data type {_dtype_name(t.data_type)}; only numeric "
                         "tensors are supported, remove it from the model")
    if any(d < 0 for d in t.dims):
        raise ModelError(f"model: {where} has negative dims {list(t.dims)}; the file is corrupt")
    n = math.prod(t.dims)
    nbytes = math.ceil(n * _itemsize(t.data_type))
    if nbytes > memory_budget():
        raise ModelError(f"model: {where} declares dims {list(t.dims)} ({fmt_bytes(nbytes)}), "
                         f"above the memory budget of {fmt_bytes(memory_budget())}; the file is "
                         "corrupt (or raise QCOMPILE_MEMORY_BUDGET)")
    return nbytes


def check_tensor(t: onnx.TensorProto, where: str) -> None:
    """Refuse a tensor whose payload does not match its dims and type (see the module doc)."""
    nbytes = tensor_nbytes(t, where)
    if t.data_location == T.EXTERNAL:
        return  # checked by check_external before loading, and again here once loaded
    n = math.prod(t.dims)
    if t.HasField("raw_data"):
        have, need, unit = len(t.raw_data), nbytes, "bytes"
    else:
        field = onnx.helper.tensor_dtype_to_field(t.data_type)
        have = len(getattr(t, field))
        need = (n + 1) // 2 if t.data_type in _PACKED4 else n * _PER_ELEMENT.get(t.data_type, 1)
        unit = f"{field} entries"
        others = [f for f in ("float_data", "int32_data", "int64_data", "double_data",
                              "uint64_data", "string_data") if f != field and len(getattr(t, f))]
        if others:
            raise ModelError(f"model: {where} ({_dtype_name(t.data_type)}) stores its values in "
                             f"{others[0]}, the wrong field for its type; the file is corrupt")
    if have != need:
        raise ModelError(f"model: {where} has dims {list(t.dims)} ({_dtype_name(t.data_type)}: "
                         f"{need} {unit}) but holds {have}; the file is corrupt or truncated, "
                         "re-export it")


def check_tensors(model: onnx.ModelProto, src: str) -> None:
    """:func:`check_tensor` on every tensor of ``model`` (initializers, Constant and attribute
    tensors, subgraphs included)."""
    from onnx import external_data_helper

    for t in external_data_helper._get_all_tensors(model):
        check_tensor(t, f"{src}: tensor {shorten(t.name)!r}")


def check_model_file(p: Path) -> None:
    """Refuse a model path that is not a regular file (a FIFO would block ``onnx.load``) or is
    larger than the memory budget."""
    try:
        st = os.stat(p)
    except OSError as e:
        raise ModelError(f"model: cannot read {shorten(p)} ({e.strerror}); check the path") from None
    if not stat.S_ISREG(st.st_mode):
        raise ModelError(f"model: {shorten(p)} is not a regular file (a FIFO, device or socket); "
                         "give the .onnx file")
    if st.st_size > memory_budget():
        raise ModelError(f"model: {shorten(p)} is {fmt_bytes(st.st_size)}, above the memory "
                         f"budget of {fmt_bytes(memory_budget())}; save its weights as external "
                         "data (or raise QCOMPILE_MEMORY_BUDGET)")


def _ext(t: onnx.TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in t.external_data}


def check_external(t: onnx.TensorProto, model_path: Path, base: Path) -> None:
    """Refuse external data that could not be read safely (see the module doc)."""
    where = f"tensor {shorten(t.name)!r}"
    nbytes = tensor_nbytes(t, where)
    info = _ext(t)
    loc = info.get("location", "")
    if not loc or "\0" in loc:
        raise ModelError(f"model: {model_path}: {where} has an external data location "
                         f"{shorten(loc)!r} that is empty or contains a NUL byte; re-save the model")
    target = (base / loc).resolve()
    if os.path.isabs(loc) or os.path.commonpath([base, target]) != str(base):
        raise ModelError(f"model: {model_path}: {where} points to external data {shorten(loc)!r} "
                         f"outside the model's folder {base}; move the data file next to the "
                         "model and re-save it")
    try:
        st = os.stat(target)
    except OSError:
        raise ModelError(f"model: {model_path}: external data file {shorten(loc)!r} for {where} "
                         "is missing; copy it next to the model") from None
    if not stat.S_ISREG(st.st_mode):
        raise ModelError(f"model: {model_path}: external data {shorten(loc)!r} for {where} is "
                         "not a regular file; point it to the saved data file")
    if os.path.samefile(target, model_path):
        raise ModelError(f"model: {model_path}: {where} names the model file itself as its "
                         "external data; re-save the model with its data")
    try:
        offset = int(info.get("offset", "0") or 0)
        length = int(info["length"]) if info.get("length") not in (None, "") else None
    except ValueError:
        raise ModelError(f"model: {model_path}: {where} has a non-numeric external data offset "
                         "or length; re-save the model") from None
    if offset < 0 or (length is not None and length < 0):
        raise ModelError(f"model: {model_path}: {where} has a negative external data offset or "
                         "length; re-save the model")
    size = st.st_size
    if offset > size:
        raise ModelError(f"model: {model_path}: {where} reads from byte {offset} of "
                         f"{shorten(loc)!r}, which has only {size}; the data file is truncated "
                         "or not this model's")
    if length is None:
        length = size - offset
    if offset + length > size:
        raise ModelError(f"model: {model_path}: {where} reads bytes {offset}..{offset + length} "
                         f"of {shorten(loc)!r}, which has only {size}; the data file is truncated "
                         "or not this model's")
    if length != nbytes:
        raise ModelError(f"model: {model_path}: {where} has dims {list(t.dims)} "
                         f"({_dtype_name(t.data_type)}: {nbytes} bytes) but its external data "
                         f"holds {length} bytes; the data file is not this model's")


def check_finite(name: str, array, consumer: onnx.NodeProto) -> None:
    """Refuse NaN/inf weights of a Conv/Gemm/MatMul/BatchNormalization (quantisation ranges and
    every backend would silently compute garbage)."""
    import numpy as np

    if array.dtype.kind == "f" and array.size and not np.isfinite(array).all():
        bad = int(np.size(array) - np.isfinite(array).sum())
        raise ModelError(f"model: weight {shorten(name)!r} of node {shorten(consumer.name)!r} "
                         f"({consumer.op_type}) has {bad} NaN/inf value(s); fix or retrain the "
                         "model")


def check_structure(sk: onnx.ModelProto, src: str) -> None:
    """Strict shape inference plus the per-node rules; ``sk`` is the weight-free skeleton."""
    g = sk.graph
    if not g.output:
        raise ModelError(f"model: {src} has no graph outputs; export the model with its outputs")
    if not g.node:
        raise ModelError(f"model: {src} has no nodes; re-export it")
    budget = memory_budget()
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        tt = vi.type.tensor_type
        if vi.type.HasField("tensor_type"):
            try:
                DType(tt.elem_type)
            except ValueError:
                raise ModelError(f"model: {src}: value {shorten(vi.name)!r} has unknown element "
                                 f"type code {tt.elem_type}; the file is corrupt") from None
    for vi in g.input:
        dims = [d.dim_value if d.HasField("dim_value") else None
                for d in vi.type.tensor_type.shape.dim]
        known = [d for d in dims if d is not None and d != -1]  # -1: paddle's "dynamic"
        if any(d <= 0 for d in known):
            raise ModelError(f"model: {src}: graph input {shorten(vi.name)!r} declares a zero or "
                             f"negative dim {dims}; every dim must be >= 1 (or symbolic)")
        if math.prod(known) * 8 > budget:
            raise ModelError(f"model: {src}: graph input {shorten(vi.name)!r} declares dims {dims},"
                             f" above the memory budget of {fmt_bytes(budget)} per sample")
    try:
        inferred = onnx.shape_inference.infer_shapes(sk, check_type=True, strict_mode=True,
                                                     data_prop=True)
    except Exception as e:
        # ONNX puts the node on the first line and the reason on the next: keep both.
        text = " ".join(str(e).split())[:400] or type(e).__name__
        raise ModelError(f"model: {src} fails ONNX shape inference (strict): {text}; fix the "
                         "node it names (or its declared value_info)") from None
    check_nodes(inferred, src)
