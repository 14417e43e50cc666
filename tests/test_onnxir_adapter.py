"""Our passes as onnx-ir passes: an onnx_ir PassManager runs the fold adapter on a zoo model;
ORT gives the same outputs before and after, the BatchNorms are gone, the input is untouched."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from qcompile.testing import zoo

onnx_ir = pytest.importorskip("onnx_ir")
ir_common = pytest.importorskip("onnx_ir.passes.common")
from qcompile.driver.onnxir_adapter import as_onnx_ir_pass  # noqa: E402


def _run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def test_pass_manager_runs_fold_with_ort_equivalent_output():
    src = zoo.mini_resnet()
    ir_model = onnx_ir.serde.deserialize_model(src)
    before = onnx_ir.serde.serialize_model(ir_model).SerializeToString()
    fold = as_onnx_ir_pass("fold")
    pm = onnx_ir.passes.PassManager([fold, ir_common.TopologicalSortPass()])
    res = pm(ir_model)
    assert res.modified
    out = onnx_ir.serde.serialize_model(res.model)
    onnx.checker.check_model(out)
    assert not any(n.op_type == "BatchNormalization" for n in out.graph.node)
    assert any(n.op_type == "BatchNormalization" for n in src.graph.node)
    feeds = zoo.random_input(src, batch=3)
    for a, b in zip(_run(src, feeds), _run(out, feeds), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
    # functional: the input model is unchanged
    assert onnx_ir.serde.serialize_model(ir_model).SerializeToString() == before
    assert fold.last_results[0]["pass"] == "fold" and fold.last_results[0]["modified"]


def test_unchanged_model_is_returned_as_an_equal_copy():
    src = zoo.mini_resnet(fold_bn=True)
    folded = onnx_ir.serde.deserialize_model(src)
    res = as_onnx_ir_pass("fold")(folded)
    assert not res.modified and res.model is not folded
    assert (onnx_ir.serde.serialize_model(res.model).SerializeToString()
            == onnx_ir.serde.serialize_model(folded).SerializeToString())


def test_bad_spec_and_data_pass_without_calib_are_one_line_errors():
    from qcompile.errors import QCompileError

    with pytest.raises(QCompileError, match="unknown"):
        as_onnx_ir_pass("fodl")
    with pytest.raises(QCompileError, match="calib="):
        as_onnx_ir_pass("calibrate")(onnx_ir.serde.deserialize_model(zoo.mini_resnet()))
