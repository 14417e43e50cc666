"""Memory bounds (#18 item 8): the MPFR interpreter frees every tensor after its last use
(so a deep chain holds O(1) intermediates), and format exponents are bounded before any
exact rational bound is computed (a huge emax fails at once, in one line)."""

from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pytest
from onnx import TensorProto, helper
from typer.testing import CliRunner

from qcompile.backends.mpfr.config import make_config
from qcompile.backends.mpfr.interpreter import Interpreter
from qcompile.cli import app
from qcompile.errors import OptionError
from qcompile.frontend import lift
from qcompile.numerics.float_format import MAX_EXPONENT, FloatFormat, FormatError
from tests.passes.test_calibrate_memory import chain


def test_interpreter_peak_is_a_few_tensors_on_a_deep_chain():
    g = lift(chain(400, 4))
    x = np.random.default_rng(0).normal(size=(4, 4, 32, 32))  # 128 KiB per float64 tensor
    interp = Interpreter(g, make_config(format="bf16"), "fast")
    interp.prepare()
    tracemalloc.start()
    interp.run({"x": x})
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 16 * x.nbytes, f"peak {peak} for 400 intermediates of {x.nbytes} bytes"


def test_interpreter_drops_outputs_nobody_reads():
    nodes = [helper.make_node("Relu", ["x"], ["dead"], name="d"),
             helper.make_node("Neg", ["x"], ["y"], name="n")]
    m = helper.make_model(helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])]),
        opset_imports=[helper.make_opsetid("", 17)])
    g = lift(m)
    interp = Interpreter(g, make_config(format="fp16"), "fast")
    dead = next(v for n in g.nodes for v in n.outputs if v.name == "dead")
    assert any(dead in f for f in interp._free_after)


def test_exponent_bounds():
    ok = FloatFormat(p=11, emin=-MAX_EXPONENT, emax=MAX_EXPONENT)
    assert ok.max_finite_exact > 0
    for emin, emax in ((-MAX_EXPONENT - 1, 7), (-8, MAX_EXPONENT + 1)):
        with pytest.raises(FormatError, match="outside the supported range"):
            FloatFormat(p=11, emin=emin, emax=emax)
    with pytest.raises(OptionError):
        make_config(format="p=11,emin=-99999999999,emax=99999999999")


def test_huge_emax_fails_fast_in_one_line(tmp_path):
    import onnx

    from qcompile.testing import zoo

    onnx.save(zoo.mini_resnet(image_size=8), tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", images=np.zeros((1, 8, 8, 3), np.uint8))
    t = time.perf_counter()
    r = CliRunner().invoke(app, ["emulate", str(tmp_path / "m.onnx"), "--format",
                                 "p=11,emin=-99999999999,emax=99999999999",
                                 "--data", str(tmp_path / "d.npz")])
    took = time.perf_counter() - t
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), r.output
    assert "emin=-99999999999" in lines[0] and str(MAX_EXPONENT) in lines[0]
    # not a speed test: the bug was 86 s and 5 GB computing Fraction(2)**emax; the bound only
    # has to separate "refused before any arithmetic" from that, on a loaded 2-core machine
    assert took < 15.0, f"{took:.2f} s"
