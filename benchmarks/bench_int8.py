"""int8 on ONNX Runtime: qcompile (fold,calibrate,quantize) against onnxruntime.quantization.

For each model: FP32 accuracy; ours per-tensor and per-channel with each observer; ORT's
``quantize_static`` (QDQ, U8S8, MinMax / Entropy / Percentile, per-tensor and per-channel) on
the SAME calibration images; accuracy on DISJOINT evaluation images (``Dataset.split``);
latency at batch 1 and 8 (FP32, ours, ORT); quantisation wall time; and the peak RSS of our
calibration with 256 vs 2,048 images (separate subprocesses). ``reduce_range`` follows the CPU
(detected, or ``--cpu``) for both tools so the comparison is like for like.

    python benchmarks/bench_int8.py            # everything (tens of minutes on 2 cores)
    python benchmarks/bench_int8.py --quick    # small subsets, two models, minutes

Prints a markdown table and writes JSON to benchmarks/results/bench_int8[_quick].json.
The random-weight ResNet-18 has no meaningful accuracy: its "accuracy" columns are top-1
agreement with FP32.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from qcompile.backends.ort import lower, save_model  # noqa: E402
from qcompile.backends.ort.cpu import detect_cpu, int8_defaults  # noqa: E402
from qcompile.backends.ort.executor import OrtExecutor  # noqa: E402
from qcompile.backends.ort.measure import ModelRunner, optimized_op_counts, tile_batch  # noqa: E402
from qcompile.data import open_dataset, preset  # noqa: E402
from qcompile.frontend import lift  # noqa: E402
from qcompile.passes import PassContext, parse_pipeline, run_pipeline  # noqa: E402
from qcompile.testing import zoo  # noqa: E402

DATA = Path(os.environ.get("QCOMPILE_DATA", REPO.parent / "shared" / "data"))
MODELS = {  # name: (model file or zoo, data file, preset, calib, eval (None: rest))
    "cifar10_resnet20": ("cifar10_resnet20.onnx", "cifar10_test_dev.npz", "cifar", 512, None),
    "cifar10_resnet56": ("cifar10_resnet56.onnx", "cifar10_test_dev.npz", "cifar", 512, None),
    "efficientnet_lite0": ("efficientnet_lite0.onnx", "imagenet_samples_120.npz", "lite0", 20, 100),
    "resnet18_random": ("zoo:resnet18", "imagenet_samples_120.npz", "imagenet", 20, 100),
}
OURS = ("minmax", "percentile", "entropy", "mse")
ORT_METHODS = ("MinMax", "Entropy", "Percentile")


def model_path(spec: str, tmp: Path) -> Path:
    if spec.startswith("zoo:"):
        p = tmp / "resnet18_random.onnx"
        if not p.exists():
            onnx.save(zoo.resnet(18), p)
        return p
    return DATA / spec


def predict_all(path: Path, ds, idx, threads: int) -> np.ndarray:
    r = ModelRunner(path, threads=threads)
    return np.concatenate([r.predict(b.x) for b in ds.batches(50, indices=idx)])


def ours(model: Path, ds, n_calib: int, method: str, per_channel: bool, rr: bool, out: Path):
    t0 = time.perf_counter()
    g = lift(model)
    spec = (f"fold,calibrate{{method={method},images={n_calib},seed=0}},"
            f"quantize{{per_channel={str(per_channel).lower()},reduce_range={str(rr).lower()}}}")
    run_pipeline(g, parse_pipeline(spec), PassContext(calib_data=ds, executor=OrtExecutor()))
    save_model(lower(g), out)
    return time.perf_counter() - t0


def ort_static(model: Path, ds, calib_idx, method: str, per_channel: bool, rr: bool, out: Path):
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(ds.batches(32, indices=calib_idx))

        def get_next(self):
            b = next(self.it, None)
            return None if b is None else {"input": b.x}

    from onnxruntime.quantization.shape_inference import quant_pre_process

    t0 = time.perf_counter()
    pre = out.with_suffix(".pre.onnx")
    with contextlib.redirect_stdout(sys.stderr):  # ORT's calibrators print progress to stdout
        quant_pre_process(str(model), str(pre))  # ORT's recommended flow (folds BN, shapes)
        quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=per_channel, reduce_range=rr,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=getattr(CalibrationMethod, method))
    return time.perf_counter() - t0


def rss_child(model: str, n: int) -> None:
    spec, data, pre, *_ = MODELS[model]
    ds = open_dataset(DATA / data, preset(pre))
    g = lift(DATA / spec)
    run_pipeline(g, parse_pipeline(f"fold,calibrate{{method=entropy,images={n},batch=32}}"),
                 PassContext(calib_data=ds, executor=OrtExecutor()))
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent across exec
    hwm = next((int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                if line.startswith("VmHWM:")), None)
    kb = hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"images": n, "peak_rss_mb": kb / 1024}))


def bench_model(name: str, args, tmp: Path, rr: bool) -> dict:
    spec, data, pre, n_calib, n_eval = MODELS[name]
    if args.quick:
        n_calib, n_eval = min(n_calib, 128), min(n_eval or 10**9, 1000 if "cifar" in name else 100)
    model = model_path(spec, tmp)
    ds = open_dataset(DATA / data, preset(pre))
    calib_idx, eval_idx = ds.split(n_calib, seed=0, n_eval=min(n_eval or len(ds) - n_calib,
                                                                 len(ds) - n_calib))
    random_weights = spec.startswith("zoo:")
    fp32_logits = predict_all(model, ds, eval_idx, args.threads)
    labels = ds.labels[eval_idx]
    ref = fp32_logits.argmax(1) if random_weights else labels

    def acc(path: Path) -> float:
        return float((predict_all(path, ds, eval_idx, args.threads).argmax(1) == ref).mean())

    res: dict = {"model": name, "calib_images": int(len(calib_idx)),
                 "eval_images": int(len(eval_idx)), "reduce_range": rr,
                 "metric": "agreement_with_fp32" if random_weights else "top1",
                 "fp32": float((fp32_logits.argmax(1) == ref).mean()), "ours": {}, "ort": {}}
    methods = args.observers
    for pc in (False, True):
        gran = "per_channel" if pc else "per_tensor"
        for m in methods:
            out = tmp / f"{name}_ours_{gran}_{m}.onnx"
            secs = ours(model, ds, n_calib, m, pc, rr, out)
            res["ours"][f"{gran}/{m}"] = {"accuracy": acc(out), "seconds": round(secs, 2)}
            print(f"  {name} ours {gran}/{m}: {res['ours'][f'{gran}/{m}']}", file=sys.stderr)
        for m in ORT_METHODS:
            if args.quick and m != "MinMax":
                continue
            out = tmp / f"{name}_ort_{gran}_{m}.onnx"
            try:
                secs = ort_static(model, ds, calib_idx, m, pc, rr, out)
                res["ort"][f"{gran}/{m}"] = {"accuracy": acc(out), "seconds": round(secs, 2)}
            except Exception as e:  # ORT's calibrators crash on some models: record it
                res["ort"][f"{gran}/{m}"] = {"error": f"{type(e).__name__}: {str(e)[:120]}"}
            print(f"  {name} ort {gran}/{m}: {res['ort'][f'{gran}/{m}']}", file=sys.stderr)
    # latency: FP32, ours and ORT per-channel MinMax
    x = next(ds.batches(8, indices=eval_idx)).x
    runners = {label: ModelRunner(path, threads=args.threads) for label, path in (
        ("fp32", model), ("ours", tmp / f"{name}_ours_per_channel_minmax.onnx"),
        ("ort", tmp / f"{name}_ort_per_channel_MinMax.onnx")) if path.exists()}
    res["latency_ms"] = interleaved_latency(runners, x, args.rounds, args.iters)
    ops = optimized_op_counts(tmp / f"{name}_ours_per_channel_minmax.onnx")
    res["ours_ort_ops"] = {k: v for k, v in ops.items() if k.startswith("com.microsoft")
                           or k in ("Conv", "Add", "Gemm")}
    return res


def interleaved_latency(runners: dict, x: np.ndarray, rounds: int, iters: int) -> dict:
    """Median latency per model, measured in interleaved rounds (A, B, C, A, B, C, ...) so
    that load from other processes on the machine hits every model alike."""
    out = {}
    for b in (1, 8):
        xb = tile_batch(x, b)
        samples: dict[str, list[float]] = {k: [] for k in runners}
        for r in runners.values():
            r.latency_ms(xb, warmup=3, iters=1, min_seconds=0.0)
        for _ in range(rounds):
            for k, r in runners.items():
                samples[k].append(r.latency_ms(xb, warmup=1, iters=iters, min_seconds=0.0))
        for k, v in samples.items():
            out.setdefault(k, {})[str(b)] = round(statistics.median(v), 3)
    return out


def markdown(results: list[dict], rss: dict | None) -> str:
    lines = []
    for r in results:
        lines.append(f"\n### {r['model']} ({r['metric']}, {r['calib_images']} calibration / "
                     f"{r['eval_images']} evaluation images, reduce_range={r['reduce_range']})\n")
        lines.append("| config | ours % | ours s | ORT % | ORT s |")
        lines.append("|---|---:|---:|---:|---:|")
        lines.append(f"| FP32 | {100 * r['fp32']:.2f} | | | |")
        for gran in ("per_tensor", "per_channel"):
            for m in OURS:
                o = r["ours"].get(f"{gran}/{m}")
                om = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}.get(m)
                t = r["ort"].get(f"{gran}/{om}") if om else None
                if o is None and t is None:
                    continue
                ot = ("crash: " + t["error"][:40]) if t and "error" in t else (
                    f"{100 * t['accuracy']:.2f} | {t['seconds']:.1f}" if t else "| ")
                oo = f"{100 * o['accuracy']:.2f} | {o['seconds']:.1f}" if o else "| "
                lines.append(f"| {gran} {m} | {oo} | {ot} |")
        lat = r["latency_ms"]
        lines.append("\n| latency ms | batch 1 | batch 8 | speed-up vs FP32 (b1) |")
        lines.append("|---|---:|---:|---:|")
        for k, v in lat.items():
            sp = lat["fp32"]["1"] / v["1"] if "fp32" in lat else float("nan")
            lines.append(f"| {k} | {v['1']:.2f} | {v['8']:.2f} | {sp:.2f}x |")
    if rss:
        lines.append("\n| calibration peak RSS (entropy, cifar10_resnet20) | MB |")
        lines.append("|---|---:|")
        for n, mb in rss.items():
            lines.append(f"| {n} images | {mb:.0f} |")
    return "\n".join(lines)


def main() -> None:
    import logging

    logging.getLogger().setLevel(logging.ERROR)  # ORT's quantizer warns per tensor
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small subsets, MinMax baseline only")
    ap.add_argument("--models", nargs="*", default=None, choices=list(MODELS))
    ap.add_argument("--observers", nargs="*", default=list(OURS), choices=list(OURS))
    ap.add_argument("--threads", type=int, default=1, help="ORT intra-op threads for timing")
    ap.add_argument("--iters", type=int, default=10, help="timed runs per round")
    ap.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds")
    ap.add_argument("--cpu", default=None, help="vnni|avx2|arm|generic (default: detected)")
    ap.add_argument("--no-rss", action="store_true")
    ap.add_argument("--rss-child", nargs=2, metavar=("MODEL", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_child:
        rss_child(args.rss_child[0], int(args.rss_child[1]))
        return
    models = args.models or (["cifar10_resnet20", "resnet18_random"] if args.quick else list(MODELS))
    cpu = args.cpu or detect_cpu()
    rr = bool(int8_defaults(cpu)["reduce_range"])
    results = []
    with tempfile.TemporaryDirectory() as d:
        for name in models:
            print(f"[{name}]", file=sys.stderr)
            results.append(bench_model(name, args, Path(d), rr))
    rss = None
    if not args.no_rss:
        rss = {}
        for n in (256, 2048):
            out = subprocess.run([sys.executable, __file__, "--rss-child", "cifar10_resnet20",
                                  str(n)], capture_output=True, text=True, check=True)
            rss[n] = json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mb"]
    report = {"cpu": cpu, "threads": args.threads, "quick": args.quick, "models": results,
              "calibration_peak_rss_mb": rss}
    out_dir = REPO / "benchmarks" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"bench_int8{'_quick' if args.quick else ''}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"# int8 benchmark (cpu={cpu}, ORT threads={args.threads})")
    print(markdown(results, rss))
    print(f"\n(JSON: {path.relative_to(REPO)})")


if __name__ == "__main__":
    main()
