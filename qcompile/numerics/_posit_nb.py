"""numba form of :func:`qcompile.numerics.posit.round_to`: the same integer steps, one element
at a time, in parallel over the elements.

The numpy form evaluates both branches of every ``np.where`` on whole arrays (about 0.5 us per
element: ``qcompile.FQ`` into a posit was ~90% of a posit study's emulation time); here each
element takes only its own branch, which changes nothing in the result: every value the numpy
form keeps is computed here by the same int64 operations in the same order (wrap-around
included), and the values it discards are not computed.  ``tests/numerics/test_posit_nb.py``
checks the two forms bit for bit on random, boundary, tie and special inputs for many (n, es).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange


_FRAC = (1 << 52) - 1


@njit(cache=True, inline="always")
def _pattern(x, b, n, es, max_scale, nar):
    """``b``: the bits of ``x``; ``s`` and ``fr`` read from them are frexp's ``ex - 1`` and
    ``ldexp(m, 53) - 2**52`` for a normal ``x`` (frexp itself for a subnormal one)."""
    be = (b >> 52) & 0x7FF
    if be == 0x7FF:
        return np.int64(nar)
    if x == 0.0:
        return np.int64(0)
    nb = n - 1
    if be == 0:
        m, ex = math.frexp(abs(x))
        s = np.int64(ex) - 1
        fr = np.int64(math.ldexp(m, 53)) - (np.int64(1) << 52)
    else:
        s = be - 1023
        fr = b & _FRAC
    k = s >> es
    e = s - (k << es)
    if k >= 0:
        rlen = k + 2
        R = ((np.int64(1) << min(max(k + 1, 0), 62)) - 1) << 1
    else:
        rlen = 1 - k
        R = np.int64(1)
    rlen_c = min(max(rlen, 2), nb)
    head = (R << es) | e
    F = nb - rlen_c - es
    if F >= 0:
        Fp = min(F, 52)
        sh = 52 - Fp
        q = (head << Fp) | (fr >> sh)
        rem = fr & ((np.int64(1) << sh) - 1)
        half = np.int64(1) << (sh - 1)
        if rem > half or (rem == half and (q & 1) == 1):
            q += 1
    else:
        Fn = min(max(-F, 1), 62)
        q = head >> Fn
        rh = head & ((np.int64(1) << Fn) - 1)
        hh = np.int64(1) << (Fn - 1)
        if rh > hh or (rh == hh and (fr > 0 or (q & 1) == 1)):
            q += 1
    maxp = (np.int64(1) << nb) - 1
    if s >= max_scale:
        q = maxp
    if s < -max_scale:
        q = np.int64(1)
    q = min(max(q, np.int64(1)), maxp)
    if x < 0:
        return (-q) & ((np.int64(1) << n) - 1)
    return q


_NAN_BITS = 0x7FF8000000000000  # np.nan's bits, as the numpy form writes NaR


@njit(cache=True, inline="always")
def _decode(p, n, es, nar):
    """The bits of the value of pattern ``p``: ``2**((k << es) + e) (1 + f 2**-fb)`` is a
    normal binary64 (scale within +-240, fb <= 29 fraction bits), so its exponent field is
    ``(k << es) + e + 1023`` and its fraction ``f << (52 - fb)``, which is what ldexp gives."""
    p = p & ((np.int64(1) << n) - 1)
    if p == 0:
        return np.int64(0)
    if p == nar:
        return np.int64(_NAN_BITS)
    nb = n - 1
    neg = ((p >> nb) & 1) == 1
    mag = ((-p) & ((np.int64(1) << n) - 1)) if neg else p
    r0 = (mag >> (nb - 1)) & 1
    body = mag & ((np.int64(1) << nb) - 1)
    inv = ((~body) & ((np.int64(1) << nb) - 1)) if r0 == 1 else body
    bitlen = np.int64(math.frexp(float(inv))[1]) if inv > 0 else np.int64(0)
    m = nb - bitlen
    k = m - 1 if r0 == 1 else -m
    rb = max(nb - m - 1, 0)
    eb = min(rb, es)
    fb = rb - eb
    e = ((mag >> fb) & ((np.int64(1) << eb) - 1)) << (es - eb)
    f = mag & ((np.int64(1) << fb) - 1)
    bits = (((k << es) + e + 1023) << 52) | (f << (52 - fb))
    return bits | (np.int64(1) << 63) if neg else bits


@njit(cache=True, parallel=True)
def _round_bits(x, xb, n, es, max_scale, nar):
    out = np.empty(x.size, np.int64)
    for i in prange(x.size):
        out[i] = _decode(_pattern(x[i], xb[i], n, es, max_scale, nar), n, es, nar)
    return out


def round_to(x, n, es, max_scale, nar):
    """``decode(round_pattern(x))`` of a flat contiguous float64 array (posit(n, es), n <= 32,
    es <= 3)."""
    return _round_bits(x, x.view(np.int64), n, es, max_scale, nar).view(np.float64)
