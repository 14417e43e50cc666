"""Hostile-input fuzzing at scale: N hypothesis-drawn mutations of valid models and data files,
each through the qcompile commands in process (tests/fuzz/harness.py: time budget per run,
tracemalloc memory budget), counted per outcome and command.

    python benchmarks/bench_fuzz.py --examples 300 --json benchmarks/results/fuzz.json

Prints a table (outcome counts per command) and every non-clean case (crash, bad, hang,
memory, internal) with its mutation, so a regression names its input. Exit code 1 when any
run is not ``ok``/``error``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hypothesis import HealthCheck, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.fuzz import harness  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=300, help="model mutations (data: a third)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--commands", default=",".join(harness.MODEL_COMMANDS))
    ap.add_argument("--json", default=None, help="write the counts and cases here")
    args = ap.parse_args(argv)
    commands = args.commands.split(",")
    counts: Counter = Counter()
    cases: list[dict] = []
    t0 = time.time()

    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)

        def record(kind: str, desc: str, command: str, out: harness.Outcome) -> None:
            counts[(kind, command, out.kind)] += 1
            if out.kind not in harness.GOOD:
                cases.append({"input": kind, "mutation": desc, "command": command,
                              "outcome": out.kind, "exit": out.exit_code, "detail": out.detail})
                print(f"  {out.kind}: {command} {desc}: {out.detail[:300]}", flush=True)

        @seed(args.seed)
        @settings(max_examples=args.examples, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(st.data())
        def models(data):
            name = data.draw(st.sampled_from(harness.BASE_MODELS))
            desc, blob = data.draw(harness.model_mutation(name))
            command = data.draw(st.sampled_from(commands))
            record("model", desc, command, harness.model_case(folder, name, blob, command))

        @seed(args.seed)
        @settings(max_examples=max(args.examples // 3, 1), deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(harness.data_mutation(), st.sampled_from(["run-int8", "emulate"]))
        def datas(case, command):
            desc, suffix, blob = case
            record("data", desc, command, harness.data_case(folder, suffix, blob, command))

        models()
        datas()

    seconds = time.time() - t0
    kinds = ["ok", "error", "internal", "crash", "bad", "hang", "memory"]
    rows = sorted({(k, c) for k, c, _ in counts})
    print(f"\n| input | command | {' | '.join(kinds)} |")
    print("|---|---|" + "---:|" * len(kinds))
    for k, c in rows:
        print(f"| {k} | {c} | " + " | ".join(str(counts[(k, c, o)]) for o in kinds) + " |")
    total = Counter()
    for (_, _, o), n in counts.items():
        total[o] += n
    print("| all | all | " + " | ".join(str(total[o]) for o in kinds) + " |")
    print(f"\n{sum(total.values())} runs in {seconds:.0f} s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            "examples": args.examples, "seed": args.seed, "seconds": round(seconds, 1),
            "counts": [{"input": k, "command": c, "outcome": o, "runs": n}
                       for (k, c, o), n in sorted(counts.items())],
            "total": dict(total), "cases": cases}, indent=2))
    return 0 if all(o in harness.GOOD for o in total if total[o]) else 1


if __name__ == "__main__":
    sys.exit(main())
