"""Foundation acceptance: `qcompile run MODEL --passes fold --target ort-fp32` on the shared models.

The folded model has no BatchNormalization, and its logits on the real images differ from the
original's by at most 1e-4 * max|logit| with identical argmax.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from qcompile.cli import app
from qcompile.data import open_dataset, preset

CASES = [
    ("cifar10_resnet20.onnx", "cifar10_test_dev.npz", "cifar"),
    ("cifar10_resnet56.onnx", "cifar10_test_dev.npz", "cifar"),
    ("efficientnet_lite0.onnx", "imagenet_samples_120.npz", "lite0"),
]


@pytest.mark.slow
@pytest.mark.parametrize("model,data,pre", CASES, ids=[c[0].split(".")[0] for c in CASES])
def test_fold_on_real_images(shared_data, tmp_path, model, data, pre):
    out = tmp_path / "f.onnx"
    r = CliRunner().invoke(app, ["run", str(shared_data / model), "--passes", "fold",
                                 "--target", "ort-fp32", "-o", str(out)])
    assert r.exit_code == 0, r.output
    folded = onnx.load(out)
    assert not [n for n in folded.graph.node if n.op_type == "BatchNormalization"]
    a = ort.InferenceSession(str(shared_data / model), providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    ds = open_dataset(shared_data / data, preset(pre))
    worst, n = 0.0, 0
    for batch in ds.batches(250):
        ya = a.run(None, {"input": batch.x})[0]
        yb = b.run(None, {"input": batch.x})[0]
        worst = max(worst, float(np.abs(ya - yb).max() / np.abs(ya).max()))
        assert np.array_equal(ya.argmax(1), yb.argmax(1))
        n += len(batch.x)
    assert n == len(ds)
    assert worst <= 1e-4, worst
