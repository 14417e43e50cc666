"""The two MPFR engines hold the same ops with the same declared flags (#11): an op added to
one engine only, or declared data movement in one engine only, fails here."""

from __future__ import annotations

from qcompile.backends.mpfr.ops_fast import FAST
from qcompile.backends.mpfr.ops_ref import REF
from qcompile.backends.mpfr.ops_shape import is_data_movement, is_exact

EXPORTER_OPS = {"ReduceMean", "ReduceSum", "Shape", "ConstantOfShape", "Cast", "Gather",
                "Split", "Transpose", "Squeeze", "Unsqueeze", "Concat", "Slice", "Reshape",
                "Flatten", "Softmax", "HardSigmoid", "HardSwish", "Resize", "LRN",
                "AveragePool", "MaxPool", "Max", "Min", "Sum", "Expand"}


def test_fast_and_reference_tables_hold_the_same_ops():
    assert FAST.ops() == REF.ops(), ("only fast:", FAST.ops() - REF.ops(),
                                     "only reference:", REF.ops() - FAST.ops())


def test_flags_agree_between_engines():
    for key in FAST.ops():
        f, r = FAST._rules[key], REF._rules[key]
        assert is_data_movement(f) == is_data_movement(r), key
        assert is_exact(f) == is_exact(r), key
        assert getattr(f, "needs_outputs", False) == getattr(r, "needs_outputs", False), key


def test_exporter_ops_present_and_data_movement_declared():
    ops = {op for d, op in FAST.ops() if d == ""}
    assert EXPORTER_OPS <= ops, EXPORTER_OPS - ops
    moving = {op for d, op in FAST.ops() if is_data_movement(FAST._rules[(d, op)])}
    assert moving == {"Flatten", "Reshape", "Identity", "Dropout", "Concat", "Transpose",
                      "Squeeze", "Unsqueeze", "Slice", "Pad", "Shape", "Gather", "Split",
                      "Expand", "ConstantOfShape"}
    exact = {op for d, op in FAST.ops() if is_exact(FAST._rules[(d, op)])}
    assert exact == moving | {"Relu", "MaxPool", "Clip", "Neg", "Abs", "Max", "Min"}
