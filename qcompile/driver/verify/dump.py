"""Golden vectors (``qcompile verify --dump DIR``) for a hardware test bench.

``DIR`` (created; must not exist yet, or be empty) receives, for the images verified:

* ``inputs.npz``: the model input(s) as fed (float32, NCHW, after preprocessing);
* ``tensors.npz``: every quantised tensor (QuantizeLinear output) of *the exact quantised
  network* (integers in their storage type, int4 widened to int8), key = tensor name;
* ``outputs.npz``: the graph outputs of the exact network (integers, or float64 for a float
  output such as logits: the exact value correctly rounded to binary64);
* ``manifest.json``: ``{"format": "qcompile-golden/1", "model", "images", "source",
  "inputs": [...], "tensors": [...], "outputs": [...]}``, each entry ``{"name", "file", "dtype",
  "shape", "scale", "zero_point", "axis", "producer"}`` (scale/zero point lists; ``producer``
  the op that computes the float value before quantisation; ``null`` where not applicable).

Everything is written to a temporary folder next to ``DIR`` and renamed at the end, so an error
never leaves a half-written dump.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from qcompile.errors import QCompileError

FORMAT = "qcompile-golden/1"


class GoldenDumper:
    def __init__(self, folder: str, session) -> None:
        self.dir = Path(folder)
        if self.dir.exists() and (not self.dir.is_dir() or any(self.dir.iterdir())):
            raise QCompileError(f"--dump: {folder} exists and is not an empty folder; "
                                "choose a new folder")
        if not self.dir.parent.exists():
            raise QCompileError(f"--dump: folder {self.dir.parent} does not exist")
        self.vs = session
        self.inputs: list[np.ndarray] = []
        self.tensors: dict[str, list[np.ndarray]] = {t.name: [] for t in session.runner.tensors}
        self.outputs: dict[str, list[np.ndarray]] = {o: [] for o in session.runner.outputs}

    def add(self, x: np.ndarray, exact: dict) -> None:
        self.inputs.append(np.asarray(x, np.float32))
        for k in self.tensors:
            self.tensors[k].append(np.asarray(exact[k]))
        for k in self.outputs:
            self.outputs[k].append(np.asarray(exact[k]))

    def write(self) -> Path:
        tmp = Path(tempfile.mkdtemp(prefix=".qcompile-dump-", dir=self.dir.parent))
        try:
            inp = np.concatenate(self.inputs) if self.inputs else np.zeros((0,), np.float32)
            tens = {k: np.concatenate(v) for k, v in self.tensors.items() if v}
            outs = {k: np.concatenate(v) for k, v in self.outputs.items() if v}
            np.savez(tmp / "inputs.npz", **{self.vs.input.name: inp})
            np.savez(tmp / "tensors.npz", **tens)
            np.savez(tmp / "outputs.npz", **outs)
            info = {t.name: t for t in self.vs.runner.tensors}

            def entry(name, arr, file):
                t = info.get(name)
                return {"name": name, "file": file, "dtype": str(arr.dtype),
                        "shape": list(arr.shape),
                        "scale": None if t is None else np.asarray(t.scale).reshape(-1).tolist(),
                        "zero_point": None if t is None else
                        np.asarray(t.zero_point).reshape(-1).astype(int).tolist(),
                        "axis": None if t is None else t.axis,
                        "producer": None if t is None else t.producer}

            manifest = {"format": FORMAT, "model": self.vs.path, "images": int(len(inp)),
                        "source": "exact quantised network (qcompile MPFR backend)",
                        "inputs": [entry(self.vs.input.name, inp, "inputs.npz")],
                        "tensors": [entry(k, v, "tensors.npz") for k, v in tens.items()],
                        "outputs": [entry(k, v, "outputs.npz") for k, v in outs.items()]}
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
            if self.dir.exists():
                self.dir.rmdir()
            tmp.replace(self.dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return self.dir
