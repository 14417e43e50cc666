"""Benchmark: start-up time of the command line (``--help``, a subcommand's ``--help``, a
one-line error on a missing file) against ``python -c pass`` and ``import qcompile.cli``.

Each row is the median wall time of ``--repeat`` fresh processes (and their user+system CPU
time, which machine load inflates less). Target (#17): help and one-line errors under 0.5 s.
Lists the heavy modules the CLI imports at start-up (should be none).

    python benchmarks/bench_startup.py [--repeat 7]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import machine, median, table, write_json  # noqa: E402

HEAVY = ("onnx", "onnxruntime", "numba", "gmpy2", "PIL", "matplotlib", "distributed", "dask")
PY = sys.executable
_SCRIPT = Path(PY).parent / "qcompile"  # the installed console script, as a user runs it
CLI = [str(_SCRIPT)] if _SCRIPT.is_file() else [PY, "-c", "from qcompile.cli import main; main()"]
CASES = [
    ("python -c pass", [PY, "-c", "pass"]),
    ("import qcompile.cli", [PY, "-c", "import qcompile.cli"]),
    ("qcompile --help", CLI + ["--help"]),
    ("qcompile --version", CLI + ["--version"]),
    ("qcompile run --help", CLI + ["run", "--help"]),
    ("qcompile emulate --help", CLI + ["emulate", "--help"]),
    ("qcompile inspect missing.onnx", CLI + ["inspect", "missing.onnx"]),
    ("qcompile run missing.onnx -o x.onnx", CLI + ["run", "missing.onnx", "-o", "x.onnx"]),
    ("qcompile compare a.onnx b.onnx --data d", CLI + ["compare", "missing_a.onnx",
                                                         "missing_b.onnx", "--data", "d.npz"]),
]


def once(cmd: list[str]) -> tuple[float, float, int]:
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd="/tmp")
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return wall, cpu, p.returncode


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args(argv)
    rows, out = [], []
    for name, cmd in CASES:
        once(cmd)  # warm the file cache and .pyc files
        runs = [once(cmd) for _ in range(args.repeat)]
        wall, cpu = median([r[0] for r in runs]), median([r[1] for r in runs])
        rows.append([name, f"{wall:.3f}", f"{cpu:.3f}", runs[0][2]])
        out.append({"case": name, "wall_s": wall, "cpu_s": cpu, "exit": runs[0][2]})
    code = ("import qcompile.cli, sys; print(sorted({m.split('.')[0] for m in sys.modules} & "
            f"{set(HEAVY)!r}))")
    heavy = subprocess.run([PY, "-c", code], capture_output=True, text=True).stdout.strip()
    print(table(["command", "wall s (median)", "cpu s (median)", "exit"], rows))
    print(f"\nheavy modules imported by `import qcompile.cli`: {heavy}")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs)")
    write_json("startup", {"machine": machine(), "repeat": args.repeat, "rows": out,
                           "heavy_modules": heavy, "load": os.getloadavg()[0]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
