"""assign with float/posit formats: explicit qcompile.FQ ops (structure, no-op, numerics),
option errors, presets, emulate/ORT wiring."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qcompile.backends.mpfr import Interpreter, make_config
from qcompile.driver.presets import FLOAT_PRESETS, preset_pipeline
from qcompile.errors import OptionError, QCompileError
from qcompile.ir import QCOMPILE_DOMAIN
from qcompile.numerics.fq import fq_format, fq_round
from qcompile.passes import parse_pipeline
from tests.passes.int8_helpers import compile_graph, tiny_npz
from tests.passes.test_quantize import clip_pool_pad_model

CAL = "fold,calibrate{images=16}"


@pytest.fixture
def data(tmp_path):
    return tiny_npz(tmp_path / "tiny.npz", n=32)


def _fq(g):
    return [n for n in g.nodes if n.domain == QCOMPILE_DOMAIN and n.op == "FQ"]


def _x(n=4, seed=3):
    return np.random.default_rng(seed).standard_normal((n, 3, 16, 16)).astype(np.float32)


def test_first_last_structure_golden(data, check, golden):
    g, res = compile_graph(clip_pool_pad_model(), data,
                           CAL + ",assign{policy=first-last,weights=e4m3}")
    check(g)
    fq = _fq(g)
    # conv1 and fc are kept (fp32); conv2 gets a weight FQ (per output channel) and an input FQ
    assert [(n.attrs["format"], n.attrs.get("axis")) for n in fq] == [("e4m3", 0), ("e4m3", None)]
    conv2 = g.find_node("conv2")
    assert conv2.inputs[0].producer.op == "FQ" and conv2.inputs[1].producer.op == "FQ"
    assert g.find_node("conv1").inputs[1].is_const and g.find_node("fc").inputs[1].is_const
    w_scale = conv2.inputs[1].producer.inputs[1].const
    assert w_scale.shape == (8,)
    rep = json.loads(g.metadata["qcompile.assign"])
    assert rep["kept"] == ["conv1", "fc"] and rep["activations"] == "e4m3"
    assert res[-1][1].stats == {"kept_layers": 2, "fq_weights": 1, "fq_activations": 1}
    golden("assign/first_last_e4m3.after", _structure(g))


def _structure(g) -> str:
    return "\n".join(f"{n.qualified_op} {n.name} <- "
                     + ", ".join("-" if v is None else v.name for v in n.inputs)
                     + (f" {{{', '.join(f'{k}={v}' for k, v in sorted(n.attrs.items()))}}}"
                        if n.op == "FQ" else "") for n in g.nodes) + "\n"


def test_amax_scales_weights_per_channel_and_activations_per_tensor(data):
    g, _ = compile_graph(clip_pool_pad_model(), data,
                         CAL + ",assign{policy=uniform,weights=e5m2,activations=e4m3,keep=none}")
    f5 = fq_format("e5m2")
    for n in _fq(g):
        x, s = n.inputs
        if x.is_const:  # weight: max |w| per output channel -> e5m2's max finite (57344)
            w = x.const.astype(np.float64)
            ax = n.attrs["axis"]
            amax = np.abs(np.moveaxis(w, ax, 0).reshape(w.shape[ax], -1)).max(1)
            np.testing.assert_allclose(s.const, amax / f5.max_finite, rtol=1e-6)
        else:  # activation: calibrated range -> e4m3's 448
            r = x.meta["range"] if "range" in x.meta else next(
                v for k, v in x.meta.items() if getattr(v, "hi", None) is not None)
            np.testing.assert_allclose(float(s.const), max(abs(r.lo), abs(r.hi)) / 448,
                                       rtol=1e-6)
    assert len(_fq(g)) == 6  # 3 layers x (weight, activation)


def test_no_op_without_weighted_layers(data):
    from qcompile.ir import Graph, Node, TensorType
    from qcompile.passes import PassContext

    g = Graph()
    x = g.add_input("x", TensorType.of(np.zeros((1, 4), np.float32)))
    n = Node("Relu", [x], [x.type], name="relu", output_names=["y"])
    g.append(n)
    g.outputs.append(n.output)
    before = _structure(g)
    p = parse_pipeline("assign{policy=uniform,weights=bf16}")[0]
    res = p.run(g, PassContext())
    assert not res.modified and res.stats.get("skipped_no_layers") == 1 and res.notes
    assert _structure(res.graph) == before


def test_fp32_formats_without_scale_are_exact_identity(data):
    """Numerical equivalence: FQ into fp32 with s = 1 changes nothing (bit for bit)."""
    g0, _ = compile_graph(clip_pool_pad_model(), data, CAL)
    g1, _ = compile_graph(clip_pool_pad_model(), data,
                          CAL + ",assign{policy=uniform,weights=fp32,scaling=none,keep=none}")
    assert len(_fq(g1)) == 6
    cfg = make_config(format="fp32")
    a = Interpreter(g0, cfg).run_numpy({"input": _x()})["logits"]
    b = Interpreter(g1, cfg).run_numpy({"input": _x()})["logits"]
    np.testing.assert_array_equal(a, b)


def test_bf16_graph_matches_manual_rounding_and_reference(data):
    """The emulated bf16 graph equals the float graph run on manually rounded weights/inputs
    (fast engine), and the reference engine agrees bit for bit."""
    g, _ = compile_graph(clip_pool_pad_model(), data,
                         CAL + ",assign{policy=uniform,weights=bf16,keep=none}")
    cfg = make_config(format="fp32")
    x = _x(2)
    fast = Interpreter(g, cfg, "fast").run_numpy({"input": x})["logits"]
    ref = Interpreter(g, cfg, "reference").run_numpy({"input": x})["logits"]
    np.testing.assert_array_equal(fast, ref)
    f32 = Interpreter(g0 := compile_graph(clip_pool_pad_model(), data, CAL)[0], cfg).run_numpy(
        {"input": x})["logits"]
    assert 0 < np.abs(fast - f32).max() < 0.05 * np.abs(f32).max()  # bf16: ~3 digits
    # the weight FQ of conv1 equals fq_round of the weights with its scale, times the scale
    n = g.find_node("conv1").inputs[1].producer
    w, s = n.inputs[0].const.astype(np.float64), n.inputs[1].const.astype(np.float64)
    q = fq_round(w, s.reshape(-1, 1, 1, 1), fq_format("bf16")) * s.reshape(-1, 1, 1, 1)
    it = Interpreter(g, cfg)
    got = {}
    it.listeners.append(lambda node, a, o: got.setdefault(node.name, o[0]))
    it.run({"input": x})
    np.testing.assert_array_equal(got[n.name], q.astype(np.float32).astype(np.float64))
    del g0


@pytest.mark.parametrize("opts,match", [
    ("policy=budget,weights=e4m3,avg_bits=6", "policy=budget searches integer formats"),
    ("policy=uniform,weights=e4m3,activations=uint8", "mixed with float/posit"),
    ("policy=uniform,weights=int4,activations=e4m3", "mixed with float/posit"),
    ("policy=uniform,weights=e4m3,bf16", "one format"),
    ("policy=uniform,weights=e9m9", "unknown float format"),
    ("policy=uniform,weights=posit40_1", "posit"),
])
def test_option_errors_are_one_line(opts, match):
    with pytest.raises(OptionError, match=match) as e:
        parse_pipeline("assign{" + opts + "}")
    assert "\n" not in str(e.value)


def test_presets_parse_and_ort_int8_refuses(data, tmp_path):
    from qcompile.driver.compile import compile_model
    from qcompile.driver.presets import PRESETS

    for name, text in FLOAT_PRESETS.items():
        assert PRESETS[name] == text == preset_pipeline(name)
        parse_pipeline(text)
    import onnx

    from qcompile.testing.zoo import mini_resnet

    m = tmp_path / "m.onnx"
    onnx.save(mini_resnet(), m)
    out = tmp_path / "out.onnx"
    with pytest.raises(QCompileError, match=r"ort-int8: assign.*e4m3.*qcompile emulate"):
        compile_model(m, out, passes=FLOAT_PRESETS["fl-e4m3"].replace(
            "calibrate", "calibrate{images=16}"), target="ort-int8", calib=str(data))
    assert not out.exists()


def test_emulate_with_preset_leaves_out_calibration_images(data):
    import tempfile
    from pathlib import Path

    import onnx

    from qcompile.driver.emulate import emulate
    from qcompile.testing.zoo import mini_resnet

    d = Path(tempfile.mkdtemp())
    onnx.save(mini_resnet(), d / "m.onnx")
    rep = emulate(str(d / "m.onnx"), make_config(format="fp32"), data=str(data),
                  preprocess="none", calib=str(data), passes="fold,calibrate{images=16},assign{policy=first-last,"
                  "weights=posit8_1}")
    assert rep["images"] == 16  # 32 images, 16 used for calibration
    cal = set()
    assert all(r["index"] not in cal for r in rep["results"])
    with pytest.raises(QCompileError, match="--calib"):
        emulate(str(d / "m.onnx"), make_config(format="fp32"), data=str(data),
                preprocess="none", preset="fl-e4m3")
