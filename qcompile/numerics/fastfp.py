"""Fast vectorised (numpy, binary64) arithmetic in a :class:`FloatFormat`.

Every function here returns, element for element and bit for bit, what the
gmpy2 reference (:mod:`qcompile.numerics.mpfr_ref`) returns for the same
binary64 operands, format and rounding mode, including signed zeros, NaN,
infinities, overflow/saturation and (gradual or MPFR-style) underflow.

Why this is exact
-----------------
* ``round_to`` rounds a binary64 value, which is exact input, so all modes are
  plain correct rounding: scale by the quantum (a power of two built on the
  int64 view), round to an integer with rint/floor/ceil/trunc, scale back
  (see ``_fastfp_core``).
* Arithmetic is reduced to ``round_to`` of a binary64 *proxy* ``v`` of the
  exact result ``z``.  Round-to-nearest double rounding is innocuous when the
  intermediate precision is large enough: for operands with p-bit significands,
  ``round_p(RN53(z)) == round_p(z)`` if ``53 >= 2p`` for * and /, ``53 >= 2p+1``
  for + and -, ``53 >= 2p+2`` for sqrt (S. A. Figueroa, "When is double rounding
  innocuous?", SIGNUM 1995; P. Roux, "Innocuous double rounding of basic
  arithmetic operations", JFR 2014), i.e. p <= 26 (25 for sqrt).  Directed modes
  are *not* safe that way (RN53 may land on a p-bit value), and neither is
  nearest for operands that are not p-bit values.  The general method therefore
  uses *round to odd* (Boldo & Melquiond, "Emulation of FMA and correctly
  rounded sums: proved algorithms using rounding to odd", IEEE TC 2008):
  ``v = RO53(z)`` satisfies ``round_p(v) == round_p(z)`` for every mode whenever
  ``p + 2 <= 53``, and it also preserves comparisons with the (p+1)-bit
  thresholds used for overflow/underflow.  RO53(z) is obtained from ``s = RN53(z)``
  and the sign of the exact error ``z - s``:

  - ``+``/``-``: TwoSum (Knuth) gives the error exactly;
  - ``*``: the product of two p <= 26 bit values is exact in binary64; for other
    operands Dekker's TwoProduct with Veltkamp splitting (numpy has no fma);
  - ``/``: the remainder ``a - q*b`` of ``q = RN(a/b)`` is exact (TwoProduct);
    its sign times sign(b) is the sign of ``a/b - q``;
  - ``sqrt``: likewise ``a - q*q``;
  - ``fma``: TwoProduct then TwoSum-based accumulation of ``ph + pl + c``.

  Shortcuts used when the operands are known to be values of the format
  (``assume_in_format=True``, ``mac_step``, ``dot``): exact products; sums that
  are exact in binary64 because the format's whole range spans <= 53 bits
  (fp16, e5m2, e4m3, e2m1); the Figueroa nearest-mode cases above.
* Where binary64 cannot hold the residual (operands beyond 2**995 or products
  below 2**-960, operands outside [2**-480, 2**480] for division, sqrt of values
  outside [2**-900, 2**900], formats whose quantum is a binary64 subnormal) the
  affected elements are computed by the gmpy2 reference, element by element.
  For p > 51 (round-to-odd needs p + 2 <= 53) the arithmetic functions use the
  reference for the whole array (``round_to`` stays fast: it is exact for any p).
  If a reference result is not representable in binary64 (unbounded exponent
  ranges, p > 53) :class:`NotExact` is raised; nothing is silently approximated.

Operands may be any binary64 values unless a function says otherwise; arrays
broadcast; ``out=`` may alias an operand.  Work proceeds in cache-sized blocks.
"""

from __future__ import annotations

from qcompile.numerics._fastfp_core import NotExact
from qcompile.numerics._fastfp_dot import dot
from qcompile.numerics._fastfp_ops import (
    accumulate_step,
    add,
    div,
    fma,
    is_representable,
    mac_step,
    mul,
    round_to,
    sqrt,
    sub,
)

__all__ = [
    "NotExact",
    "round_to",
    "add",
    "sub",
    "mul",
    "div",
    "sqrt",
    "fma",
    "accumulate_step",
    "mac_step",
    "dot",
    "is_representable",
]
