"""Lowering a per-channel int8 graph whose opset predates DequantizeLinear's ``axis`` (13):
the model is converted up with onnx's version converter, never relabelled or left invalid."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from qcompile.backends.ort import lower
from qcompile.backends.ort import opset as ort_opset
from qcompile.backends.ort.measure import optimized_op_counts
from qcompile.backends.ort.runtime import run
from qcompile.errors import QCompileError
from qcompile.numerics.error import sqnr_db
from qcompile.testing.exporters import segmentation
from tests.passes.int8_helpers import compile_graph, tiny_npz


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_npz(tmp_path_factory.mktemp("d") / "tiny.npz", n=16)


def _opset(m: onnx.ModelProto) -> int:
    return next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))


@pytest.mark.parametrize("opset", [11, 12])
def test_per_channel_int8_at_opset_11_12_is_converted_to_13(data, opset):
    model = segmentation(opset)
    g, _ = compile_graph(model, data, "fold,calibrate,quantize")
    m = lower(g)
    onnx.checker.check_model(m, full_check=True)
    assert _opset(m) == 13
    assert any(a.name == "axis" for n in m.graph.node if n.op_type == "DequantizeLinear"
               for a in n.attribute)
    ops = optimized_op_counts(m)
    assert ops["com.microsoft.QLinearConv"] >= 2 and ops["com.microsoft.QLinearConcat"] == 1
    x = np.random.default_rng(1).integers(0, 256, (2, 3, 16, 16)).astype(np.float32)
    want, got = run(model, {"input.1": x})["output"], run(m, {"input.1": x})["output"]
    assert sqnr_db(want, got) > 20


def test_float_and_per_tensor_keep_the_models_opset(data):
    g, _ = compile_graph(segmentation(11), data, "fold")
    assert _opset(lower(g)) == 11
    g, _ = compile_graph(segmentation(11), data, "fold,calibrate,quantize{per_channel=false}")
    m = lower(g)
    onnx.checker.check_model(m, full_check=True)
    assert _opset(m) == 11


def test_converter_failure_is_one_line_naming_the_fix(data, monkeypatch):
    g, _ = compile_graph(segmentation(11), data, "fold,calibrate,quantize")

    def boom(model, target):
        raise RuntimeError("No Adapter For Resize\nmore")

    monkeypatch.setattr(ort_opset.version_converter, "convert_version", boom)
    with pytest.raises(QCompileError) as e:
        lower(g)
    msg = str(e.value)
    assert "\n" not in msg and "needs opset 13" in msg and "No Adapter For Resize" in msg
    assert "per_channel=false" in msg
