"""ONNX Runtime sessions that expose every quantised tensor of a QDQ model (``qcompile verify``).

* :func:`quantized_tensors` lists the integer tensors: every QuantizeLinear output, with its
  scale, zero point, element type, axis and the op that produced the float value it quantises.
* :class:`IntermediateRunner` adds them as graph outputs, builds one session and reports which
  kernels ORT actually runs: the node op types of the graph ORT optimised
  (``SessionOptions.optimized_model_filepath``), e.g. fused ``QLinearConv`` or unfused
  ``DequantizeLinear -> Conv -> QuantizeLinear``.  It also builds the model *without* the extra
  outputs and compares the two kernel lists (``fusion_blocked``): an extra graph output could
  keep ORT from fusing (its QDQ selectors refuse to remove a node whose output is a graph
  output).  A QuantizeLinear output survives fusion as the fused node's output, so exposing it
  does not change which kernels run; this is checked for every model, not assumed.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from qcompile.backends.ort.measure import providers, read_model, session_options
from qcompile.errors import QCompileError


@dataclass(frozen=True)
class QTensor:
    name: str
    scale: np.ndarray
    zero_point: np.ndarray
    elem_type: int  # ONNX TensorProto code
    axis: int | None
    producer: str  # op type producing the quantised float value ("input" for a graph input)
    source: str  # name of that float value


def _inits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    out = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute:
            out[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return out


# Integer outputs of the QOperator and dynamic forms (#13): op -> (scale input, zero-point
# input) of output 0, or None for integer accumulators (int32, one LSB = 1)
QOPERATOR_OUTPUTS = {"QLinearConv": (6, 7), "QLinearMatMul": (6, 7), "QLinearAdd": (6, 7),
                     "QLinearMul": (6, 7), "QLinearGlobalAveragePool": (3, 4),
                     "QLinearSigmoid": (3, 4), "QLinearConcat": (0, 1), "QGemm": (7, 8),
                     "ConvInteger": None, "MatMulInteger": None, "DynamicQuantizeLinear": None}


def _qoperator_tensor(n, inits, types) -> QTensor | None:
    idx = QOPERATOR_OUTPUTS[n.op_type]
    if n.op_type == "DynamicQuantizeLinear":
        return QTensor(n.output[0], np.zeros((0,), np.float32), np.zeros((), np.uint8), 2, None,
                       n.op_type, n.input[0])
    if idx is None:
        return QTensor(n.output[0], np.ones((), np.float32), np.zeros((), np.int32), 6, None,
                       n.op_type, n.output[0])
    if len(n.input) <= idx[1] or n.input[idx[0]] not in inits:
        return None  # e.g. QGemm without y_scale: a float output
    zname = n.input[idx[1]]
    zp = inits.get(zname, np.zeros((), np.uint8))
    return QTensor(n.output[0], inits[n.input[idx[0]]], zp, types.get(zname, 2), None,
                   n.op_type, n.output[0])


def quantized_tensors(model: onnx.ModelProto) -> list[QTensor]:
    """Every integer tensor with known parameters, in graph order: QuantizeLinear outputs
    with constant scales, the outputs of QOperator ops (QLinearConv, com.microsoft QLinearAdd,
    QGemm ...), DynamicQuantizeLinear codes and ConvInteger/MatMulInteger accumulators."""
    inits = _inits(model)
    types = {t.name: t.data_type for t in model.graph.initializer}
    try:  # types of computed zero points (torch's ConstantOfShape -> Cast)
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False).graph.value_info
        types.update({vi.name: vi.type.tensor_type.elem_type for vi in inferred})
    except Exception:  # noqa: BLE001 - types are a refinement; the initializers stay
        pass
    prod = {o: n.op_type for n in model.graph.node for o in n.output}
    out = []
    for n in model.graph.node:
        if n.op_type in QOPERATOR_OUTPUTS:
            t = _qoperator_tensor(n, inits, types)
            if t is not None:
                out.append(t)
            continue
        if n.op_type != "QuantizeLinear" or n.input[1] not in inits:
            continue
        zname = n.input[2] if len(n.input) > 2 and n.input[2] else None
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        elem = int(attrs.get("output_dtype", 0)) or types.get(n.output[0], 0) or (
            types.get(zname, 2) if zname else 2)
        zp = inits.get(zname, np.zeros((), np.uint8)) if zname else np.zeros((), np.uint8)
        scale = inits[n.input[1]]
        out.append(QTensor(n.output[0], scale, zp, elem,
                           int(attrs.get("axis", 1)) if scale.size > 1 else None,
                           prod.get(n.input[0], "input"), n.input[0]))
    return out


def kernel_counts(model: onnx.ModelProto, *, opt_level: str = "all", device: str = "cpu"
                  ) -> tuple[Counter, list[tuple[str, str, list[str], list[str]]]]:
    """(op type counts, [(node name, op type, outputs, inputs)]) of the graph ORT runs."""
    with tempfile.TemporaryDirectory(prefix="qcompile-verify-") as d:
        path = os.path.join(d, "optimized.onnx")
        ort.InferenceSession(model.SerializeToString(),
                             session_options(opt_level, optimized=path),
                             providers=providers(device, int8=True))
        opt = onnx.load(path)
    nodes = [(n.name, (f"{n.domain}." if n.domain not in ("", "ai.onnx") else "") + n.op_type,
              list(n.output), list(n.input)) for n in opt.graph.node]
    return Counter(n[1] for n in nodes), nodes


class IntermediateRunner:
    """One session over a QDQ model that returns its outputs and every quantised tensor."""

    def __init__(self, path: str | os.PathLike, *, opt_level: str = "all", device: str = "cpu",
                 threads: int = 0) -> None:
        model = read_model(path)
        self.tensors = quantized_tensors(model)
        self.outputs = [o.name for o in model.graph.output]
        self.input = model.graph.input[0].name
        base_counts, _ = kernel_counts(model, opt_level=opt_level, device=device)
        existing = set(self.outputs)
        for t in self.tensors:
            if t.name not in existing:
                model.graph.output.append(helper.make_tensor_value_info(t.name, t.elem_type,
                                                                        None))
        self.kernels, self.nodes = kernel_counts(model, opt_level=opt_level, device=device)
        self.fusion_blocked = dict((base_counts - self.kernels) + (self.kernels - base_counts))
        try:
            self.sess = ort.InferenceSession(model.SerializeToString(),
                                             session_options(opt_level, threads),
                                             providers=providers(device, int8=True))
        except Exception as e:
            raise QCompileError(f"model: ONNX Runtime cannot load {path}: "
                                f"{str(e).splitlines()[0]}") from None
        self.names = self.outputs + [t.name for t in self.tensors if t.name not in existing]
        self.producers = {o: (op, ins) for _, op, outs, ins in self.nodes for o in outs}
        self.version = ort.__version__

    def kernel_of(self, name: str) -> str:
        """The ORT kernel that produced tensor ``name``, looking through the layout
        Transposes ORT adds to return NHWC tensors as NCHW graph outputs."""
        op, ins = self.producers.get(name, ("?", []))
        for _ in range(4):
            if op != "Transpose" or not ins:
                break
            op, ins = self.producers.get(ins[0], (op, []))
        return op.split(".")[-1]

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(self.names, self.sess.run(self.names, {self.input: x})))
