"""``qcompile verify`` end to end (issue 7): ONNX Runtime vs the exact quantised network.

* a hand-built QDQ network with power-of-two scales: every float32 operation ORT performs is
  exact there (DQ values k 2^-e, integer-valued partial sums far below 2^24, divisions and
  requantisation multipliers powers of two), so ORT -- unfused (opt-level none) and fused
  (QLinearConv/QLinearAdd/QLinearGlobalAveragePool, opt-level all) -- must agree bit for bit
  with the exact network at every layer: any semantic slip (tie rounding, zero points, bias
  scale, Relu/saturation, padding) shows up as a departure;
* our int8 pipeline's models (mini ResNet, ResNet-20): departures are reported, consistent
  and never hidden (exit code 1 exactly when the verdict is "diverged");
* reference mode, golden vectors, one-line errors with exit 2.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from typer.testing import CliRunner

from qcompile.cli import app
from qcompile.driver.verify import verify_model
from qcompile.testing import zoo
from tests.passes.int8_helpers import tiny_npz

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def _t(name, arr, code=None):
    arr = np.asarray(arr)
    return helper.make_tensor(name, code or helper.np_dtype_to_tensor_dtype(arr.dtype),
                              arr.shape, arr.reshape(-1).tolist())


def pow2_qdq_model(seed: int = 0, size: int = 8) -> onnx.ModelProto:
    """input -Q/DQ-> Conv+Relu -Q/DQ-> Conv -Q/DQ-> Add(skip)+Relu -Q/DQ-> GAP -Q/DQ-> Flatten
    -> Gemm (float logits); all scales powers of two, uint8 activations, int8 weights."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def qdq(x, name, e, z):
        inits.extend([_t(f"{name}.s", np.float32(2.0 ** e)), _t(f"{name}.z", np.uint8(z))])
        nodes.append(helper.make_node("QuantizeLinear", [x, f"{name}.s", f"{name}.z"],
                                      [f"{name}_q"]))
        nodes.append(helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}.s",
                                                           f"{name}.z"], [f"{name}_dq"]))
        return f"{name}_dq"

    def weight(name, shape, e_in, e_w, axis=0):
        w = rng.integers(-40, 41, shape).astype(np.int8)
        oc = shape[axis]
        ws = (2.0 ** (e_w - rng.integers(0, 2, oc))).astype(np.float32)
        b = rng.integers(-300, 301, oc).astype(np.int32)
        bs = (np.float32(2.0 ** e_in) * ws).astype(np.float32)
        inits.extend([_t(f"{name}.wq", w), _t(f"{name}.ws", ws),
                      _t(f"{name}.wz", np.zeros(oc, np.int8)), _t(f"{name}.bq", b),
                      _t(f"{name}.bs", bs), _t(f"{name}.bz", np.zeros(oc, np.int32))])
        nodes.append(helper.make_node("DequantizeLinear", [f"{name}.wq", f"{name}.ws",
                                                           f"{name}.wz"], [f"{name}.w"], axis=axis))
        nodes.append(helper.make_node("DequantizeLinear", [f"{name}.bq", f"{name}.bs",
                                                           f"{name}.bz"], [f"{name}.b"], axis=0))
        return f"{name}.w", f"{name}.b"

    x = qdq("input", "in", -5, 128)
    w, b = weight("c1", (4, 3, 3, 3), -5, -6)
    nodes.append(helper.make_node("Conv", [x, w, b], ["c1"], pads=[1, 1, 1, 1]))
    nodes.append(helper.make_node("Relu", ["c1"], ["r1"]))
    h = qdq("r1", "r1", -4, 0)
    w, b = weight("c2", (4, 4, 3, 3), -4, -6)
    nodes.append(helper.make_node("Conv", [h, w, b], ["c2"], pads=[1, 1, 1, 1]))
    c2 = qdq("c2", "c2", -3, 128)
    nodes.append(helper.make_node("Add", [c2, h], ["add"]))
    nodes.append(helper.make_node("Relu", ["add"], ["out"]))
    o = qdq("out", "out", -3, 0)
    nodes.append(helper.make_node("GlobalAveragePool", [o], ["gap"]))
    gp = qdq("gap", "gap", -4, 0)
    nodes.append(helper.make_node("Flatten", [gp], ["flat"], axis=1))
    w, b = weight("fc", (5, 4), -4, -6)
    nodes.append(helper.make_node("Gemm", ["flat", w, b], ["logits"], transB=1))
    g = helper.make_graph(nodes, "pow2", [helper.make_tensor_value_info(
        "input", TensorProto.FLOAT, ["N", 3, size, size])], [helper.make_tensor_value_info(
            "logits", TensorProto.FLOAT, ["N", 5])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(m)
    return m


@pytest.fixture
def pow2(tmp_path):
    path = tmp_path / "pow2.onnx"
    onnx.save(pow2_qdq_model(), path)
    rng = np.random.default_rng(1)
    data = tmp_path / "x.npy"
    x = rng.normal(size=(12, 3, 8, 8)).astype(np.float32) * 2
    x[0, 0, 0, :4] = np.array([0.5, 1.5, 2.5, -0.5]) / 32  # exact ties of the input Q
    np.save(data, x)
    return path, data


@pytest.mark.parametrize("opt", ["none", "all"])
def test_pow2_network_is_bit_exact_fused_and_unfused(pow2, opt):
    path, data = pow2
    res = verify_model(str(path), str(data), opt_level=opt, batch=5)
    assert res.images == 12 and len(res.tensors) == 5
    kernels = res.kernels
    if opt == "all":  # the fused integer kernels really ran
        assert kernels.get("com.microsoft.QLinearConv") == 2
        assert kernels.get("com.microsoft.QLinearAdd") == 1
        assert kernels.get("com.microsoft.QLinearGlobalAveragePool") == 1
    else:
        assert kernels.get("Conv") == 2 and "com.microsoft.QLinearConv" not in kernels
    for t in res.tensors:
        assert t.compared > 0 and t.equal == t.compared, (t.name, t.to_json())
    assert res.verdict == "bit-exact" and res.exit_code == 0
    # the tensors really vary (no all-saturated layer making the check vacuous)
    assert res.outputs[0].to_json()["top1_agreement"] == 1.0


def test_json_report_counts_and_cli_exit_codes(pow2, tmp_path):
    path, data = pow2
    r = invoke("verify", path, "--data", data, "--layers", "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["verdict"] == "bit-exact" and rep["first_departure"] is None
    assert rep["elements_compared"] == sum(t["compared"] for t in rep["layers"])
    assert rep["elements_compared"] == 12 * (3 * 64 + 4 * 64 * 3 + 4)
    r = invoke("verify", path, "--data", data, "--layers")
    assert r.exit_code == 0 and "verdict: bit-exact" in r.stdout and "| c2_q |" in r.stdout


def test_a_departure_is_reported_with_coordinates(pow2, tmp_path):
    """Change one scale to 0.1 so ORT's float32 arithmetic rounds: the report must show it
    (measured: 4 codes of c2_q and ~180 of the Add after it differ by 1 LSB: the float32
    product (q - z) 0.1f lands on a tie that the exact value is just above)."""
    path, data = pow2
    m = onnx.load(path)
    for t in m.graph.initializer:
        if t.name == "c2.s":
            t.CopyFrom(_t("c2.s", np.float32(0.1)))
    bad = tmp_path / "bad.onnx"
    onnx.save(m, bad)
    x = np.random.default_rng(5).normal(size=(40, 3, 8, 8)).astype(np.float32) * 2
    np.save(tmp_path / "many.npy", x)
    res = verify_model(str(bad), str(tmp_path / "many.npy"), opt_level="all", isolate=True)
    j = res.to_json()
    assert j["verdict"] in ("bit-exact", "within 1 LSB", "diverged")
    assert (j["verdict"] == "diverged") == (res.exit_code == 1)
    differing = sum(t.compared - t.equal for t in res.tensors)
    assert j["elements_differing"] == differing
    for t in res.tensors:
        if t.equal < t.compared:
            assert t.examples and sum(t.hist.values()) == t.compared - t.equal
            e = t.examples[0]
            assert e["ort"] != e["exact"] and abs(e["ort"] - e["exact"]) <= t.max_lsb
    # 0.1 is not a power of two: float32 rounding (ORT) vs exact rounding must show up,
    # first at c2_q (its QuantizeLinear divides by 0.1f), then in the Add that reads it
    assert differing > 0 and j["first_departure"] == "c2_q" == res.first_departure.name
    assert res.tensors[0].equal == res.tensors[0].compared
    # fed ORT's own inputs, the layers still depart by themselves (1 LSB rounding decisions)
    iso = {t.name: t for t in res.isolated}
    assert iso["c2_q"].equal < iso["c2_q"].compared and iso["c2_q"].max_lsb == 1
    assert iso["in_q"].equal == iso["in_q"].compared


def test_reference_mode_report_plot_and_golden_dump(pow2, tmp_path):
    path, data = pow2
    md, png, dump = tmp_path / "s.md", tmp_path / "s.png", tmp_path / "golden"
    r = invoke("verify", path, "--data", data, "--reference", "fp64", "--layers", "--report", md,
               "--plot", png, "--dump", dump, "--json")
    assert r.exit_code == 0, r.output
    ref = json.loads(r.stdout)["reference"]
    assert ref["format"] == "fp64" and 0 <= ref["top1_agreement"] <= 1
    assert 5 < ref["logits_sqnr_db"]["logits"] < 80
    assert "| c2_q |" in md.read_text() and png.stat().st_size > 1000
    man = json.loads((dump / "manifest.json").read_text())
    tensors = np.load(dump / "tensors.npz")
    assert [t["name"] for t in man["tensors"]] == ["in_q", "r1_q", "c2_q", "out_q", "gap_q"]
    for t in man["tensors"]:
        a = tensors[t["name"]]
        assert list(a.shape) == t["shape"] and str(a.dtype) == t["dtype"] == "uint8"
    assert man["tensors"][1]["scale"] == [2.0 ** -4] and man["tensors"][2]["zero_point"] == [128]
    x = np.load(dump / "inputs.npz")["input"]
    np.testing.assert_array_equal(x, np.load(data))
    # a second dump into the now non-empty folder is refused, nothing overwritten
    r = invoke("verify", path, "--data", data, "--dump", dump)
    assert r.exit_code == 2 and "--dump" in r.stderr


def _one_line_error(r, *needles):
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_user_errors(pow2, tmp_path):
    path, data = pow2
    fp = tmp_path / "float.onnx"
    onnx.save(zoo.mini_resnet(), fp)
    npz = tiny_npz(tmp_path / "t.npz", n=4, size=16)
    _one_line_error(invoke("verify", fp, "--data", npz), "not quantised")
    _one_line_error(invoke("verify", path, "--data", npz, "--preprocess", "none"), "do not match the model input")
    _one_line_error(invoke("verify", path, "--data", data, "--report", tmp_path / "r.md"),
                    "--reference")
    _one_line_error(invoke("verify", path, "--data", data, "--opt-level", "max"), "--opt-level")
    _one_line_error(invoke("verify", path, "--data", data, "--reference", "fp7"), "--reference")
    _one_line_error(invoke("verify", tmp_path / "none.onnx", "--data", data), "does not exist")


@pytest.mark.slow
def test_resnet20_int8_pipeline_model(shared_data, tmp_path):
    """Our int8 ResNet-20: with optimisations off (float32 Conv between DQ and Q) and on
    (fused kernels, float32 requantisation) ORT departs from the exact network by rounding
    near ties; the departures are counted, located and consistent with the verdict."""
    out = tmp_path / "r20_int8.onnx"
    r = invoke("run", shared_data / "cifar10_resnet20.onnx", "--passes",
               "fold,calibrate{images=64},quantize", "--target", "ort-int8", "--calib",
               shared_data / "cifar10_test_dev.npz", "--preprocess", "cifar", "-o", out)
    assert r.exit_code == 0, r.output
    for opt in ("none", "all"):
        r = invoke("verify", out, "--data", shared_data / "cifar10_test_dev.npz",
                   "--preprocess", "cifar", "--limit", "30", "--layers", "--opt-level", opt,
                   "--json")
        rep = json.loads(r.stdout)
        assert r.exit_code == (1 if rep["verdict"] == "diverged" else 0)
        assert rep["quantized_tensors"] == 35 and rep["images"] == 30
        layers = rep["layers"]
        assert layers[0]["name"] == "input_dq_q" and layers[0]["max_lsb"] == 0
        ndiff = sum(t["compared"] - t["equal"] for t in layers)
        assert ndiff == rep["elements_differing"]
        # rounding-level departures only: a small fraction of the elements. How many depends
        # on the CPU's kernels: ~0.1% with AVX2, ~0.25% with AVX-512 VNNI (8-bit weights, and
        # MLAS's AVX-512 SGEMM rounds float32 partial sums in another order at opt none)
        assert ndiff < 1e-2 * rep["elements_compared"]
        if opt == "all":
            assert rep["ort_kernels"]["com.microsoft.QLinearConv"] == 19
