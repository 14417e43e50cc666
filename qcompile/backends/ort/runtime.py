"""ONNX Runtime sessions for lowered graphs (CPU by default; CUDA/TensorRT where installed)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort

from qcompile.backends.ort.guard import ort_guard
from qcompile.errors import QCompileError

# --opt-level names -> ORT graph optimisation levels (shared with measure.py)
OPT_LEVELS = {
    "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def providers_for(device: str) -> list[str]:
    """Execution providers for ``device`` ('cpu' or 'cuda'); error if CUDA is not installed."""
    avail = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in avail:
            raise QCompileError("device: CUDA was requested but this onnxruntime has no "
                                "CUDAExecutionProvider; install onnxruntime-gpu or use --device cpu")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise QCompileError(f"device: unknown device {device!r}; use cpu or cuda")


def session(model: onnx.ModelProto | str | os.PathLike, *, device: str = "cpu",
            opt_level: str = "all", threads: int = 0,
            optimized_model_path: str | None = None,
            arena: bool = True) -> ort.InferenceSession:
    """``arena=False``: no CPU memory arena, so a run's buffers go back to the allocator when
    it returns instead of staying reserved for the session's lifetime."""
    so = ort.SessionOptions()
    so.graph_optimization_level = OPT_LEVELS[opt_level]
    so.log_severity_level = 3
    if not arena:
        so.enable_cpu_mem_arena = False
    if threads:
        so.intra_op_num_threads = threads
    if optimized_model_path:
        so.optimized_model_filepath = optimized_model_path
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    with ort_guard("loading the model"):
        return ort.InferenceSession(src, so, providers=providers_for(device))


def run(model: onnx.ModelProto | ort.InferenceSession, feeds: Mapping[str, np.ndarray],
        outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    sess = model if isinstance(model, ort.InferenceSession) else session(model)
    names = list(outputs) if outputs is not None else [o.name for o in sess.get_outputs()]
    with ort_guard("running the model"):
        return dict(zip(names, sess.run(names, dict(feeds))))
