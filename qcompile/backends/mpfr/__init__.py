"""MPFR backend: run a network with every scalar operation rounded into a float format.

Semantics (both engines follow them exactly; see README "Float-format emulation"):

* every scalar operation's exact result is rounded once into the format (MPFR semantics:
  precision p, exponent range, subnormals, overflow/underflow, signed zeros, NaN);
* graph inputs, weights and constants (including attributes such as BN epsilon, LeakyRelu
  alpha, Pad values and pooling divisors) are converted first, with the conversion rounding;
* Conv: per output element acc = +0, acc = acc (+) x*w over (input channel, kernel row,
  kernel column) in that order, padded positions skipped, bias added last;
  Gemm/MatMul: acc = +0, products over k in order, bias last (``--compat qresnet``: Gemm
  starts from the bias); accumulation ``sequential`` acc = round(acc + round(x*w)),
  ``fma`` acc = round(acc + x*w), ``exact`` one rounding of the exact sum (a quire);
* ConvTranspose (ONNX strides, pads, dilations, group, output_padding, output_shape,
  auto_pad) in gather form, the Conv rule: per output element acc = +0, then acc (+) x*w over
  the contributing (input channel, kernel row, kernel column) in lexicographic order (output
  o = i*stride + k*dilation - pad_begin; non-contributing taps skipped), bias added last;
* InstanceNormalization per (n, c): mean = (sum from +0 in row-major order) / count;
  var = dot(x - mean, x - mean) / count with the accumulation rule above (sequential:
  acc = round(acc + round(d*d))); y = ((x - mean) / sqrt(var + eps)) * scale + B left to right;
* BatchNormalization ((x - mean) / sqrt(var + eps)) * scale + B left to right (the
  per-channel sqrt once); Global/AveragePool: sum from +0 in row-major window order, then
  divide by the (converted) count; Add/Sub/Mul/Div/Sqrt element-wise; Relu (x if x > 0 or
  NaN, else +0), MaxPool (first maximum in window order, NaN wins), Clip, Pad, Slice,
  Flatten, Reshape, Identity, Concat exact; LeakyRelu one multiply (``--compat qresnet``
  compares as the C++ engine, false on NaN: Relu NaN -> +0, LeakyRelu x > 0 ? x : a*x,
  MaxPool best = -inf, replaced only when v > best, Clip keeps NaN; ``EmuConfig.mpfr_compare``);
  Exp, Tanh correctly
  rounded (MPFR); Sigmoid = 1 / (1 + exp(-x)) in three rounded steps;
* exporter ops (ReduceMean/Sum, Softmax, HardSigmoid/Swish, Sum, Max/Min, Cast, LRN, Resize,
  Shape, Gather, Split, ConstantOfShape, Expand): ``ops_ext_fast``, ``ops_resize`` and
  ``ops_shape`` state their rules; integer (shape) tensors pass through exactly as int64.
  Kernels declare ``data_movement`` / ``exact`` (``ops_shape``); the listeners read that.

``Interpreter(graph, config, engine="fast"|"reference")``; ``config.make_config(...)``.
"""

from qcompile.backends.mpfr.config import EmuConfig, make_config, qresnet
from qcompile.backends.mpfr.interpreter import ENGINES, Interpreter

__all__ = ["ENGINES", "EmuConfig", "Interpreter", "make_config", "qresnet"]
