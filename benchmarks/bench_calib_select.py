"""Calibration-set selection: how much does the choice of calibration images move accuracy?

For each (model, config, select, seed): lift -> the preset pipeline with every pass's
``images`` set to ``--calib`` (default 128, small so the choice matters) and every pass's
``seed`` set to the run's seed, ``calibrate{select=...}`` -> lower -> ONNX Runtime top-1 on a
fixed held-out evaluation set. The held-out set (``--eval`` images of cifar10_test_dev, drawn
once with seed 20251125) is removed first; calibration images are selected only from the rest
(written to a temporary .npz), so every run is measured on the same images and none of them
was ever a calibration candidate. One child process per run (fresh memory, pinned threads).
Per (model, config, select): mean / std / min / max over the seeds, and the spread
(max - min) the choice of seed alone causes.

    python benchmarks/bench_calib_select.py         # resnet20, w4a4 + w8a8, seeds 0..4
    python benchmarks/bench_calib_select.py --models cifar10_resnet20 cifar10_resnet56 --configs w8a8
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("QCOMPILE_DATA", REPO.parent / "shared" / "data"))
DATASET = "cifar10_test_dev.npz"
MODELS = ("cifar10_resnet20", "cifar10_resnet56")
SELECTS = ("random", "stratified", "diverse")
HOLD_SEED = 20251125


def split_pool(n_eval: int, folder: Path) -> tuple[Path, list[int]]:
    """(.npz of the calibration candidates, held-out evaluation indices of the original)."""
    import numpy as np

    from qcompile.data.dataset import calib_eval_split

    z = np.load(DATA / DATASET)
    n = len(z["labels"])
    ev, pool = calib_eval_split(n, n_eval, HOLD_SEED)
    path = folder / "calib_pool.npz"
    np.savez(path, images=z["images"][pool], labels=z["labels"][pool])
    return path, [int(i) for i in ev]


def child(model: str, config: str, select: str, seed: int, n_calib: int, pool: str,
          ev_file: str, cpu: str) -> dict:
    import numpy as np

    from qcompile.backends.ort import lower
    from qcompile.backends.ort.executor import OrtExecutor
    from qcompile.backends.ort.runtime import session
    from qcompile.data import open_dataset, preset
    from qcompile.driver.presets import PRESETS
    from qcompile.driver.targets import configure_pipeline, get_target
    from qcompile.frontend import lift
    from qcompile.passes import PassContext, run_pipeline

    full = open_dataset(DATA / DATASET, preset("cifar"))
    cand = open_dataset(pool, preset("cifar"))
    ev = np.asarray(json.loads(Path(ev_file).read_text()), np.int64)
    g = lift(DATA / f"{model}.onnx")
    passes = []
    for p in configure_pipeline(get_target("ort-int8"), PRESETS[config], cpu=cpu):
        kw = {k: v for k, v in (("images", n_calib), ("seed", seed)) if hasattr(p, k)}
        if p.name == "calibrate":
            kw["select"] = select
        passes.append(dataclasses.replace(p, **kw))

    def accuracy(m) -> float:
        s = session(m, threads=1)
        hits = sum(int((s.run(None, {"input": b.x})[0].argmax(1) == b.labels).sum())
                   for b in full.batches(250, indices=ev))
        return hits / len(ev)

    t0 = time.perf_counter()
    res = run_pipeline(g, passes, PassContext(calib_data=cand, executor=OrtExecutor(threads=1)))
    seconds = time.perf_counter() - t0
    rec = json.loads(res.graph.metadata["qcompile.calibration"])
    cal = [r for p, r, _ in res.results if p.name == "calibrate"][0]
    return {"model": model, "config": config, "select": select, "seed": seed,
            "calib_images": len(rec["indices"]), "eval_images": int(len(ev)),
            "classes_covered": int(cal.stats.get("classes_covered", 0)),
            "notes": list(cal.notes), "accuracy": accuracy(lower(res.graph)),
            "fp32": accuracy(lower(lift(DATA / f"{model}.onnx"))),
            "seconds": round(seconds, 1), "pipeline": ",".join(p.spec() for p in passes)}


def run_one(args, model, config, select, seed, pool, ev_file) -> dict:
    cmd = [sys.executable, __file__, "--child", model, config, select, str(seed),
           "--calib", str(args.calib), "--pool", str(pool), "--ev-file", str(ev_file),
           "--cpu", args.cpu]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.cores))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        return {"model": model, "config": config, "select": select, "seed": seed,
                "error": out.stderr.strip()[-400:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def summarise(rows: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if "error" not in r:
            groups.setdefault((r["model"], r["config"], r["select"]), []).append(r)
    out = []
    for (m, c, s), rs in groups.items():
        acc = [100 * r["accuracy"] for r in rs]
        out.append({"model": m, "config": c, "select": s, "runs": len(rs),
                    "fp32": 100 * rs[0]["fp32"], "mean": statistics.mean(acc),
                    "std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                    "min": min(acc), "max": max(acc),
                    "classes_min": min(r["classes_covered"] for r in rs),
                    "seconds": statistics.mean(r["seconds"] for r in rs)})
    return out


def markdown(summary: list[dict], n_calib: int, n_eval: int) -> str:
    lines = [f"Top-1 % on {n_eval} held-out images; {n_calib} calibration images selected from "
             "the other images; seeds per row = runs.", "",
             "| model | config | select | runs | FP32 % | mean % | std | min % | max % | "
             "spread | min classes in calib set | pipeline s |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in summary:
        lines.append(f"| {s['model']} | {s['config']} | {s['select']} | {s['runs']} | "
                     f"{s['fp32']:.2f} | {s['mean']:.2f} | {s['std']:.2f} | {s['min']:.2f} | "
                     f"{s['max']:.2f} | {s['max'] - s['min']:.2f} | {s['classes_min']} | "
                     f"{s['seconds']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=["cifar10_resnet20"], choices=MODELS)
    ap.add_argument("--configs", nargs="*", default=["w4a4", "w8a8"])
    ap.add_argument("--selects", nargs="*", default=list(SELECTS), choices=SELECTS)
    ap.add_argument("--seeds", type=int, default=5, help="seeds 0..K-1")
    ap.add_argument("--calib", type=int, default=128, help="calibration images per run")
    ap.add_argument("--eval", type=int, default=2000, help="held-out evaluation images")
    ap.add_argument("--cores", type=int, default=2, help="BLAS threads per child")
    ap.add_argument("--cpu", default="avx2", help="ORT int8 CPU kind for the target defaults")
    ap.add_argument("--out", default="bench_calib_select")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--pool", help=argparse.SUPPRESS)
    ap.add_argument("--ev-file", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        m, c, s, seed = args.child
        print(json.dumps(child(m, c, s, int(seed), args.calib, args.pool, args.ev_file,
                               args.cpu)))
        return
    rows: list[dict] = []
    out = REPO / "benchmarks" / "results" / f"{args.out}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        pool, ev = split_pool(args.eval, Path(tmp))
        ev_file = Path(tmp) / "eval.json"
        ev_file.write_text(json.dumps(ev))
        for m in args.models:
            for c in args.configs:
                for seed in range(args.seeds):
                    for s in args.selects:
                        r = run_one(args, m, c, s, seed, pool, ev_file)
                        print(json.dumps({k: v for k, v in r.items() if k != "pipeline"}),
                              file=sys.stderr, flush=True)
                        rows.append(r)
                        summary = summarise(rows)  # written after every run: partial results
                        out.write_text(json.dumps(
                            {"calib_images": args.calib, "eval_images": args.eval,
                             "hold_out_seed": HOLD_SEED, "summary": summary, "rows": rows},
                            indent=2))
    print(markdown(summarise(rows), args.calib, args.eval))
    print(f"\n(JSON: {out.relative_to(REPO)})")


if __name__ == "__main__":
    main()
