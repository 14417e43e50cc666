"""Exporter-shaped ONNX graphs with random weights, for the conformance suite and its benchmark.

Each builder imitates what one exporter (torch.onnx dynamo / TorchScript, tf2onnx, Caffe2 /
CNTK, paddle2onnx) or one architecture family (MobileNetV2/V3, EfficientNet-B0, DenseNet,
Inception, ShuffleNet) writes, at a toy size: a 16x16 image with 3 channels, a few channels per
layer, 5 classes.  Weights come from ``numpy.random.default_rng(seed)`` (He-style scaling, so
activations stay O(1)); equal arguments give byte-identical models.  Every model passes
``onnx.checker.check_model`` and runs in ONNX Runtime.

``CASES`` maps a case name to a :class:`Case` (its builder and input layout); tests and
``benchmarks/bench_conformance.py`` iterate over it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from qcompile.testing import zoo
from qcompile.testing.exporter_graph import CLASSES, HW, ExporterGraph

__all__ = ["Case", "CASES", "HW", "CLASSES", "dynamo", "torchscript", "tf2onnx", "caffe2",
           "paddle", "mobilenet_v2", "mobilenet_v3", "efficientnet_b0", "densenet", "inception",
           "shufflenet", "segmentation", "resnet18_dynamo", "input_shape"]

_G = ExporterGraph


# -- exporters ------------------------------------------------------------------------------
def dynamo(seed: int = 0) -> onnx.ModelProto:
    """torch.onnx dynamo (opset 18): ``val_`` names, Conv+BatchNormalization, Clip with
    initializer bounds, a residual Add, ReduceMean(axes input, keepdims=1) as the pool and
    ``x.view(x.size(0), -1)`` as Shape->Gather->Unsqueeze->Concat->Reshape, Gemm; batch ``s0``."""
    g = _G(seed, 18, prefix="val_")
    y = g.relu6(g.bn(g.conv("x", 3, 8, stride=2, bias=False), 8))
    z = g.node("Relu", [g.bn(g.conv(y, 8, 8, bias=False), 8)])
    y = g.node("Add", [y, z])
    y = g.reduce_mean(y, [-1, -2], keepdims=1)
    n = g.node("Gather", [g.node("Shape", [y]), g.ints(0)], axis=0)
    shape = g.node("Concat", [g.unsqueeze(n, [0]), g.ints([-1])], axis=0)
    y = g.node("Reshape", [y, shape])
    g.gemm(y, 8, CLASSES)
    return g.model("linear", "x", ["s0", 3, HW, HW], ["s0", CLASSES], "main_graph")


def torchscript(opset: int = 13, seed: int = 0) -> onnx.ModelProto:
    """torch.onnx TorchScript exporter (opset 9, 13..17): numeric value names, input ``input.1``
    with a fixed batch of 1, Constant nodes (Clip bounds at opset >= 11, a Pad amount, a
    Reshape shape), Conv+BN+Relu, MaxPool, Dropout (ratio attribute before 12), a residual Add,
    GlobalAveragePool -> Flatten -> Gemm."""
    g = _G(seed, opset, numeric=True)
    y = g.node("Relu", [g.bn(g.conv("input.1", 3, 8, bias=False), 8)])
    y = g.node("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 0, 0])
    if opset >= 11:
        z = g.node("Clip", [g.bn(g.conv(y, 8, 8, bias=False), 8),
                            g.constant(0.0, np.float32), g.constant(6.0, np.float32)])
    else:
        z = g.relu6(g.bn(g.conv(y, 8, 8, bias=False), 8))
    y = g.node("Add", [z, y])
    if opset >= 11:  # F.pad -> Pad with a Constant pads input
        y = g.node("Pad", [y, g.constant([0, 0, 1, 1, 0, 0, 1, 1])], mode="constant")
    else:
        y = g.node("Pad", [y], pads=[0, 0, 1, 1, 0, 0, 1, 1], mode="constant", value=0.0)
    y = g.conv(y, 8, 8, pads=[0, 0, 0, 0])
    y = g.node("Dropout", [y], **({"ratio": 0.5} if opset < 12 else {}))
    y = g.node("Flatten", [g.node("GlobalAveragePool", [y])], axis=1)
    y = g.node("Reshape", [y, g.constant([1, -1])])
    g.gemm(y, 8, CLASSES)
    return g.model("output", "input.1", [1, 3, HW, HW], [1, CLASSES], "torch_jit")


def tf2onnx(seed: int = 0) -> onnx.ModelProto:
    """tf2onnx (opset 13) from Keras: NHWC input ``input_1:0`` with batch ``unk__7``, Transpose
    to NCHW, explicit Pad before a VALID strided Conv, Relu6 as Clip, a depthwise Conv,
    Transpose back, ReduceMean over H,W (keepdims=0), Dense as MatMul + Add, Softmax last."""
    g = _G(seed, 13, prefix="model/")
    t = g.node("Transpose", ["input_1:0"], perm=[0, 3, 1, 2])
    t = g.node("Pad", [t, g.ints([0, 0, 0, 0, 0, 0, 1, 1])], mode="constant")
    y = g.relu6(g.conv(t, 3, 8, stride=2, pads=[0, 0, 0, 0]))
    y = g.relu6(g.conv(y, 8, 8, group=8))
    y = g.node("Relu", [g.conv(y, 8, 12, k=1)])
    y = g.node("Transpose", [y], perm=[0, 2, 3, 1])
    y = g.reduce_mean(y, [1, 2], keepdims=0)
    y = g.node("MatMul", [y, g.c(g.rng.normal(0, 0.3, (12, CLASSES)))])
    y = g.node("Add", [y, g.c(g.rng.normal(0, 0.1, CLASSES))])
    g.node("Softmax", [y], axis=-1 if g.opset >= 13 else 1)
    return g.model("Identity:0", "input_1:0", ["unk__7", HW, HW, 3], ["unk__7", CLASSES],
                   "tf2onnx", producer="tf2onnx")


def caffe2(opset: int = 9, seed: int = 0) -> onnx.ModelProto:
    """Caffe2 / CNTK (opset 7..9, IR 3): initializers also listed as graph inputs, batch 1,
    Caffe "Scale" as Unsqueeze(axes attribute)+Mul / Unsqueeze+Add after a bias-free Conv, LRN,
    a ceil-mode MaxPool written as asymmetric pads [0,0,1,1], a 3-input Sum of branches,
    AveragePool, Flatten, Gemm, Softmax."""
    g = _G(seed, opset)
    y = g.conv("data", 3, 8, bias=False)
    y = g.node("Mul", [y, g.unsqueeze(g.c(g.rng.uniform(0.5, 1.5, 8)), [1, 2])])
    y = g.node("Add", [y, g.unsqueeze(g.c(g.rng.normal(0, 0.1, 8)), [1, 2])])
    y = g.node("Relu", [y])
    y = g.node("LRN", [y], size=3, alpha=1e-4, beta=0.75, bias=1.0)
    y = g.node("MaxPool", [y], kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1])
    a = g.node("Relu", [g.conv(y, 8, 8, k=1, pads=[0] * 4)])
    b = g.node("Relu", [g.conv(y, 8, 8)])
    y = g.node("Sum", [a, b, y])
    y = g.node("AveragePool", [y], kernel_shape=[8, 8], strides=[1, 1])
    y = g.node("Flatten", [y], axis=1)
    g.node("Softmax", [g.gemm(y, 8, CLASSES)], axis=1)
    return g.model("prob", "data", [1, 3, HW, HW], [1, CLASSES], "caffe2_net",
                   inits_as_inputs=True, producer="onnx-caffe2")


def paddle(seed: int = 0) -> onnx.ModelProto:
    """paddle2onnx (opset 14): every weight a Constant node (no initializer), ``-1`` written as
    the batch dim and in the Reshape shape, ``tmp_`` names, HardSwish and HardSigmoid ops
    (the PP-LCNet / MobileNetV3 exports), GlobalAveragePool -> Reshape(-1, C) -> MatMul + Add."""
    g = _G(seed, 14, prefix="tmp_", const_nodes=True)
    y = g.node("HardSwish", [g.bn(g.conv("image", 3, 8, stride=2, bias=False), 8)])
    y = g.node("HardSwish", [g.conv(y, 8, 8, group=8)])
    s = g.node("GlobalAveragePool", [y])
    s = g.node("HardSigmoid", [g.conv(s, 8, 8, k=1, pads=[0] * 4)], alpha=1 / 6, beta=0.5)
    y = g.node("Mul", [y, s])
    y = g.node("Reshape", [g.node("GlobalAveragePool", [y]), g.ints([-1, 8])])
    y = g.node("MatMul", [y, g.c(g.rng.normal(0, 0.3, (8, CLASSES)))])
    g.node("Add", [y, g.c(g.rng.normal(0, 0.1, CLASSES))])
    return g.model("save_infer_model/scale_0.tmp_0", "image", [-1, 3, HW, HW], [-1, CLASSES],
                   "paddle", producer="PaddlePaddle")


# -- architecture blocks (torch exporter style, opset 13/14, batch "N") ---------------------
def mobilenet_v2(seed: int = 0) -> onnx.ModelProto:
    """MobileNetV2: stem Conv+BN+ReLU6, two inverted residuals (1x1 expand + ReLU6, 3x3
    depthwise + ReLU6, 1x1 linear projection; the stride-1 one with a residual Add), head."""
    g = _G(seed, 13)

    def cbr(x, cin, cout, k=3, stride=1, group=1, act=True):
        y = g.bn(g.conv(x, cin, cout, k, stride, group=group, bias=False), cout)
        return g.relu6(y) if act else y

    x = cbr("input", 3, 8, stride=2)
    y = cbr(cbr(cbr(x, 8, 24, k=1), 24, 24, group=24), 24, 8, k=1, act=False)
    x = g.node("Add", [x, y])
    x = cbr(cbr(cbr(x, 8, 24, k=1), 24, 24, stride=2, group=24), 24, 12, k=1, act=False)
    x = cbr(x, 12, 16, k=1)
    g.gap_flatten_gemm(x, 16)
    return g.model("logits", "input", ["N", 3, HW, HW], ["N", CLASSES], "mobilenet_v2")


def _se(g: _G, x: str, c: int, mid: int, gate: str, pool: str) -> str:
    s = g.node("GlobalAveragePool", [x]) if pool == "gap" else g.reduce_mean(x, [2, 3], 1)
    s = g.conv(s, c, mid, k=1, pads=[0] * 4)
    s = g.node("Relu", [s]) if gate == "hardsigmoid" else \
        g.node("Mul", [s, g.node("Sigmoid", [s])])
    s = g.conv(s, mid, c, k=1, pads=[0] * 4)
    s = g.node("HardSigmoid", [s], alpha=1 / 6, beta=0.5) if gate == "hardsigmoid" else \
        g.node("Sigmoid", [s])
    return g.node("Mul", [x, s])


def mobilenet_v3(seed: int = 0) -> onnx.ModelProto:
    """MobileNetV3 (opset 14): stem Conv+BN+HardSwish, a bneck block (1x1 expand + HardSwish,
    depthwise 3x3 + HardSwish, squeeze-excite GAP->Conv->ReLU->Conv->HardSigmoid->Mul, 1x1
    projection, residual Add), head Conv+HardSwish, GAP -> Flatten -> Gemm."""
    g = _G(seed, 14)
    x = g.node("HardSwish", [g.bn(g.conv("input", 3, 8, stride=2, bias=False), 8)])
    y = g.node("HardSwish", [g.bn(g.conv(x, 8, 16, k=1, bias=False), 16)])
    y = g.node("HardSwish", [g.bn(g.conv(y, 16, 16, group=16, bias=False), 16)])
    y = _se(g, y, 16, 8, "hardsigmoid", "gap")
    y = g.bn(g.conv(y, 16, 8, k=1, bias=False), 8)
    x = g.node("Add", [x, y])
    x = g.node("HardSwish", [g.bn(g.conv(x, 8, 16, k=1, bias=False), 16)])
    g.gap_flatten_gemm(x, 16)
    return g.model("logits", "input", ["N", 3, HW, HW], ["N", CLASSES], "mobilenet_v3")


def efficientnet_b0(seed: int = 0) -> onnx.ModelProto:
    """EfficientNet-B0 (opset 13): stem Conv+BN+Swish (Sigmoid*Mul), an MBConv (1x1 expand,
    depthwise 3x3, squeeze-excite with ReduceMean(keepdims=1)->Conv->Swish->Conv->Sigmoid->Mul,
    1x1 projection, residual Add), head 1x1 Conv+Swish, GAP -> Flatten -> Gemm."""
    g = _G(seed, 13)

    def swish(x):
        return g.node("Mul", [x, g.node("Sigmoid", [x])])

    x = swish(g.bn(g.conv("input", 3, 8, stride=2, bias=False), 8))
    y = swish(g.bn(g.conv(x, 8, 24, k=1, bias=False), 24))
    y = swish(g.bn(g.conv(y, 24, 24, group=24, bias=False), 24))
    y = _se(g, y, 24, 4, "sigmoid", "reducemean")
    y = g.bn(g.conv(y, 24, 8, k=1, bias=False), 8)
    x = g.node("Add", [y, x])
    x = swish(g.bn(g.conv(x, 8, 16, k=1, bias=False), 16))
    g.gap_flatten_gemm(x, 16)
    return g.model("logits", "input", ["N", 3, HW, HW], ["N", CLASSES], "efficientnet_b0")


def densenet(seed: int = 0) -> onnx.ModelProto:
    """DenseNet (opset 13): pre-activation dense layers (BN->ReLU->1x1 Conv->BN->ReLU->3x3 Conv)
    whose outputs are Concat-ed onto their input, a transition (BN->ReLU->1x1 Conv->AveragePool
    2x2), final BN->ReLU, GAP -> Flatten -> Gemm."""
    g = _G(seed, 13)
    x, c = g.conv("input", 3, 8, bias=False), 8
    for _ in range(2):
        y = g.node("Relu", [g.bn(x, c)])
        y = g.node("Relu", [g.bn(g.conv(y, c, 8, k=1, pads=[0] * 4, bias=False), 8)])
        y = g.conv(y, 8, 4, bias=False)
        x, c = g.node("Concat", [x, y], axis=1), c + 4
    x = g.conv(g.node("Relu", [g.bn(x, c)]), c, 8, k=1, pads=[0] * 4, bias=False)
    x = g.node("AveragePool", [x], kernel_shape=[2, 2], strides=[2, 2])
    x = g.node("Relu", [g.bn(x, 8)])
    g.gap_flatten_gemm(x, 8)
    return g.model("logits", "input", ["N", 3, HW, HW], ["N", CLASSES], "densenet")


def inception(seed: int = 0) -> onnx.ModelProto:
    """Inception (GoogLeNet-style, opset 13): stem Conv+ReLU+MaxPool, one module of four
    branches (1x1; 1x1->3x3; 1x1->3x3->3x3; MaxPool 3x3/1 pad 1->1x1) joined by Concat, head."""
    g = _G(seed, 13)

    def cr(x, cin, cout, k):
        return g.node("Relu", [g.conv(x, cin, cout, k=k)])

    x = cr("input", 3, 8, 3)
    x = g.node("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    b1 = cr(x, 8, 4, 1)
    b2 = cr(cr(x, 8, 4, 1), 4, 6, 3)
    b3 = cr(cr(cr(x, 8, 2, 1), 2, 4, 3), 4, 4, 3)
    b4 = cr(g.node("MaxPool", [x], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1]),
            8, 4, 1)
    x = g.node("Concat", [b1, b2, b3, b4], axis=1)
    g.gap_flatten_gemm(x, 18)
    return g.model("logits", "input", ["N", 3, HW, HW], ["N", CLASSES], "inception")


def shufflenet(seed: int = 0) -> onnx.ModelProto:
    """ShuffleNetV2 (opset 13): stem Conv+BN+ReLU, a stride-1 unit that Splits channels in
    two, runs one half through 1x1->depthwise 3x3->1x1, Concats, then channel-shuffles with
    Reshape(0,2,C/2,H,W) -> Transpose(0,2,1,3,4) -> Reshape(0,C,H,W); head."""
    g = _G(seed, 13)
    c, h = 8, HW // 2
    x = g.node("Relu", [g.bn(g.conv("input", 3, c, stride=2, bias=False), c)])
    g.node("Split", [x, g.ints([c // 2, c // 2])], n_out=2, axis=1)
    a, b = g.nodes_out()
    b = g.node("Relu", [g.bn(g.conv(b, c // 2, c // 2, k=1, pads=[0] * 4, bias=False), c // 2)])
    b = g.bn(g.conv(b, c // 2, c // 2, group=c // 2, bias=False), c // 2)
    b = g.node("Relu", [g.bn(g.conv(b, c // 2, c // 2, k=1, pads=[0] * 4, bias=False), c // 2)])
    x = g.node("Concat", [a, b], axis=1)
    x = g.node("Reshape", [x, g.ints([0, 2, c // 2, h, h])])
    x = g.node("Transpose", [x], perm=[0, 2, 1, 3, 4])
    x = g.node("Reshape", [x, g.ints([0, c, h, h])])
    x = g.node("Relu", [g.bn(g.conv(x, c, 16, k=1, pads=[0] * 4, bias=False), 16)])
    g.gap_flatten_gemm(x, 16)
    return g.model("logits", "input", ["N", 3, HW, HW], ["N", CLASSES], "shufflenet")


def segmentation(opset: int = 11, seed: int = 0) -> onnx.ModelProto:
    """A segmentation / FPN head as the TorchScript exporter writes it at opset 11: encoder
    Conv+BN+ReLU (stride 2, 8x8) and Conv+ReLU (stride 2, 4x4); ``F.interpolate(scale_factor=2)``
    as Resize(nearest, roi and scales inputs), Concat with the skip, Conv+ReLU, bilinear
    ``F.interpolate`` to the input size as Resize(linear, pytorch_half_pixel), a 1x1 Conv to
    per-pixel class scores [N, 5, 16, 16]."""
    g = _G(seed, opset, numeric=True)
    skip = g.node("Relu", [g.bn(g.conv("input.1", 3, 8, stride=2, bias=False), 8)])
    y = g.node("Relu", [g.conv(skip, 8, 16, stride=2)])
    roi, scales = g.c(np.zeros(0)), g.c([1.0, 1.0, 2.0, 2.0])
    y = g.node("Resize", [y, roi, scales], mode="nearest", nearest_mode="floor",
               coordinate_transformation_mode="asymmetric")
    y = g.node("Relu", [g.conv(g.node("Concat", [y, skip], axis=1), 24, 8)])
    y = g.node("Resize", [y, roi, scales], mode="linear",
               coordinate_transformation_mode="pytorch_half_pixel")
    g.conv(y, 8, CLASSES, k=1, pads=[0] * 4)
    return g.model("output", "input.1", ["batch", 3, HW, HW], ["batch", CLASSES, HW, HW],
                   "torch_jit")


def resnet18_dynamo(image_size: int = 128, num_classes: int = 1000,
                    seed: int = 0) -> onnx.ModelProto:
    """torchvision's ResNet-18 as ``torch.onnx.export(..., dynamo=True)`` writes it, with the
    weights of ``zoo.resnet(18, image_size=..., seed=...)`` (same function, same numbers):
    opset 18, IR 10, input ``x`` with batch ``s0``, parameters named by their state-dict path,
    every other value ``val_N``, nodes ``node_<Op>_N``; BatchNormalization left unfolded
    (``training_mode=0``); Relu (no Clip); explicit ``dilations``/``group``/``ceil_mode``;
    the average pool as ReduceMean(axes=[-1, -2] input, keepdims=1); ``torch.flatten(x, 1)`` as
    Shape -> Gather(0) -> Unsqueeze -> Concat(-1) -> Reshape; ``fc`` as Gemm(transB=1)."""
    src = zoo.resnet(18, num_classes=num_classes, image_size=image_size, seed=seed, opset=18,
                     batch="s0")
    params = {t.name for t in src.graph.initializer}
    names = {"input": "x", "logits": "linear"}
    nodes: list[onnx.NodeProto] = []
    inits = list(src.graph.initializer)
    count = iter(range(10 ** 6))

    def val() -> str:
        return f"val_{next(count)}"

    def const(value) -> str:
        name = val()
        inits.append(numpy_helper.from_array(np.asarray(value, np.int64), name))
        return name

    def emit(op, ins, out=None, **attrs) -> str:
        out = out or val()
        nodes.append(helper.make_node(op, ins, [out], name=f"node_{op}_{len(nodes)}", **attrs))
        return out

    for n in src.graph.node:
        ins = [i if i in params else names[i] for i in n.input]
        out = names.get(n.output[0]) or val()
        names[n.output[0]] = out
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type == "GlobalAveragePool":
            emit("ReduceMean", [ins[0], const([-1, -2])], out, keepdims=1)
        elif n.op_type == "Flatten":
            batch = emit("Gather", [emit("Shape", [ins[0]]), const(0)], axis=0)
            shape = emit("Concat", [emit("Unsqueeze", [batch, const([0])]), const([-1])], axis=0)
            emit("Reshape", [ins[0], shape], out)
        else:
            if n.op_type == "Conv":
                attrs.update(dilations=[1, 1], group=attrs.get("group", 1))
            elif n.op_type == "MaxPool":
                attrs.update(dilations=[1, 1], ceil_mode=0)
            elif n.op_type == "BatchNormalization":
                attrs.update(momentum=0.9, training_mode=0)
            elif n.op_type == "Gemm":
                attrs.update(alpha=1.0, beta=1.0)
            emit(n.op_type, ins, out, **attrs)
    g = helper.make_graph(
        nodes, "main_graph",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["s0", 3, image_size,
                                                                     image_size])],
        [helper.make_tensor_value_info("linear", onnx.TensorProto.FLOAT, ["s0", num_classes])],
        inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)],
                          producer_name="pytorch", producer_version="2.10.0")
    m.ir_version = 10
    onnx.checker.check_model(m)
    return m


# -- registry -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One conformance case: ``build()`` gives the model; ``nhwc``: its input is [N,H,W,C]."""

    name: str
    build: Callable[[], onnx.ModelProto]
    nhwc: bool = False


CASES: dict[str, Case] = {c.name: c for c in [
    Case("dynamo", dynamo),
    Case("torchscript9", lambda: torchscript(9)),
    Case("torchscript13", lambda: torchscript(13)),
    Case("torchscript17", lambda: torchscript(17)),
    Case("tf2onnx", tf2onnx, nhwc=True),
    Case("caffe2_7", lambda: caffe2(7)),
    Case("caffe2_9", lambda: caffe2(9)),
    Case("paddle", paddle),
    Case("mobilenet_v2", mobilenet_v2),
    Case("mobilenet_v3", mobilenet_v3),
    Case("efficientnet_b0", efficientnet_b0),
    Case("densenet", densenet),
    Case("inception", inception),
    Case("shufflenet", shufflenet),
    Case("segmentation11", segmentation),
    Case("segmentation13", lambda: segmentation(13)),
]}


def input_shape(model: onnx.ModelProto, batch: int) -> list[int]:
    """The first graph input's shape with symbolic / negative dims set to ``batch``."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else batch for d in dims]
