"""The model's side of feeding calibration batches: every pass that runs the graph on
``ctx.calib_data`` goes through :func:`model_data` and :func:`feeds_of`.

* :func:`model_data`: the dataset as the graph's input declares it (layout NCHW/NHWC, dtype
  float32/float16/uint8, fixed square size; rules in :mod:`qcompile.data.model_input`), via
  ``Dataset.for_model`` - one view per dataset and input, so each adaptation is logged once.
  In-memory feeds and other iterables are returned unchanged.
* :func:`feeds_of`: one batch as the feed dict ``{input name: x}``; several graph inputs are
  one-line errors here (they are fed by name only by ``calibrate``, from .npz members).
* The fixed batch size is not handled here: the executor the driver injects runs any number of
  rows in chunks of the model's fixed batch (``data.model_input.run_batched``), so a pass may
  ask for any ``batches(n)`` and statistics still cover exactly the real images.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qcompile.data.model_input import ModelInput
from qcompile.errors import QCompileError
from qcompile.ir import DType, Graph, Value

__all__ = ["feeds_of", "input_spec", "model_data"]


def input_spec(v: Value) -> ModelInput:
    """The graph input ``v`` as plain data (name, shape tuple, numpy dtype name)."""
    shape = None if v.type.shape is None else tuple(v.type.shape)
    dt = v.type.dtype
    try:
        dtype = "float32" if dt == DType.UNDEFINED else str(np.dtype(dt.to_numpy()))
    except TypeError:  # e.g. bfloat16: no numpy dtype; ModelInput refuses it in one line
        dtype = dt.name.lower()
    return ModelInput(v.name, shape, dtype)


def _one_input(graph: Graph) -> Value:
    if len(graph.inputs) != 1:
        names = ", ".join(f"%{v.name}" for v in graph.inputs)
        raise QCompileError(f"the model has {len(graph.inputs)} inputs ({names}); image data "
                            "feeds exactly one (calibrate maps .npz members named like them)")
    return graph.inputs[0]


def model_data(graph: Graph, data: Any, log=None) -> Any:
    """``data`` adapted to the graph's (single) input; unchanged if it is not a Dataset."""
    if data is None or not hasattr(data, "for_model") or not graph.inputs:
        return data
    return data.for_model(input_spec(_one_input(graph)), log=log)


def feeds_of(graph: Graph, x: np.ndarray) -> dict[str, np.ndarray]:
    """``{input name: x}`` for a one-input graph (else a one-line error naming the inputs)."""
    return {_one_input(graph).name: x}
