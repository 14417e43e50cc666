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

Then the dynamo-export speed check: ``qcompile emulate --bits 15`` (b15e4) with the tiger
image at 128x128, ImageNet preprocessing, on ``exporters.resnet18_dynamo()`` and on
``zoo.resnet(18)`` with the same weights, interleaved, ``--repeat`` times each (median): wall
time of the whole command (lift, canonicalize, kernel compile, run) and the emulation time the
command reports; ratio dynamo / zoo (target <= 1.1); whether the logits are bit-identical.

    python benchmarks/bench_conformance.py [--repeat 3] [--skip-table] [--skip-resnet18]

Prints markdown tables; writes benchmarks/results/bench_conformance.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from conformance.harness import BENCH_COMMANDS, CASES, Outcome, Workspace, run_command  # noqa: E402

from benchmarks._common import DATA, table, write_json  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-table", action="store_true")
    ap.add_argument("--skip-resnet18", action="store_true")
    args = ap.parse_args()
    out: dict = {}
    if not args.skip_table:
        out.update(conformance_table())
    if not args.skip_resnet18:
        out["resnet18_dynamo_b15e4"] = resnet18_speed(args.repeat)
    path = write_json("bench_conformance", out)
    print(f"wrote {path.relative_to(ROOT)}")


def resnet18_speed(repeat: int) -> dict:
    """emulate b15e4 on the dynamo-style and the zoo ResNet-18 (same weights), interleaved."""
    import onnx
    from conformance.harness import invoke

    from qcompile.testing import zoo
    from qcompile.testing.exporters import resnet18_dynamo

    image = DATA / "tiger128.jpg"
    times: dict[str, dict[str, list[float]]] = {"dynamo": {"wall": [], "emulate": []},
                                                "zoo": {"wall": [], "emulate": []}}
    logits: dict[str, list] = {}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {"dynamo": Path(tmp) / "resnet18_dynamo.onnx", "zoo": Path(tmp) / "resnet18.onnx"}
        onnx.save(resnet18_dynamo(image_size=128), paths["dynamo"])
        onnx.save(zoo.resnet(18, image_size=128), paths["zoo"])
        for _ in range(repeat):
            for kind, path in paths.items():
                t = time.perf_counter()
                bad, r = invoke("emulate", path, "--bits", "15", "--image", image,
                                "--preprocess", "imagenet", "--json")
                wall = time.perf_counter() - t
                if bad:
                    raise SystemExit(f"emulate {kind}: {bad.status}: {bad.detail}")
                rep = json.loads(r.stdout)
                times[kind]["wall"].append(wall)
                times[kind]["emulate"].append(float(rep["seconds"]))
                logits[kind] = rep["results"][0]["logits"]
    med = {k: {m: statistics.median(v) for m, v in d.items()} for k, d in times.items()}
    ratio = {m: med["dynamo"][m] / med["zoo"][m] for m in ("wall", "emulate")}
    rows = [[kind, f"{med[kind]['wall']:.2f}", f"{med[kind]['emulate']:.2f}"]
            for kind in ("zoo", "dynamo")]
    rows.append(["ratio dynamo / zoo", f"{ratio['wall']:.3f}", f"{ratio['emulate']:.3f}"])
    print(f"\nResNet-18 128x128, emulate --bits 15 (b15e4), median of {repeat}:\n")
    print(table(["graph", "command wall (s)", "emulation (s)"], rows))
    same = logits["dynamo"] == logits["zoo"]
    print(f"\nlogits bit-identical: {same}; target ratio <= 1.1: "
          f"{'met' if ratio['wall'] <= 1.1 and ratio['emulate'] <= 1.1 else 'MISSED'}")
    return {"repeat": repeat, "seconds": times, "median": med, "ratio": ratio,
            "logits_identical": same}


def conformance_table() -> dict:
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
    return {"commands": list(BENCH_COMMANDS), "results": results, "ok": n_ok, "total": n}


def cell_of(r: dict) -> str:
    return r["status"] if r["status"] == "ok" else f"{r['status']}: {r['detail']}"


if __name__ == "__main__":
    main()
