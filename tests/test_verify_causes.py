"""``verify`` names the causes it can prove (#13 item 3): the two recomputation rules of
:mod:`qcompile.driver.verify.causes` on constructed cases (this CPU has VNNI, so ORT itself
never saturates here: the int16 pair rule is checked on the recomputation, not on ORT), and
the JSON/text report of an isolated verify run on an ORT-quantised model."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from benchmarks._ortq import ort_quantized
from qcompile.driver.verify import format_text, verify_model
from qcompile.driver.verify.causes import (
    RULES,
    Causes,
    explain,
    float32_requant,
    saturated_acc,
    saturated_pair_sum,
)
from qcompile.frontend import lift
from qcompile.testing import zoo


def test_pairs_saturate_to_int16():
    x = np.full(4, 255, np.uint8)
    w = np.full(4, 127, np.int8)
    # each pair 2 * 255 * 127 = 64770 > 32767: two saturated pairs, not the exact 129540
    assert saturated_pair_sum(x, w) == 2 * 32767
    assert saturated_pair_sum(x, -w.astype(np.int16) - 1) == 2 * -32768  # w = -128
    # pairs that fit are exact, and an odd last element is its own pair
    small = np.array([10, 20, 30], np.uint8), np.array([3, -4, 5], np.int8)
    assert saturated_pair_sum(*small) == 10 * 3 - 20 * 4 + 30 * 5
    # 255*127 + 255*(-127) = 0: no saturation when the pair sums cancel
    assert saturated_pair_sum(np.array([255, 255], np.uint8), np.array([127, -127], np.int8)) == 0


def test_saturated_acc_zero_points_and_s8_shift():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 40, 10).astype(np.uint8)
    w = rng.integers(-30, 30, 10).astype(np.int8)
    zx, zw = 7, 3
    exact = int(((x.astype(int) - zx) * (w.astype(int) - zw)).sum())
    assert saturated_acc(x, w, zx, zw) == exact  # small codes: nothing saturates
    xs = (x.astype(int) - 20).astype(np.int8)  # s8 activations enter as x + 128
    assert saturated_acc(xs, w, zx - 20, zw) == int(((xs.astype(int) - (zx - 20))
                                                    * (w.astype(int) - zw)).sum())
    big = np.full(4, 255, np.uint8), np.full(4, 127, np.int8)
    assert saturated_acc(*big, 0, 0) == 65534 < 4 * 255 * 127


def test_float32_requant_rounds_the_float32_product():
    # s_x s_w / s_y in float32 is not 1/3 exactly: the product lands off the exact value
    assert float32_requant(3 * 7, 1.0, 1.0, 3.0, 0, 0, 255) == 7
    assert float32_requant(10 ** 6, 1.0, 1.0, 1.0, 200, 0, 255) == 255  # saturates
    assert float32_requant(-5, 1.0, 1.0, 2.0, 0, -128, 127) == -2  # rint: half to even


def _conv_model(sy: float) -> onnx.ModelProto:
    init = [numpy_helper.from_array(a, n) for n, a in (
        ("sx", np.float32(1.0)), ("zx", np.uint8(0)), ("w", np.full((1, 2, 1, 2), 127, np.int8)),
        ("sw", np.float32(1.0)), ("zw", np.int8(0)), ("sy", np.float32(sy)),
        ("zy", np.uint8(0)))]
    node = helper.make_node("QLinearConv", ["x", "sx", "zx", "w", "sw", "zw", "sy", "zy"],
                            ["y"], kernel_shape=[1, 2])
    return helper.make_model(helper.make_graph(
        [node], "c", [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 2, 1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, [1, 1, 1, 2])], init),
        opset_imports=[helper.make_opsetid("", 17)])


def test_explain_attributes_a_saturated_departure_to_the_pair_rule():
    g = lift(_conv_model(1024.0))
    vs = SimpleNamespace(exact_graph=g, interp=SimpleNamespace(const=lambda v: v.const),
                         tensors=[SimpleNamespace(name="y", kernel="QLinearConv")])
    x = np.array([[[[255, 255, 1]], [[255, 255, 1]]]], np.uint8)
    # element 0: K = 4 products of 255 * 127 = 129540 exactly -> 126.5039 -> 127; with int16
    # pairs (kh, kw, c order: (x00 c0, x00 c1), (x01 c0, x01 c1)) 2 * 32767 -> 63.998 -> 64.
    # element 1: exact 2 * 255 * 127 + 2 * 127 = 65024 -> 63.5 -> 64, which ORT gives too (no
    # departure; the saturated sum 32767 + 254 would give 32).
    exact = np.array([[[[127, 64]]]], np.uint8)
    ort = {"x": x, "y": np.array([[[[64, 64]]]], np.uint8)}
    c = Causes()
    explain(vs, ort, {"y": exact}, c)
    assert c.to_json()["explained"] == {RULES[0]: 0, RULES[1]: 1}
    # a departure neither rule reproduces stays unexplained
    c2 = Causes()
    explain(vs, {"x": x, "y": np.array([[[[100, 64]]]], np.uint8)}, {"y": exact}, c2)
    assert c2.to_json()["unexplained"] == 1 and c2.to_json()["departures"] == 1


@pytest.mark.parametrize("case", [dict(fmt="QDQ", per_channel=True),
                                  dict(fmt="QDQ", activations="int8")], ids=["u8s8", "s8s8"])
def test_verify_reports_causes(tmp_path, case):
    m = ort_quantized(zoo.mini_resnet(fold_bn=True), **case)
    p = tmp_path / "q.onnx"
    onnx.save(m, p)
    d = tmp_path / "x.npy"
    x = 3 * np.random.default_rng(1).standard_normal((32, 3, 16, 16)).astype(np.float32)
    np.save(d, x)
    r = verify_model(str(p), str(d), isolate=True)
    c = r.to_json()["causes"]
    iso = {t.name: t.compared - t.equal for t in r.isolated}
    kern = {t.name: t.kernel for t in r.tensors}
    convs = [n.output.name for n in lift(m).nodes if n.op == "QuantizeLinear"
             and n.inputs[0].producer is not None and n.inputs[0].producer.op == "Conv"]
    fused = [k for k in convs if kern[k] in ("QLinearConv", "QLinearMatMul", "QGemm")]
    assert c["departures"] == sum(iso[k] for k in fused)
    assert c["unfused_departures"] == sum(iso[k] for k in convs if k not in fused)
    assert c["departures"] == sum(c["explained"].values()) + c["unexplained"]
    assert c["unexplained"] == 0  # on this CPU ORT's fused kernels only requantise in float32
    assert c["departures"] + c["unfused_departures"] > 0  # these inputs do depart
    assert "departures explained by float32 requantisation" in format_text(r)
