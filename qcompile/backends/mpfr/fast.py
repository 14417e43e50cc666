"""The fast engine's arithmetic: float64 arrays holding exact values of the format.

Why it is exact
---------------
Every tensor holds values of the format, stored exactly in binary64 (p <= 53 and the format's
range inside binary64's; otherwise :class:`~qcompile.numerics.fastfp.NotExact` is raised,
never an approximation).  Each scalar operation must return the correctly rounded exact result:

* element-wise operations (+ - * / sqrt, conversion) are :mod:`qcompile.numerics.fastfp`,
  which computes a binary64 *proxy* of the exact result (exact products, TwoSum / Dekker error
  terms, round-to-odd; Boldo & Melquiond 2008) and rounds it with integer rounding at the
  format's quantum; elements it cannot do exactly go to the gmpy2 reference;
* Conv and Gemm/MatMul run the numba kernels of ``_nb`` when p <= 26: the product of two
  p-bit values has <= 52 bits, so ``x*w`` is exact in binary64 (guaranteed by the format's
  range, or by a range check of the operands for unbounded/wide formats); the sequential step
  ``round(acc + round(x*w))`` then rounds an exact product, and the sum ``acc + r`` of two
  format values is either exact in binary64 (narrow ranges), or innocuous under double
  rounding (round-to-nearest with 53 >= 2p + 1, Figueroa 1995), or rounded to odd from its
  TwoSum error (any mode: round_p(RO_53(z)) == round_p(z) for p + 2 <= 53).  The ``fma`` step
  rounds the round-to-odd proxy of the exact ``acc + x*w``.  Padded positions are skipped,
  never added as zeros (a +-0 term can change the sign of a zero sum in directed modes);
* ConvTranspose runs the same scalar steps in ``_nb.conv_transpose2d`` (gather form: per
  output element, the contributing taps in (c, ky, kx) order), with the same flags and the
  same numpy fallback over gathered columns;
* anything else (p > 26, numba missing, a plane the kernel flags, the ``exact`` rule) uses
  the numpy K-loop over ``fastfp.mac_step`` or ``fastfp.dot``; transcendental functions call
  the gmpy2 reference per element.
"""

from __future__ import annotations

import math

import numpy as np

from qcompile.backends.mpfr import common as _cm
from qcompile.backends.mpfr import fast_lanes
from qcompile.numerics import fastfp
from qcompile.numerics._fastfp_core import get_plan
from qcompile.numerics._numba import load_kernels
from qcompile.numerics.formats import Rounding


def _import_kernels():
    from qcompile.backends.mpfr import _nb, _nb_lanes, _nb_native, _nb_simd

    return _nb, _nb_native, _nb_simd, _nb_lanes


def _load_kernels():
    """The numba kernel modules, or Nones without numba (everything stays exact, only slower);
    the disk-cache fallback is :func:`qcompile.numerics._numba.load_kernels`'s."""
    return load_kernels(_import_kernels) or (None, None, None, None)


_nb, _nb_native, _nb_simd, _nb_lanes = _load_kernels()

_F64 = np.float64
_SAFE_LO = math.ldexp(1.0, -480)
_SAFE_HI = math.ldexp(1.0, 480)
# magnitude rounding per mode: (positive, negative); 0 nearest-even, 1 toward 0, 2 away
_MAG = {Rounding.NEAREST: (0, 0), Rounding.ZERO: (1, 1), Rounding.AWAY: (2, 2),
        Rounding.UP: (2, 1), Rounding.DOWN: (1, 2)}


def numba_available() -> bool:
    return _nb is not None


# (p, emin, emax) of the formats that are the machine's own (IEEE binary32 / binary64)
_NATIVE = {(24, -148, 128): np.float32, (53, -1073, 1024): np.float64}


def native_dtype(fmt, mode, accumulate="sequential"):
    """numpy dtype whose IEEE arithmetic *is* this (format, mode) (one rounding per operation,
    round to nearest even, gradual underflow, overflow to inf), or None."""
    if mode is not Rounding.NEAREST or accumulate != "sequential":
        return None
    if not (fmt.bounded and fmt.subnormal and fmt.has_inf and fmt.has_nan and not fmt.saturate):
        return None
    return _NATIVE.get((fmt.p, fmt.emin, fmt.emax))


def relu(x, keep_nan: bool):
    """``x > 0 ? x : +0`` (NaN kept where ``keep_nan``): a selection, exact in every format
    (posits too); the numba kernel for large float64 tensors, numpy otherwise."""
    if _nb_native is None or x.dtype != _F64 or x.size < 65536:
        keep = (x > 0) | np.isnan(x) if keep_nan else x > 0
        return np.where(keep, x, 0.0)
    xf = np.ascontiguousarray(x).reshape(-1)
    return _nb_native.relu(xf, _cm.empty_apart(xf), keep_nan).reshape(x.shape)


class FastArith:
    """Arithmetic of one (format, mode, accumulation rule) on float64 arrays."""

    def __init__(self, fmt, mode, accumulate="sequential", *, use_numba=True):
        _cm.keep_freed_blocks()
        self.fmt, self.mode, self.accumulate = fmt, mode, accumulate
        self.plan = get_plan(fmt, mode)
        self.native = native_dtype(fmt, mode, accumulate)
        self.nb = self._nb_params() if (use_numba and _nb is not None) else None
        self.native_nb = self.native is not None and use_numba and _nb_native is not None
        self.gen = None  # the any-mode lane kernels of _nb_lanes (sequential accumulation)
        if self.nb is not None and _nb_lanes is not None and accumulate == "sequential":
            f = self.nb[1]
            self.gen = fast_lanes.general_params(fmt, mode, self.plan, f[1:3], f[3:5])
        self.split = (fast_lanes.split_params(fmt, self.plan)
                      if self.nb is not None and self.nb[1][5] < 0 else [])
        self.kernel_stats = {"numba": 0, "numpy": 0, "flagged_planes": 0, "native": 0,
                             "lanes": 0, "split": 0, "split_redone": 0}

    # ------------------------------------------------------------------ element-wise
    def _nat(self, op, *args):
        """One IEEE operation in the native dtype (the operands are values of the format, so
        the casts are exact; the result is the operation's single rounding)."""
        dt = self.native
        with np.errstate(all="ignore"):
            r = op(*(np.asarray(a).astype(dt, copy=False) for a in args))
        return np.asarray(r, _F64)

    def round(self, x):
        if self.native is not None:  # one IEEE conversion: round to nearest even
            with np.errstate(all="ignore"):
                return np.asarray(x, _F64).astype(self.native).astype(_F64, copy=False)
        return fastfp.round_to(np.asarray(x, _F64), self.fmt, self.mode)

    def add(self, a, b):
        if self.native is not None:
            return self._nat(np.add, a, b)
        return fastfp.add(a, b, self.fmt, self.mode, assume_in_format=True)

    def sub(self, a, b):
        if self.native is not None:
            return self._nat(np.subtract, a, b)
        return fastfp.sub(a, b, self.fmt, self.mode, assume_in_format=True)

    def mul(self, a, b):
        if self.native is not None:
            return self._nat(np.multiply, a, b)
        return fastfp.mul(a, b, self.fmt, self.mode, assume_in_format=True)

    def div(self, a, b):
        if self.native is not None:
            return self._nat(np.divide, a, b)
        return fastfp.div(a, b, self.fmt, self.mode, assume_in_format=True)

    def sqrt(self, a):
        if self.native is not None:
            return self._nat(np.sqrt, a)
        return fastfp.sqrt(a, self.fmt, self.mode, assume_in_format=True)

    def affine4(self, x, m, d, k, c):
        """((x - m) / d) * k + c, left to right, one rounding per step (BatchNormalization)."""
        if self.native is not None:  # in place in the native dtype: no conversion per step
            dt = self.native
            C = x.shape[1] if np.ndim(x) >= 2 else 0
            if (self.native_nb and np.size(x) >= 65536 and np.asarray(x).dtype == _F64
                    and all(np.size(a) == C for a in (m, d, k, c))):  # one pass, per plane
                xc = np.ascontiguousarray(x).reshape(x.shape[0], C, -1)
                pc = [np.ascontiguousarray(a, dt).reshape(-1) for a in (m, d, k, c)]
                return _nb_native.affine4(xc, *pc, _cm.empty_apart(xc)).reshape(x.shape)
            with np.errstate(all="ignore"):
                y = np.asarray(x).astype(dt)
                y -= np.asarray(m).astype(dt)
                y /= np.asarray(d).astype(dt)
                y *= np.asarray(k).astype(dt)
                y += np.asarray(c).astype(dt)
            return y.astype(_F64, copy=False)
        x = np.asarray(x, _F64)
        if (x.ndim >= 2 and self.nb is not None and _nb_simd is not None and self.nb[1][5] < 0
                and self.plan.div_rn and all(np.size(a) == x.shape[1] for a in (m, d, k, c))
                and bool((np.isfinite(d) & (d != 0)).all())):  # x/0 and 0/0: general path
            ints, flts, _ = self.nb  # the check-free round-to-nearest format of _nb_simd
            xc = np.ascontiguousarray(x).reshape(x.shape[0], x.shape[1], -1)
            out = _cm.empty_apart(xc)
            pc = [np.ascontiguousarray(a, _F64).reshape(-1) for a in (m, d, k, c)]
            with np.errstate(all="ignore"):
                _nb_simd.affine4(xc, *pc, out, ints[0], ints[1], *flts[:5])
            return out.reshape(x.shape)
        return self.add(self.mul(self.div(self.sub(x, m), d), k), c)

    # ------------------------------------------------------------------ numba parameters
    def _nb_params(self):
        plan, fmt = self.plan, self.fmt
        if fmt.p > 26 or self.accumulate == "exact":
            return None
        maxf = plan.maxf if plan.maxf is not None else math.inf
        if maxf != math.inf and not plan.maxf_exact:
            return None
        ovf = []
        for s, sign in ((0, 1.0), (1, -1.0)):
            mx = sign * maxf
            to_inf = plan.ovf_inf[s]
            if fmt.saturate or not to_inf:
                ovf.append(mx)
            else:
                ovf.append(sign * math.inf if fmt.has_inf else math.nan)
        exi = [(s * math.inf if fmt.has_inf else (s * maxf if fmt.saturate else math.nan))
               for s in (1.0, -1.0)]
        fma = self.accumulate == "fma"
        use_odd = not plan.fma_exact if fma else not (plan.add_rn or plan.add_exact)
        mpos, mneg = _MAG[self.mode]
        ints = np.array([int(plan.pm), int(plan.qmin_bits), mpos, mneg, int(use_odd),
                         int(self.mode is Rounding.DOWN), int(fma)], np.int64)
        low = plan.low
        if (self.mode is Rounding.NEAREST and low == 0.0 and maxf != math.inf and not use_odd
                and plan.prod_exact):
            low = -1.0  # selects the check-free round-to-nearest loop of _nb._row
        flts = np.array([maxf, ovf[0], ovf[1], exi[0], exi[1], low], _F64)
        return ints, flts, not plan.prod_exact

    def _nb_ok(self, *arrays):
        """numba kernel applicable to these operands (range check for non-exact products)."""
        if self.nb is None:
            return False
        if not self.nb[2]:
            return True
        for a in arrays:
            if a is None or a.size == 0:
                continue
            m = np.abs(a)
            nz = m[(m != 0) & np.isfinite(m)]  # inf/NaN operands are exact IEEE cases
            if nz.size and (nz.min() < _SAFE_LO or nz.max() > _SAFE_HI):
                return False
        return True

    def warmup(self, progress=None) -> None:
        """Load (or compile, first time only: cached on disk) the numba kernels now.
        ``progress(done, total)`` is called after each kernel (the caller may report it; the
        backend never prints)."""
        if self.nb is None and not self.native_nb:
            return
        x = np.zeros((1, 8, 2, 2))
        z = np.zeros(8)
        steps = [
            lambda: self.conv2d(x, np.zeros((8, 8, 1, 1)), z, (1, 1), (0, 0, 0, 0), (1, 1), 1),
            lambda: self.conv2d(x, np.zeros((8, 1, 1, 1)), z, (1, 1), (0, 0, 0, 0), (1, 1), 8),
            lambda: self.conv2d(x, np.zeros((8, 8, 3, 3)), z, (1, 1), (1, 1, 1, 1), (1, 1), 1),
            # an infinite input: the conv2d that checks every step (conv2d_split needs bounds);
            # products in range, sums not: the watched split kernel, its jobs redone
            lambda: self.conv2d(x + np.inf, np.zeros((8, 8, 3, 3)), z, (1, 1), (1, 1, 1, 1),
                                (1, 1), 1),
            lambda: self.conv2d(x + (self.plan.maxf or 1.0) / 2, np.ones((8, 8, 3, 3)), z,
                                (1, 1), (1, 1, 1, 1), (1, 1), 1),
            lambda: self.gemm(np.zeros((1, 2)), np.zeros((2, 2)), np.zeros(2)),
            lambda: self.affine4(x, *(z.reshape(1, 8, 1, 1),) * 4),
            lambda: _nb_native.relu(z, np.empty(8), True),  # (the large-tensor kernels)
        ]
        if self.native_nb:
            zn = np.zeros(8, self.native)
            steps.append(lambda: _nb_native.affine4(x.reshape(1, 8, 4), zn, zn, zn, zn,
                                                    np.empty((1, 8, 4))))
        for i, step in enumerate(steps):
            step()
            if progress is not None:
                progress(i + 1, len(steps))
        self.kernel_stats.update(numba=0, numpy=0, flagged_planes=0, native=0, lanes=0, split=0,
                                 split_redone=0)

    # ------------------------------------------------------------------ conv
    def conv2d(self, x, w, b, strides, pads, dilations, group):
        """x [N,C,H,W], w [OC,C/g,KH,KW], b [OC] or None; pads (top, left, bottom, right)."""
        N, C, H, W = x.shape
        OC, Cg, KH, KW = w.shape
        sh, sw = strides
        dh, dw = dilations
        pt, pl, pb, pr = pads
        OH = (H + pt + pb - dh * (KH - 1) - 1) // sh + 1
        OW = (W + pl + pr - dw * (KW - 1) - 1) // sw + 1
        if self._lanes_ok(strides, w):
            return self._conv_lanes(x, w, b, sh, pads, dilations, group, OH, OW)
        if (self.gen is not None and sh == sw and bool(np.isfinite(w).all())
                and self._nb_ok(x, w, b)):
            self.kernel_stats["numba"] += 1
            self.kernel_stats["lanes"] += 1
            return fast_lanes.conv_general(_nb_lanes, self.gen, x, w, b, sh, pads, dilations,
                                           group, OH, OW)
        out = np.empty((N, OC, OH, OW), _F64)
        bias = np.zeros(0, _F64) if b is None else np.ascontiguousarray(b, _F64)
        if self._nb_ok(x, w, b):
            ints, flts, _ = self.nb
            xc = np.ascontiguousarray(x, _F64)
            if OC // group >= 8:  # vectorise over output channels
                wt = np.ascontiguousarray(w.reshape(OC, Cg * KH * KW).T, _F64)
                bad = np.zeros((N, OH * OW), np.bool_)
                _nb.conv2d_t(xc, wt, out, bias, sh, sw, pt, pl, dh, dw, KH, KW, group, ints,
                             flts, bad)
            else:  # vectorise over output rows
                bad = np.zeros((N, OC), np.bool_)
                _nb.conv2d(xc, np.ascontiguousarray(w, _F64), out, bias, False, sh, sw, pt, pl,
                           dh, dw, group, ints, flts, bad)
            self.kernel_stats["numba"] += 1
            if not bad.any():
                return out
            self.kernel_stats["flagged_planes"] += int(bad.sum())
            imgs = np.flatnonzero(bad.any(axis=1))
            todo = [(int(n), oc) for n in imgs for oc in range(OC)]
        else:
            self.kernel_stats["numpy"] += 1
            todo = None
        cols, valid = _im2col(x, KH, KW, sh, sw, pt, pl, dh, dw, OH, OW)  # [N, C, KH*KW, OH*OW]
        ocg = OC // group
        groups = range(group) if todo is None else sorted({int(oc) // ocg for _, oc in todo})
        for g in groups:
            xs = cols[:, g * Cg:(g + 1) * Cg].reshape(N, Cg * KH * KW, OH * OW)
            vs = np.broadcast_to(valid[None], (Cg,) + valid.shape).reshape(Cg * KH * KW, OH * OW)
            for oc in range(g * ocg, (g + 1) * ocg):
                ns = range(N) if todo is None else [n for n, o in todo if o == oc]
                for n in ns:
                    r = self._dot_masked(xs[n], vs, w[oc].reshape(-1),
                                         None if b is None else b[oc])
                    out[n, oc] = r.reshape(OH, OW)
        return out

    def _conv_lanes(self, x, w, b, s, pads, dilations, group, OH, OW):
        """Conv by the lane kernels (``_nb_native`` for the machine's formats, ``_nb_simd``
        for the check-free round-to-nearest ones): the zero-padded input split into the
        stride's phases, so that each tap is a contiguous run of output lanes."""
        dt = self.native or _F64
        _, _, KH, KW = w.shape
        xp, Wq, offs = fast_lanes.phase_planes(x, KH, KW, s, pads, dilations, OH, OW, dt)
        N = x.shape[0]
        out = np.empty((N, w.shape[0], OH, OW), dt)
        bias = np.zeros(0, dt) if b is None else np.ascontiguousarray(b, dt)
        wc = np.ascontiguousarray(w, dt)
        if self.native is not None:
            self.kernel_stats["native"] += 1
            _nb_native.conv2d(xp, Wq, offs, wc, out, bias, group)
            return out.astype(_F64, copy=False)
        ints, flts, _ = self.nb
        self.kernel_stats["numba"] += 1
        sp, checked = fast_lanes.split_choice(_nb_simd, self.split, x, wc, group)
        if sp is not None:
            self.kernel_stats["split"] += 1
        self.kernel_stats["split_redone"] += fast_lanes.conv_rn(
            _nb_simd, sp, checked, xp, Wq, offs, wc, out, bias, group,
            (ints[0], ints[1], *flts[:5]))
        return out

    def _lanes_ok(self, strides, w):
        """The lane kernels apply: native format, or the check-free round-to-nearest loop of
        ``_nb`` (low marker -1: nearest, no zone checks, finite max, exact products; that
        implies gradual underflow), sequential accumulation; one stride; finite weights."""
        if strides[0] != strides[1]:
            return False
        if self.native_nb:
            return bool(np.isfinite(w).all())
        return (self.nb is not None and _nb_simd is not None and self.nb[1][5] < 0
                and self.accumulate == "sequential" and bool(np.isfinite(w).all()))

    def conv_transpose2d(self, x, w, b, strides, dilations, begin, out_hw, group):
        """ConvTranspose in gather form (see ``_nb.conv_transpose2d``): x [N,C,H,W],
        w [C, OC/g, KH, KW], b [OC] or None; ``begin`` = (top, left) pads."""
        N, C, H, W = x.shape
        _, ocg, KH, KW = w.shape
        OC, Cg = ocg * group, C // group
        OH, OW = out_hw
        out = np.empty((N, OC, OH, OW), _F64)
        bias = np.zeros(0, _F64) if b is None else np.ascontiguousarray(b, _F64)
        todo = None
        if self._nb_ok(x, w, b):
            bad = np.zeros((N, OC), np.bool_)
            _nb.conv_transpose2d(np.ascontiguousarray(x, _F64), np.ascontiguousarray(w, _F64),
                                 out, bias, *strides, *begin, *dilations, group, *self.nb[:2],
                                 bad)
            self.kernel_stats["numba"] += 1
            if not bad.any():
                return out
            self.kernel_stats["flagged_planes"] += int(bad.sum())
            todo = {(int(n), int(oc)) for n, oc in zip(*np.nonzero(bad))}
        else:
            self.kernel_stats["numpy"] += 1
        # numpy path: the same gather as columns [N, C, KH*KW, P] (0 where nothing contributes)
        P = OH * OW
        cols = np.zeros((N, C, KH * KW, P), _F64)
        valid = np.zeros((KH * KW, P), bool)
        for ky, kx, iy, ix, ok in _cm.conv_transpose_taps(H, W, OH, OW, KH, KW, strides,
                                                          dilations, begin):
            valid[ky * KW + kx] = ok.reshape(-1)
            cols[:, :, ky * KW + kx] = np.where(ok, x[:, :, iy, ix], 0.0).reshape(N, C, P)
        vs = np.broadcast_to(valid[None], (Cg,) + valid.shape).reshape(Cg * KH * KW, P)
        for n in range(N):
            for oc in range(OC):
                if todo is not None and (n, oc) not in todo:
                    continue
                g, j = divmod(oc, ocg)
                xs = cols[n, g * Cg:(g + 1) * Cg].reshape(Cg * KH * KW, P)
                wv = w[g * Cg:(g + 1) * Cg, j].reshape(-1)  # (c, ky, kx) order
                r = self._dot_masked(xs, vs, wv, None if b is None else b[oc])
                out[n, oc] = r.reshape(OH, OW)
        return out

    def _dot_masked(self, xs, valid, wv, bv):
        """One output plane by the numpy path: xs [K, P], valid [K, P], wv [K]."""
        K, P = xs.shape
        if self.accumulate == "exact":
            # A padded tap becomes a zero signed like its weight, so its product is +0: then
            # fastfp.dot's IEEE/MPFR sign rule for exact zero sums (over all terms, from
            # acc = +0) is the rule over the real taps, and a nonzero sum that rounds to zero
            # keeps its own sign (rounding 0.25 down in e2m1 gives +0, not -0).
            xm = np.where(valid, xs, np.copysign(0.0, wv)[:, None])
            acc = fastfp.dot(xm.T, wv, self.fmt, self.mode, "exact", check_inputs=False)
        else:
            acc = np.zeros(P, _F64)
            for k in range(K):
                new = fastfp.mac_step(acc, xs[k], wv[k], self.fmt, self.mode, self.accumulate)
                acc = np.where(valid[k], new, acc)
        if bv is not None:
            acc = self.add(acc, np.full(P, bv))
        return acc

    # ------------------------------------------------------------------ gemm
    def gemm(self, a, b, bias=None, bias_first=False):
        """a [M,K] @ b [K,N] in k order; bias broadcast to [M,N], added first or last."""
        M, K = a.shape
        N = b.shape[1]
        B = None if bias is None else np.ascontiguousarray(
            np.broadcast_to(np.asarray(bias, _F64), (M, N)))
        if self.native_nb:
            dt = self.native
            out = np.empty((M, N), dt)
            _nb_native.gemm(np.ascontiguousarray(a, dt), np.ascontiguousarray(b, dt), out,
                            np.zeros((0, 0), dt) if B is None else B.astype(dt),
                            bool(bias_first and B is not None))
            self.kernel_stats["native"] += 1
            return out.astype(_F64, copy=False)
        if self._nb_ok(a, b, B):
            ints, flts, _ = self.nb
            out = np.empty((M, N), _F64)
            bad = np.zeros(M, np.bool_)
            _nb.gemm(np.ascontiguousarray(a, _F64), np.ascontiguousarray(b, _F64), out,
                     np.zeros((0, 0), _F64) if B is None else B, bool(bias_first and B is not None),
                     ints, flts, bad)
            self.kernel_stats["numba"] += 1
            if not bad.any():
                return out
            rows = np.flatnonzero(bad)
            self.kernel_stats["flagged_planes"] += rows.size
            out[rows] = fastfp.dot(a[rows], b, self.fmt, self.mode, self.accumulate,
                                   bias=None if B is None else B[rows], bias_first=bias_first,
                                   check_inputs=False)
            return out
        self.kernel_stats["numpy"] += 1
        return fastfp.dot(a, b, self.fmt, self.mode, self.accumulate, bias=B,
                          bias_first=bias_first, check_inputs=False)


def _im2col(x, KH, KW, sh, sw, pt, pl, dh, dw, OH, OW):
    """cols [N, C, KH*KW, OH*OW] (0 at padded positions) and valid [KH*KW, OH*OW]."""
    N, C, H, W = x.shape
    cols = np.zeros((N, C, KH * KW, OH * OW), _F64)
    valid = np.zeros((KH * KW, OH * OW), bool)
    oy = np.arange(OH)[:, None]
    ox = np.arange(OW)[None, :]
    for ky in range(KH):
        for kx in range(KW):
            iy = oy * sh - pt + ky * dh
            ix = ox * sw - pl + kx * dw
            ok = (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
            k = ky * KW + kx
            valid[k] = ok.reshape(-1)
            iyc = np.clip(iy, 0, H - 1)
            ixc = np.clip(ix, 0, W - 1)
            cols[:, :, k] = np.where(ok, x[:, :, iyc, ixc], 0.0).reshape(N, C, -1)
    return cols, valid
