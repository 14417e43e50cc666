"""``emulate`` on models quantised by other tools (#13 items 3, 5): ORT quantize_static (QDQ and
QOperator), quantize_dynamic and the torch-QAT-shaped graph (uint8 NCHW input normalised
in-graph) run through the MPFR engine with their exact quantised semantics; the emulated
logits are what ORT computes for the same model up to its float32 requantisation (a few
output LSB at most), and the top-1 class agrees."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from benchmarks._ortq import ort_quantized
from qcompile.backends.mpfr.config import make_config
from qcompile.driver.emulate import emulate
from qcompile.testing import zoo
from qcompile.testing.quantized import torch_qat_model

KINDS = {"qdq-u8s8": dict(fmt="QDQ"), "qdq-pc-s8s8": dict(fmt="QDQ", per_channel=True,
                                                           activations="int8"),
         "qdq-u8s8-rr": dict(fmt="QDQ", reduce_range=True),
         "qop-pc-u8s8": dict(fmt="QOperator", per_channel=True),
         "qop-s8s8": dict(fmt="QOperator", activations="int8"), "dynamic": dict(dynamic=True)}


def _ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def _check(rep: dict, want: np.ndarray, float_out: np.ndarray | None,
           tol: float | None = None, saturating: bool = False) -> None:
    got = np.array([r["logits"] for r in rep["results"]], np.float64)
    assert got.shape == want.shape and np.isfinite(got).all()
    assert rep["accuracy"]["top1_agreement"] == 1.0
    err = np.abs(got - want).max()
    if saturating:
        # ORT's U8S8 kernels on x86 without VNNI saturate int16 pairs (vpmaddubsw): ORT then
        # computes another network than the model's exact one (test_quant_forms checks that
        # verify explains every such departure); the emulation must still be the quantised
        # network, nearer ORT's output than the float model is
        assert err <= 0.5 * np.abs(float_out - want).max(), err
        return
    # the quantised network, not its float equivalent: ORT's output departs from emulate's
    # (float32 requantisation ties at most) far less than the float model's does
    assert err <= (1e-3 * np.abs(want).max() if tol is None else tol), err
    if float_out is not None:
        assert err <= 0.1 * np.abs(float_out - want).max()


def _pair_saturating(kw: dict) -> bool:
    from qcompile.backends.ort.cpu import detect_cpu, pair_saturates

    return not kw.get("dynamic") and pair_saturates(
        detect_cpu(), kw.get("activations", "uint8"), "int8", kw.get("reduce_range", False))


@pytest.fixture(scope="module")
def float_model():
    return zoo.mini_resnet(fold_bn=True)


@pytest.mark.parametrize("kind", list(KINDS))
def test_emulate_runs_ort_quantised_models(tmp_path, float_model, kind):
    q = ort_quantized(float_model, **KINDS[kind])
    path = tmp_path / "q.onnx"
    onnx.save(q, path)
    x = np.random.default_rng(2).standard_normal((3, 3, 16, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    rep = emulate(str(path), make_config(format="fp32"), data=str(tmp_path / "x.npy"))
    _check(rep, _ort(q, x), _ort(float_model, x), saturating=_pair_saturating(KINDS[kind]))


def test_emulate_runs_torch_qat_uint8_nchw(tmp_path):
    m = torch_qat_model(size=16)
    path = tmp_path / "qat.onnx"
    onnx.save(m, path)
    imgs = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), np.uint8)
    np.savez(tmp_path / "img.npz", images=imgs)
    rep = emulate(str(path), make_config(format="fp32"), data=str(tmp_path / "img.npz"))
    nchw = np.ascontiguousarray(imgs.transpose(0, 3, 1, 2))
    # x / s_x = image - 127.5 exactly: every input code is a tie, which the exact network
    # rounds to even and ORT (float32 normalisation) either way, so activation codes depart
    # by 1 LSB (s_y = 0.05; test_quant_forms checks that bound with verify); the mean pool
    # and the float Gemm carry that to a logit by at most s_y * max_i sum_j |fc_ij|
    fc = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    fc_w = (fc["fc_q"].astype(np.float64) * fc["fc_scale"][:, None])
    tol = float(fc["y_scale"]) * np.abs(fc_w).sum(1).max()
    _check(rep, _ort(m, nchw), None, tol)
