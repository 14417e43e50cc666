"""Hypothesis-generated hostile inputs through the CLI in process (a bounded number here; many
more in ``benchmarks/bench_fuzz.py``): every run is a success or one ``error: ...`` line with
exit 2, within the time and memory budgets of :mod:`tests.fuzz.harness`; never a traceback,
a hang, a partial output or an exit 0 with a model ORT cannot run."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz import harness

_SETTINGS = dict(deadline=None, database=None, derandomize=True,
                 suppress_health_check=list(HealthCheck))


@settings(max_examples=15, **_SETTINGS)
@given(st.data())
def test_mutated_models_end_cleanly(data):
    name = data.draw(st.sampled_from(harness.BASE_MODELS))
    desc, blob = data.draw(harness.model_mutation(name))
    command = data.draw(st.sampled_from(["inspect", "run"]))
    with tempfile.TemporaryDirectory() as d:
        out = harness.model_case(Path(d), name, blob, command)
    assert out.kind in harness.GOOD, f"{command} {desc}: {out}"


@settings(max_examples=4, **_SETTINGS)
@given(st.data())
def test_mutated_models_through_int8_and_emulate(data):
    name = data.draw(st.sampled_from(harness.BASE_MODELS))
    desc, blob = data.draw(harness.model_mutation(name))
    command = data.draw(st.sampled_from(["run-int8", "emulate"]))
    with tempfile.TemporaryDirectory() as d:
        out = harness.model_case(Path(d), name, blob, command)
    assert out.kind in harness.GOOD, f"{command} {desc}: {out}"


@settings(max_examples=8, **_SETTINGS)
@given(harness.data_mutation(), st.sampled_from(["run-int8", "emulate"]))
def test_mutated_data_files_end_cleanly(case, command):
    desc, suffix, blob = case
    with tempfile.TemporaryDirectory() as d:
        out = harness.data_case(Path(d), suffix, blob, command)
    assert out.kind in harness.GOOD, f"{command} {desc}: {out}"


def test_harness_sees_a_crash_and_a_bad_output(tmp_path, monkeypatch):
    """The oracle can fail: an uncaught exception is 'internal' (one line, exit 1), not 'ok';
    a written model ORT cannot run is 'bad'."""
    import onnx

    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    assert harness._unusable(tmp_path / "bad.onnx")
    good = tmp_path / "good.onnx"
    onnx.save(harness.base_model("conv_bn_relu"), str(good))
    assert harness._unusable(good) == ""
