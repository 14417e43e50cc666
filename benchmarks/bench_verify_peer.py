"""What ONNX Runtime computes for models quantised by ONNX Runtime itself (issue 13).

CIFAR-10 ResNet-20 prepared with ORT's own ``quant_pre_process`` (its optimiser folds the
BatchNormalizations, as ORT's quantisation guide recommends) and quantised by
``onnxruntime.quantization.quantize_static`` in QDQ format, per tensor and per channel, with
U8S8 (uint8 activations, int8 weights), U8S8 + reduce_range (7-bit weights) and S8S8;
calibrated (MinMax) on the first 64 images of cifar10_test_dev.npz, float32-preprocessed with
qcompile's ``cifar`` preset; verified (``verify --isolate``) on the next 100 images.  Per
model: ORT's kernels, elements differing end to end and isolated (each layer fed ORT's own
inputs), max LSB, and the causes verify proves for the isolated departures of ORT's fused
QLinearConv/QLinearMatMul (:mod:`qcompile.driver.verify.causes`).

Prints a markdown table; writes benchmarks/results/bench_verify_peer.json.
Usage: nice python benchmarks/bench_verify_peer.py [--images 100]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import DATA, table, write_json  # noqa: E402
from benchmarks._ortq import ort_quantized  # noqa: E402
from qcompile.data import open_dataset, preprocess_from_options  # noqa: E402
from qcompile.driver.verify import verify_model  # noqa: E402

N_CALIB = 64
SCHEMES = [("U8S8", dict(activations="uint8")),
           ("U8S8+reduce_range", dict(activations="uint8", reduce_range=True)),
           ("S8S8", dict(activations="int8"))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=100)
    args = ap.parse_args()
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from qcompile.backends.ort.cpu import detect_cpu

    tmp = Path(tempfile.mkdtemp(prefix="bench-verify-peer-"))
    pre = tmp / "resnet20_pre.onnx"
    quant_pre_process(str(DATA / "cifar10_resnet20.onnx"), str(pre), skip_symbolic_shape=True)
    src = np.load(DATA / "cifar10_test_dev.npz")
    calib_npz, eval_npz = tmp / "calib.npz", tmp / "eval.npz"
    np.savez(calib_npz, images=src["images"][:N_CALIB], labels=src["labels"][:N_CALIB])
    np.savez(eval_npz, images=src["images"][N_CALIB:N_CALIB + args.images],
             labels=src["labels"][N_CALIB:N_CALIB + args.images])
    ds = open_dataset(str(calib_npz), preprocess_from_options("cifar"))
    calib = [b.x for b in ds.batches(8)]
    rows, payload = [], {"images": args.images, "calibration_images": N_CALIB,
                         "cpu_kind": detect_cpu(), "runs": []}
    import onnxruntime

    payload["onnxruntime"] = onnxruntime.__version__
    for gran, per_channel in (("per-tensor", False), ("per-channel", True)):
        for scheme, kw in SCHEMES:
            q = tmp / f"resnet20_{gran}_{scheme}.onnx"
            onnx.save(ort_quantized(onnx.load(pre), fmt="QDQ", per_channel=per_channel,
                                    calib=calib, **kw), q)
            t0 = time.perf_counter()
            r = verify_model(str(q), str(eval_npz), preprocess="cifar", isolate=True)
            wall = time.perf_counter() - t0
            j = r.to_json()
            c = j["causes"]
            fused = sum(v for k, v in r.kernels.items() if k.endswith("QLinearConv"))
            convs = sum(1 for t in r.tensors if t.op == "Conv")
            top = next((o["top1_agreement"] for o in j["outputs"] if "top1_agreement" in o),
                       None)
            iso_diff = sum(t.compared - t.equal for t in r.isolated)
            expl = "; ".join(f"{n} {rule}" for rule, n in c["explained"].items() if n) or "-"
            rows.append([gran, scheme, f"{fused}/{convs}", j["verdict"],
                         f"{j['elements_differing']} / {j['elements_compared']}",
                         max(t.max_lsb for t in r.tensors), iso_diff,
                         max(t.max_lsb for t in r.isolated),
                         f"{c['departures']}: {expl}" + (f"; {c['unexplained']} unexplained"
                                                         if c["unexplained"] else ""),
                         c["unfused_departures"],
                         "-" if top is None else f"{100 * top:.0f}%", f"{wall:.0f}"])
            payload["runs"].append({"granularity": gran, "scheme": scheme,
                                    "wall_seconds": wall, "report": j,
                                    "isolated": [t.to_json() for t in r.isolated]})
            print(f"{gran} {scheme}: {j['verdict']} in {wall:.0f} s", file=sys.stderr)
    print(f"ResNet-20 quantised by onnxruntime {onnxruntime.__version__} quantize_static (QDQ, "
          f"MinMax, {N_CALIB} calibration images), verified on {args.images} other images, "
          f"CPU kind {payload['cpu_kind']}\n")
    print(table(["weights", "scheme", "Conv fused to QLinearConv", "verdict",
                 "elements differing (end to end)", "max LSB", "differing, isolated",
                 "max LSB, isolated", "isolated fused departures: explained by",
                 "isolated, unfused layers", "top-1 agreement", "verify s"], rows))
    print(f"\nwrote {write_json('bench_verify_peer', payload)}")


if __name__ == "__main__":
    main()
