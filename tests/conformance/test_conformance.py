"""Conformance: every exporter-shaped model of ``qcompile.testing.exporters.CASES`` through every
command, via the CLI.

Per model kind: ``inspect`` works; ``run -p fold -t ort-fp32`` equals the original on ONNX
Runtime within 1e-5; ``run -p fold,calibrate,quantize -t ort-int8 --calib`` writes a model ORT
runs, with QuantizeLinear nodes and a finite positive output SQNR vs FP32 (printed); ``emulate
--format fp32`` within 1e-5 of ORT (relative to max |logit|); ``emulate --format fp16 --verify
20`` with 0 fast/reference mismatches.  A command may never crash: a refusal is exit 2 with one
``error: ...`` line.  A case failing because of a known bug elsewhere is listed in ``XFAIL``
(strict, with the one-line error) so the suite documents it.
"""

from __future__ import annotations

import pytest

from conformance.harness import CASES, COMMANDS, Workspace, run_command

#: (case, command) -> the exact one-line error of a known bug elsewhere (strict xfail)
XFAIL: dict[tuple[str, str], str] = {}


@pytest.fixture(scope="module")
def workspaces(tmp_path_factory):
    cache: dict[str, Workspace] = {}

    def get(name: str) -> Workspace:
        if name not in cache:
            cache[name] = Workspace.create(CASES[name], tmp_path_factory.mktemp(name))
        return cache[name]

    return get


def _params():
    for case in CASES:
        for cmd in COMMANDS:
            marks = [pytest.mark.xfail(strict=True, reason=XFAIL[case, cmd])] \
                if (case, cmd) in XFAIL else []
            yield pytest.param(case, cmd, marks=marks, id=f"{case}-{cmd}")


@pytest.mark.parametrize(("case", "command"), list(_params()))
def test_conformance(workspaces, case, command):
    out = run_command(workspaces(case), command)
    assert out.status != "crash", f"{case} {command} crashed: {out.detail}"
    assert out.status == "ok", f"{case} {command}: {out.status}: {out.detail}"
    if command == "int8":
        print(f"{case}: int8 output SQNR {out.metrics['sqnr_db']:.1f} dB")


def test_cases_cover_every_exporter_and_family():
    want = {"dynamo", "torchscript9", "torchscript13", "torchscript17", "tf2onnx", "caffe2_7",
            "caffe2_9", "paddle", "mobilenet_v2", "mobilenet_v3", "efficientnet_b0",
            "densenet", "inception", "shufflenet", "segmentation11", "segmentation13"}
    assert want <= set(CASES)


@pytest.mark.parametrize("case", sorted(CASES))
def test_builders_are_deterministic_and_shaped_like_their_exporter(case):
    m = CASES[case].build()
    assert m.SerializeToString() == CASES[case].build().SerializeToString()
    ops = {n.op_type for n in m.graph.node}
    inits = {t.name for t in m.graph.initializer}
    dims = [d.dim_value if d.HasField("dim_value") else d.dim_param
            for d in m.graph.input[0].type.tensor_type.shape.dim]
    opset = m.opset_import[0].version
    if case == "dynamo":
        assert opset == 18 and {"ReduceMean", "Shape", "Concat", "Reshape", "Clip"} <= ops
        assert all(n.startswith("val_") for n in inits)
    elif case.startswith("torchscript"):
        assert dims[0] == 1 and {"Constant", "Flatten", "GlobalAveragePool"} <= ops
    elif case == "tf2onnx":
        assert dims[-1] == 3 and {"Transpose", "Pad", "MatMul", "Add"} <= ops
        assert m.graph.node[-1].op_type == "Softmax"
    elif case.startswith("caffe2"):
        assert opset <= 9 and {"Sum", "LRN", "Unsqueeze", "Mul"} <= ops
        assert inits <= {i.name for i in m.graph.input}
        pools = [n for n in m.graph.node if n.op_type == "MaxPool"]
        assert any(list(a.ints) == [0, 0, 1, 1] for n in pools for a in n.attribute
                   if a.name == "pads")
    elif case == "paddle":
        assert not inits and dims[0] == -1 and {"HardSigmoid", "HardSwish", "Constant"} <= ops
    elif case == "efficientnet_b0":
        assert {"ReduceMean", "Sigmoid", "Mul"} <= ops
    elif case == "mobilenet_v3":
        assert {"HardSwish", "HardSigmoid"} <= ops
    elif case == "shufflenet":
        assert {"Split", "Transpose", "Reshape", "Concat"} <= ops
    elif case in ("densenet", "inception"):
        assert "Concat" in ops
    elif case.startswith("segmentation"):
        modes = [a.s for n in m.graph.node if n.op_type == "Resize" for a in n.attribute
                 if a.name == "mode"]
        assert sorted(modes) == [b"linear", b"nearest"] and "Concat" in ops
    if case.startswith("mobilenet") or case == "efficientnet_b0":
        assert any(a.name == "group" and a.i > 1 for n in m.graph.node for a in n.attribute)


#: case -> ops ORT must run as integer kernels in the int8 model (counted on its optimised
#: graph): the placement quantize is meant to reach on that exporter's graph
FUSED = {
    "efficientnet_b0": {"QLinearConv": 7, "QLinearSigmoid": 6, "QLinearMul": 6, "QLinearAdd": 1},
    "inception": {"QLinearConv": 8, "QLinearConcat": 1, "NhwcMaxPool": 2},
    "densenet": {"QLinearConv": 6, "QLinearConcat": 2},
    "shufflenet": {"QLinearConv": 5, "QLinearConcat": 1},
    "mobilenet_v3": {"QLinearConv": 7, "QLinearMul": 1, "QLinearAdd": 1},
    "segmentation11": {"QLinearConv": 3, "QLinearConcat": 1},
    "caffe2_9": {"QLinearConv": 3, "QLinearAdd": 2, "QLinearAveragePool": 1},
}
#: and the float ops the quantize note must list (the rest ran on integers)
FLOAT = {"efficientnet_b0": set(), "inception": set(), "shufflenet": set(),
         "mobilenet_v3": {"HardSwish", "HardSigmoid"}, "caffe2_9": {"LRN", "Softmax"},
         "segmentation11": {"Resize"}, "densenet": {"BatchNormalization", "Relu", "AveragePool"}}


@pytest.mark.parametrize("case", sorted(FUSED))
def test_int8_model_fuses_what_it_should(workspaces, case):
    import json

    import onnx

    from conformance.harness import invoke
    from qcompile.backends.ort.measure import optimized_op_counts

    ws = workspaces(case)
    out = ws.dir / "int8_fused.onnx"
    bad, r = invoke("run", ws.path, "-p", "fold,calibrate,quantize", "-t", "ort-int8", "--calib",
                    ws.calib, "-o", out, "--json")
    assert bad is None, bad
    ops = optimized_op_counts(onnx.load(out))
    got = {k: ops.get(f"com.microsoft.{k}", 0) for k in FUSED[case]}
    assert got == FUSED[case], dict(ops)
    q = next(p for p in json.loads(r.stdout)["passes"] if p["pass"].startswith("quantize"))
    floats = {k.removeprefix("float_") for k in q["stats"] if k.startswith("float_")}
    assert floats == {op.lower() for op in FLOAT[case]}
    note = [n for n in q["notes"] if n.startswith("kept in float: ")]
    assert (note and all(f"{op} x" in note[0] for op in FLOAT[case])) or not FLOAT[case]


def test_unsupported_op_is_refused_in_one_line_naming_it(tmp_path):
    """The harness's refusal path: an op the MPFR backend lacks (Hardmax after a MobileNetV2)
    is exit 2 with one ``error:`` line naming the op and the node, never a traceback."""
    from onnx import helper

    from qcompile.testing.exporters import Case, mobilenet_v2

    m = mobilenet_v2()
    m.graph.node[-1].output[0] = "pre"
    m.graph.node.append(helper.make_node("Hardmax", ["pre"], ["logits"], name="/Hardmax_x",
                                         axis=1))
    ws = Workspace.create(Case("hardmax", lambda: m), tmp_path)
    out = run_command(ws, "emulate_fp32")
    assert out.status == "refused", out
    assert "Hardmax" in out.detail and "/Hardmax_x" in out.detail
