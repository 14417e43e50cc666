"""Conformance benchmark: every exporter-shaped model kind (qcompile.testing.exporters.CASES:
dynamo, TorchScript, tf2onnx, Caffe2/CNTK, paddle, MobileNetV2/V3, EfficientNet-B0, DenseNet,
Inception, ShuffleNet; random weights, 16x16 input) through every command, via the CLI:

* inspect;
* fold: ``run -p fold -t ort-fp32`` round trip, max |diff| vs the original on ORT <= 1e-5;
* int8: ``run -p fold,calibrate,quantize -t ort-int8`` on 16 random calibration images; the
  output SQNR vs FP32 on 3 other images;
* emulate fp32: ``emulate --format fp32`` vs ORT, <= 1e-5 of max |logit|;
* emulate b15e4: ``emulate --format b15e4 --verify 20`` (15-bit float, 4 exponent bits), 0
  fast/reference mismatches.

Each cell: ok / refused: <one-line error> / crash: <last line> / wrong: <what disagreed>.

    python benchmarks/bench_conformance.py

Prints a markdown table; writes benchmarks/results/bench_conformance.json.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from conformance.harness import BENCH_COMMANDS, CASES, Outcome, Workspace, run_command  # noqa: E402

from benchmarks._common import table, write_json  # noqa: E402


def main() -> None:
    rows, results = [], {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name, case in CASES.items():
            ws = Workspace.create(case, Path(tmp) / name)
            res = {}
            for cmd in BENCH_COMMANDS:
                t = time.perf_counter()
                try:
                    out = run_command(ws, cmd)
                except Exception as e:  # noqa: BLE001 - the harness itself failed
                    out = Outcome("crash", f"harness: {type(e).__name__}: {e}"[:300])
                res[cmd] = {"status": out.status, "detail": out.detail,
                            "metrics": out.metrics, "seconds": round(time.perf_counter() - t, 3)}
            results[name] = res
            sq = res["int8"]["metrics"].get("sqnr_db")
            rows.append([name, *(cell_of(res[c]) for c in BENCH_COMMANDS),
                         "-" if sq is None else f"{sq:.1f}"])
    headers = ["model kind", "inspect", "fold round trip", "int8", "emulate fp32",
               "emulate b15e4", "int8 SQNR (dB)"]
    print(table(headers, rows))
    n_ok = sum(r["status"] == "ok" for res in results.values() for r in res.values())
    n = sum(len(res) for res in results.values())
    print(f"\n{n_ok}/{n} ok in {time.perf_counter() - t0:.1f} s")
    path = write_json("bench_conformance", {"commands": list(BENCH_COMMANDS), "results": results,
                                            "ok": n_ok, "total": n})
    print(f"wrote {path.relative_to(ROOT)}")


def cell_of(r: dict) -> str:
    return r["status"] if r["status"] == "ok" else f"{r['status']}: {r['detail']}"


if __name__ == "__main__":
    main()
