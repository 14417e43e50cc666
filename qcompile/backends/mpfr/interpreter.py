"""Graph interpreter for the MPFR backend: one loop, two engines (``fast`` and ``reference``).

``Interpreter(graph, config, engine)`` checks every node up front (all unsupported ops are
reported at once, before any work), converts the graph's float constants into the conversion
format once (cached per interpreter), and runs nodes in topological order with last-use
freeing.  Listeners see every node's outputs (per-layer overflow/underflow statistics, golden
vector dumps, verification).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np

from qcompile.backends.mpfr.common import KernelError
from qcompile.backends.mpfr.config import EmuConfig
from qcompile.backends.mpfr.fast import FastArith
from qcompile.errors import QCompileError, UnsupportedOpError
from qcompile.ir import Graph, Node

ENGINES = ("fast", "reference")
_F64 = np.float64


class InterpretError(RuntimeError):
    """A kernel failed; the message names the node."""


class FastEngine:
    name = "fast"

    def __init__(self, cfg: EmuConfig, *, use_numba: bool = True) -> None:
        self.cfg = cfg
        self.A = FastArith(cfg.fmt, cfg.rounding, cfg.accumulate, use_numba=use_numba)
        self.C = FastArith(cfg.convert_fmt, cfg.convert_rounding)
        self._ref = None

    @property
    def table(self):
        from qcompile.backends.mpfr.ops_fast import FAST

        return FAST

    def convert(self, a) -> np.ndarray:
        return self.C.round(np.asarray(a, _F64))

    def from_numpy(self, a):
        return np.asarray(a, _F64)

    def to_numpy(self, t) -> np.ndarray:
        return t

    def ref_arith(self):
        if self._ref is None:
            from qcompile.backends.mpfr.ref import RefArith

            self._ref = RefArith(self.cfg.fmt, self.cfg.rounding, self.cfg.accumulate)
        return self._ref


class RefEngine:
    name = "reference"

    def __init__(self, cfg: EmuConfig) -> None:
        from qcompile.backends.mpfr.ref import RefArith

        self.cfg = cfg
        self.A = RefArith(cfg.fmt, cfg.rounding, cfg.accumulate)
        self.C = RefArith(cfg.convert_fmt, cfg.convert_rounding)

    @property
    def table(self):
        from qcompile.backends.mpfr.ops_ref import REF

        return REF

    def convert(self, a) -> np.ndarray:
        a = np.asarray(a, _F64)
        out = np.empty(a.shape, object)
        flat = out.reshape(-1)
        for i, v in enumerate(a.reshape(-1).tolist()):
            flat[i] = self.C.round(v)
        return out

    def from_numpy(self, a):
        from qcompile.backends.mpfr.ref import to_obj

        return to_obj(a)

    def to_numpy(self, t) -> np.ndarray:
        from qcompile.backends.mpfr.ref import to_float

        return to_float(t)


def make_engine(cfg: EmuConfig, engine: str = "fast", **kw):
    if engine == "fast":
        return FastEngine(cfg, **kw)
    if engine == "reference":
        return RefEngine(cfg)
    raise QCompileError(f"--engine: unknown engine {engine!r}; choose fast or reference")


def _is_float(a: np.ndarray) -> bool:
    return np.issubdtype(a.dtype, np.floating)


def _unsupported_reason(node: Node, opset: int = 17) -> str | None:
    a = node.attrs
    if node.op == "Gemm" and (float(a.get("alpha", 1.0)) != 1.0 or float(a.get("beta", 1.0)) != 1.0):
        return "Gemm with alpha/beta != 1"
    if (node.op in ("Conv", "ConvTranspose", "MaxPool", "AveragePool")
            and len(a.get("kernel_shape") or (1, 1)) != 2):
        return f"{node.op} that is not 2-D"
    if node.op == "BatchNormalization" and int(a.get("training_mode", 0)):
        return "BatchNormalization in training mode"
    if node.op == "Pad" and str(a.get("mode", "constant")).strip("b'") == "wrap":
        return "Pad mode=wrap"
    if node.op == "Resize":
        from qcompile.backends.mpfr.ops_resize import unsupported_reason

        return unsupported_reason(a)
    if node.op == "MaxPool" and len(node.outputs) > 1:
        return "MaxPool with an Indices output"
    if node.op == "Cast":
        from qcompile.backends.mpfr.common import cast_target

        try:
            cast_target(a.get("to", 1))
        except KernelError:
            return f"Cast to ONNX type {a.get('to')}"
    if node.op == "Softmax" and opset < 13:
        return "Softmax before opset 13 (2-D coercion)"
    return None


# Ops whose outputs depend on their inputs only; with every input a constant (FQ / QDQ of a
# weight), the first run's outputs serve every later run (listeners still see them each run).
_FOLD_OPS = frozenset({"FQ", "QDQ", "QuantizeLinear", "DequantizeLinear"})


class Interpreter:
    """Evaluate ``graph`` in the emulated format with one engine."""

    def __init__(self, graph: Graph, cfg: EmuConfig, engine: str = "fast",
                 listeners: Sequence[Callable[[Node, Sequence, Sequence], None]] = (),
                 **engine_kw) -> None:
        self.graph, self.cfg = graph, cfg
        self.engine = make_engine(cfg, engine, **engine_kw)
        self.listeners = list(listeners)
        self.check()
        self._consts: dict = {}
        # rounding a constant weight into a format is the same every run: computed once
        self._foldable = {n for n in graph.nodes if n.op in _FOLD_OPS
                          and all(v is None or v.is_const for v in n.inputs)}
        self._folded: dict = {}
        self.node_seconds: dict[str, float] = {}
        self.listener_seconds = 0.0  # stats/verify/dump time, not part of the evaluation
        nodes = graph.nodes
        last: dict = {}
        for i, n in enumerate(nodes):
            for v in n.inputs:
                if v is not None:
                    last[v] = i
        keep = set(graph.outputs)
        self._free_after = [[] for _ in nodes]
        for v, i in last.items():
            if v not in keep and not v.is_const:
                self._free_after[i].append(v)
        for i, n in enumerate(nodes):  # outputs nobody reads: dropped right after their node
            self._free_after[i].extend(o for o in n.outputs if o not in last and o not in keep)

    def unsupported(self) -> dict[str, list[str]]:
        """{op or op-with-reason: [node names]} for every node this engine cannot run."""
        missing: dict[str, list[str]] = {}
        table = self.engine.table
        for n in self.graph.nodes:
            reason = None if table.lookup(n) is not None else n.qualified_op
            reason = reason or _unsupported_reason(n, self.graph.opset)
            if reason:
                missing.setdefault(reason, []).append(n.name)
        return missing

    def check(self) -> None:
        missing = self.unsupported()
        if missing:
            raise UnsupportedOpError(f"MPFR ({self.engine.name} engine)", missing)

    def const(self, v):
        """The converted (cached) value of a constant Value."""
        t = self._consts.get(v)
        if t is None:
            a = np.asarray(v.const)
            t = self.engine.convert(a) if _is_float(a) else a
            self._consts[v] = t
        return t

    def prepare(self) -> float:
        """Convert every constant now; returns the seconds spent."""
        t0 = time.perf_counter()
        for v in self.graph.initializers.values():
            self.const(v)
        for n in self.graph.nodes:
            for v in n.inputs:
                if v is not None and v.is_const:
                    self.const(v)
        return time.perf_counter() - t0

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """feeds: graph input name -> array (converted into the format first).
        Returns graph output name -> engine tensor (float64, or object arrays of mpfr)."""
        g, E = self.graph, self.engine
        env: dict = {}
        for v in g.inputs:
            if v.name not in feeds:
                raise QCompileError(f"missing input {v.name!r}")
            a = np.asarray(feeds[v.name])
            env[v] = E.convert(a) if _is_float(a) else a
        for i, node in enumerate(g.nodes):
            args = [None if v is None else (self.const(v) if v.is_const else env[v])
                    for v in node.inputs]
            while args and args[-1] is None:
                args.pop()
            kernel = E.table.lookup(node)
            t0 = time.perf_counter()
            kw = node.attrs
            if getattr(kernel, "needs_outputs", False):  # Split with implicit piece count
                kw = {**kw, "n_outputs": len(node.outputs)}
            try:
                outs = self._folded.get(node)
                if outs is None:
                    outs = kernel(E, *args, **kw)
                    if node in self._foldable:
                        self._folded[node] = outs
            except (QCompileError, KernelError):
                raise
            except Exception as e:
                raise InterpretError(f"while executing {node.qualified_op} node {node.name!r}: "
                                     f"{type(e).__name__}: {e}") from e
            self.node_seconds[node.name] = self.node_seconds.get(node.name, 0.0) + (
                time.perf_counter() - t0)
            if len(outs) < len(node.outputs):
                raise InterpretError(f"{node.op} node {node.name!r} returned {len(outs)} "
                                     f"outputs, the graph expects {len(node.outputs)}")
            t1 = time.perf_counter()
            for listener in self.listeners:
                listener(node, args, outs)
            self.listener_seconds += time.perf_counter() - t1
            env.update(zip(node.outputs, outs))
            for v in self._free_after[i]:
                env.pop(v, None)
        return {v.name: (self.const(v) if v.is_const else env[v]) for v in g.outputs}

    def run_numpy(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``run`` with every output as a float64 array."""
        return {k: self.engine.to_numpy(t) for k, t in self.run(feeds).items()}


def ops_of(graphs: Iterable[Graph]) -> set[str]:
    return {n.qualified_op for g in graphs for n in g.nodes}
