"""``lift``: ONNX ModelProto -> qcompile Graph.

Steps: load (external data only from inside the model's folder), check the model, check the
opset (11..21), run ONNX shape inference so every value has a type, then translate nodes.
``Constant`` nodes become constants (initializers); graph inputs that have an initializer are
treated as constants. Ops outside the vocabulary are carried through opaquely: attributes that
have no plain-Python form (subgraphs, sparse tensors) are kept as :class:`OpaqueAttr` bytes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import external_data_helper, numpy_helper

from qcompile.errors import ModelError
from qcompile.ir import DType, Graph, Node, TensorType

MIN_OPSET, MAX_OPSET = 11, 21


@dataclass(frozen=True)
class OpaqueAttr:
    """An attribute kept as serialized protobuf bytes (GRAPH, GRAPHS, SPARSE_TENSOR, TYPE_PROTO...)."""

    attr_type: int
    data: bytes


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Read an ONNX file with its external data, refusing data paths that leave its folder."""
    p = Path(path)
    if not p.exists():
        raise ModelError(f"model: {p} does not exist; check the path")
    if p.is_dir():
        raise ModelError(f"model: {p} is a folder; give the .onnx file inside it")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as e:  # protobuf DecodeError and friends: not a model
        raise ModelError(f"model: {p} is not a readable ONNX file ({type(e).__name__}); "
                         "is it truncated or another format? Re-export it") from None
    if not model.graph.node or model.ir_version <= 0:
        raise ModelError(f"model: {p} is not an ONNX model (no graph or IR version; truncated or "
                         "another format?); re-export it")
    base = p.resolve().parent
    has_external = False
    for t in external_data_helper._get_all_tensors(model):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        has_external = True
        loc = next((e.value for e in t.external_data if e.key == "location"), "")
        target = (base / loc).resolve()
        if os.path.isabs(loc) or os.path.commonpath([base, target]) != str(base):
            raise ModelError(f"model: {p}: tensor {t.name!r} points to external data {loc!r} "
                             f"outside the model's folder {base}; move the data file next to "
                             "the model and re-save it")
        if not target.is_file():
            raise ModelError(f"model: {p}: external data file {loc!r} for tensor {t.name!r} is "
                             f"missing; copy it next to the model")
    if has_external:
        try:
            external_data_helper.load_external_data_for_model(model, str(base))
        except Exception as e:
            raise ModelError(f"model: {p}: cannot read its external data ({e})") from None
    return model


def lift(model: onnx.ModelProto | str | os.PathLike, *, name: str | None = None) -> Graph:
    """Translate an ONNX model (or a path to one) into a verified qcompile Graph."""
    src = str(model) if not isinstance(model, onnx.ModelProto) else (name or "model")
    if not isinstance(model, onnx.ModelProto):
        model = load_model(model)
    else:
        # Data still external here would be read relative to the working directory, past the
        # folder check in load_model: only a path (or a model with its data loaded) is lifted.
        for t in external_data_helper._get_all_tensors(model):
            if t.data_location == onnx.TensorProto.EXTERNAL:
                raise ModelError(f"model: {src}: tensor {t.name!r} has its data in an external "
                                 "file that is not loaded; lift the .onnx path instead")
    opsets = {(o.domain if o.domain != "ai.onnx" else ""): o.version for o in model.opset_import}
    opset = opsets.get("", None)
    if opset is None:
        raise ModelError(f"model: {src} imports no default-domain opset; re-export it")
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ModelError(f"model: {src} uses opset {opset}; qcompile reads opsets "
                         f"{MIN_OPSET}..{MAX_OPSET} (convert with onnx.version_converter)")
    sk = skeleton(model)
    try:
        onnx.checker.check_model(sk)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"model: {src} is not a valid ONNX model: {first}") from None
    try:
        inferred = onnx.shape_inference.infer_shapes(sk, strict_mode=False, data_prop=True)
    except Exception as e:
        raise ModelError(f"model: {src}: ONNX shape inference failed ({e}); "
                         "fix the model's shapes") from None
    return _translate(model, opsets, name or model.graph.name or "graph",
                      inferred.graph.value_info)


_SMALL = 64  # initializers up to this many elements keep their data (shape tensors for data_prop)


def skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose large initializers are graph inputs without data.

    Checking and shape inference only need initializer types and shapes (plus small integer
    tensors for data propagation); serialising megabytes of weights to the C++ checker twice
    was most of the lift time.
    """
    src = model.graph
    g = onnx.GraphProto()
    g.name = src.name
    g.node.extend(src.node)
    g.output.extend(src.output)
    g.value_info.extend(src.value_info)
    g.input.extend(src.input)
    listed = {vi.name for vi in src.input}
    for t in src.initializer:
        n = int(np.prod(t.dims)) if len(t.dims) else 1
        if n <= _SMALL:
            g.initializer.append(t)
        elif t.name not in listed:
            g.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    g.sparse_initializer.extend(src.sparse_initializer)
    sk = onnx.ModelProto()
    sk.ir_version = model.ir_version
    sk.opset_import.extend(model.opset_import)
    sk.functions.extend(model.functions)
    sk.graph.CopyFrom(g)
    return sk


def _initializer(t: onnx.TensorProto) -> tuple[np.ndarray, DType | None]:
    """An initializer's array; 4-bit tensors widen to int8/uint8 and keep their IR type."""
    a = numpy_helper.to_array(t)
    if t.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
        dt = DType(t.data_type)
        return a.astype(dt.to_numpy()), dt
    return a, None


def _type_of(tp: onnx.TypeProto) -> TensorType:
    if not tp.HasField("tensor_type"):
        return TensorType(DType.UNDEFINED, None)
    tt = tp.tensor_type
    if not tt.HasField("shape"):
        return TensorType(DType(tt.elem_type), None)
    dims: list[int | str | None] = []
    for d in tt.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return TensorType(DType(tt.elem_type), tuple(dims))


def attr_value(a: onnx.AttributeProto):
    """An AttributeProto as a plain Python value (tuples for lists, ndarrays for tensors)."""
    A = onnx.AttributeProto
    if a.type == A.FLOAT:
        return float(a.f)
    if a.type == A.INT:
        return int(a.i)
    if a.type == A.STRING:
        return _str(a.s)
    if a.type == A.TENSOR:
        return numpy_helper.to_array(a.t)
    if a.type == A.FLOATS:
        return tuple(float(x) for x in a.floats)
    if a.type == A.INTS:
        return tuple(int(x) for x in a.ints)
    if a.type == A.STRINGS:
        return tuple(_str(s) for s in a.strings)
    if a.type == A.TENSORS:
        return tuple(numpy_helper.to_array(t) for t in a.tensors)
    return OpaqueAttr(int(a.type), a.SerializeToString())


def _str(b: bytes) -> str | bytes:
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return b


def _constant_array(node: onnx.NodeProto) -> np.ndarray | None:
    """The value of a Constant node, or None when it is sparse/string-like (kept as a node)."""
    if len(node.attribute) != 1:
        return None
    a = node.attribute[0]
    if a.name == "value":
        return numpy_helper.to_array(a.t)
    if a.name == "value_float":
        return np.array(a.f, dtype=np.float32)
    if a.name == "value_floats":
        return np.array(list(a.floats), dtype=np.float32)
    if a.name == "value_int":
        return np.array(a.i, dtype=np.int64)
    if a.name == "value_ints":
        return np.array(list(a.ints), dtype=np.int64)
    return None


def _fresh(taken: set[str], node: onnx.NodeProto, index: int) -> str:
    base = f"{node.name or node.op_type.lower()}_out{index}"
    cand, k = base, 0
    while cand in taken:
        k += 1
        cand = f"{base}_{k}"
    taken.add(cand)
    return cand


def _translate(model: onnx.ModelProto, opsets: dict[str, int], name: str,
               inferred_info=()) -> Graph:
    g_proto = model.graph
    g = Graph(name, opsets)
    g.doc_string = g_proto.doc_string
    g.model_props = {
        "ir_version": str(model.ir_version),
        "producer_name": model.producer_name,
        "producer_version": model.producer_version,
        "domain": model.domain,
        "model_version": str(model.model_version),
        "doc_string": model.doc_string,
    }
    g.metadata = {p.key: p.value for p in model.metadata_props}
    g.functions = [f.SerializeToString() for f in model.functions]
    types: dict[str, TensorType] = {}
    for vi in list(inferred_info) + list(g_proto.input) + list(g_proto.output):
        types[vi.name] = _type_of(vi.type)

    env = {}
    for t in g_proto.initializer:
        env[t.name] = g.add_const(t.name, *_initializer(t))
    for t in g_proto.sparse_initializer:
        raise ModelError(f"model: sparse initializer {t.values.name!r} is not supported; "
                         "densify it first")
    for vi in g_proto.input:
        if vi.name not in env:
            env[vi.name] = g.add_input(vi.name, types[vi.name])
    output_names = {o.name for o in g_proto.output}
    # Every name the model uses, so a name made up for an omitted ("") output can never take
    # a later tensor's name (which would then be renamed, even when it is a graph output).
    onnx_names = {t.name for t in g_proto.initializer} | {vi.name for vi in g_proto.input} \
        | {o for n in g_proto.node for o in n.output} | output_names
    for np_ in g_proto.node:
        if np_.op_type == "Constant" and np_.domain in ("", "ai.onnx") \
                and np_.output[0] not in output_names:
            arr = _constant_array(np_)
            if arr is not None:
                env[np_.output[0]] = g.add_const(np_.output[0], arr)
                continue
        inputs = []
        for i, vname in enumerate(np_.input):
            if vname == "":
                inputs.append(None)
            elif vname in env:
                inputs.append(env[vname])
            else:
                raise ModelError(f"model: node {np_.name!r} ({np_.op_type}) input {i} "
                                 f"{vname!r} is not defined (graph not topologically sorted?)")
        out_types = [types.get(o, TensorType(DType.UNDEFINED, None)) if o else
                     TensorType(DType.UNDEFINED, None) for o in np_.output]
        node = Node(np_.op_type, inputs, out_types,
                    attrs={a.name: attr_value(a) for a in np_.attribute},
                    domain=np_.domain if np_.domain != "ai.onnx" else "",
                    name=np_.name, output_names=[o or _fresh(onnx_names, np_, i)
                                                 for i, o in enumerate(np_.output)])
        g.append(node)
        for o_name, v in zip(np_.output, node.outputs):
            if o_name:
                env[o_name] = v
    for o in g_proto.output:
        if o.name not in env:
            raise ModelError(f"model: graph output {o.name!r} is not produced by any node")
        g.outputs.append(env[o.name])
    return g
