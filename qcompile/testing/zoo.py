"""Random-weight ONNX model builders (via ``onnx.helper``) for tests and benchmarks.

Every builder returns an ``onnx.ModelProto`` with one float32 input named ``"input"`` of
shape ``[batch, 3, H, W]`` (``batch`` defaults to the symbolic dim ``"N"``) and one output
named ``"logits"`` of shape ``[batch, K]``.  Weights come from
``numpy.random.default_rng(seed)``, so equal arguments give byte-identical models.  Every
model passes ``onnx.checker.check_model(m, full_check=True)`` and runs in onnxruntime.
Opsets from 13 up are supported (default 17); the IR version is the lowest one the opset
allows, but at least 8.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "resnet", "count_parameters", "random_input", "conv_bn_relu", "residual_block",
    "mini_resnet", "shared_weight_conv_bn", "bn_after_non_foldable", "convtranspose_bn",
    "gemm_bn", "depthwise_block", "identity_dropout_model", "all_ops_model",
]

MIN_OPSET = 13
BN_EPS = 1e-5
RESIDUAL_GAMMA_SCALE = 0.2  # last BN gamma of each residual block is scaled by this
_FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}
_RESNET_SPECS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
}


class _Builder:
    """Accumulates nodes and initializers; node names double as their output tensor names."""

    def __init__(self, seed: int, opset: int, batch: int | str, hw: int) -> None:
        if opset < MIN_OPSET:
            raise ValueError(f"opset {opset} unsupported; need >= {MIN_OPSET}")
        self.rng = np.random.default_rng(seed)
        self.opset, self.batch, self.hw = opset, batch, hw
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._node_names: set[str] = set()

    # -- primitives -------------------------------------------------------------------
    def init(self, name: str, value, dtype=np.float32) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def node(self, op: str, inputs, name: str, out: str | None = None, **attrs) -> str:
        if name in self._node_names:
            raise ValueError(f"duplicate node name {name!r}")
        self._node_names.add(name)
        out = out or name
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=name, **attrs))
        return out

    def const(self, name: str, value, dtype=np.float32) -> str:
        """A ``Constant`` node (not an initializer) holding ``value``."""
        t = numpy_helper.from_array(np.asarray(value, dtype=dtype), name + ".value")
        return self.node("Constant", [], name, value=t)

    def he(self, *shape: int, fan_in: int) -> np.ndarray:
        return self.rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)

    def bn_params(self, c: int, gamma_scale: float = 1.0):
        gamma = self.rng.uniform(0.5, 1.5, c) * gamma_scale
        beta = self.rng.normal(0.0, 0.1, c)
        mean = self.rng.normal(0.0, 0.1, c)
        var = self.rng.uniform(0.5, 1.5, c)
        return gamma, beta, mean, var

    # -- layers -----------------------------------------------------------------------
    def conv_node(self, name, x, w, b=None, stride=1, pads=None, group=1) -> str:
        k = w.shape[2]
        pads = [k // 2] * 4 if pads is None else ([pads] * 4 if isinstance(pads, int) else pads)
        ins = [x, self.init(f"{name}.weight", w)]
        if b is not None:
            ins.append(self.init(f"{name}.bias", b))
        return self.node("Conv", ins, name, kernel_shape=[k, k], strides=[stride, stride],
                         pads=list(pads), group=group)

    def conv(self, name, x, cin, cout, k, stride=1, pads=None, group=1, bias=False) -> str:
        w = self.he(cout, cin // group, k, k, fan_in=cin // group * k * k)
        b = self.rng.normal(0.0, 0.01, cout) if bias else None
        return self.conv_node(name, x, w, b, stride, pads, group)

    def bn(self, name, x, c, gamma_scale=1.0, params=None, out=None) -> str:
        params = self.bn_params(c, gamma_scale) if params is None else params
        keys = ("weight", "bias", "running_mean", "running_var")
        ins = [x] + [self.init(f"{name}.{k}", v) for k, v in zip(keys, params, strict=True)]
        return self.node("BatchNormalization", ins, name, out=out, epsilon=BN_EPS)

    def conv_bn(self, cname, bname, x, cin, cout, k, stride=1, pads=None, group=1,
                fold=False, gamma_scale=1.0) -> str:
        """Conv (no bias) + BN; with ``fold`` the same random BN is folded into the conv,
        so ``fold=True`` and ``fold=False`` compute the same function for the same seed."""
        w = self.he(cout, cin // group, k, k, fan_in=cin // group * k * k)
        gamma, beta, mean, var = self.bn_params(cout, gamma_scale)
        if not fold:
            y = self.conv_node(cname, x, w, None, stride, pads, group)
            return self.bn(bname, y, cout, params=(gamma, beta, mean, var))
        s = gamma / np.sqrt(var + BN_EPS)
        return self.conv_node(cname, x, w * s[:, None, None, None], beta - mean * s,
                              stride, pads, group)

    def gemm(self, name, x, cin, cout, out=None, trans_b=True) -> str:
        bound = 1.0 / np.sqrt(cin)
        w = self.rng.uniform(-bound, bound, (cout, cin))
        b = self.rng.uniform(-bound, bound, cout)
        ins = [x, self.init(f"{name}.weight", w if trans_b else w.T), self.init(f"{name}.bias", b)]
        return self.node("Gemm", ins, name, out=out, transB=int(trans_b))

    def head(self, x, c, num_classes, kind="flatten") -> str:
        """GlobalAveragePool -> Flatten/Reshape -> Gemm ``fc`` producing ``logits``."""
        y = self.node("GlobalAveragePool", [x], "avgpool")
        if kind == "flatten":
            y = self.node("Flatten", [y], "flatten", axis=1)
        elif kind == "reshape":
            y = self.node("Reshape", [y, self.init("reshape.shape", [-1, c], np.int64)], "reshape")
        else:
            raise ValueError(f"unknown head {kind!r}; expected 'flatten' or 'reshape'")
        return self.gemm("fc", y, c, num_classes, out="logits")

    def model(self, out_dim: int, name: str, in_channels: int = 3) -> onnx.ModelProto:
        x = helper.make_tensor_value_info(
            "input", TensorProto.FLOAT, [self.batch, in_channels, self.hw, self.hw])
        y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [self.batch, out_dim])
        graph = helper.make_graph(self.nodes, name, [x], [y], initializer=self.inits)
        opsets = [helper.make_opsetid("", self.opset)]
        m = helper.make_model(graph, opset_imports=opsets, producer_name="qcompile.zoo")
        m.ir_version = max(8, helper.find_min_ir_version_for(opsets))
        return m


def _basic_block(b: _Builder, p: str, x: str, cin: int, cout: int, stride: int, fold: bool):
    y = b.conv_bn(f"{p}.conv1", f"{p}.bn1", x, cin, cout, 3, stride, fold=fold)
    y = b.node("Relu", [y], f"{p}.relu1")
    y = b.conv_bn(f"{p}.conv2", f"{p}.bn2", y, cout, cout, 3, fold=fold,
                  gamma_scale=RESIDUAL_GAMMA_SCALE)
    if stride != 1 or cin != cout:
        x = b.conv_bn(f"{p}.downsample.0", f"{p}.downsample.1", x, cin, cout, 1, stride,
                      pads=0, fold=fold)
    return b.node("Relu", [b.node("Add", [y, x], f"{p}.add")], f"{p}.relu2")


def _bottleneck(b: _Builder, p: str, x: str, cin: int, planes: int, stride: int, fold: bool):
    cout = planes * 4
    y = b.conv_bn(f"{p}.conv1", f"{p}.bn1", x, cin, planes, 1, pads=0, fold=fold)
    y = b.node("Relu", [y], f"{p}.relu1")
    y = b.conv_bn(f"{p}.conv2", f"{p}.bn2", y, planes, planes, 3, stride, fold=fold)
    y = b.node("Relu", [y], f"{p}.relu2")
    y = b.conv_bn(f"{p}.conv3", f"{p}.bn3", y, planes, cout, 1, pads=0, fold=fold,
                  gamma_scale=RESIDUAL_GAMMA_SCALE)
    if stride != 1 or cin != cout:
        x = b.conv_bn(f"{p}.downsample.0", f"{p}.downsample.1", x, cin, cout, 1, stride,
                      pads=0, fold=fold)
    return b.node("Relu", [b.node("Add", [y, x], f"{p}.add")], f"{p}.relu3")


def resnet(depth: int = 18, *, num_classes: int = 1000, image_size: int = 224,
           fold_bn: bool = False, head: str = "flatten", opset: int = 17, seed: int = 0,
           batch: int | str = "N") -> onnx.ModelProto:
    """torchvision-layout ResNet-{18,34,50,101} (v1.5: bottleneck stride on the 3x3 conv).

    conv1 7x7/2 -> bn1 -> relu -> maxpool 3x3/2 -> layer1..4 -> avgpool -> flatten|reshape
    -> fc.  Names follow torchvision's state dict (``layer1.0.conv1.weight``...).  With
    ``fold_bn`` there are no BN nodes and every conv carries the folded bias instead.
    """
    if depth not in _RESNET_SPECS:
        raise ValueError(f"depth must be one of {sorted(_RESNET_SPECS)}, got {depth}")
    kind, layers = _RESNET_SPECS[depth]
    b = _Builder(seed, opset, batch, image_size)
    x = b.conv_bn("conv1", "bn1", "input", 3, 64, 7, 2, pads=3, fold=fold_bn)
    x = b.node("Relu", [x], "relu")
    x = b.node("MaxPool", [x], "maxpool", kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4)
    cin = 64
    for li, (planes, n) in enumerate(zip((64, 128, 256, 512), layers, strict=True), start=1):
        for bi in range(n):
            stride = 2 if (bi == 0 and li > 1) else 1
            p = f"layer{li}.{bi}"
            if kind == "basic":
                x, cin = _basic_block(b, p, x, cin, planes, stride, fold_bn), planes
            else:
                x, cin = _bottleneck(b, p, x, cin, planes, stride, fold_bn), planes * 4
    b.head(x, cin, num_classes, head)
    return b.model(num_classes, f"resnet{depth}")


def count_parameters(model: onnx.ModelProto, include_bn_stats: bool = False) -> int:
    """Number of elements in floating-point initializers (integer ones such as Reshape
    shapes are never counted).  BatchNormalization running mean/var are skipped unless
    ``include_bn_stats``, matching torchvision's ``sum(p.numel() for p in m.parameters())``."""
    skip: set[str] = set()
    if not include_bn_stats:
        for n in model.graph.node:
            if n.op_type == "BatchNormalization":
                skip.update(n.input[3:5])
    return sum(int(np.prod(t.dims, dtype=np.int64)) for t in model.graph.initializer
               if t.name not in skip and t.data_type in _FLOAT_TYPES)


def random_input(model: onnx.ModelProto, batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """N(0, 1) feed for every graph input that is not an initializer; symbolic (or unknown)
    dims resolve to ``batch``."""
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    feed = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else batch for d in tt.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type)
        feed[vi.name] = rng.standard_normal(shape).astype(dtype)
    return feed


# -- small test models --------------------------------------------------------------------

def conv_bn_relu(with_bias: bool = False, *, opset: int = 17, seed: int = 0,
                 batch: int | str = "N") -> onnx.ModelProto:
    """8x8 input: Conv 3->8 3x3 (bias optional) -> BN -> Relu -> GAP -> Flatten -> Gemm(10)."""
    b = _Builder(seed, opset, batch, 8)
    x = b.conv("conv", "input", 3, 8, 3, bias=with_bias)
    x = b.node("Relu", [b.bn("bn", x, 8)], "relu")
    b.head(x, 8, 10)
    return b.model(10, "conv_bn_relu")


def residual_block(*, opset: int = 17, seed: int = 0, batch: int | str = "N") -> onnx.ModelProto:
    """16x16 input: one BasicBlock 3->8 stride 2 with a conv1x1+BN downsample, then head(10)."""
    b = _Builder(seed, opset, batch, 16)
    x = _basic_block(b, "block", "input", 3, 8, 2, False)
    b.head(x, 8, 10)
    return b.model(10, "residual_block")


def mini_resnet(*, opset: int = 17, seed: int = 0, image_size: int = 16, fold_bn: bool = False,
                batch: int | str = "N") -> onnx.ModelProto:
    """Stem conv3x3 3->8 + BN + Relu, stage1 BasicBlock 8->8, stage2 BasicBlock 8->16 stride
    2 (with downsample), then avgpool/flatten/fc(10).  About 5k parameters."""
    b = _Builder(seed, opset, batch, image_size)
    x = b.node("Relu", [b.conv_bn("conv1", "bn1", "input", 3, 8, 3, fold=fold_bn)], "relu")
    x = _basic_block(b, "layer1.0", x, 8, 8, 1, fold_bn)
    x = _basic_block(b, "layer2.0", x, 8, 16, 2, fold_bn)
    b.head(x, 16, 10)
    return b.model(10, "mini_resnet")


def shared_weight_conv_bn(*, opset: int = 17, seed: int = 0,
                          batch: int | str = "N") -> onnx.ModelProto:
    """Two parallel Convs on the input that use the SAME weight initializer ``shared.weight``,
    each followed by its own BN, summed -> Relu -> head.  BN folding must refuse them."""
    b = _Builder(seed, opset, batch, 8)
    w = b.init("shared.weight", b.he(8, 3, 3, 3, fan_in=27))
    ya = b.bn("bn_a", b.node("Conv", ["input", w], "conv_a", kernel_shape=[3, 3], pads=[1] * 4), 8)
    yb = b.bn("bn_b", b.node("Conv", ["input", w], "conv_b", kernel_shape=[3, 3], pads=[1] * 4), 8)
    b.head(b.node("Relu", [b.node("Add", [ya, yb], "add")], "relu"), 8, 10)
    return b.model(10, "shared_weight_conv_bn")


def bn_after_non_foldable(*, opset: int = 17, seed: int = 0,
                          batch: int | str = "N") -> onnx.ModelProto:
    """Conv -> Relu -> BN (the BN follows a Relu, so it cannot be folded) -> head."""
    b = _Builder(seed, opset, batch, 8)
    x = b.node("Relu", [b.conv("conv", "input", 3, 8, 3, bias=True)], "relu")
    b.head(b.bn("bn", x, 8), 8, 10)
    return b.model(10, "bn_after_non_foldable")


def convtranspose_bn(group: int = 1, *, opset: int = 17, seed: int = 0,
                     batch: int | str = "N") -> onnx.ModelProto:
    """8x8 input: Conv 3->8 -> Relu -> ConvTranspose 8->8 k2 s2 (``group``) -> BN -> Relu
    -> head.  ConvTranspose weight layout is [Cin, Cout/group, k, k]."""
    b = _Builder(seed, opset, batch, 8)
    x = b.node("Relu", [b.conv("conv", "input", 3, 8, 3, bias=True)], "relu0")
    w = b.init("deconv.weight", b.he(8, 8 // group, 2, 2, fan_in=8 // group * 4))
    x = b.node("ConvTranspose", [x, w], "deconv", kernel_shape=[2, 2], strides=[2, 2],
               group=group)
    b.head(b.node("Relu", [b.bn("bn", x, 8)], "relu1"), 8, 10)
    return b.model(10, f"convtranspose_bn_g{group}")


def gemm_bn(trans_b: bool = True, *, opset: int = 17, seed: int = 0,
            batch: int | str = "N") -> onnx.ModelProto:
    """8x8 input: Flatten -> Gemm 192->16 (``transB`` as given) -> BN on the 2-D [N, 16]
    tensor, whose output is ``logits``."""
    b = _Builder(seed, opset, batch, 8)
    x = b.gemm("fc", b.node("Flatten", ["input"], "flatten", axis=1), 192, 16, trans_b=trans_b)
    b.bn("bn", x, 16, out="logits")
    return b.model(16, "gemm_bn")


def depthwise_block(*, opset: int = 17, seed: int = 0, batch: int | str = "N") -> onnx.ModelProto:
    """EfficientNet-Lite style, 16x16 input: Conv1x1 3->16 -> BN -> Clip(0,6) -> depthwise
    Conv3x3 stride 2 (group=16, explicit TF-SAME pads [0,0,1,1]) -> BN -> Clip(0,6) -> head."""
    b = _Builder(seed, opset, batch, 16)
    lo, hi = b.init("relu6.min", 0.0), b.init("relu6.max", 6.0)
    x = b.bn("bn1", b.conv("expand", "input", 3, 16, 1, pads=0), 16)
    x = b.node("Clip", [x, lo, hi], "relu6_1")
    x = b.bn("bn2", b.conv("depthwise", x, 16, 16, 3, stride=2, pads=[0, 0, 1, 1], group=16), 16)
    b.head(b.node("Clip", [x, lo, hi], "relu6_2"), 16, 10)
    return b.model(10, "depthwise_block")


def identity_dropout_model(*, opset: int = 17, seed: int = 0,
                           batch: int | str = "N") -> onnx.ModelProto:
    """8x8 input: Identity -> Conv -> Relu -> Dropout -> Identity -> Add(constant subgraph
    ``Constant * scale``) -> GAP -> Reshape(shape = Concat of two Constants) -> Gemm.
    Identity/Dropout are removable and the constant subgraphs are foldable."""
    b = _Builder(seed, opset, batch, 8)
    x = b.node("Identity", ["input"], "identity_in")
    x = b.node("Relu", [b.conv("conv", x, 3, 8, 3, bias=True)], "relu")
    x = b.node("Dropout", [x, b.init("dropout.ratio", 0.5)], "dropout")
    x = b.node("Identity", [x], "identity_mid")
    offs = b.const("offset", b.rng.normal(0.0, 0.1, (1, 8, 1, 1)))
    offs = b.node("Mul", [offs, b.init("offset.scale", 2.0)], "offset_scaled")
    x = b.node("GlobalAveragePool", [b.node("Add", [x, offs], "add")], "avgpool")
    shape = b.node("Concat", [b.const("shape0", [-1], np.int64),
                              b.const("shape1", [8], np.int64)], "shape", axis=0)
    b.gemm("fc", b.node("Reshape", [x, shape], "reshape"), 8, 10, out="logits")
    return b.model(10, "identity_dropout_model")


def all_ops_model(*, opset: int = 17, seed: int = 0, batch: int | str = "N") -> onnx.ModelProto:
    """16x16 input using Conv, ConvTranspose, BatchNormalization, InstanceNormalization,
    Relu, LeakyRelu, Clip, Sigmoid, Tanh, Add, Sub, Mul, Div, MaxPool, AveragePool,
    GlobalAveragePool, Flatten, Reshape, Gemm, MatMul, Slice, Pad, Concat, Identity,
    Constant, Softmax, Dropout, plus ``Erf`` (an op outside that set).  ``logits`` are
    Softmax probabilities over 10 classes."""
    b = _Builder(seed, opset, batch, 16)
    x = b.node("Identity", ["input"], "identity")
    x1 = b.node("Relu", [b.bn("bn", b.conv("conv1", x, 3, 8, 3), 8)], "relu")  # [N,8,16,16]
    pads = b.init("pad.pads", [0, 0, 1, 1, 0, 0, 1, 1], np.int64)
    x2 = b.conv("conv2", b.node("Pad", [x1, pads], "pad"), 8, 8, 3, pads=0)
    inorm = [b.init("inorm.scale", b.rng.uniform(0.5, 1.5, 8)),
             b.init("inorm.bias", b.rng.normal(0.0, 0.1, 8))]
    x2 = b.node("InstanceNormalization", [x2, *inorm], "inorm", epsilon=BN_EPS)
    x2 = b.node("LeakyRelu", [x2], "leaky_relu", alpha=0.1)
    x3 = b.node("MaxPool", [b.node("Add", [x1, x2], "add")], "maxpool",
                kernel_shape=[2, 2], strides=[2, 2])  # [N,8,8,8]
    gate = b.node("AveragePool", [x3], "avgpool3x3", kernel_shape=[3, 3], pads=[1] * 4,
                  count_include_pad=0)
    xa = b.node("Mul", [x3, b.node("Sigmoid", [gate], "sigmoid")], "gate_mul")
    xb = b.node("Sub", [b.node("Tanh", [x3], "tanh"), b.init("sub.c", 0.1)], "sub")
    xb = b.node("Erf", [b.node("Div", [xb, b.init("div.c", 2.0)], "div")], "erf")
    x = b.node("Concat", [xa, xb], "concat", axis=1)  # [N,16,8,8]
    w = b.init("deconv.weight", b.he(16, 8, 2, 2, fan_in=64))
    x = b.node("ConvTranspose", [x, w], "deconv", kernel_shape=[2, 2], strides=[2, 2])
    x = b.node("Clip", [x, b.init("clip.min", 0.0), b.init("clip.max", 6.0)], "clip")
    sl = [b.init(f"slice.{k}", v, np.int64) for k, v in
          (("starts", [0, 0]), ("ends", [8, 8]), ("axes", [2, 3]))]
    x = b.node("Slice", [x, *sl], "slice")  # [N,8,8,8]
    x = b.node("Flatten", [b.node("GlobalAveragePool", [x], "gap")], "flatten", axis=1)
    x = b.node("Relu", [b.gemm("fc1", x, 8, 16)], "relu_fc")
    x = b.node("Reshape", [x, b.const("reshape.shape", [-1, 16], np.int64)], "reshape")
    mw = b.init("matmul.weight", b.rng.uniform(-0.25, 0.25, (16, 10)))
    x = b.node("Add", [b.node("MatMul", [x, mw], "matmul"),
                       b.init("matmul.bias", b.rng.uniform(-0.25, 0.25, 10))], "matmul_add")
    x = b.node("Dropout", [x, b.init("dropout.ratio", 0.1)], "dropout")
    b.node("Softmax", [x], "softmax", out="logits", axis=-1)
    return b.model(10, "all_ops_model")
