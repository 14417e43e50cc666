"""Benchmark: lift + fold + lower of a random-weight ResNet-50 vs ``onnx.load`` + ``onnx.save``.

Both sides start from the same file on disk and end with a file on disk, in the same run, so the
ratio is robust to machine noise. Target: ratio <= 3.0.

    python benchmarks/bench_ir.py [--depth 50] [--repeat 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import onnx  # noqa: E402

from benchmarks._common import median, table, timeit, write_json  # noqa: E402
from qcompile.backends.ort import lower, save_model  # noqa: E402
from qcompile.frontend import lift  # noqa: E402
from qcompile.passes import PassContext, parse_pipeline, run_pipeline  # noqa: E402
from qcompile.testing import zoo  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", type=int, default=50, choices=(18, 34, 50, 101))
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / f"resnet{args.depth}.onnx"
        onnx.save(zoo.resnet(args.depth), src)
        out_a, out_b = Path(tmp) / "a.onnx", Path(tmp) / "b.onnx"

        def baseline():
            onnx.save(onnx.load(src), out_a)

        def ours():
            g = lift(src)
            run_pipeline(g, parse_pipeline("fold"), PassContext(verify_each=False))
            save_model(lower(g), out_b)

        def ours_stages():
            import time

            t = [time.perf_counter()]
            g = lift(src)
            t.append(time.perf_counter())
            run_pipeline(g, parse_pipeline("fold"), PassContext(verify_each=False))
            t.append(time.perf_counter())
            m = lower(g)
            t.append(time.perf_counter())
            save_model(m, out_b)
            t.append(time.perf_counter())
            return [b - a for a, b in zip(t, t[1:])]

        base = timeit(baseline, args.repeat)
        mine = timeit(ours, args.repeat)
        stages = [ours_stages() for _ in range(3)]
        size_mb = src.stat().st_size / 1e6
    ratio = median(mine) / median(base)
    stage_ms = [1000 * median([s[i] for s in stages]) for i in range(4)]
    rows = [
        [f"ResNet-{args.depth} ({size_mb:.0f} MB)", f"{1000 * median(base):.1f}",
         f"{1000 * median(mine):.1f}", f"{ratio:.2f}", "<= 3.0", "met" if ratio <= 3.0 else "MISSED"],
    ]
    print(table(["model", "onnx load+save ms", "qcompile lift+fold+lower+save ms", "ratio",
                 "target", "status"], rows))
    print("\nstages (ms): lift {:.1f}, fold {:.1f}, lower {:.1f}, save {:.1f}".format(*stage_ms))
    path = write_json("bench_ir", {"depth": args.depth, "baseline_s": base, "ours_s": mine,
                                   "ratio": ratio, "stages_ms": dict(zip(
                                       ["lift", "fold", "lower", "save"], stage_ms)),
                                   "target": 3.0, "met": ratio <= 3.0})
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
