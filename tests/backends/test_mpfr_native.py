"""The native IEEE paths of the fast engine (fp32 / b64e11, round to nearest, sequential):
bit-identical to the reference, taken only where they apply, and compiled without FMA."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from numba import njit

from qcompile.backends.mpfr import _nb_native
from qcompile.backends.mpfr.fast import native_dtype
from qcompile.backends.mpfr.interpreter import FastEngine, RefEngine
from qcompile.backends.mpfr.listeners import same_bits
from qcompile.backends.mpfr.ops_fast import FAST
from qcompile.backends.mpfr.ops_ref import REF
from qcompile.numerics.formats import Rounding, parse_format
from tests.backends.mpfr_helpers import cfg, rand

SETTINGS = settings(max_examples=20, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
NATIVE = ["fp32", "b64e11"]


def _check(op, c, inputs, attrs):
    F, R = FastEngine(c), RefEngine(c)
    xs = [None if a is None else F.convert(a) for a in inputs]
    while xs and xs[-1] is None:
        xs.pop()
    got = FAST._rules[("", op)](F, *xs, **attrs)[0]
    want = R.to_numpy(REF._rules[("", op)](R, *[None if a is None else R.from_numpy(a)
                                                for a in xs], **attrs)[0])
    assert got.shape == want.shape
    bad = ~same_bits(got, want)
    assert not bad.any(), (f"{op} {c.describe()}: {int(bad.sum())} mismatches, e.g. fast "
                           f"{got[bad][:3]} vs reference {want[bad][:3]}")
    return F.A.kernel_stats


def test_native_only_where_the_format_is_the_machines():
    near = Rounding.NEAREST
    assert native_dtype(parse_format("fp32"), near) is np.float32
    assert native_dtype(parse_format("b64e11"), near) is np.float64
    assert native_dtype(parse_format("fp32"), Rounding.UP) is None
    assert native_dtype(parse_format("fp32"), near, "fma") is None
    assert native_dtype(parse_format("p=24,emin=-148,emax=128,subnormal=off"), near) is None
    assert native_dtype(parse_format("bf16"), near) is None


@SETTINGS
@given(fmt=st.sampled_from(NATIVE), seed=st.integers(0, 2**31 - 1),
       k=st.sampled_from([(1, 1), (3, 3), (2, 3), (5, 5)]), stride=st.integers(1, 3),
       pad=st.integers(0, 2), dil=st.integers(1, 2), group=st.sampled_from([1, 4]),
       bias=st.booleans(), special=st.booleans(), wide=st.booleans())
def test_native_conv_matches_reference(fmt, seed, k, stride, pad, dil, group, bias, special,
                                       wide):
    assume(7 + pad - dil * (k[0] - 1) - 1 >= 0 and 6 + pad - dil * (k[1] - 1) - 1 >= 0)
    rng = np.random.default_rng(seed)
    spread = 140 if wide else 4  # wide: inf, subnormal inputs; products overflow in fp32
    x = rand(rng, (2, 8, 7, 6), special, spread=spread)
    w = rand(rng, (4, 8 // group) + k, spread=min(spread, 60))
    b = rand(rng, (4,)) if bias else None
    attrs = dict(strides=(stride, stride), pads=(pad, pad // 2, pad - pad // 2, pad),
                 dilations=(dil, dil), group=group, kernel_shape=k)
    stats = _check("Conv", cfg(fmt), [x, w, b], attrs)
    assert stats["native"] == 1


def test_native_conv_with_infinite_weights_takes_the_general_path():
    """Padded taps are added as zeros only for finite weights (inf * 0 would be NaN)."""
    rng = np.random.default_rng(0)
    x, w = rand(rng, (1, 4, 5, 5)), rand(rng, (4, 4, 3, 3))
    w[0, 0, 0, 0] = np.inf
    stats = _check("Conv", cfg("fp32"), [x, w, None], dict(pads=(1, 1, 1, 1)))
    assert stats["native"] == 0 and stats["numba"] == 1


@SETTINGS
@given(fmt=st.sampled_from(NATIVE), seed=st.integers(0, 2**31 - 1), bias=st.booleans(),
       special=st.booleans(), kdim=st.integers(1, 11))
def test_native_gemm_and_batchnorm_match_reference(fmt, seed, bias, special, kdim):
    rng = np.random.default_rng(seed)
    a, b = rand(rng, (3, kdim), special), rand(rng, (kdim, 5))
    c = rand(rng, (5,)) if bias else None
    assert _check("Gemm", cfg(fmt), [a, b, c], {})["native"] == 1
    x = rand(rng, (2, 3, 4, 4), special)
    _check("BatchNormalization", cfg(fmt), [x, rand(rng, (3,)), rand(rng, (3,)),
                                            rand(rng, (3,)), np.abs(rand(rng, (3,)))],
           dict(epsilon=1e-5))


def _inner_asm(name, dt):
    """Assembly of one inner kernel, recompiled without the disk cache (numba refuses to
    inspect cached code)."""
    x, a = np.zeros(400, dt), np.zeros(100, dt)
    one = dt(1)
    args = {"_nine": (a, x, np.zeros((3, 3), dt), np.arange(9, dtype=np.int64), 64),
            "_four": (a, x, x, x, x, 3, one, one, one, one, 64),
            "_tap": (a, x, 3, one, 64),
            "_four_k": (a, x, x, x, x, one, one, one, one, 64),
            "_one_k": (a, x, one, 64)}[name]
    f = njit(getattr(_nb_native, name).py_func)
    f(*args)
    return "".join(f.inspect_asm().values())


@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("name", ["_nine", "_four", "_tap", "_four_k", "_one_k"])
def test_native_kernels_are_simd_without_fma(name, dt):
    asm = _inner_asm(name, dt)
    assert not re.search(r"\bv?fn?m(add|sub)", asm), f"{name} contracts a*b+c into an FMA"
    suffix = "ps" if dt is np.float32 else "pd"
    assert re.search(rf"\bvmul{suffix}\s+%?[yz]mm", asm) or re.search(
        rf"\bvmul{suffix}\s+.*[yz]mm", asm), f"{name} is not vectorised across outputs"


@SETTINGS
@given(fmt=st.sampled_from(["b15e4", "bf16", "fp16", "e4m3", "e5m2"]),
       seed=st.integers(0, 2**31 - 1), k=st.sampled_from([(1, 1), (3, 3), (2, 3)]),
       stride=st.integers(1, 2), pad=st.integers(0, 2), group=st.sampled_from([1, 4]),
       bias=st.booleans(), special=st.booleans())
def test_lane_kernels_of_narrow_formats_match_reference(fmt, seed, k, stride, pad, group, bias,
                                                        special):
    """``_nb_simd`` (round to nearest, zero-padded lanes) against the reference."""
    rng = np.random.default_rng(seed)
    x = rand(rng, (1, 8, 6, 7), special, spread=12)
    w = rand(rng, (4, 8 // group) + k, spread=6)
    b = rand(rng, (4,)) if bias else None
    attrs = dict(strides=(stride, stride), pads=(pad, pad // 2, pad - pad // 2, pad),
                 group=group, kernel_shape=k)
    _check("Conv", cfg(fmt), [x, w, b], attrs)


@pytest.mark.parametrize("fmt", ["fp32", "b15e4"])
def test_lane_kernels_deterministic_across_thread_counts(fmt):
    """Each output is one lane's sequential sum: 1 or 2 threads give the same bits."""
    import numba

    rng = np.random.default_rng(3)
    F = FastEngine(cfg(fmt))
    x, w = F.convert(rand(rng, (3, 8, 9, 9))), F.convert(rand(rng, (16, 8, 3, 3)))
    before = numba.get_num_threads()
    outs = []
    try:
        for t in sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)}):
            numba.set_num_threads(t)
            outs.append(F.A.conv2d(x, w, None, (1, 1), (1, 1, 1, 1), (1, 1), 1))
    finally:
        numba.set_num_threads(before)
    assert all(same_bits(o, outs[0]).all() for o in outs)


@pytest.mark.parametrize("keep_nan", [True, False])
def test_relu_kernel_is_the_selection_bit_for_bit(keep_nan):
    """The numba Relu (large tensors) equals the numpy selection on every bit: +-0 -> +0,
    negatives and -inf -> +0, NaN kept (or +0 under mpfr_compare), on a non-contiguous view
    too; small tensors take numpy."""
    from qcompile.backends.mpfr import fast

    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 7, 61, 67))
    flat = x.reshape(-1)
    flat[rng.integers(0, flat.size, 500)] = np.nan
    flat[rng.integers(0, flat.size, 500)] = -0.0
    flat[rng.integers(0, flat.size, 500)] = np.inf
    flat[rng.integers(0, flat.size, 500)] = -np.inf
    for a in (x, x.transpose(0, 2, 1, 3), x[:1, :1]):
        want = np.where(((a > 0) | np.isnan(a)) if keep_nan else (a > 0), a, 0.0)
        got = fast.relu(a, keep_nan)
        assert got.shape == a.shape
        np.testing.assert_array_equal(got.view(np.int64) if got.flags.c_contiguous
                                      else np.ascontiguousarray(got).view(np.int64),
                                      np.ascontiguousarray(want).view(np.int64))


@pytest.mark.parametrize("spec,dt", [("fp32", np.float32), ("b64e11", np.float64)])
def test_batchnorm_kernel_is_ieee_step_by_step(spec, dt):
    """The numba BatchNormalization (large tensors) is ((x - m) / d) * k + c in the native
    dtype, one IEEE rounding per step, bit for bit: NaN, infinities, zeros of both signs and a
    zero divisor included."""
    from qcompile.backends.mpfr.fast import FastArith

    A = FastArith(parse_format(spec), Rounding.NEAREST)
    assert A.native_nb
    rng = np.random.default_rng(11)
    C = 6
    x = rng.standard_normal((4, C, 50, 70)).astype(dt).astype(np.float64)
    flat = x.reshape(-1)
    for v in (np.nan, np.inf, -np.inf, 0.0, -0.0):
        flat[rng.integers(0, flat.size, 300)] = v
    m, k, c = (rng.standard_normal(C).astype(dt).astype(np.float64) for _ in range(3))
    d = np.abs(rng.standard_normal(C)).astype(dt).astype(np.float64)
    d[2] = 0.0
    shp = (1, C, 1, 1)
    got = A.affine4(x, m.reshape(shp), d.reshape(shp), k.reshape(shp), c.reshape(shp))
    with np.errstate(all="ignore"):
        y = x.astype(dt)
        y = ((y - m.astype(dt).reshape(shp)) / d.astype(dt).reshape(shp))
        y = y * k.astype(dt).reshape(shp) + c.astype(dt).reshape(shp)
    want = y.astype(np.float64)
    assert got.shape == x.shape
    np.testing.assert_array_equal(np.where(np.isnan(got), 0, got.view(np.int64)),
                                  np.where(np.isnan(want), 0, want.view(np.int64)))


def test_batchnorm_plane_kernel_has_no_fma():
    buf = np.zeros(100, np.float32)
    one = np.float32(1)
    f = njit(error_model="numpy")(_nb_native._affine_plane.py_func)
    f(buf, one, one, one, one, 100)
    asm = "".join(f.inspect_asm().values())
    assert not re.search(r"\bv?fn?m(add|sub)", asm)
    assert re.search(r"\bvdivps\s+.*[yz]mm", asm), "the plane loop is not vectorised"
