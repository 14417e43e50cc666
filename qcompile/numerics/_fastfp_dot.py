"""Dot products / gemm in a :class:`FloatFormat` (part of :mod:`qcompile.numerics.fastfp`).

``dot(x [M,K] or [K], w [K,N] or [K], ...)`` loops over K, vectorised over all
outputs in cache-sized blocks, with the accumulation semantics of
:func:`qcompile.numerics.mpfr_ref.ref_dot`:

* ``"sequential"``: acc = round(acc + round(x*w));
* ``"fma"``: acc = round(acc + x*w);
* ``"exact"``: the exact sum of the products rounded once.  Products of format
  values are exact binary64 numbers; they are accumulated *exactly* in fixed
  binary "bins" (the error-free extraction of Rump, Ogita & Oishi's AccSum /
  Demmel & Nguyen's binned sums): bin j holds multiples of 2**B_j, B_j = B0 +
  j*W with W = 52 - ceil(log2(K+2)), so that K+1 parts never exceed 53 bits.
  A term is split top-down with ``part = (t + 1.5*2**(B_j+52)) - 1.5*2**(B_j+52)``.
  At the end carries are propagated upward (after which every bin is at most
  half a unit of the next one), the bins are folded from the top with TwoSum
  until an error term is nonzero; that error (or zero) gives the sign of the
  exact residual, hence the round-to-odd proxy, then ``round_to``.
Bias: added first (``bias_first``: it is the initial accumulator / the first term
of the exact sum) or last with one rounding.

x, w and bias must be values of the format (checked unless
``check_inputs=False``).  Formats whose products are not exact in binary64
use the general exact element operations; the exact mode for such formats (or
with non-finite inputs) uses the gmpy2 reference for the affected outputs.
"""

from __future__ import annotations

import math

import numpy as np

from qcompile.numerics import _fastfp_ops as ff
from qcompile.numerics._fastfp_core import (
    BLOCK,
    Scratch,
    get_plan,
    odd_adjust,
    ref_values,
    round_block,
    two_sum,
)
from qcompile.numerics._fastfp_kernels import mac_core
from qcompile.numerics.float_format import FloatFormat, Rounding, parse_format

_F64 = np.float64


def dot(
    x,
    w,
    fmt: FloatFormat | str,
    mode: Rounding | str = Rounding.NEAREST,
    accumulate: str = "sequential",
    bias=None,
    bias_first: bool = False,
    *,
    check_inputs: bool = True,
) -> np.ndarray:
    """Dot product / matrix product in ``fmt`` (bit-identical to ``ref_dot``).

    ``x``: [M, K] or [K]; ``w``: [K, N] or [K]; result [M, N], [M], [N] or [] as
    numpy's ``x @ w``.  ``bias`` broadcasts to the result shape.
    """
    fmt = parse_format(fmt)
    mode = Rounding.parse(mode)
    if accumulate not in ("sequential", "fma", "exact"):
        raise ValueError(f"accumulate must be 'sequential', 'fma' or 'exact', not {accumulate!r}")
    x = np.asarray(x, dtype=_F64)
    w = np.asarray(w, dtype=_F64)
    if x.ndim not in (1, 2) or w.ndim not in (1, 2):
        raise ValueError("dot expects x of shape [M,K] or [K] and w of shape [K,N] or [K]")
    X = x if x.ndim == 2 else x.reshape(1, -1)
    W = w if w.ndim == 2 else w.reshape(-1, 1)
    M, K = X.shape
    if W.shape[0] != K:
        raise ValueError(f"inner dimensions differ: x has K={K}, w has K={W.shape[0]}")
    N = W.shape[1]
    res_shape = tuple(([M] if x.ndim == 2 else []) + ([N] if w.ndim == 2 else []))
    B = None
    if bias is not None:
        B = np.ascontiguousarray(
            np.broadcast_to(np.asarray(bias, dtype=_F64), res_shape)).reshape(M, N)
    if check_inputs:
        for nm, arr in (("x", X), ("w", W), ("bias", B)):
            if arr is not None and arr.size and not (
                    ff.is_representable(arr, fmt) | np.isnan(arr)).all():
                raise ValueError(
                    f"dot: {nm} contains values that are not representable in {fmt}; "
                    f"round them with fastfp.round_to first")
    plan = get_plan(fmt, mode)
    init = B.copy() if (B is not None and bias_first) else np.zeros((M, N), _F64)
    if accumulate == "exact":
        acc = _dot_exact(X, W, init, B is not None and bias_first, plan)
    elif plan.prod_exact:
        acc = _dot_blocked(X, W, init, plan, accumulate)
    else:
        acc = init
        for k in range(K):
            if accumulate == "sequential":
                prod = ff.mul(X[:, k, None], W[None, k, :], fmt, mode)
                acc = ff.add(acc, prod, fmt, mode)
            else:
                acc = ff.fma(X[:, k, None], W[None, k, :], acc, fmt, mode)
    if B is not None and not bias_first:
        acc = ff.add(acc, B, fmt, mode, assume_in_format=True)
    elif K == 0 and B is not None:
        acc = ff.round_to(acc, fmt, mode)
    return acc.reshape(res_shape)


def _blocks(M, N):
    R = max(1, BLOCK // max(N, 1))
    C = min(N, BLOCK)
    for r0 in range(0, M, R):
        for c0 in range(0, N, C):
            yield r0, min(M, r0 + R), c0, min(N, c0 + C)


def _dot_blocked(X, W, acc, plan, accumulate):
    M, K = X.shape
    N = W.shape[1]
    if M * N == 0 or K == 0:
        return acc
    XT = np.ascontiguousarray(X.T)
    sc = Scratch(min(BLOCK, max(1, M * N)))
    for r0, r1, c0, c1 in _blocks(M, N):
        rr, cc = r1 - r0, c1 - c0
        m = rr * cc
        blk = np.ascontiguousarray(acc[r0:r1, c0:c1])
        flat = blk.reshape(-1)
        f, i, bb = sc.fs(m), sc.is_(m), sc.bs(m)
        ph2 = f[3].reshape(rr, cc)
        with np.errstate(all="ignore"):
            for k in range(K):
                np.multiply(XT[k, r0:r1, None], W[k, None, c0:c1], out=ph2)
                mac_core(plan, flat, f[3], flat, f, i, bb, accumulate)
        acc[r0:r1, c0:c1] = blk
    return acc


# ----------------------------------------------------------------------------- exact mode
def _bin_layout(plan, K):
    fmt = plan.fmt
    if not (plan.prod_exact and plan.ops_exact):
        return None
    q, e = fmt.qmin_exp, fmt.emax
    width = 52 - math.ceil(math.log2(K + 2))
    if width < 8:
        return None
    B0 = min(q, 2 * q)
    top = max(e, 2 * e) + 1  # every term is < 2**top in magnitude
    J = max(0, math.ceil((top - B0) / width) - 1)
    if B0 < -1074 or B0 + J * width + 53 > 1023:
        return None
    bases = [B0 + j * width for j in range(J + 1)]
    return width, bases


def _dot_exact(X, W, init, init_is_bias, plan):
    M, K = X.shape
    N = W.shape[1]
    out = np.empty((M, N), _F64)
    if M * N == 0:
        return out
    layout = _bin_layout(plan, K)
    # outputs whose terms contain inf/NaN, or all of them if the bins do not fit binary64
    if layout is None:
        bad = np.ones((M, N), bool)
    else:
        bad = (~np.isfinite(X).all(axis=1))[:, None] | (~np.isfinite(W).all(axis=0))[None, :]
        bad = bad | ~np.isfinite(init)
    XT = np.ascontiguousarray(X.T)
    if layout is not None:
        width, bases = layout
        sig = [1.5 * math.ldexp(1.0, b + 52) for b in bases]
        sc = Scratch(min(BLOCK, M * N))
        for r0, r1, c0, c1 in _blocks(M, N):
            rr, cc = r1 - r0, c1 - c0
            res = _exact_block(XT, W, init, r0, r1, c0, c1, plan, bases, width, sig, sc,
                               init_is_bias)
            out[r0:r1, c0:c1] = res.reshape(rr, cc)
    if bad.any():
        from qcompile.numerics.mpfr_ref import ref_dot

        bi, bj = np.nonzero(bad)
        vals = []
        for a, b in zip(bi, bj, strict=True):
            b0 = float(init[a, b]) if init_is_bias else None
            vals.append(ref_dot(X[a].tolist(), W[:, b].tolist(), plan.fmt, plan.mode, "exact",
                                bias=b0, bias_first=init_is_bias))
        out[bi, bj] = ref_values(vals, plan.fmt)
    return out


def _extract(t, bins, j_top, sig, tmp):
    """Add term ``t`` (destroyed) exactly into bins j_top, j_top-1, ..."""
    for j in range(j_top, -1, -1):
        np.add(t, sig[j], out=tmp)
        np.subtract(tmp, sig[j], out=tmp)
        np.subtract(t, tmp, out=t)
        np.add(bins[j], tmp, out=bins[j])
        if not t.any():
            return


def _top_bin(t, bases, width):
    mx = max(float(t.max()), -float(t.min()))
    if mx == 0.0 or mx != mx:
        return -1
    e = math.frexp(mx)[1]  # mx < 2**e
    j = math.ceil((e - bases[0] - width) / width)
    return min(max(j, 0), len(bases) - 1)


def _exact_block(XT, W, init, r0, r1, c0, c1, plan, bases, width, sig, sc, init_is_bias):
    rr, cc = r1 - r0, c1 - c0
    m = rr * cc
    K = XT.shape[0]
    f, i, bb = sc.fs(m), sc.is_(m), sc.bs(m)
    nb = len(bases)
    bins = np.zeros((nb, m), _F64)
    t, tmp = f[0], f[1]
    t2 = t.reshape(rr, cc)
    with np.errstate(all="ignore"):
        if init_is_bias:
            t2[...] = init[r0:r1, c0:c1]
            t[~np.isfinite(t)] = 0.0
            _extract(t, bins, _top_bin(t, bases, width), sig, tmp)
        for k in range(K):
            np.multiply(XT[k, r0:r1, None], W[k, None, c0:c1], out=t2)
            if not np.isfinite(t).all():
                t[~np.isfinite(t)] = 0.0  # those outputs are redone by the reference
            jt = _top_bin(t, bases, width)
            if jt >= 0:
                _extract(t, bins, jt, sig, tmp)
        # carry propagation: afterwards |bins[j]| <= 2**(B_{j+1} - 1)
        for j in range(nb - 1):
            np.add(bins[j], sig[j + 1], out=tmp)
            np.subtract(tmp, sig[j + 1], out=tmp)
            np.subtract(bins[j], tmp, out=bins[j])
            np.add(bins[j + 1], tmp, out=bins[j + 1])
        # fold from the top until an error term is nonzero
        h = bins[nb - 1].copy()
        err = np.zeros(m, _F64)
        und = np.ones(m, bool)
        s, e, tt = f[2], f[3], f[4]
        for j in range(nb - 2, -1, -1):
            if not und.any():
                break
            two_sum(h, bins[j], s, e, tt)
            np.copyto(h, s, where=und)
            np.copyto(err, e, where=und)
            und &= e == 0
    odd_adjust(h, err, bb[1], i[2])
    # exact zero sums: IEEE/MPFR sign rule over all terms
    z = np.flatnonzero((h == 0) & (err == 0))
    if z.size:
        rows = r0 + z // cc
        cols = c0 + z % cc
        with np.errstate(all="ignore"):
            prods = XT[:, rows].T * W[:, cols].T  # [nz, K]
        first = init[rows, cols] if init_is_bias else np.zeros(z.size)
        sgn = np.concatenate([np.signbit(first)[:, None], np.signbit(prods)], axis=1)
        if plan.mode is Rounding.DOWN:
            neg = sgn.any(axis=1)
        else:
            neg = sgn.all(axis=1)
        h[z] = np.where(neg, -0.0, 0.0)
    out = np.empty(m, _F64)
    round_block(h, out, plan, i, bb, None)
    return out
