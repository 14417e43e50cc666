"""numba kernel of ``qcompile.FQ`` into a float format under a scale: ``q = round_F(x / s)``
of the exact quotient, one element per iteration, in parallel.

``z = x / s`` lies strictly between ``d-`` and ``d+``, the binary64 neighbours of
``d = fl(x / s)`` (the error of one binary64 division is at most half the spacing on either
side, also at a binade edge and in the subnormal range).  Rounding into ``F`` is
non-decreasing in every mode, so when ``round_F(d-)`` and ``round_F(d+)`` have the same bits
that is ``round_F(z)``.  Each of the two is ``_nb._rnd`` (the fast engine's exact rounding of a
binary64 value, with its zone check).  ``x = +-0`` gives ``z = d = +-0``, which every mode keeps.
Everything else is flagged and the caller computes it exactly (``fastfp.div``): a zone
check, different bits (``d`` at or next to a rounding breakpoint), binary64 under/overflow of
the quotient, infinite or NaN ``x``.  Nothing is approximated.  FQ's product ``q * s`` is
fused in where the caller has shown it exact in binary64 (flagged where it is not: the product
leaves binary64's normal range).

Scales: row ``r`` of ``inner`` consecutive elements has ``s[r % C]`` (``C = 1``: one scale
per tensor; else one per channel of an axis with ``inner`` elements after it).
"""

from __future__ import annotations

import math

from numba import njit, prange

from qcompile.backends.mpfr._nb import f2i as _f2i
from qcompile.backends.mpfr._nb import i2f as _i2f
from qcompile.backends.mpfr._nb import rnd as _rnd

_BLK = 2048
TINY = 2.0 ** -1022
INF = math.inf


@njit(cache=True, parallel=True)
def fq_div(x, s, inner, C, ip, fp, mul, out, flag):
    """out[i] = round_F(x[i] / s) (times s where ``mul``: ``q * s`` in binary64, which the
    caller has shown exact unless it leaves binary64's normal range, flagged here), flag[i] = 1
    where the caller must compute it exactly.  Rows of ``inner`` elements share a scale; each
    row is cut into blocks of ``_BLK``.  (A branch-free body that LLVM vectorises was measured
    2x slower: it rounds the zeros a ReLU leaves, half of every activation, which this skips.)"""
    pm, qb, mpos, mneg = ip[0], ip[1], ip[2], ip[3]
    maxf, ovp, ovn, exip, exin, low = fp[0], fp[1], fp[2], fp[3], fp[4], fp[5]
    nsub = (inner + _BLK - 1) // _BLK
    rows = x.size // inner
    for j in prange(rows * nsub):
        row = j // nsub
        sv = s[row % C]
        lo = row * inner + (j - row * nsub) * _BLK
        hi = min(lo + _BLK, (row + 1) * inner)
        for i in range(lo, hi):
            xv = x[i]
            d = xv / sv
            flag[i] = 0
            if xv == 0.0:  # z = d = +-0, which every mode keeps (and q * s = q)
                out[i] = d
                continue
            if not (math.isfinite(xv) and math.isfinite(d)) or d == 0.0:
                flag[i] = 1
                continue
            b = _f2i(d)
            step = 1 if d > 0.0 else -1
            r1, bad1 = _rnd(_i2f(b - step), pm, qb, mpos, mneg, maxf, ovp, ovn, exip, exin,
                            low)
            r2, bad2 = _rnd(_i2f(b + step), pm, qb, mpos, mneg, maxf, ovp, ovn, exip, exin,
                            low)
            if bad1 or bad2 or _f2i(r1) != _f2i(r2):
                flag[i] = 1
            elif mul:
                v = r1 * sv
                out[i] = v
                if not (abs(v) < INF and (abs(v) >= TINY or r1 == 0.0)):
                    flag[i] = 1
            else:
                out[i] = r1
    return out
