"""``--compat qresnet`` compares as the C++ qResNet engine does (``mpfr_greater_p`` /
``mpfr_less_p``: false when either operand is NaN); every other config propagates NaN.

Each rule is pinned on NaN in both engines, fast == reference is checked on NaN-heavy inputs
(hypothesis), and the ResNet-20 case of #18: unfolded BN under compat converts var and eps
to 0, so NaNs appear; the C++ rules turn them into finite logits, IEEE rules give NaN.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qcompile.backends.mpfr.config import make_config
from qcompile.backends.mpfr.interpreter import FastEngine, Interpreter, RefEngine
from qcompile.backends.mpfr.listeners import same_bits
from qcompile.backends.mpfr.ops_fast import FAST
from qcompile.backends.mpfr.ops_ref import REF
from tests.backends.mpfr_helpers import rand

NAN, INF = math.nan, math.inf
COMPAT = make_config(compat="qresnet")
IEEE = replace(COMPAT, compat="")  # the same arithmetic, default comparison rules
POOL = dict(kernel_shape=(2, 2), strides=(2, 2))


def _run(engine, op, cfg, x, *extra, **attrs):
    """One kernel of one engine on float64 inputs (converted into the format first)."""
    F = FastEngine(cfg)
    E, table = (F, FAST) if engine == "fast" else (RefEngine(cfg), REF)
    args = [E.from_numpy(F.convert(np.asarray(a, np.float64))) for a in (x, *extra)]
    return E.to_numpy(table._rules[("", op)](E, *args, **attrs)[0])


def _same(got, want):
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape and same_bits(got, want).all(), (got, want)


ENGINES = pytest.mark.parametrize("engine", ["fast", "reference"])


@ENGINES
def test_relu_nan_becomes_plus_zero_under_compat_only(engine):
    x = np.array([NAN, -NAN, -1.0, -0.0, 0.0, 2.0, INF, -INF])
    _same(_run(engine, "Relu", COMPAT, x), [0.0, 0.0, 0.0, 0.0, 0.0, 2.0, INF, 0.0])
    _same(_run(engine, "Relu", IEEE, x), [NAN, NAN, 0.0, 0.0, 0.0, 2.0, INF, 0.0])


@ENGINES
def test_leaky_relu_keeps_slope_times_nan(engine):
    x = np.array([NAN, -2.0, -0.0, 0.0, 3.0])
    _same(_run(engine, "LeakyRelu", COMPAT, x, alpha=0.5), [NAN, -1.0, -0.0, 0.0, 3.0])
    _same(_run(engine, "LeakyRelu", IEEE, x, alpha=0.5), [NAN, -1.0, -0.0, 0.0, 3.0])
    # x > 0 ? x : alpha*x multiplies zeros too: a negative slope flips their sign
    _same(_run(engine, "LeakyRelu", COMPAT, x, alpha=-0.5), [NAN, 1.0, 0.0, -0.0, 3.0])
    _same(_run(engine, "LeakyRelu", IEEE, x, alpha=-0.5), [NAN, 1.0, -0.0, 0.0, 3.0])


@ENGINES
def test_maxpool_never_picks_nan_under_compat(engine):
    # windows: [NaN first, 1, 2, 0] / [1, NaN, 3, NaN] / all NaN / [-0, +0, -1, -inf]
    x = np.array([[[[NAN, 1.0, 1.0, NAN, NAN, NAN, -0.0, 0.0],
                    [2.0, 0.0, 3.0, NAN, NAN, NAN, -1.0, -INF]]]])
    _same(_run(engine, "MaxPool", COMPAT, x, **POOL), [[[[2.0, 3.0, -INF, -0.0]]]])
    _same(_run(engine, "MaxPool", IEEE, x, **POOL), [[[[NAN, NAN, NAN, -0.0]]]])


@ENGINES
def test_clip_keeps_nan(engine):
    x = np.array([NAN, -5.0, 0.5, 9.0, -INF, INF])
    lo, hi = np.array(-1.0), np.array(2.0)
    for cfg in (COMPAT, IEEE):
        _same(_run(engine, "Clip", cfg, x, lo, hi), [NAN, -1.0, 0.5, 2.0, -1.0, 2.0])
    # lo > hi: C++'s x < lo ? lo : ... returns lo; the default rule applies hi last
    lo, hi = np.array(2.0), np.array(1.0)
    _same(_run(engine, "Clip", COMPAT, np.array([0.0, 1.5, 3.0]), lo, hi), [2.0, 2.0, 1.0])
    _same(_run(engine, "Clip", IEEE, np.array([0.0, 1.5, 3.0]), lo, hi), [1.0, 1.0, 1.0])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1), compat=st.booleans(),
       op=st.sampled_from(["Relu", "LeakyRelu", "Clip", "MaxPool"]))
def test_fast_equals_reference_on_nan_inputs(seed, compat, op):
    rng = np.random.default_rng(seed)
    cfg = COMPAT if compat else IEEE
    x = rand(rng, (1, 2, 5, 6), special=True, special_every=3)
    extra, attrs = [], {}
    if op == "LeakyRelu":
        attrs = dict(alpha=float(rng.choice([0.1, -0.25, 3.0])))
    elif op == "Clip":
        extra = [np.array(rng.normal()), np.array(rng.normal())]
    elif op == "MaxPool":
        attrs = dict(kernel_shape=(2, 3), strides=(1, 2), pads=(1, 1, 0, 1))
    _same(_run("fast", op, cfg, x, *extra, **attrs), _run("reference", op, cfg, x, *extra,
                                                          **attrs))


def test_compat_flag_only_in_compat_mode():
    assert COMPAT.mpfr_compare and not IEEE.mpfr_compare
    for kw in (dict(bits=16), dict(format="bf16"), dict(format="p=11,emin=-8,emax=7")):
        assert not make_config(**kw).mpfr_compare
    assert COMPAT.to_json()["comparisons"] == "mpfr"


@pytest.mark.slow  # two ResNet-20 runs: ~5 s on a loaded 2-core machine
def test_resnet20_unfolded_compat_logits_finite_ieee_nan(shared_data):
    """#18: unfolded ResNet-20, one image, under compat: var + eps converts to 0 in
    p=11,emin=-8 (rounded down, no subnormals), so BN divides by 0; the C++ Relu turns the
    NaNs into +0 and the logits are finite.  The same arithmetic with IEEE comparisons
    propagates NaN to every logit."""
    from qcompile.data import open_dataset, preset
    from qcompile.frontend import lift

    g = lift(shared_data / "cifar10_resnet20.onnx")
    assert any(n.op == "BatchNormalization" for n in g.nodes)
    x = next(open_dataset(shared_data / "cifar10_test_dev.npz", preset("cifar")).batches(1)).x
    feeds = {g.inputs[0].name: x}
    seen = {"nan": 0}

    def count_nan(node, args, outs):
        seen["nan"] += int(sum(np.isnan(o).sum() for o in outs if o.dtype.kind == "f"))

    compat = Interpreter(g, COMPAT, "fast", listeners=[count_nan]).run_numpy(feeds)
    logits = next(iter(compat.values()))
    assert seen["nan"] > 0, "the case needs NaNs inside the network"
    assert np.isfinite(logits).all(), logits
    ieee = next(iter(Interpreter(g, IEEE, "fast").run_numpy(feeds).values()))
    assert np.isnan(ieee).all(), ieee
