"""The two executions behind ``qcompile verify`` and their comparison (see :mod:`qcompile.driver.verify`).

``VerifySession(path)``: an ONNX Runtime session exposing every quantised tensor, and the
MPFR interpreter (binary64 for the leftover float ops) over the exact integer graph.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from qcompile.backends.mpfr import Interpreter, make_config
from qcompile.backends.mpfr.ops_qdq_fuse import exact_integer_graph
from qcompile.backends.ort.intermediates import IntermediateRunner
from qcompile.data.model_input import ModelInput
from qcompile.driver.context import open_data
from qcompile.driver.verify.compare import FloatCmp, TensorCmp
from qcompile.errors import QCompileError
from qcompile.frontend import lift

EXACT_FORMAT = dict(bits=64, exp_bits=11)  # binary64 for the float ops left in the graph


class VerifySession:
    def __init__(self, path: str, *, opt_level: str = "all", device: str = "cpu",
                 engine: str = "fast", threads: int = 0) -> None:
        self.path = str(path)
        self.runner = IntermediateRunner(path, opt_level=opt_level, device=device,
                                         threads=threads)
        if not self.runner.tensors:
            raise QCompileError(f"model: {path} is not quantised (it has no QuantizeLinear "
                                "with constant parameters); quantise it first, e.g. qcompile "
                                "run MODEL --target ort-int8 --calib DATA -o QMODEL")
        try:
            graph = self.graph = lift(path)
        except TypeError as e:  # e.g. int4/uint4 initializers: the frontend has no 4-bit type
            raise QCompileError(f"model: {path} cannot be read into the IR ({e}); 4-bit ONNX "
                                "tensors are not supported by the frontend yet") from None
        self.input = graph.inputs[0]
        self.exact_graph, self.exact_stats = exact_integer_graph(graph)
        self.qinfo = {t.name: t for t in self.runner.tensors}
        self.tensors = [TensorCmp(t.name, t.producer, self.runner.kernel_of(t.name))
                        for t in self.runner.tensors]
        self.outputs = [TensorCmp(o, "output") if o in self.qinfo else FloatCmp(o)
                        for o in self.runner.outputs]
        self._want = set(self.qinfo) | set(self.runner.outputs)
        self.isolated: dict[str, TensorCmp] | None = None
        self._captured: dict[str, np.ndarray] = {}
        self.interp = Interpreter(self.exact_graph, make_config(**EXACT_FORMAT), engine,
                                  listeners=[self._capture])
        self.interp.prepare()

    def _capture(self, node, args, outs) -> None:
        for v, t in zip(node.outputs, outs):
            if v.name in self._want:
                self._captured[v.name] = t

    # ------------------------------------------------------------------ data
    def open_data(self, data, preprocess: str | None, limit: int | None,
                  log: Callable[[str], None]):
        from qcompile.driver.defaults import choose_preprocess, graph_facts

        # None: what the model records/describes, else refused for uint8 (data/recipe.py)
        preprocess = choose_preprocess(preprocess, [graph_facts(self.graph, self.path)], data, log)
        ds = open_data(data, preprocess, log=log)
        # fed as the model declares its input: dtype (uint8 raw pixels) and layout (NHWC);
        # never resized (a size mismatch stays the one-line error of check_input)
        t = self.input.type
        spec = ModelInput(self.input.name, None if t.shape is None else tuple(t.shape),
                          str(np.dtype(t.dtype.to_numpy())))
        if spec.layout == "NCHW":
            spec = ModelInput(spec.name, None, spec.dtype)
        ds = ds.for_model(spec, log=log)
        from qcompile.data.select import draw_limit  # --limit: the seeded stratified draw

        idx, _ = draw_limit(np.arange(len(ds), dtype=np.int64),
                            None if limit is None else max(int(limit), 0), 0, ds.labels)
        if idx.size == 0:
            raise QCompileError(f"data: no images in {ds.source} (--limit {limit})")
        return ds, idx

    def check_input(self, x: np.ndarray) -> None:
        want = self.input.type.shape
        if want is None:
            return
        want = list(want)
        ok = len(want) == x.ndim and all(not isinstance(w, int) or w in (-1, 0) or w == s
                                         for w, s in zip(want[1:], x.shape[1:]))
        if not ok:
            shown = "x".join(str(w) if isinstance(w, int) else "N" for w in want)
            raise QCompileError(f"data: images of shape {'x'.join(map(str, x.shape[1:]))} "
                                f"do not match the model input '{self.input.name}' ({shown}); "
                                "choose the matching --preprocess (e.g. cifar, imagenet)")

    # ------------------------------------------------------------------ runs
    def run_exact(self, x: np.ndarray) -> dict[str, np.ndarray]:
        self._captured = {}
        outs = self.interp.run({self.input.name: np.asarray(x)})
        got = dict(self._captured)
        for k, v in outs.items():
            got[k] = self.interp.engine.to_numpy(v) if np.asarray(v).dtype == object else v
        for k, v in list(got.items()):
            if np.asarray(v).dtype == object:
                got[k] = self.interp.engine.to_numpy(v)
        if self.input.name in self._want:
            got.setdefault(self.input.name, np.asarray(x))
        return got

    def run_isolated(self, x: np.ndarray, ort: dict) -> dict[str, np.ndarray]:
        """Every node of the exact graph fed ONNX Runtime's own integer tensors: a layer's
        departure here is its own rounding, not one inherited from an earlier layer."""
        E, it = self.interp.engine, self.interp
        env: dict = {}
        got: dict[str, np.ndarray] = {}
        for node in self.exact_graph.nodes:
            args = []
            for v in node.inputs:
                if v is None:
                    args.append(None)
                elif v.is_const:
                    args.append(it.const(v))
                elif v.name in self.qinfo and v.name in ort:
                    args.append(np.asarray(ort[v.name]))
                elif v.producer is None and v.name == self.input.name:
                    args.append(E.convert(np.asarray(x)))
                else:
                    args.append(env[v])
            while args and args[-1] is None:
                args.pop()
            outs = E.table.lookup(node)(E, *args, **node.attrs)
            for v, t in zip(node.outputs, outs):
                env[v] = t
                if v.name in self.qinfo:
                    got[v.name] = t
        return got

    def compare_isolated(self, ort: dict, iso: dict, first_image: int) -> None:
        if self.isolated is None:
            self.isolated = {t.name: TensorCmp(t.name, t.op, t.kernel) for t in self.tensors}
        for name, t in self.isolated.items():
            if name in iso:
                t.add(np.asarray(ort[name]), np.asarray(iso[name]), first_image)

    def compare(self, ort: dict, exact: dict, first_image: int) -> None:
        for t in self.tensors:
            if t.name not in exact:
                raise QCompileError(f"tensor '{t.name}': the exact network did not produce it")
            t.add(np.asarray(ort[t.name]), np.asarray(exact[t.name]), first_image)
        for o in self.outputs:
            o.add(np.asarray(ort[o.name]), np.asarray(exact[o.name]), first_image)
