"""numba kernel of ``qcompile.FQ`` into a float format under a scale: ``q = round_F(x / s)``
of the exact quotient, one element per iteration, in parallel.

``z = x / s`` lies strictly between ``d-`` and ``d+``, the binary64 neighbours of
``d = fl(x / s)`` (the error of one binary64 division is at most half the spacing on either
side, also at a binade edge and in the subnormal range).  Rounding into ``F`` is
non-decreasing in every mode, so when no rounding breakpoint of ``F`` lies in ``[d-, d+]``,
``round_F(d)`` is ``round_F(z)`` (``_nb._rnd``'s rounding, written here with selects only so
that LLVM vectorises the loop: 3x faster than a branching loop on a ReLU's output).  In
``F``'s quanta at ``d``, ``t = |d| / quantum`` is exact and ``d-+`` are within
``ulp(t) < t 2**-51`` of it; the breakpoints are the halves (nearest) or the integers (the
other modes).
``x = +-0`` gives ``z = d = +-0``, which every mode keeps.
Everything else is flagged and the caller computes it exactly (``fastfp.div``): a zone
check, ``d`` at or next to a rounding breakpoint, binary64 under/overflow of
the quotient, infinite or NaN ``x``.  Nothing is approximated.  FQ's product ``q * s`` is
fused in where the caller has shown it exact in binary64 (flagged where it is not: the product
leaves binary64's normal range).

Scales: row ``r`` of ``inner`` consecutive elements has ``s[r % C]`` (``C = 1``: one scale
per tensor; else one per channel of an axis with ``inner`` elements after it).
"""

from __future__ import annotations

import math

from numba import njit, prange

from qcompile.backends.mpfr._nb import EXP, INV, SIGN, TWO52
from qcompile.backends.mpfr._nb import f2i as _f2i
from qcompile.backends.mpfr._nb import i2f as _i2f

_BLK = 2048
TINY = 2.0 ** -1022
INF = math.inf
M51 = 2.0 ** -51


@njit(cache=True, parallel=True)
def fq_div(x, s, inner, C, ip, fp, mul, out, flag):
    """out[i] = round_F(x[i] / s) (times s where ``mul``: ``q * s`` in binary64, which the
    caller has shown exact unless it leaves binary64's normal range, flagged here), flag[i] = 1
    where the caller must compute it exactly.  Rows of ``inner`` elements share a scale; each
    row is cut into blocks of ``_BLK``.  ``out`` must not share ``x``'s page offset
    (``common.empty_apart``): 4K aliasing made this loop 2.5x slower."""
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
            a = abs(d)
            bd = _f2i(d)
            neg = bd < 0
            qe = (bd & EXP) - pm  # _nb._rnd's rounding, written with selects only
            qq = qe if qe > qb else qb
            t = a * _i2f(INV - qq)  # |d| in quanta of F at d: exact (a power of two)
            rn = (t + TWO52) - TWO52
            mm = mneg if neg else mpos
            rm = rn - 1.0 if (mm == 1) & (rn > t) else rn
            rm = rn + 1.0 if (mm == 2) & (rn < t) else rm
            r = _i2f(_f2i(rm * _i2f(qq)) | (bd & SIGN))
            ra = abs(r)
            r = (ovn if neg else ovp) if ra > maxf else r
            # d- and d+ lie within ulp(t) < marg of t: the same rounding unless a breakpoint
            # (a half for nearest, an integer for the others) is that close
            near = abs(abs(t - rn) - (0.5 if mm == 0 else 0.0)) <= t * M51
            ok = ((abs(xv) < INF) & (a < INF) & (a >= TINY) & (not near)
                  & (_i2f(_f2i(a) - 1) >= low) & (not ((ra == INF) & (maxf == INF))))
            v = r * sv if mul else r
            if mul:
                ok = ok & ((abs(v) >= TINY) | (r == 0.0)) & (abs(v) < INF)
            zero = xv == 0.0  # z = d = +-0, which every mode keeps (and q * s = q)
            out[i] = d if zero else v
            flag[i] = 0 if (ok | zero) else 1
    return out
