"""The graph builder behind :mod:`qcompile.testing.exporters`: ``g.node(op, inputs, **attrs)``
returns its (first) output name; value names, constants and opset-dependent op forms
(Unsqueeze/Squeeze/ReduceMean axes, Clip bounds, BatchNormalization ``spatial``) follow the
exporter being imitated."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["ExporterGraph", "HW", "CLASSES"]

HW, CLASSES = 16, 5
F = TensorProto.FLOAT


class ExporterGraph:
    """A tiny graph builder: ``g.node(op, inputs, **attrs)`` returns its (first) output name.

    ``prefix`` shapes the value names the way the exporter does (``val_``, numeric, ``model/``).
    ``const_nodes``: weights are ``Constant`` nodes instead of initializers (paddle2onnx).
    """

    def __init__(self, seed: int, opset: int, prefix: str = "", const_nodes: bool = False,
                 numeric: bool = False) -> None:
        self.rng = np.random.default_rng(seed)
        self.opset, self.prefix, self.const_nodes, self.numeric = opset, prefix, const_nodes, numeric
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.k = 0

    def _name(self) -> str:
        self.k += 1
        return f"{self.prefix}{self.k + 100 if self.numeric else self.k}"

    # -- values ---------------------------------------------------------------------------
    def c(self, value, dtype=np.float32) -> str:
        """A constant: an initializer, or a Constant node when ``const_nodes``."""
        arr = np.asarray(value, dtype)
        if self.const_nodes:
            return self.constant(arr, dtype)
        name = f"{self.prefix}c{len(self.inits)}" if not self.numeric else \
            f"onnx::Const_{len(self.inits)}"
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def constant(self, value, dtype=np.int64) -> str:
        """A ``Constant`` node (TorchScript, paddle)."""
        return self.node("Constant", [], value=numpy_helper.from_array(np.asarray(value, dtype)))

    def ints(self, value) -> str:
        return self.c(value, np.int64)

    def node(self, op: str, inputs, n_out: int = 1, **attrs) -> str:
        outs = [self._name() for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, list(inputs), outs,
                                           name=f"/{op}_{len(self.nodes)}", **attrs))
        return outs[0]

    def nodes_out(self) -> list[str]:
        return list(self.nodes[-1].output)

    # -- layers ---------------------------------------------------------------------------
    def conv(self, x, cin, cout, k=3, stride=1, pads=None, group=1, bias=True) -> str:
        fan = cin // group * k * k
        w = self.rng.normal(0, np.sqrt(2.0 / fan), (cout, cin // group, k, k))
        ins = [x, self.c(w)] + ([self.c(self.rng.normal(0, 0.1, cout))] if bias else [])
        p = [k // 2] * 4 if pads is None else pads
        return self.node("Conv", ins, kernel_shape=[k, k], strides=[stride, stride], pads=p,
                         group=group, dilations=[1, 1])

    def bn(self, x, c) -> str:
        r = self.rng
        ps = [r.uniform(0.5, 1.5, c), r.normal(0, 0.1, c), r.normal(0, 0.1, c),
              r.uniform(0.5, 1.5, c)]
        extra = {"spatial": 1} if self.opset < 9 else {}
        return self.node("BatchNormalization", [x] + [self.c(p) for p in ps], epsilon=1e-5,
                         momentum=0.9, **extra)

    def gemm(self, x, cin, cout) -> str:
        bound = 1 / np.sqrt(cin)
        return self.node("Gemm", [x, self.c(self.rng.uniform(-bound, bound, (cout, cin))),
                                  self.c(self.rng.uniform(-bound, bound, cout))],
                         alpha=1.0, beta=1.0, transB=1)

    def relu6(self, x) -> str:
        if self.opset < 11:
            return self.node("Clip", [x], min=0.0, max=6.0)
        return self.node("Clip", [x, self.c(0.0), self.c(6.0)])

    def unsqueeze(self, x, axes) -> str:
        if self.opset < 13:
            return self.node("Unsqueeze", [x], axes=list(axes))
        return self.node("Unsqueeze", [x, self.ints(axes)])

    def squeeze(self, x, axes) -> str:
        if self.opset < 13:
            return self.node("Squeeze", [x], axes=list(axes))
        return self.node("Squeeze", [x, self.ints(axes)])

    def reduce_mean(self, x, axes, keepdims) -> str:
        if self.opset < 18:
            return self.node("ReduceMean", [x], axes=list(axes), keepdims=keepdims)
        return self.node("ReduceMean", [x, self.ints(axes)], keepdims=keepdims)

    def gap_flatten_gemm(self, x, c) -> str:
        y = self.node("GlobalAveragePool", [x])
        return self.gemm(self.node("Flatten", [y], axis=1), c, CLASSES)

    # -- model ----------------------------------------------------------------------------
    def model(self, out: str, x_name: str, x_shape, out_shape, name: str,
              ir: int | None = None, inits_as_inputs: bool = False,
              producer: str = "pytorch") -> onnx.ModelProto:
        for n in self.nodes:
            n.output[:] = [out if o == self.last else o for o in n.output]
            n.input[:] = [out if i == self.last else i for i in n.input]
        inputs = [helper.make_tensor_value_info(x_name, F, x_shape)]
        if inits_as_inputs:
            inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                       for t in self.inits]
        g = helper.make_graph(self.nodes, name, inputs,
                              [helper.make_tensor_value_info(out, F, out_shape)], self.inits)
        opsets = [helper.make_opsetid("", self.opset)]
        m = helper.make_model(g, opset_imports=opsets, producer_name=producer)
        m.ir_version = ir or max(3, helper.find_min_ir_version_for(opsets))
        onnx.checker.check_model(m)
        return m

    @property
    def last(self) -> str:
        return self.nodes[-1].output[0]
