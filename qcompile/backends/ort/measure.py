"""Running model files for evaluation and benchmarks: predictions, latency, fused ops, EPs.

* :class:`ModelRunner` wraps one InferenceSession (first input, first output).
* ``latency_ms``: ``warmup`` runs, then the median of at least ``iters`` timed runs
  (``time.perf_counter``), in milliseconds.
* :func:`optimized_op_counts`: op types of the graph ORT actually executes
  (``SessionOptions.optimized_model_filepath``), e.g. to see QLinearConv fusion.
* :func:`node_providers`: which execution provider ran each node (from an ORT profile).
* Devices: ``cpu``; ``cuda`` for float models; for int8 (QDQ) models on NVIDIA the TensorRT EP,
  because the CUDA EP has no int8 convolution kernels (QDQ models would run dequantised).
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Sequence

import numpy as np
import onnx
import onnxruntime as ort

from qcompile.backends.ort.guard import ort_guard
from qcompile.backends.ort.runtime import OPT_LEVELS
from qcompile.errors import QCompileError


def providers(device: str, *, int8: bool = False) -> list[str]:
    """Execution providers for ``device`` ('cpu' or 'cuda'); explains what is missing."""
    avail = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device != "cuda":
        raise QCompileError(f"device: unknown device {device!r}; use cpu or cuda")
    if int8:
        if "TensorrtExecutionProvider" not in avail:
            raise QCompileError(
                "device: int8 on NVIDIA GPUs needs ONNX Runtime's TensorRT execution provider "
                "(the CUDA EP has no int8 convolution kernels), and this onnxruntime has none "
                f"(available: {', '.join(avail)}); install onnxruntime-gpu with TensorRT or use "
                "--device cpu")
        return ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in avail:
        raise QCompileError("device: CUDA was requested but this onnxruntime has no "
                            "CUDAExecutionProvider; install onnxruntime-gpu or use --device cpu")
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


def is_qdq_model(model: onnx.ModelProto) -> bool:
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)


def read_model(path: str | os.PathLike) -> onnx.ModelProto:
    """An ONNX file for running (external data beside it); one-line error if unreadable."""
    if not os.path.isfile(path):
        raise QCompileError(f"model: {path} does not exist; check the path")
    try:
        return onnx.load(str(path))
    except Exception:
        raise QCompileError(f"model: {path} is not a readable ONNX file") from None


def session_options(opt_level: str = "all", threads: int = 0, optimized: str | None = None,
                    profile: bool = False) -> ort.SessionOptions:
    """Quiet SessionOptions: ``opt_level`` (OPT_LEVELS), ``threads`` intra-op threads (one
    inter-op), ``optimized`` where to write ORT's optimised graph, ``profile`` an ORT profile."""
    so = ort.SessionOptions()
    so.graph_optimization_level = OPT_LEVELS[opt_level]
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    if optimized:
        so.optimized_model_filepath = optimized
    if profile:
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tempfile.mkdtemp(prefix="qcompile-prof-"), "p")
    return so


class ModelRunner:
    """One ONNX Runtime session over a model file, for predictions and timing."""

    def __init__(self, path: str | os.PathLike, *, device: str = "cpu", threads: int = 0,
                 opt_level: str = "all") -> None:
        self.path = str(path)
        model = read_model(path)
        self.int8 = is_qdq_model(model)
        self.providers = providers(device, int8=self.int8)
        try:
            self.sess = ort.InferenceSession(model.SerializeToString(),
                                             session_options(opt_level, threads),
                                             providers=self.providers)
        except Exception as e:
            raise QCompileError(f"model: ONNX Runtime cannot load {path}: "
                                f"{str(e).splitlines()[0]}") from None
        self.input = self.sess.get_inputs()[0]
        self.output = self.sess.get_outputs()[0].name
        self.metadata = dict(model.metadata_props and {p.key: p.value for p in model.metadata_props})
        self.size_bytes = os.path.getsize(path)
        self.input_shape = [d if isinstance(d, int) else None for d in self.input.shape]

    def predict(self, x: np.ndarray) -> np.ndarray:
        with ort_guard(f"running {self.path}"):
            return self.sess.run([self.output], {self.input.name: x})[0]

    def latency_ms(self, x: np.ndarray, *, warmup: int = 3, iters: int = 20,
                   min_seconds: float = 0.5) -> float:
        feed = {self.input.name: x}
        for _ in range(warmup):
            with ort_guard(f"running {self.path}"):
                self.sess.run([self.output], feed)
        times = []
        start = time.perf_counter()
        while len(times) < iters or time.perf_counter() - start < min_seconds:
            t0 = time.perf_counter()
            self.sess.run([self.output], feed)
            times.append(time.perf_counter() - t0)
            if len(times) >= 10 * iters:
                break
        return 1000.0 * statistics.median(times)


def optimized_op_counts(model: onnx.ModelProto | str | os.PathLike, *,
                        opt_level: str = "all") -> Counter:
    """Op types (``domain.op`` for non-default domains) after ORT's CPU graph optimisations."""
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "optimized.onnx")
        with ort_guard("loading the model"):
            ort.InferenceSession(src, session_options(opt_level, optimized=out),
                                 providers=["CPUExecutionProvider"])
        opt = onnx.load(out)
    return Counter((f"{n.domain}." if n.domain not in ("", "ai.onnx") else "") + n.op_type
                   for n in opt.graph.node)


def node_providers(path: str | os.PathLike, feed: np.ndarray, *, device: str = "cpu",
                   int8: bool | None = None) -> dict[str, str]:
    """``{node name: execution provider}`` for one run, read from an ORT profile."""
    model = read_model(path)
    provs = providers(device, int8=is_qdq_model(model) if int8 is None else int8)
    with ort_guard(f"running {path}"):
        sess = ort.InferenceSession(model.SerializeToString(), session_options(profile=True),
                                    providers=provs)
        sess.run(None, {sess.get_inputs()[0].name: feed})
    prof = sess.end_profiling()
    try:
        with open(prof) as f:
            events = json.load(f)
    finally:
        os.unlink(prof)
    out: dict[str, str] = {}
    for e in events:
        args = e.get("args", {})
        if e.get("cat") == "Node" and "provider" in args:
            out[e["name"].removesuffix("_kernel_time")] = args["provider"]
    return out


def provider_summary(mapping: dict[str, str]) -> dict[str, int]:
    return dict(Counter(mapping.values()))


def tile_batch(x: np.ndarray, batch: int) -> np.ndarray:
    """``batch`` rows taken cyclically from ``x`` (for latency at a fixed batch size)."""
    idx = np.arange(batch) % len(x)
    return np.ascontiguousarray(x[idx])


def fused_summary(counts: Counter, keys: Sequence[str] = ("com.microsoft.QLinearConv",
                                                          "com.microsoft.QLinearAdd")) -> str:
    return ", ".join(f"{k.split('.')[-1]}={counts.get(k, 0)}" for k in keys)
