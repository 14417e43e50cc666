"""Exact data-movement and shape ops: one implementation serves both engines.

They never round: the outputs are elements (or shapes, or converted constants) of their
inputs, so the same numpy code is correct for float64 arrays of format values (fast engine),
object arrays of mpfr (reference engine) and integer tensors (shapes, indices: numpy int64,
passed through exactly).  Each kernel here is declared with :func:`data_movement`, which is
what the listeners read (no overflow counts, no ``--verify``), and the op-table test checks
that both tables hold the same kernels with the same flags.

* Shape(x){start, end}: the int64 vector ``x.shape[start:end]``;
* ConstantOfShape(shape){value}: a tensor of that shape filled with ``value`` (default float
  +0); a float value is a constant of the model, converted into the format first;
* Gather(data, indices){axis}: ``np.take`` (negative indices count from the end);
* Split(x[, split]){axis, split, num_outputs}: consecutive pieces along ``axis``; without
  sizes, ``n`` equal pieces (the last one smaller when the axis does not divide, as ONNX 18);
* Expand(x, shape): numpy broadcasting of ``x`` to ``broadcast(x.shape, shape)``;
* Flatten, Reshape, Identity, Dropout (inference: identity), Concat, Transpose, Squeeze,
  Unsqueeze (axes as input or, before opset 13, attribute), Slice: as ONNX.
"""

from __future__ import annotations

import numpy as np

from qcompile.backends.base import OpTable
from qcompile.backends.mpfr import common as cm


def data_movement(fn):
    """Declare ``fn`` an exact data-movement kernel (implies :func:`exact`)."""
    fn.data_movement = True
    fn.exact = True
    return fn


def exact(fn):
    """Declare that ``fn`` never rounds (a selection of its inputs: Relu, Clip, MaxPool...)."""
    fn.exact = True
    return fn


def needs_outputs(fn):
    """The interpreter passes ``n_outputs=len(node.outputs)`` to ``fn`` (Split)."""
    fn.needs_outputs = True
    return fn


def is_data_movement(kernel) -> bool:
    return bool(getattr(kernel, "data_movement", False))


def is_exact(kernel) -> bool:
    return bool(getattr(kernel, "exact", False))


def shape(x, *, start=0, end=None):
    return (np.array(x.shape[start:end], np.int64),)


def gather(data, indices, *, axis=0):
    out = np.take(data, np.asarray(indices, np.int64), axis=axis)
    return (out if isinstance(out, np.ndarray) else np.array(out, dtype=data.dtype),)


def split(x, sizes=None, *, axis=0, split=None, num_outputs=None, n_outputs=1):
    axis = axis % x.ndim
    n = x.shape[axis]
    s = sizes if sizes is not None else split
    if s is not None:
        s = cm._ints(s)
    else:
        k = int(num_outputs) if num_outputs is not None else int(n_outputs)
        step = -(-n // k)
        s = [min(step, n - i * step) for i in range(k)]
    if sum(s) != n or min(s, default=0) < 0:
        raise cm.KernelError(f"Split: sizes {s} do not add up to {n} along axis {axis}")
    cuts = np.cumsum(s)[:-1]
    return tuple(np.split(x, cuts, axis=axis))


def expand(x, shape_):
    out = np.broadcast_shapes(x.shape, tuple(cm._ints(shape_)))
    return (np.array(np.broadcast_to(x, out)),)


_SHARED = (("Flatten", cm.flatten), ("Reshape", cm.reshape), ("Identity", cm.identity),
           ("Dropout", cm.identity), ("Concat", cm.concat), ("Transpose", cm.transpose),
           ("Squeeze", cm.squeeze), ("Unsqueeze", cm.unsqueeze), ("Slice", cm.slice_),
           ("Shape", shape), ("Gather", gather), ("Split", split), ("Expand", expand))


def _drop_engine(fn):
    def k(E, *args, **kw):
        return fn(*args, **kw)

    k.__name__ = fn.__name__
    k.__doc__ = fn.__doc__
    return data_movement(k)


def constant_of_shape(E, shape_, *, value=None):
    """Fill value: a float is converted into the format (a constant); ints stay exact."""
    v = np.zeros(1, np.float32) if value is None else np.asarray(value).reshape(-1)
    dims = tuple(cm._ints(shape_))
    if v.dtype.kind == "f":
        return (np.full(dims, E.convert(v[:1])[0], dtype=E.convert(v[:1]).dtype),)
    return (np.full(dims, v[0], dtype=v.dtype),)


def register_data_ops(table: OpTable) -> None:
    """Register the exact data-movement ops (engine argument ignored) into ``table``."""
    for op, fn in _SHARED:
        k = _drop_engine(fn)
        if op == "Split":
            needs_outputs(k)
        table.register(op)(k)
    table.register("ConstantOfShape")(data_movement(constant_of_shape))


# ----------------------------------------------------------------------------- integer tensors
def _int_div(a, b):
    """ONNX integer Div: the quotient truncated toward zero (C semantics)."""
    q = np.abs(a) // np.abs(b)
    return np.where((a < 0) != (b < 0), -q, q)


_INT_OPS = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": _int_div,
            "Sum": np.add, "Max": np.maximum, "Min": np.minimum, "Neg": np.negative,
            "Abs": np.abs}


def _is_int(a) -> bool:
    return isinstance(a, np.ndarray) and a.dtype.kind in "iub"


def add_integer_paths(table: OpTable) -> None:
    """Element-wise ops on integer tensors only (shape arithmetic: ``Shape -> Gather -> Mul
    -> Concat -> Reshape``) are exact numpy integer arithmetic, in both engines; with any
    float operand the op's format kernel runs."""
    for op, f in _INT_OPS.items():
        fl = table._rules[("", op)]

        def k(E, *xs, _fl=fl, _f=f, _op=op, **kw):
            if xs and all(_is_int(a) for a in xs):
                if _op in ("Neg", "Abs"):
                    return (_f(xs[0]),)
                out = xs[0]
                for v in xs[1:]:
                    out = _f(out, v)
                return (np.array(out),)
            return _fl(E, *xs, **kw)

        k.__name__, k.__doc__ = fl.__name__, fl.__doc__
        k.__dict__.update(fl.__dict__)  # the exact / data_movement flags
        table.register(op, override=True)(k)
