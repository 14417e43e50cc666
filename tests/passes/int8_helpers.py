"""Shared helpers for the int8 tests: tiny labelled image sets and a calibrated pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from qcompile.backends.ort.executor import OrtExecutor
from qcompile.data import open_dataset
from qcompile.frontend import lift
from qcompile.ir import Graph
from qcompile.passes import PassContext, parse_pipeline, run_pipeline


def tiny_npz(path: Path, n: int = 24, size: int = 16, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    np.savez(path, images=rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
             labels=rng.integers(0, 10, n).astype(np.int64))
    return path


def compile_graph(model: onnx.ModelProto, data_path: Path, pipeline: str,
                  **ctx_kw) -> tuple[Graph, list]:
    g = lift(model)
    ctx = PassContext(calib_data=open_dataset(data_path), executor=OrtExecutor(), **ctx_kw)
    res = run_pipeline(g, parse_pipeline(pipeline), ctx)
    return res.graph, res.results
