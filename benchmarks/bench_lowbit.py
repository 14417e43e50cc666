"""Low-bit accuracy: the presets (and any pipeline) on the shared models, one subprocess each,
under the held-out protocol of ``benchmarks/_protocol.py`` (issue 16): never scored on
calibration images.

* EfficientNet-Lite0 on the 120 ImageNet photos: 4-fold cross-validation (calibrate on 90,
  evaluate on the other 30, all four folds), so every photo is scored once, by a model that
  never saw it;
* CIFAR ResNets: calibrate on 512 images of cifar10_test_dev, evaluate on the other 4,488
  (``--quick``: on 1,000 of them).

Per (model, config): lift -> pipeline (every pass that takes ``images`` gets the whole
calibration part) -> lower -> ONNX Runtime logits on the evaluation part; reported per split and
as mean / spread over splits: top-1 drop (FP32 - quantised, points), **top-1 agreement with
FP32** and **logit SQNR**, plus the pooled figures, wall time of the passes (all splits), CPU time
and peak RSS of the child. A config is a preset name (``w4a8``), ``rtn:PRESET`` (the preset
without the tuning passes: plain round-to-nearest), a pipeline string, or the peer tool on the
same splits: ``ort:per-tensor``, ``ort:per-channel`` (``quantize_static`` on the model as
shipped) and ``ort-pp:per-tensor``, ``ort-pp:per-channel`` (after ``quant_pre_process``, which
folds BatchNormalization). Each child is pinned to ``--cores`` CPUs (default 2).

    python benchmarks/bench_lowbit.py                       # the issue's table
    python benchmarks/bench_lowbit.py --models efficientnet_lite0 --configs w8a8 ort:per-channel
    python benchmarks/bench_lowbit.py --models cifar10_resnet20 --configs w4a4 --quick
    python benchmarks/bench_lowbit.py --merge benchmarks/results/a.json b.json  # one table
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
from benchmarks import _protocol as P  # noqa: E402

DATA = Path(os.environ.get("QCOMPILE_DATA", REPO.parent / "shared" / "data"))
MODELS = {  # name: (model, data, preprocess, protocol)
    "cifar10_resnet20": ("cifar10_resnet20.onnx", "cifar10_test_dev.npz", "cifar", ("holdout", 512)),
    "cifar10_resnet56": ("cifar10_resnet56.onnx", "cifar10_test_dev.npz", "cifar", ("holdout", 512)),
    "efficientnet_lite0": ("efficientnet_lite0.onnx", "imagenet_samples_120.npz", "lite0",
                           ("kfold", 4)),
}
QUICK_EVAL = 1000  # --quick: CIFAR evaluation images (the k-fold protocol is always whole)
TABLE = [  # (model, config, target drop in points or None, target agreement or None)
    ("efficientnet_lite0", "w8a8-per-tensor", 1.0, 0.95), ("efficientnet_lite0", "w8a8", 0.5, None),
    ("efficientnet_lite0", "w4a8", 1.5, None),
    ("efficientnet_lite0", "ort:per-tensor", None, None),
    ("efficientnet_lite0", "ort:per-channel", None, None),
    ("efficientnet_lite0", "ort-pp:per-tensor", None, None),
    ("efficientnet_lite0", "ort-pp:per-channel", None, None),
    ("cifar10_resnet20", "w4a8", 1.0, None), ("cifar10_resnet20", "w4a4", 1.0, None),
    ("cifar10_resnet20", "w2a4", 4.0, None), ("cifar10_resnet56", "w4a8", 1.0, None),
    ("cifar10_resnet56", "w4a4", 1.0, None), ("cifar10_resnet56", "w2a4", 4.0, None),
]
TUNING = ("cle", "absorb", "adaround", "bias_correct", "reconstruct", "clip_search")


def pipeline_of(config: str) -> str:
    from qcompile.driver.presets import PRESETS
    from qcompile.passes.pipeline import split_specs

    if config.startswith("rtn:"):
        return ",".join(s for s in split_specs(PRESETS[config[4:]])
                        if s.split("{")[0] not in TUNING)
    return PRESETS.get(config, config)


def splits_of(model: str, n: int, quick: bool) -> list:
    kind, k = MODELS[model][3]
    if kind == "kfold":
        return P.kfold(n, k, seed=0)
    return P.holdout(n, k, QUICK_EVAL if quick else None, seed=0)


def child(model: str, config: str, cpu: str, quick: bool) -> dict:
    import tempfile

    import numpy as np

    from qcompile.backends.ort import lower
    from qcompile.backends.ort.executor import OrtExecutor
    from qcompile.data import open_dataset, preset
    from qcompile.driver.targets import configure_pipeline, get_target
    from qcompile.frontend import lift
    from qcompile.passes import PassContext, run_pipeline

    spec, data, pre, _ = MODELS[model]
    ds = open_dataset(DATA / data, preset(pre))
    splits = splits_of(model, len(ds), quick)
    every = np.sort(np.concatenate([ev for _, ev in splits]))
    fp_all = dict(zip(every.tolist(), P.logits(lower(lift(DATA / spec)), ds, every)))
    per, stats, fps, qs, labs = [], [], [], [], []
    seconds = cpu_s = 0.0
    text = "" if config in P.PEERS else pipeline_of(config)
    for i, (calib, ev) in enumerate(splits):
        with tempfile.TemporaryDirectory(prefix="qcompile-bench-") as d:
            cds = open_dataset(P.subset_npz(DATA / data, calib, d), preset(pre))
            t0, c0 = time.perf_counter(), time.process_time()
            if config in P.PEERS:
                pc, pp = P.PEERS[config]
                m = P.ort_peer(DATA / spec, [b.x for b in cds.batches(16)], per_channel=pc,
                               pre_process=pp)
                stats.append({})
            else:
                passes = [dataclasses.replace(p, images=len(calib)) if hasattr(p, "images")
                          else p for p in configure_pipeline(get_target("ort-int8"), text,
                                                             cpu=cpu)]
                res = run_pipeline(lift(DATA / spec), passes,
                                   PassContext(calib_data=cds, executor=OrtExecutor(threads=1)))
                m = lower(res.graph)
                stats.append({p.name: dict(r.stats) for p, r, _ in res.results})
                text = ",".join(p.spec() for p in passes)
            seconds += time.perf_counter() - t0
            cpu_s += time.process_time() - c0
        q = P.logits(m, ds, ev)
        fp = np.stack([fp_all[j] for j in ev.tolist()])
        per.append(P.scores(fp, q, ds.labels[ev]))
        fps.append(fp), qs.append(q), labs.append(ds.labels[ev])
        print(f"  {model} {config} split {i + 1}/{len(splits)}: drop {per[-1]['drop_points']:.2f}"
              f", agreement {per[-1]['agreement']:.3f}, SQNR {per[-1]['sqnr_db']:.1f} dB "
              f"({seconds:.0f} s so far)", file=sys.stderr, flush=True)
    hwm = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text()
               .splitlines() if line.startswith("VmHWM:"))
    summ = P.summary(per, np.concatenate(fps), np.concatenate(qs), np.concatenate(labs))
    return {"model": model, "config": config, "pipeline": text or config,
            "protocol": "/".join(map(str, MODELS[model][3])), "quick": quick,
            "calib_images": int(len(splits[0][0])), "eval_images": int(len(every)),
            "fp32": summ["pooled"]["fp32"], "quantised": summ["pooled"]["quantised"],
            "drop_points": round(summ["drop_points"]["mean"], 2), "summary": summ, "splits": per,
            "seconds": round(seconds, 1), "cpu_seconds": round(cpu_s, 1),
            "peak_rss_mb": round(hwm / 1024), "stats": stats}


def run_one(model: str, config: str, cores: int, slot: int, cpu: str, quick: bool) -> dict:
    cmd = [sys.executable, __file__, "--child", model, config, "--cpu", cpu]
    cmd += ["--quick"] if quick else []
    n = os.cpu_count() or 1
    if cores and n >= cores * (slot + 1):
        cmd = ["taskset", "-c", f"{slot * cores}-{slot * cores + cores - 1}"] + cmd
    env = dict(os.environ, OMP_NUM_THREADS=str(cores or 1))
    out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env)  # progress: stderr
    if out.returncode != 0 or not out.stdout.strip():
        return {"model": model, "config": config, "error": f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _pm(d: dict, scale: float = 1.0, fmt: str = ".2f") -> str:
    return f"{scale * d['mean']:{fmt}} ± {scale * d['std']:{fmt}}"


def markdown(rows: list[dict], targets: dict) -> str:
    lines = ["| model | config | splits (calib/eval) | FP32 % | drop (points) | agreement % "
             "| logit SQNR dB | target | met | wall s | CPU s | peak RSS MB |",
             "|---|---|---|---:|---:|---:|---:|---|---|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['config']} | error: {r['error'][-80:]} "
                         "||||||||||")
            continue
        sm = r["summary"]
        drop_t, agr_t = targets.get((r["model"], r["config"]), (None, None))
        want = [] if drop_t is None else [f"drop <= {drop_t}"]
        want += [] if agr_t is None else [f"agreement >= {100 * agr_t:.0f}%"]
        ok = ((drop_t is None or sm["drop_points"]["mean"] <= drop_t)
              and (agr_t is None or sm["agreement"]["mean"] >= agr_t))
        met = "" if not want else ("yes" if ok else "**MISSED**")
        lines.append(f"| {r['model']} | {r['config']} | {r['protocol']} ({r['calib_images']}/"
                     f"{r['eval_images']}{' quick' if r.get('quick') else ''}) | "
                     f"{100 * r['fp32']:.2f} | {_pm(sm['drop_points'])} | "
                     f"{_pm(sm['agreement'], 100, '.1f')} | {_pm(sm['sqnr_db'], 1, '.1f')} | "
                     f"{', '.join(want)} | {met} | {r['seconds']:.0f} | {r['cpu_seconds']:.0f} | "
                     f"{r['peak_rss_mb']} |")
    return "\n".join(lines)


def merged(paths: list[str]) -> list[dict]:
    """Rows of earlier runs (later files win), in the issue's table order, missing rows named."""
    found: dict[tuple[str, str], dict] = {}
    for p in paths:
        for r in json.loads(Path(p).read_text())["rows"]:
            found[(r["model"], r["config"])] = r
    rows = [found.pop((m, c), {"model": m, "config": c, "error": "not measured"})
            for m, c, _, _ in TABLE]
    return rows + list(found.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=None, choices=list(MODELS))
    ap.add_argument("--configs", nargs="*", default=None)
    ap.add_argument("--rtn", action="store_true", help="also run rtn:PRESET baselines")
    ap.add_argument("--quick", action="store_true",
                    help=f"CIFAR: evaluate on {QUICK_EVAL} held-out images instead of 4,488")
    ap.add_argument("--jobs", type=int, default=1, help="children side by side")
    ap.add_argument("--cores", type=int, default=2, help="CPUs per child (taskset)")
    ap.add_argument("--cpu", default="avx2", help="ORT int8 CPU kind for the target defaults")
    ap.add_argument("--out", default="bench_lowbit")
    ap.add_argument("--merge", nargs="+", metavar="JSON",
                    help="print the issue's table from earlier results (no run)")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    targets = {(m, c): (t, a) for m, c, t, a in TABLE}
    if args.merge:
        print(markdown(merged(args.merge), targets))
        return
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.cpu, args.quick)))
        return
    jobs = [(m, c) for m, c, _, _ in TABLE if (args.models is None or m in args.models)
            and (args.configs is None or c in args.configs)]
    if args.configs:
        jobs += [(m, c) for m in (args.models or list(MODELS)) for c in args.configs
                 if (m, c) not in jobs]
    if args.rtn:
        jobs += [(m, f"rtn:{c}") for m, c in list(jobs) if not c.startswith(("rtn:", "ort"))]
    slots: queue.Queue[int] = queue.Queue()
    for i in range(max(1, args.jobs)):
        slots.put(i)

    def go(job: tuple[str, str]) -> dict:
        slot = slots.get()
        try:
            return run_one(*job, args.cores, slot, args.cpu, args.quick)
        finally:
            slots.put(slot)

    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        rows = list(pool.map(go, jobs))
    out = REPO / "benchmarks" / "results" / f"{args.out}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "cores_per_child": args.cores}, indent=2))
    print(markdown(rows, targets))
    print(f"\n(JSON: {out.relative_to(REPO)})")


if __name__ == "__main__":
    main()
