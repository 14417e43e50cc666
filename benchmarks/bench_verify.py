"""Benchmark of ``qcompile verify`` (issue 7): ONNX Runtime vs the exact quantised network.

For cifar10_resnet20 and cifar10_resnet56, int8 models built by our pipeline
(``fold,calibrate,quantize --target ort-int8``) calibrated on the first 256 images of
cifar10_test_dev.npz; verification on 100 *other* images (the next ones).  Per model and ORT
optimisation level (all: fused QLinear kernels; none: unfused DQ -> float32 op -> Q):

* wall time of the per-layer verification (target: <= 60 s on this 2-core machine with the
  fast engine), ORT and exact-network seconds;
* verdict, elements differing end to end, max LSB, and with ``isolate`` (each layer fed ORT's
  own inputs) the departures each layer makes by itself.

Prints markdown tables; writes benchmarks/results/bench_verify.json.
Usage: nice python benchmarks/bench_verify.py [--images 100] [--models resnet20,resnet56]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import DATA, table, write_json  # noqa: E402
from qcompile.driver.verify import verify_model  # noqa: E402

N_CALIB = 256


def build(model: str, calib: Path, out: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "qcompile.cli", "run", str(DATA / f"cifar10_{model}.onnx"),
                    "--passes", "fold,calibrate,quantize", "--target", "ort-int8", "--calib",
                    str(calib), "--preprocess", "cifar", "-o", str(out)], check=True,
                   capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--models", default="resnet20,resnet56")
    args = ap.parse_args()
    src = np.load(DATA / "cifar10_test_dev.npz")
    tmp = Path(tempfile.mkdtemp(prefix="bench-verify-"))
    calib, evald = tmp / "calib.npz", tmp / "eval.npz"
    np.savez(calib, images=src["images"][:N_CALIB], labels=src["labels"][:N_CALIB])
    np.savez(evald, images=src["images"][N_CALIB:N_CALIB + args.images],
             labels=src["labels"][N_CALIB:N_CALIB + args.images])
    rows, iso_rows, payload = [], [], {"images": args.images, "calibration_images": N_CALIB,
                                       "runs": []}
    import onnxruntime

    payload["onnxruntime"] = onnxruntime.__version__
    for model in args.models.split(","):
        q = tmp / f"{model}_int8.onnx"
        build(model, calib, q)
        for opt in ("all", "none"):
            t0 = time.perf_counter()
            res = verify_model(str(q), str(evald), preprocess="cifar", opt_level=opt)
            wall = time.perf_counter() - t0
            iso = verify_model(str(q), str(evald), preprocess="cifar", opt_level=opt,
                               isolate=True)
            j = res.to_json()
            rows.append([model, opt, j["quantized_tensors"], j["images"], f"{wall:.1f}",
                         "yes" if wall <= 60 else "NO", j["verdict"],
                         f"{j['elements_differing']} / {j['elements_compared']}",
                         max(t.max_lsb for t in res.tensors),
                         sum(t.compared - t.equal for t in iso.isolated),
                         max(t.max_lsb for t in iso.isolated)])
            if opt == "all":  # the rule lives in qcompile.driver.verify.causes now
                c = iso.to_json()["causes"]
                payload.setdefault("fused_explained", {})[model] = {
                    "fused_mac_departures": c["departures"],
                    "reproduced_by_float32_requant": c["explained"]["float32 requantisation"]}
            for t in iso.isolated:
                if t.equal < t.compared:
                    iso_rows.append([model, opt, t.name, t.kernel, t.compared - t.equal,
                                     t.max_lsb, t.ort_above])
            payload["runs"].append({"model": model, "opt_level": opt, "wall_seconds": wall,
                                    "seconds": res.seconds, "report": j,
                                    "isolated": [t.to_json() for t in iso.isolated]})
    print(table(["model", "ORT opt", "quantised tensors", "images", "verify s (<= 60)",
                 "target met", "verdict", "elements differing (end to end)", "max LSB",
                 "differing, isolated", "max LSB, isolated"], rows))
    print()
    print(table(["model", "ORT opt", "layer (isolated: fed ORT's inputs)", "ORT kernel",
                 "elements differing", "max LSB", "ORT above exact"], iso_rows))
    for model, e in payload.get("fused_explained", {}).items():
        print(f"\n{model}: {e['reproduced_by_float32_requant']} of {e['fused_mac_departures']}"
              " isolated QLinearConv/QLinearMatMul departures reproduced by ORT's float32 "
              "requantisation")
    print(f"\nwrote {write_json('bench_verify', payload)}")


if __name__ == "__main__":
    main()
