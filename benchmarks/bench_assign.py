"""Mixed-precision assignment on ResNet-56: uniform W8A8 / W4A8 vs the budgeted int4/int8 mix
(round-to-nearest, and with assign's default refinement: clip_search + adaround).

Calibration (512 images) and the assign search (1,000 images) use cifar10_test_dev; accuracy
is measured on the remaining images (both sets are recorded in the model metadata and left out
by ``evaluate_model``). Drops are in points against FP32 on the same images.

    python benchmarks/bench_assign.py [--model cifar10_resnet56] [--avg-bits 5] [--part int]

``--part float`` (uniform float/posit PTQ on ResNet-20, MPFR fast engine): see
:mod:`benchmarks.bench_assign_float`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qcompile.driver.compile import compile_model  # noqa: E402
from qcompile.driver.evaluate import evaluate_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="cifar10_resnet56")
    ap.add_argument("--avg-bits", type=float, default=5.0)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--out", default="/tmp/bench_assign")
    ap.add_argument("--part", choices=("int", "float", "all"), default="all")
    ap.add_argument("--images", type=int, default=1000, help="float part: evaluation images")
    ap.add_argument("--rows", nargs="+", default=None,
                    help="float part: only these rows, no search (e.g. e4m3 'posit(16,1)')")
    args = ap.parse_args()
    if args.part in ("float", "all"):
        from benchmarks.bench_assign_float import run_float

        run_float(images=args.images, only=args.rows)
        if args.part == "float":
            return
    d, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, npz = d / f"{args.model}.onnx", d / "cifar10_test_dev.npz"
    assign = "assign{policy=budget,avg_bits=%g}" % args.avg_bits
    rows = [("fp32", "fold", "ort-fp32"),
            ("W8A8 uniform", "fold,calibrate,quantize", "ort-int8"),
            ("W4A8 uniform (first/last int8)", "fold,calibrate,assign{policy=first-last}",
             "ort-int8"),
            (f"mixed int4/int8 <= {args.avg_bits:g} bits, round-to-nearest (refine=none)",
             f"fold,calibrate,{assign[:-1]},refine=none}}", "ort-int8"),
            # default: the narrowed weights get clip_search + adaround in the verified point too
            (f"mixed int4/int8 <= {args.avg_bits:g} bits, refine=adaround (default)",
             f"fold,calibrate,{assign}", "ort-int8")]
    results = []
    for i, (name, passes, target) in enumerate(rows):
        path = out / f"{i}_{name.split()[0].replace('/', '_')}.onnx"
        t0 = time.perf_counter()
        rep = compile_model(model, path, passes=passes, target=target, calib=str(npz),
                            preprocess="cifar")
        secs = time.perf_counter() - t0
        results.append({"name": name, "path": str(path), "compile_s": round(secs, 1),
                        "report": rep})
    # evaluate every model on the images none of them saw (union of exclusions)
    import numpy as np

    from qcompile.backends.ort.measure import ModelRunner
    from qcompile.data import open_dataset, preprocess_from_options
    from qcompile.driver.evaluate import calibration_indices

    ds = open_dataset(npz, preprocess_from_options("cifar"))
    excl = np.zeros(0, np.int64)
    for r in results:
        excl = np.union1d(excl, calibration_indices(ModelRunner(r["path"]), ds))
    idx = np.setdiff1d(np.arange(len(ds)), excl)
    fp = None
    print("| model | avg weight bits | top-1 (%) | drop (points) | compile s |\n|---|---|---|---|---|")
    for r in results:
        ev = evaluate_model(r["path"], ds, indices=idx, latency=False)
        r["top1"] = ev["top1"]
        fp = ev["top1"] if fp is None else fp
        bits = "32" if r["name"] == "fp32" else "8" if "W8A8" in r["name"] else None
        for p in r["report"]["passes"]:
            if p["pass"].startswith("assign"):
                c = {k: v for k, v in p["stats"].items() if k.startswith("layers_")}
                bits = f"{_bits(r['path']):.3f} ({c})"
        print(f"| {r['name']} | {bits} | {100 * ev['top1']:.2f} | "
              f"{100 * (fp - ev['top1']):.2f} | {r['compile_s']} |")
    print(f"\n{idx.size} evaluation images (calibration and assign images excluded)")
    Path(ROOT / "benchmarks" / "results").mkdir(exist_ok=True)
    (ROOT / "benchmarks" / "results" / "bench_assign.json").write_text(json.dumps(
        {"images": int(idx.size), "rows": [{k: v for k, v in r.items() if k != "report"}
                                           for r in results]}, indent=2, default=str))


def _bits(path: str) -> float:
    import onnx

    m = onnx.load(path, load_external_data=False)
    meta = {p.key: p.value for p in m.metadata_props}
    return json.loads(meta["qcompile.assign"])["avg_weight_bits"]


if __name__ == "__main__":
    main()
