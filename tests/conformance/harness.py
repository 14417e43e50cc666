"""Runs one conformance command on one exporter-shaped model through the CLI (typer's CliRunner)
and classifies the result: ``ok``, ``refused`` (exit 2 with one ``error: ...`` line) or
``crash`` (anything else: a traceback, an exception escaping typer, a multi-line error).

Used by tests/conformance/test_conformance.py and benchmarks/bench_conformance.py.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from typer.testing import CliRunner

from qcompile.cli import app
from qcompile.testing.exporters import CASES, Case, input_shape

COMMANDS = ("inspect", "fold", "int8", "emulate_fp32", "emulate_fp16")
#: the benchmark's emulate column: a 15-bit float (1 sign, 4 exponent, 10 mantissa bits)
BENCH_COMMANDS = ("inspect", "fold", "int8", "emulate_fp32", "emulate_b15e4")
TOL = 1e-5
N_CALIB, N_EVAL = 16, 3
_runner = CliRunner()


@dataclass
class Outcome:
    """``status``: ok | refused | crash | wrong (ran, but the numbers disagree); ``detail``: the
    one-line refusal, the crash's last line or what disagreed; ``metrics``: e.g. SQNR."""

    status: str
    detail: str = ""
    metrics: dict = field(default_factory=dict)


@dataclass
class Workspace:
    """A case's model, its calibration / evaluation images (float32 NCHW .npz) and ORT output."""

    case: Case
    dir: Path
    model: onnx.ModelProto
    path: Path
    calib: Path
    data: Path
    x_eval: np.ndarray  # NCHW

    @classmethod
    def create(cls, case: Case, dir: Path) -> Workspace:
        dir.mkdir(parents=True, exist_ok=True)
        model = case.build()
        path = dir / f"{case.name}.onnx"
        onnx.save(model, path)
        shape = input_shape(model, 1)
        nchw = [shape[0], shape[3], shape[1], shape[2]] if case.nhwc else shape
        rng = np.random.default_rng(1)
        calib = dir / "calib.npz"
        np.savez(calib, images=rng.standard_normal([N_CALIB] + nchw[1:]).astype(np.float32))
        x_eval = rng.standard_normal([N_EVAL] + nchw[1:]).astype(np.float32)
        data = dir / "eval.npz"
        np.savez(data, images=x_eval)
        return cls(case, dir, model, path, calib, data, x_eval)

    def ort(self, model: onnx.ModelProto | Path | None = None) -> np.ndarray:
        """Outputs [N_EVAL, classes] of ``model`` (default: the original) on ONNX Runtime, one
        image at a time when the batch is fixed."""
        m = self.model if model is None else model
        so = ort.SessionOptions()
        so.log_severity_level = 3
        src = str(m) if isinstance(m, Path) else m.SerializeToString()
        sess = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        x = self.x_eval.transpose(0, 2, 3, 1) if self.case.nhwc else self.x_eval
        fixed = isinstance(inp.shape[0], int) and inp.shape[0] > 0
        parts = [x[i:i + 1] for i in range(len(x))] if fixed else [x]
        out = [sess.run(None, {inp.name: np.ascontiguousarray(p)})[0] for p in parts]
        return np.concatenate(out).reshape(len(x), -1).astype(np.float64)


def invoke(*args) -> tuple[Outcome | None, object]:
    """Run the CLI; (None, result) on exit 0, else (refused/crash Outcome, result)."""
    r = _runner.invoke(app, [str(a) for a in args])
    if r.exit_code == 0 and r.exception is None:
        return None, r
    lines = [ln for ln in (r.stderr or "").splitlines() if ln.strip()]
    if r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: ") \
            and "Traceback" not in r.output:
        return Outcome("refused", lines[0][len("error: "):]), r
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        detail = f"{type(r.exception).__name__}: {str(r.exception).splitlines()[0] if str(r.exception) else ''}"
    else:
        detail = (lines[-1] if lines else f"exit {r.exit_code}")
    return Outcome("crash", detail[:300]), r


def _json(r) -> dict:
    return json.loads(r.stdout)


def rel_err(want: np.ndarray, got: np.ndarray) -> float:
    if want.shape != got.shape:
        return float("inf")
    return float(np.abs(want - got).max() / max(np.abs(want).max(), 1e-30))


def sqnr_db(want: np.ndarray, got: np.ndarray) -> float:
    noise = float(((want - got) ** 2).sum())
    return float("inf") if noise == 0 else 10 * math.log10(float((want ** 2).sum()) / noise)


def run_command(ws: Workspace, command: str) -> Outcome:
    """One command of ``COMMANDS`` on the workspace's model."""
    if command == "inspect":
        bad, r = invoke("inspect", ws.path, "--json")
        if bad:
            return bad
        rep = _json(r)
        return Outcome("ok", metrics={"params": rep.get("parameters", rep.get("params"))})
    if command == "fold":
        out = ws.dir / "fold.onnx"
        bad, _ = invoke("run", ws.path, "-p", "fold", "-t", "ort-fp32", "-o", out)
        if bad:
            return bad
        want, got = ws.ort(), ws.ort(out)
        err = float(np.abs(want - got).max() / max(np.abs(want).max(), 1.0)) \
            if want.shape == got.shape else float("inf")
        st = "ok" if err <= TOL else "wrong"
        return Outcome(st, "" if st == "ok" else f"max rel diff {err:.3g} > {TOL}",
                       {"rel_err": err})
    if command == "int8":
        out = ws.dir / "int8.onnx"
        bad, _ = invoke("run", ws.path, "-p", "fold,calibrate,quantize", "-t", "ort-int8",
                        "--calib", ws.calib, "-o", out)
        if bad:
            return bad
        want, got = ws.ort(), ws.ort(out)
        s = sqnr_db(want, got) if want.shape == got.shape else float("nan")
        q = sum(n.op_type == "QuantizeLinear" for n in onnx.load(out).graph.node)
        st = "ok" if np.isfinite(s) and s > 0 and q > 0 else "wrong"
        why = f"SQNR {s:.3g} dB" if q else "no QuantizeLinear in the int8 model"
        return Outcome(st, "" if st == "ok" else why, {"sqnr_db": s, "quantize_nodes": q})
    if command in ("emulate_fp32", "emulate_fp16", "emulate_b15e4"):
        fmt = command.split("_")[1]
        extra = ["--verify", "20"] if fmt != "fp32" else []
        bad, r = invoke("emulate", ws.path, "--format", fmt, "--data", ws.data, "--json", *extra)
        if bad and not (bad.status == "crash" and r.exit_code == 1 and "mismatch" in bad.detail):
            return bad
        rep = json.loads(r.stdout)
        got = np.array([[float(v) for v in res["logits"]] for res in rep["results"]])
        if fmt != "fp32":
            v = rep["verify"]
            n = int(v["mismatches"])
            st = "ok" if n == 0 else "wrong"
            return Outcome(st, "" if st == "ok" else f"{n} fast/reference mismatch(es)",
                           {"mismatches": n, "elements": v["elements"]})
        err = rel_err(ws.ort(), got)
        st = "ok" if err <= TOL else "wrong"
        return Outcome(st, "" if st == "ok" else f"max diff / max|logit| {err:.3g} > {TOL}",
                       {"rel_err": err})
    raise ValueError(f"unknown command {command!r}")


__all__ = ["BENCH_COMMANDS", "CASES", "COMMANDS", "Outcome", "Workspace", "run_command", "invoke", "sqnr_db"]
