"""Low-bit accuracy: the presets (and any pipeline) on the shared models, one subprocess each.

For each (model, config): lift -> pipeline (calibration passes use the first ``n_calib`` images
of ``Dataset.split(n_calib, seed=0)``) -> lower -> ONNX Runtime accuracy on the OTHER images
(drop = FP32 - quantised, points); wall time of the passes and peak RSS (VmHWM) of the child.
A config is a preset name (``w4a8``), ``rtn:PRESET`` (the preset without cle/absorb/adaround/
bias_correct: plain round-to-nearest, the baseline the passes improve on) or a pipeline string.
Each child is pinned to ``--cores`` CPUs (default 2), so times are 2-core times even when
``--jobs`` children run side by side on a bigger machine.

    python benchmarks/bench_lowbit.py                       # the issue's table
    python benchmarks/bench_lowbit.py --models cifar10_resnet20 --configs w4a8 rtn:w4a8
    python benchmarks/bench_lowbit.py --merge benchmarks/results/a.json b.json  # one table

Wall time is the pipeline's (lift and evaluation excluded); CPU time is the child's user+system
time over the same span, the fairer figure when other work shares the cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import queue
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("QCOMPILE_DATA", REPO.parent / "shared" / "data"))
MODELS = {  # name: (model, data, preprocess, calibration images, evaluation images (None: rest))
    "cifar10_resnet20": ("cifar10_resnet20.onnx", "cifar10_test_dev.npz", "cifar", 512, None),
    "cifar10_resnet56": ("cifar10_resnet56.onnx", "cifar10_test_dev.npz", "cifar", 512, None),
    "efficientnet_lite0": ("efficientnet_lite0.onnx", "imagenet_samples_120.npz", "lite0", 20,
                           100),
}
TABLE = [  # (model, config, target drop in points or None)
    ("cifar10_resnet20", "w4a8", 1.0), ("cifar10_resnet20", "w4a4", 3.0),
    ("cifar10_resnet20", "w2a4", 8.0), ("cifar10_resnet56", "w4a8", 1.0),
    ("cifar10_resnet56", "w4a4", 3.0), ("cifar10_resnet56", "w2a4", 8.0),
    ("efficientnet_lite0", "w8a8-per-tensor", 1.0), ("efficientnet_lite0", "w8a8", 0.5),
    ("efficientnet_lite0", "w4a8", 3.0),
]
TUNING = ("cle", "absorb", "adaround", "bias_correct", "reconstruct", "clip_search")


def pipeline_of(config: str) -> str:
    from qcompile.driver.presets import PRESETS
    from qcompile.passes.pipeline import split_specs

    if config.startswith("rtn:"):
        return ",".join(s for s in split_specs(PRESETS[config[4:]])
                        if s.split("{")[0] not in TUNING)
    return PRESETS.get(config, config)


def child(model: str, config: str, cpu: str) -> dict:

    from qcompile.backends.ort import lower
    from qcompile.backends.ort.executor import OrtExecutor
    from qcompile.backends.ort.runtime import session
    from qcompile.data import open_dataset, preset
    from qcompile.driver.targets import configure_pipeline, get_target
    from qcompile.frontend import lift
    from qcompile.passes import PassContext, run_pipeline

    spec, data, pre, n_calib, n_eval = MODELS[model]
    ds = open_dataset(DATA / data, preset(pre))
    calib, ev = ds.split(n_calib, seed=0, n_eval=n_eval)
    g = lift(DATA / spec)
    text = pipeline_of(config)
    passes = [dataclasses.replace(p, images=n_calib) if hasattr(p, "images") else p
              for p in configure_pipeline(get_target("ort-int8"), text, cpu=cpu)]

    def accuracy(m) -> float:
        s = session(m, threads=1)
        hits = sum(int((s.run(None, {"input": b.x})[0].argmax(1) == b.labels).sum())
                   for b in ds.batches(100, indices=ev))
        return hits / len(ev)

    fp32 = accuracy(lower(g.clone()))
    t0, c0 = time.perf_counter(), time.process_time()
    res = run_pipeline(g, passes, PassContext(calib_data=ds, executor=OrtExecutor(threads=1)))
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    q = accuracy(lower(res.graph))
    hwm = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text()
               .splitlines() if line.startswith("VmHWM:"))
    return {"model": model, "config": config, "pipeline": ",".join(p.spec() for p in passes),
            "calib_images": int(len(calib)), "eval_images": int(len(ev)), "fp32": fp32,
            "quantised": q, "drop_points": round(100 * (fp32 - q), 2),
            "seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1), "peak_rss_mb": round(hwm / 1024),
            "stats": {p.name: dict(r.stats) for p, r, _ in res.results}}


def run_one(model: str, config: str, cores: int, slot: int, cpu: str) -> dict:
    cmd = [sys.executable, __file__, "--child", model, config, "--cpu", cpu]
    n = os.cpu_count() or 1
    if cores and n >= cores * (slot + 1):
        cmd = ["taskset", "-c", f"{slot * cores}-{slot * cores + cores - 1}"] + cmd
    env = dict(os.environ, OMP_NUM_THREADS=str(cores or 1))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        return {"model": model, "config": config, "error": out.stderr.strip()[-400:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def markdown(rows: list[dict], targets: dict) -> str:
    lines = ["| model | config | FP32 % | quantised % | drop (points) | target | met | wall s "
             "| CPU s | peak RSS MB |", "|---|---|---:|---:|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['config']} | error: {r['error'][-80:]} ||||||||")
            continue
        t = targets.get((r["model"], r["config"]))
        met = "" if t is None else ("yes" if r["drop_points"] <= t else "**MISSED**")
        cpu = r.get("cpu_seconds")
        lines.append(f"| {r['model']} | {r['config']} | {100 * r['fp32']:.2f} | "
                     f"{100 * r['quantised']:.2f} | {r['drop_points']:.2f} | "
                     f"{'' if t is None else f'<= {t}'} | {met} | {r['seconds']:.0f} | "
                     f"{'' if cpu is None else f'{cpu:.0f}'} | {r['peak_rss_mb']} |")
    return "\n".join(lines)


def merged(paths: list[str]) -> list[dict]:
    """Rows of earlier runs (later files win), in the issue's table order, missing rows named."""
    found: dict[tuple[str, str], dict] = {}
    for p in paths:
        for r in json.loads(Path(p).read_text())["rows"]:
            found[(r["model"], r["config"])] = r
    rows = [found.pop((m, c), {"model": m, "config": c, "error": "not measured"})
            for m, c, _ in TABLE]
    return rows + list(found.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=None, choices=list(MODELS))
    ap.add_argument("--configs", nargs="*", default=None)
    ap.add_argument("--rtn", action="store_true", help="also run rtn:PRESET baselines")
    ap.add_argument("--jobs", type=int, default=1, help="children side by side")
    ap.add_argument("--cores", type=int, default=2, help="CPUs per child (taskset)")
    ap.add_argument("--cpu", default="avx2", help="ORT int8 CPU kind for the target defaults")
    ap.add_argument("--out", default="bench_lowbit")
    ap.add_argument("--merge", nargs="+", metavar="JSON",
                    help="print the issue's table from earlier results (no run)")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.merge:
        print(markdown(merged(args.merge), {(m, c): t for m, c, t in TABLE}))
        return
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.cpu)))
        return
    targets = {(m, c): t for m, c, t in TABLE}
    jobs = [(m, c) for m, c, _ in TABLE if (args.models is None or m in args.models)
            and (args.configs is None or c in args.configs)]
    if args.configs:
        jobs += [(m, c) for m in (args.models or list(MODELS)) for c in args.configs
                 if (m, c) not in jobs and c not in {cc for _, cc, _ in TABLE}]
    if args.rtn:
        jobs += [(m, f"rtn:{c}") for m, c in list(jobs) if not c.startswith("rtn:")]
    slots: queue.Queue[int] = queue.Queue()
    for i in range(max(1, args.jobs)):
        slots.put(i)

    def go(job: tuple[str, str]) -> dict:
        slot = slots.get()
        try:
            return run_one(*job, args.cores, slot, args.cpu)
        finally:
            slots.put(slot)

    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        rows = list(pool.map(go, jobs))
    for r in rows:
        print(json.dumps(r), file=sys.stderr)
    out = REPO / "benchmarks" / "results" / f"{args.out}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "cores_per_child": args.cores}, indent=2))
    print(markdown(rows, targets))
    print(f"\n(JSON: {out.relative_to(REPO)})")


if __name__ == "__main__":
    main()
