"""End-to-end example: a torchvision-layout ResNet-18 (random weights) through qcompile.

lift -> fold,cleanup -> lower -> ONNX Runtime, and a check that the logits did not move.

    python examples/resnet18_fold.py [--out resnet18_folded.onnx]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

import qcompile
from qcompile.driver.inspect import inspect_graph
from qcompile.testing import zoo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="where to write the folded model")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "resnet18.onnx"
        onnx.save(zoo.resnet(18), src)
        graph = qcompile.lift(src)
        rep = inspect_graph(graph)
        print(f"lifted {graph.name}: {len(graph.nodes)} nodes, {rep['gmacs']:.2f} GMACs")
        result = qcompile.run_pipeline(graph, qcompile.parse_pipeline("fold,cleanup"))
        for p, r, seconds in result.results:
            print(f"  {p.name:<8} {seconds * 1000:6.1f} ms  {dict(r.stats)}")
        out = Path(args.out or Path(tmp) / "resnet18_folded.onnx")
        qcompile.save_model(qcompile.lower(result.graph), out)
        x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
        a = ort.InferenceSession(str(src)).run(None, {"input": x})[0]
        b = ort.InferenceSession(str(out)).run(None, {"input": x})[0]
        print(f"max |logit difference| / max |logit| = {np.abs(a - b).max() / np.abs(a).max():.2e}")
        print(f"same top-1: {bool((a.argmax(1) == b.argmax(1)).all())}; wrote {out}")


if __name__ == "__main__":
    main()
