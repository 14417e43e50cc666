"""``lift``: ONNX ModelProto -> qcompile Graph.

Steps: load (external data only from inside the model's folder), check the model, bring its
opset into 11..21 (opsets 7..10 and above 21 are converted with ``onnx.version_converter``, said
in one line through ``warn``; see :mod:`qcompile.frontend.opsets`), run ONNX shape inference so
every value has a type, then translate nodes.

* ``Constant`` nodes become constants (initializers), so models that keep every weight in
  Constant nodes (paddle2onnx) lift like any other.
* Graph inputs that have an initializer (IR 3/4 exporters list every weight as an input) are
  constants, not graph inputs; the lowered model declares them as initializers only.
* float16 tensors keep their type (the IR has FLOAT16): the lowered model computes in fp16
  exactly as the original does, so it stays equivalent under ONNX Runtime; nothing is widened.
* Ops outside the vocabulary are carried through opaquely: attributes that have no plain-Python
  form (subgraphs, sparse tensors) are kept as :class:`OpaqueAttr` bytes.
"""

from __future__ import annotations

import os
import warnings

import onnx
from onnx import external_data_helper

from qcompile.errors import ModelError
from qcompile.files import check_model_file_path
from qcompile.frontend import opsets as _opsets
from qcompile.frontend.opsets import NATIVE_MAX as MAX_OPSET
from qcompile.frontend.opsets import NATIVE_MIN as MIN_OPSET
from qcompile.frontend.opsets import WarnFn
from qcompile.frontend.proto import (
    SOURCE_OPSET,
    OpaqueAttr,
    attr_value,
    constant_array,
    initializer_array,
    skeleton,
    type_of,
)
from qcompile.frontend.quant_forms import normalize_quant_forms
from qcompile.frontend.validate import (
    check_external,
    check_finite,
    check_model_file,
    check_structure,
    check_tensors,
)
from qcompile.ir import DType, Graph, Node, TensorType

__all__ = ["MAX_OPSET", "MIN_OPSET", "LiftWarning", "OpaqueAttr", "attr_value", "lift",
           "load_model", "skeleton"]


class LiftWarning(UserWarning):
    """A one-line note from ``lift`` (e.g. an opset conversion) when no ``warn`` is given."""


def _default_warn(message: str) -> None:
    warnings.warn(message, LiftWarning, stacklevel=4)  # lift's caller


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Read an ONNX file with its external data, refusing data paths that leave its folder."""
    p = check_model_file_path(path)  # exists, not a folder (files.py: the one rule)
    check_model_file(p)
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
        check_external(t, p, base)  # inside the folder, a regular file, offset/length fit
    if has_external:
        try:
            external_data_helper.load_external_data_for_model(model, str(base))
        except Exception as e:
            raise ModelError(f"model: {p}: cannot read its external data ({e})") from None
    return model


def lift(model: onnx.ModelProto | str | os.PathLike, *, name: str | None = None,
         warn: WarnFn | None = None) -> Graph:
    """Translate an ONNX model (or a path to one) into a verified qcompile Graph.

    ``warn`` receives one-line notes (an opset conversion); default :func:`warnings.warn` with
    :class:`LiftWarning`."""
    warn = warn or _default_warn
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
    check_tensors(model, src)  # payloads match dims and types before any array is built
    source = _opsets.default_opset(model, src)
    target = _opsets.target_opset(source, src)
    # Checked before converting: the converter is C++ and trusts its input.
    _check(skeleton(model), src, "" if source == target else
           f" at its opset {source} (qcompile reads {MIN_OPSET}..{MAX_OPSET} and converts it)")
    if source != target:
        model = _opsets.convert(model, source, target, src, warn)
    sk = skeleton(model)
    if source != target:
        _check(sk, src, f" after onnx.version_converter converted opset {source} -> {target}")
    check_structure(sk, src)  # strict shape inference and the per-node rules ORT enforces
    try:
        inferred = onnx.shape_inference.infer_shapes(sk, strict_mode=False, data_prop=True)
    except Exception as e:
        raise ModelError(f"model: {src}: ONNX shape inference failed ({e}); "
                         "fix the model's shapes") from None
    opsets = {(o.domain if o.domain != "ai.onnx" else ""): o.version for o in model.opset_import}
    g = _translate(model, opsets, name or model.graph.name or "graph", inferred.graph.value_info)
    if source != target:
        g.model_props[SOURCE_OPSET] = str(source)
    qf = normalize_quant_forms(g)  # torch/ORT quantised idioms -> explicit QDQ (#13)
    if any(qf.values()):
        warn(f"lift: {src}: {qf['folded_params']} computed quantisation parameters folded to "
             f"constants, {qf['casts_removed']} identity Casts between Q and DQ removed")
    return g


def _check(sk: onnx.ModelProto, src: str, where: str) -> None:
    try:
        onnx.checker.check_model(sk)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"model: {src} is not a valid ONNX model{where}: {first}") from None


# Ops whose weights (inputs after the first) must be finite: quantisation ranges need it.
_WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization")


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
        types[vi.name] = type_of(vi.type)

    env = {}
    weights = {i: n for n in g_proto.node if n.op_type in _WEIGHTED for i in n.input[1:]}
    for t in g_proto.initializer:
        arr, dt = initializer_array(t)
        if t.name in weights:
            check_finite(t.name, arr, weights[t.name])
        env[t.name] = g.add_const(t.name, arr, dt)
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
            arr = constant_array(np_)
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
