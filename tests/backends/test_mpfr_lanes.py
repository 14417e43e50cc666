"""The any-mode lane kernels (``_nb_lanes``: directed modes, subnormal=off, compat qresnet)
against the reference, including the zero outputs at the border that the caller recomputes
with padding skipped."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qcompile.backends.mpfr.interpreter import FastEngine
from tests.backends.mpfr_helpers import cfg, rand
from tests.backends.test_mpfr_native import _check

SETTINGS = settings(max_examples=12, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
MODES = ["up", "down", "zero", "away"]
SUBOFF = "p=11,emin=-6,emax=8,subnormal=off"
CASES = ([("b15e4", m) for m in MODES] + [("bf16", m) for m in MODES]
         + [("e4m3", "down"), ("fp16", "up"), (SUBOFF, "nearest"), (SUBOFF, "down"),
            (SUBOFF, "up"), ("qresnet", "up")])


def _conv(case, seed, k, stride, pad, group, bias, special, zeros):
    fmt, mode = case
    rng = np.random.default_rng(seed)
    narrow = fmt == "qresnet"  # its inputs convert into p=11,emax=7: keep them finite
    x = rand(rng, (1, 8, 6, 7), special, spread=3 if narrow else 12)
    if zeros:  # ReLU-like activations: zero windows make zero outputs at the border
        x[x < 0] = 0.0
        x[:, :, :3] = 0.0
    w = rand(rng, (4, 8 // group) + k, spread=2 if narrow else 6)
    b = (np.where(rng.random(4) < 0.5, 0.0, rand(rng, (4,))) if bias else None)
    attrs = dict(strides=(stride, stride), pads=(pad, pad // 2, pad - pad // 2, pad),
                 group=group, kernel_shape=k)
    return _check("Conv", cfg(fmt, mode), [x, w, b], attrs)


@SETTINGS
@given(case=st.sampled_from(CASES), seed=st.integers(0, 2**31 - 1),
       k=st.sampled_from([(1, 1), (3, 3), (2, 3)]), stride=st.integers(1, 2),
       pad=st.integers(0, 2), group=st.sampled_from([1, 4]), bias=st.booleans(),
       special=st.booleans(), zeros=st.booleans())
def test_any_mode_lane_conv_matches_reference(case, seed, k, stride, pad, group, bias, special,
                                              zeros):
    _conv(case, seed, k, stride, pad, group, bias, special, zeros)


@pytest.mark.parametrize("case", CASES)
def test_each_mode_takes_the_lane_kernels(case):
    """Every case runs on ``_nb_lanes`` (not the old per-row loop), with border zeros present."""
    stats = _conv(case, 1, (3, 3), 1, 1, 1, False, False, True)
    assert stats["lanes"] == 1


def test_round_down_border_zero_is_recomputed():
    """Round down: +0 + (-0) = -0, so padded taps with negative weights would turn a window
    whose only real product is +0 into -0; the border recomputation skips padding like the
    reference and gives +0."""
    F = FastEngine(cfg("b15e4", "down"))
    x = np.zeros((1, 1, 1, 1))
    w = -np.ones((1, 1, 3, 3))
    w[0, 0, 1, 1] = 1.0  # the only real tap: +0 * 1 = +0
    out = F.A.conv2d(F.convert(x), F.convert(w), None, (1, 1), (1, 1, 1, 1), (1, 1), 1)
    assert F.A.kernel_stats["lanes"] == 1
    assert out[0, 0, 0, 0] == 0.0 and not np.signbit(out[0, 0, 0, 0])
    _check("Conv", cfg("b15e4", "down"), [x, w, None], dict(pads=(1, 1, 1, 1)))
