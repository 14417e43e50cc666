"""Exporter ops (#12): fast engine == reference engine, bit for bit (hypothesis), over b15e4,
fp16, bf16, e4m3 and every rounding mode; integer (shape) tensors pass through exactly."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qcompile.backends.mpfr.interpreter import FastEngine, RefEngine
from qcompile.backends.mpfr.listeners import same_bits
from qcompile.backends.mpfr.ops_fast import FAST
from qcompile.backends.mpfr.ops_ref import REF
from tests.backends.mpfr_helpers import cfg, rand

FORMATS = ["b15e4", "fp16", "bf16", "e4m3"]
SETTINGS = settings(max_examples=12, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
fmt_st = st.sampled_from(FORMATS)
mode_st = st.sampled_from(["nearest", "up", "down", "zero", "away"])  # --rounding
seed_st = st.integers(0, 2**31 - 1)


def check(op, c, inputs, attrs, *, n_out=1):
    """Run ``op`` in both engines on the same format values; compare every output."""
    F, R = FastEngine(c), RefEngine(c)
    xs = [None if a is None else (F.convert(a) if a.dtype.kind == "f" else a) for a in inputs]
    while xs and xs[-1] is None:
        xs.pop()
    rx = [None if a is None else (R.from_numpy(a) if a.dtype.kind == "f" else a) for a in xs]
    kf, kr = FAST._rules[("", op)], REF._rules[("", op)]
    kw = dict(attrs, n_outputs=n_out) if getattr(kf, "needs_outputs", False) else attrs
    got, want = kf(F, *xs, **kw), kr(R, *rx, **kw)
    assert len(got) == len(want) >= n_out
    for g, w in zip(got, want):
        w = R.to_numpy(w) if w.dtype == object else w
        assert g.shape == w.shape and g.dtype == w.dtype, (op, g.shape, w.shape)
        bad = ~same_bits(g, w) if g.dtype.kind == "f" else g != w
        assert not np.any(bad), (f"{op} {c.describe()}: {int(np.sum(bad))} mismatches, e.g. "
                                 f"fast {g[bad][:3]} vs reference {w[bad][:3]}")
    return got


@SETTINGS
@given(fmt=fmt_st, mode=mode_st, seed=seed_st, special=st.booleans(),
       axes=st.sampled_from([(2, 3), (1,), (-1,), (0, 2), None]), keep=st.integers(0, 1),
       as_input=st.booleans(), op=st.sampled_from(["ReduceMean", "ReduceSum"]))
def test_reduce(fmt, mode, seed, special, axes, keep, as_input, op):
    rng = np.random.default_rng(seed)
    x = rand(rng, (2, 3, 4, 3), special)
    if as_input:
        ins = [x, None if axes is None else np.array(axes, np.int64)]
        check(op, cfg(fmt, mode), ins, dict(keepdims=keep))
    else:
        check(op, cfg(fmt, mode), [x], dict(keepdims=keep, axes=axes))


def test_reduce_mean_equals_global_average_pool():
    """ReduceMean over (H, W) is the GlobalAveragePool rule (how dynamo exports it)."""
    x = rand(np.random.default_rng(0), (2, 3, 5, 4))
    for mode in ("nearest", "down"):
        c = cfg("b15e4", mode)
        F = FastEngine(c)
        a = FAST._rules[("", "ReduceMean")](F, F.convert(x), axes=(2, 3))[0]
        b = FAST._rules[("", "GlobalAveragePool")](F, F.convert(x))[0]
        assert same_bits(a, b).all()


@SETTINGS
@given(fmt=fmt_st, mode=mode_st, seed=seed_st, special=st.booleans(),
       axis=st.sampled_from([-1, 0, 1]))
def test_softmax(fmt, mode, seed, special, axis):
    rng = np.random.default_rng(seed)
    check("Softmax", cfg(fmt, mode), [rand(rng, (3, 5), special, spread=2)], dict(axis=axis))


@SETTINGS
@given(fmt=fmt_st, mode=mode_st, seed=seed_st, op=st.sampled_from(["HardSigmoid", "HardSwish"]),
       alpha=st.sampled_from([0.2, 1 / 6]))
def test_hard(fmt, mode, seed, op, alpha):
    rng = np.random.default_rng(seed)
    x = rand(rng, (4, 6), True, spread=3)
    check(op, cfg(fmt, mode), [x], dict(alpha=alpha, beta=0.5) if op == "HardSigmoid" else {})


@SETTINGS
@given(fmt=fmt_st, mode=mode_st, seed=seed_st, op=st.sampled_from(["Sum", "Max", "Min"]),
       n=st.integers(1, 4), special=st.booleans())
def test_nary(fmt, mode, seed, op, n, special):
    rng = np.random.default_rng(seed)
    shapes = [(2, 3, 4), (3, 1), (4,), (1, 3, 4)][:n]
    xs = [rand(rng, s, special) for s in shapes]
    if special and n > 1:  # ties between signed zeros keep the earlier operand
        xs[0].reshape(-1)[0], xs[1].reshape(-1)[0] = 0.0, -0.0
    check(op, cfg(fmt, mode), xs, {})


@SETTINGS
@given(fmt=fmt_st, mode=mode_st, seed=seed_st,
       to=st.sampled_from([1, 10, 11, 16, 7, 6, 3, 9]), src=st.sampled_from(["f", "i8", "b"]))
def test_cast(fmt, mode, seed, to, src):
    rng = np.random.default_rng(seed)
    if src == "f":
        x = rand(rng, (3, 4), spread=6)
    elif src == "i8":
        x = rng.integers(-3000, 3000, size=(3, 4)).astype(np.int64)
    else:
        x = rng.integers(0, 2, size=(3, 4)).astype(bool)
    if to == 3 and src != "b":
        x = np.clip(x, -100, 100)
    check("Cast", cfg(fmt, mode), [x], dict(to=to))


@SETTINGS
@given(fmt=fmt_st, mode=mode_st, seed=seed_st, size=st.sampled_from([1, 2, 3, 5]),
       acc=st.sampled_from(["sequential", "fma", "exact"]))
def test_lrn(fmt, mode, seed, size, acc):
    rng = np.random.default_rng(seed)
    check("LRN", cfg(fmt, mode, acc), [rand(rng, (1, 5, 2, 3), spread=2)],
          dict(size=size, alpha=1e-2, beta=0.75, bias=1.0))


@pytest.mark.parametrize("fmt", FORMATS)
def test_shape_ops(fmt):
    """Shape, Gather, ConstantOfShape, Split, Expand, Squeeze/Unsqueeze, Transpose, Concat,
    Slice: identical in both engines; int64 results stay int64."""
    rng = np.random.default_rng(1)
    x = rand(rng, (2, 3, 4), True)
    c = cfg(fmt)
    s = check("Shape", c, [x], {})[0]
    assert s.dtype == np.int64 and list(s) == [2, 3, 4]
    check("Shape", c, [x], dict(start=1, end=-1))
    check("Gather", c, [x, np.array([2, -1, 0], np.int64)], dict(axis=2))
    check("Gather", c, [s, np.array(0, np.int64)], dict(axis=0))
    check("ConstantOfShape", c, [s], dict(value=np.array([0.1], np.float32)))
    check("ConstantOfShape", c, [s], dict(value=np.array([3], np.int64)))
    check("ConstantOfShape", c, [s], {})
    assert len(check("Split", c, [x, np.array([1, 3], np.int64)], dict(axis=2))) == 2
    check("Split", c, [x], dict(axis=1), n_out=3)
    check("Split", c, [x], dict(axis=2, num_outputs=3))
    check("Split", c, [x], dict(axis=2, split=(3, 1)))
    check("Expand", c, [x[:, :1], np.array([2, 1, 5, 4], np.int64)], {})
    check("Unsqueeze", c, [x, np.array([0, -1], np.int64)], {})
    check("Unsqueeze", c, [x], dict(axes=(1,)))
    check("Squeeze", c, [x[:1]], dict(axes=(0,)))
    check("Transpose", c, [x], dict(perm=(2, 0, 1)))
    check("Concat", c, [x, x[:, :1]], dict(axis=1))
    check("Slice", c, [x, np.array([1], np.int64), np.array([-1], np.int64),
                       np.array([2], np.int64)], {})


def test_integer_arithmetic_is_exact_numpy():
    """Shape arithmetic on int64 tensors is exact integer maths (Div truncates toward 0)."""
    c = cfg("e4m3")
    a, b = np.array([7, -7, 1000, 3], np.int64), np.array([2, 2, 3, -2], np.int64)
    for op, want in (("Add", a + b), ("Sub", a - b), ("Mul", a * b),
                     ("Div", np.array([3, -3, 333, -1])), ("Max", np.maximum(a, b)),
                     ("Min", np.minimum(a, b)), ("Sum", a + b + a)):
        ins = [a, b, a] if op == "Sum" else [a, b]
        got = check(op, c, ins, {})[0]
        assert got.dtype == np.int64 and (got == want).all(), op
    assert (check("Neg", c, [a], {})[0] == -a).all()


@SETTINGS
@given(fmt=fmt_st, mode=mode_st, seed=seed_st, rmode=st.sampled_from(["nearest", "linear"]),
       tr=st.sampled_from(["half_pixel", "pytorch_half_pixel", "asymmetric", "align_corners",
                           "tf_half_pixel_for_nn"]),
       nm=st.sampled_from(["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]),
       by=st.sampled_from(["scales", "sizes"]), special=st.booleans())
def test_resize(fmt, mode, seed, rmode, tr, nm, by, special):
    rng = np.random.default_rng(seed)
    x = rand(rng, (1, 2, 3, 4), special)
    if by == "scales":
        ins = [x, None, np.array([1, 1, 2, 1.5], np.float32)]
    else:
        ins = [x, None, None, np.array([1, 2, 5, 3], np.int64)]
    if rmode == "linear" and tr == "tf_half_pixel_for_nn":
        tr = "half_pixel"
    check("Resize", cfg(fmt, mode), ins, dict(mode=rmode, coordinate_transformation_mode=tr,
                                              nearest_mode=nm))


@SETTINGS
@given(fmt=fmt_st, mode=mode_st, seed=seed_st, op=st.sampled_from(["MaxPool", "AveragePool"]),
       k=st.integers(1, 3), stride=st.integers(1, 3), pads=st.tuples(*[st.integers(0, 1)] * 4),
       dil=st.tuples(st.integers(1, 2), st.integers(1, 2)), ceil=st.integers(0, 1),
       incl=st.integers(0, 1), special=st.booleans())
def test_pool_attributes(fmt, mode, seed, op, k, stride, pads, dil, ceil, incl, special):
    """ceil_mode, dilations, asymmetric pads and count_include_pad (the padded-extent count)."""
    rng = np.random.default_rng(seed)
    attrs = dict(kernel_shape=(k, 2), strides=(stride, 2), pads=pads, dilations=dil,
                 ceil_mode=ceil)
    if op == "AveragePool":
        attrs["count_include_pad"] = incl
    check(op, cfg(fmt, mode), [rand(rng, (1, 2, 6, 7), special)], attrs)
