"""The numba FQ kernel (backends/mpfr/_nb_fq.py) equals the exact numpy FQ (``fq_round``, itself
checked against the gmpy2 reference in test_mpfr_formats.py) bit for bit: five rounding modes,
IEEE-like, FP8/FP4 and subnormal=off formats, scales per tensor and per channel on either axis,
inputs on and next to every rounding breakpoint (values and midpoints of the format, times the
scale), zeros of both signs, binary64 subnormals, infinities and NaN; and it is the path taken
for large tensors (it must not silently decline)."""

from __future__ import annotations

import numpy as np
import pytest

from qcompile.backends.mpfr import ops_formats as OF
from qcompile.numerics import fastfp
from qcompile.numerics.formats import Rounding
from qcompile.numerics.fq import fq_format, fq_round

SPECS = ["e4m3", "e5m2", "bf16", "fp16", "e2m1", "b6e3", "p=11,emin=-8,emax=7,subnormal=off"]


def _bits(a):
    a = np.asarray(a, np.float64)
    return np.where(np.isnan(a), 0x7FF8000000000000, a.view(np.int64))


def _breakpoints(fmt, rng, n):
    """Values and midpoints of fmt (from a dense grid rounded into it) and their neighbours."""
    grid = np.unique(fastfp.round_to(np.ldexp(rng.uniform(1, 2, 6000), rng.integers(-20, 20,
                                                                                   6000)), fmt))
    grid = grid[np.isfinite(grid)]
    mids = (grid[:-1] + grid[1:]) / 2
    v = np.concatenate([grid, mids, -grid, -mids])
    v = np.concatenate([v, np.nextafter(v, np.inf), np.nextafter(v, -np.inf)])
    return rng.choice(v, n)


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("mode", list(Rounding))
def test_kernel_equals_exact_fq(spec, mode):
    fmt = fq_format(spec)
    rng = np.random.default_rng(abs(hash((spec, mode.value))) % 2**32)
    shape = (4, 6, 16, 17)
    for axis, sshape in ((None, ()), (1, (1, 6, 1, 1)), (0, (4, 1, 1, 1)), (None, (1,))):
        s = (rng.random(sshape) * 0.05 + 1e-3).astype(np.float32).astype(np.float64)
        if axis is None and not sshape:  # a power of two: x / s exact, breakpoints hit exactly
            s = np.array(0.125)
        elif axis is None:  # a binary64 scale: breakpoint * s inexact, so x / s next to the
            s = np.array(rng.random() * 0.05 + 1e-3)  # breakpoint, its quotient often on it
        x = rng.standard_normal(shape) * np.exp2(rng.integers(-12, 12, (4, 1, 1, 1)))
        bp = _breakpoints(fmt, rng, x.size // 3)
        x.reshape(-1)[: bp.size] = bp * np.broadcast_to(s, shape).reshape(-1)[: bp.size]
        x.reshape(-1)[-12:] = [0.0, -0.0, np.inf, -np.inf, np.nan, 5e-324, -5e-324, 1e-310,
                               1e308, -1e308, 1e-300, -1e-300]
        x.reshape(-1)[bp.size: bp.size + 500] = 0.0
        # the binary64 neighbours of breakpoint * scale: x / s just off the breakpoint, yet
        # its binary64 quotient often on it (the double rounding the kernel must flag)
        sb = np.broadcast_to(s, shape).reshape(-1)[bp.size + 500: 2 * bp.size + 500]
        x.reshape(-1)[bp.size + 500: 2 * bp.size + 500] = np.nextafter(
            bp * sb, np.where(rng.random(bp.size) < 0.5, np.inf, -np.inf))
        got = OF._fq_div_nb(x, s, fmt, mode, axis)
        assert got is not None  # the kernel ran
        want = fq_round(x, s, fmt, mode)
        np.testing.assert_array_equal(_bits(got), _bits(want))


def test_kernel_declines_what_it_cannot_do():
    x = np.random.default_rng(0).standard_normal(OF._NB_MIN)
    s = np.array(0.3)
    assert OF._fq_div_nb(x, s, fq_format("posit8_1"), Rounding.NEAREST, None) is None
    assert OF._fq_div_nb(x[:10], s, fq_format("e4m3"), Rounding.NEAREST, None) is None
    assert OF._fq_div_nb(x, np.array(1.0), fq_format("e4m3"), Rounding.NEAREST, None) is None


@pytest.mark.parametrize("arith", ["fp32", "bf16", "b15e4"])
@pytest.mark.parametrize("spec", ["e4m3", "e2m1", "fp16", "b16e11"])
@pytest.mark.parametrize("mode", [Rounding.NEAREST, Rounding.DOWN])
def test_fused_product_equals_fq_then_mul(arith, spec, mode):
    """With the run's arithmetic A, the kernel's fused q*s (and ``fq_fast``'s output) is
    round_A(q*s) of the exact FQ: binary32 scales per tensor and per channel, breakpoints,
    specials and products beyond binary64's range (flagged, redone by fastfp.mul)."""
    from qcompile.backends.mpfr.config import make_config
    from qcompile.backends.mpfr.interpreter import make_engine

    E = make_engine(make_config(format=arith, rounding=mode.value), "fast")
    A = E.A
    fmt = fq_format(spec)
    rng = np.random.default_rng(7)
    shape = (3, 5, 16, 20)
    for axis, sshape, lo in ((None, (), 1e-3), (1, (1, 5, 1, 1), 1e-3), (None, (), 1e-30)):
        s = (rng.random(sshape) * 50 * lo + lo).astype(np.float32).astype(np.float64)
        x = rng.standard_normal(shape) * np.exp2(rng.integers(-10, 10, (3, 1, 1, 1)))
        if lo < 1e-20:  # (b16e11) products q * s below 2**-1022: flagged
            x *= 1e-318
        bp = _breakpoints(fmt, rng, x.size // 3)
        x.reshape(-1)[: bp.size] = bp * np.broadcast_to(s, shape).reshape(-1)[: bp.size]
        x.reshape(-1)[-10:] = [0.0, -0.0, np.inf, -np.inf, np.nan, 5e-324, 1e-310, 1e308,
                               -1e308, -1e-300]
        assert OF._product_fits(fmt, s)
        fused = OF._fq_div_nb(x, s, fmt, mode, axis, A)
        assert fused is not None
        want = fastfp.mul(fq_round(x, s, fmt, mode), np.broadcast_to(s, shape), A.fmt, A.mode)
        np.testing.assert_array_equal(_bits(A.round(fused)), _bits(want))
        got = OF.fq_fast(E, x, s.reshape(-1) if axis is not None else s, format=spec,
                         rounding=mode.value, axis=axis)[0]
        np.testing.assert_array_equal(_bits(got), _bits(want))


def test_fused_product_flags_products_below_binary64_normal_range():
    """The kernel's contract: a fused ``q * s`` under 2**-1022 (where binary64 may round it)
    is flagged for the exact path, the rest is the binary64 product of the exact FQ."""
    from qcompile.backends.mpfr import _nb_fq

    fmt, mode = fq_format("b16e11"), Rounding.NEAREST
    par = OF._fq_params(fmt, mode)
    rng = np.random.default_rng(3)
    s = np.array([np.float32(1.3e-30)], np.float64)
    x = rng.standard_normal(8192) * np.where(rng.random(8192) < 0.5, 1e-318, 1e-280)
    out, flag = np.empty_like(x), np.empty(x.size, np.uint8)
    _nb_fq.fq_div(x, s, x.size, 1, par[0], par[1], True, out, flag)
    q = fq_round(x, s[0], fmt, mode)
    tiny = (np.abs(q * s[0]) < 2.0 ** -1022) & (q != 0)
    assert tiny.any() and (~tiny).any()
    assert flag[tiny].all()
    ok = flag == 0
    np.testing.assert_array_equal(_bits(out[ok]), _bits(q[ok] * s[0]))


@pytest.mark.parametrize("dtype", [np.float64, np.uint8])
def test_empty_apart_is_half_a_page_from_its_input(dtype):
    """The kernels' outputs sit 2048 bytes from the input modulo 4 KiB (no 4K aliasing),
    with the input's shape, whatever the input's own offset (views at odd offsets too)."""
    from qcompile.backends.mpfr.common import empty_apart

    base = np.empty(200_000 + 64)
    for k in (0, 1, 3, 17):
        x = base[k:k + 200_000].reshape(400, 500)
        out = empty_apart(x, dtype)
        assert out.shape == x.shape and out.dtype == dtype and out.flags.c_contiguous
        assert (out.ctypes.data - x.ctypes.data) % 4096 == 2048
    small = empty_apart(np.zeros(10))
    assert small.shape == (10,) and small.dtype == np.float64
