"""Benchmark of ``--cluster`` (issue 15): Dask LocalCluster workers vs a plain local run.

On cifar10_resnet20 with ``emulate --format bf16`` over ``--images`` CIFAR images (batch 8, one
shard per batch) and a 4-format ``sweep`` (int8, bf16, e4m3, posit8_1) over ``--sweep-images``:

* plain local run (no Dask; numba and ONNX Runtime use both cores);
* ``--cluster local:1`` and ``--cluster local:2`` (worker processes of 1 thread each), wall time
  including the cluster's start-up, and whether every logit / row equals the local run's.

Targets: local:2 vs local:1 >= 1.8x; local:2 <= 1.1x the plain local run's wall time; cluster
overhead per image <= 5% of the per-image emulation cost, estimated from local:1 as
(wall - start-up - summed emulation and FP32 seconds) / images, and as the part of that the
cluster adds (less the plain run's own time outside emulation: lift, data, engine build);
and per added image, from local:1 on twice the images (the fixed part cancels).
A short untimed run first fills numba's on-disk cache, so no mode pays the compilation.  The machine is shared: ratios
are from the same run.  Prints markdown tables; writes benchmarks/results/bench_cluster.json.
Usage: python benchmarks/bench_cluster.py [--images 200] [--sweep-images 100]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import DATA, table, write_json  # noqa: E402
from qcompile.driver.emulate import emulate, make_config  # noqa: E402
from qcompile.driver.sweep import sweep  # noqa: E402

FORMATS = ["int8", "bf16", "e4m3", "posit8_1"]


def _emulate(n: int, cluster: str | None, logs: list[str]):
    t0 = time.perf_counter()
    rep = emulate(str(DATA / "cifar10_resnet20.onnx"), make_config(format="bf16"),
                  data=str(DATA / "cifar10_test_dev.npz"), limit=n, preprocess="cifar",
                  batch=8, cluster=cluster, log=logs.append)
    return time.perf_counter() - t0, rep


def _sweep(n: int, cluster: str | None, logs: list[str]):
    t0 = time.perf_counter()
    rep = sweep(str(DATA / "cifar10_resnet20.onnx"), str(DATA / "cifar10_test_dev.npz"),
                FORMATS, preprocess="cifar", limit=n, calib_images=64, cluster=cluster,
                log=logs.append)
    return time.perf_counter() - t0, rep


def _startup(logs: list[str]) -> float:
    for m in logs:
        if m.startswith("cluster:") and "ready in" in m:
            return float(m.rsplit("ready in", 1)[1].split()[0])
    return 0.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--sweep-images", type=int, default=100)
    a = ap.parse_args()
    out: dict = {"images": a.images, "sweep_images": a.sweep_images, "formats": FORMATS,
                 "emulate": {}, "sweep": {}}
    ref = {}
    _emulate(8, None, [])  # numba's on-disk cache filled before any mode is timed
    for what, fn, n in (("emulate", _emulate, a.images), ("sweep", _sweep, a.sweep_images)):
        for mode in (None, "local:1", "local:2"):
            logs: list[str] = []
            wall, rep = fn(n, mode, logs)
            key = mode or "local (both cores, no Dask)"
            if what == "emulate":
                body = json.dumps([rep["results"], rep["layers"], rep["accuracy"]])
                busy = rep["seconds"] + rep["fp32_seconds"]
            else:
                body = json.dumps([{k: v for k, v in r.items() if k != "seconds"}
                                   for r in rep["rows"]])
                busy = sum(r["seconds"] for r in rep["rows"])
            ref.setdefault(what, body)
            out[what][key] = {"wall_s": round(wall, 2), "startup_s": _startup(logs),
                              "busy_s": round(busy, 2), "identical": body == ref[what]}
            print(f"{what} {key}: {wall:.1f} s", file=sys.stderr, flush=True)
    rows = []
    for what in ("emulate", "sweep"):
        r = out[what]
        loc, one, two = (r["local (both cores, no Dask)"], r["local:1"], r["local:2"])
        for k, v in r.items():
            rows.append([what, k, v["wall_s"], v["startup_s"], v["busy_s"],
                         "yes" if v["identical"] else "NO"])
        out[what]["speedup_2_vs_1"] = round(one["wall_s"] / two["wall_s"], 3)
        out[what]["local2_over_local"] = round(two["wall_s"] / loc["wall_s"], 3)
    e1, e0 = out["emulate"]["local:1"], out["emulate"]["local (both cores, no Dask)"]
    per_image = e1["busy_s"] / a.images
    over = (e1["wall_s"] - e1["startup_s"] - e1["busy_s"]) / a.images
    # what the cluster adds: local:1's time outside the emulation less the plain run's (both
    # lift the model, load the data and build an engine; the cluster also ships the job,
    # builds the engine again on its worker and schedules the shards)
    extra = ((e1["wall_s"] - e1["startup_s"] - e1["busy_s"])
             - (e0["wall_s"] - e0["busy_s"])) / a.images
    # the per-image part alone: local:1 again on twice the images; what the extra images
    # add outside the emulation (shipping, scheduling, merging) is the cluster's cost per
    # image, the fixed part (start-up, worker imports, engine build) cancels
    logs2: list[str] = []
    wall2, rep2 = _emulate(2 * a.images, "local:1", logs2)
    busy2 = rep2["seconds"] + rep2["fp32_seconds"]
    marg = ((wall2 - _startup(logs2) - busy2)
            - (e1["wall_s"] - e1["startup_s"] - e1["busy_s"])) / a.images
    fixed = (e1["wall_s"] - e1["startup_s"] - e1["busy_s"]) - marg * a.images
    out["emulate"][f"local:1 ({2 * a.images} images)"] = {
        "wall_s": round(wall2, 2), "startup_s": _startup(logs2), "busy_s": round(busy2, 2)}
    out["emulate"]["marginal_overhead_per_image_s"] = round(marg, 5)
    out["emulate"]["marginal_overhead_fraction"] = round(marg / per_image, 4)
    out["emulate"]["fixed_outside_emulation_s"] = round(fixed, 2)
    rows.append(["emulate", f"local:1 ({2 * a.images} images)", round(wall2, 2),
                 _startup(logs2), round(busy2, 2), ""])
    out["emulate"]["per_image_s"] = round(per_image, 4)
    out["emulate"]["overhead_per_image_s"] = round(over, 4)
    out["emulate"]["overhead_fraction"] = round(over / per_image, 4)
    out["emulate"]["cluster_added_per_image_s"] = round(extra, 4)
    out["emulate"]["cluster_added_fraction"] = round(extra / per_image, 4)
    print(table(["command", "run", "wall (s)", "cluster start-up (s)", "worker busy (s)",
                 "identical to local"], rows))
    print()
    print(table(["measure", "emulate (bf16)", "sweep (4 formats)", "target"], [
        ["local:2 / local:1 speed-up", out["emulate"]["speedup_2_vs_1"],
         out["sweep"]["speedup_2_vs_1"], ">= 1.8"],
        ["local:2 wall / plain local wall", out["emulate"]["local2_over_local"],
         out["sweep"]["local2_over_local"], "<= 1.1"],
        ["time outside emulation per image / emulation per image (local:1)",
         out["emulate"]["overhead_fraction"], "", "<= 0.05"],
        ["  of which the cluster adds (less the plain run's own)",
         out["emulate"]["cluster_added_fraction"], "", "<= 0.05"],
        [f"  per added image ({a.images} -> {2 * a.images} images, local:1)",
         out["emulate"]["marginal_overhead_fraction"], "", "<= 0.05"],
        ["  fixed per run, beside the start-up (s)", out["emulate"]["fixed_outside_emulation_s"],
         "", ""]]))
    print(f"\nwrote {write_json('bench_cluster', out)}")


if __name__ == "__main__":
    main()
