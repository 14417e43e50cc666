"""Floating-point formats and rounding modes for the MPFR emulation backend.

A :class:`FloatFormat` describes a binary floating-point format in **MPFR
conventions**: a nonzero finite value is ``x = m * 2**e`` with
``0.5 <= |m| < 1``, ``m`` having ``p`` significant bits, and ``emin <= e <= emax``.

IEEE-style formats (``--bits N --exp-bits E``)
    1 sign bit, ``E`` exponent bits, ``N-1-E`` stored mantissa bits, so the
    precision is ``p = N - E``; ``bias = 2**(E-1) - 1``; the top exponent code
    is reserved for inf/NaN and there is gradual underflow.  In MPFR terms this
    is ``emax = bias + 1`` and ``emin = 3 - bias - p`` together with
    *subnormalization*, exactly as ``gmpy2.ieee(N)`` builds it (``ieee(16)`` is
    p=11, emin=-23, emax=16; ``ieee(32)`` is p=24, emin=-148, emax=128).  With
    subnormalization MPFR's ``emin`` is the exponent of the smallest subnormal:
    min subnormal = ``2**(emin-1)``, min normal = ``2**(emin+p-2)``, and below
    min normal the spacing stays ``2**(emin-1)``.
    ``--exp-bits`` defaults (:func:`default_exp_bits`): 4 for N <= 16, 5 for
    N <= 24, 8 above (literal reading of the product issue; note that this
    makes plain ``--bits 16`` an e4 format, binary16 is ``--bits 16 --exp-bits 5``
    or ``fp16``).

``subnormal=False`` (custom ``p=..,emin=..,emax=..,subnormal=off``)
    plain MPFR: every value with ``emin <= e <= emax`` has the full ``p`` bits,
    the smallest positive value is ``2**(emin-1)`` and there is nothing between
    it and 0.  Underflow follows MPFR (decided *after* rounding to ``p`` bits
    with unbounded exponent): round to nearest gives 0 when
    ``|exact| <= 2**(emin-2)`` and ``+-2**(emin-1)`` otherwise; toward zero
    gives +-0; away gives +-2**(emin-1); up/down give ``+2**(emin-1)`` / ``-0``
    for positive results and ``-0`` / ``-2**(emin-1)`` for negative ones.
    With subnormals (the default) underflow is IEEE gradual underflow: round
    at the fixed spacing ``2**(emin-1)``, a result that rounds to 0 keeps the
    sign of the exact result.

Overflow (MPFR semantics, decided after rounding to ``p`` bits)
    nearest and away -> +-inf; toward zero -> +-max_finite; up -> +inf for
    positive, -max_finite for negative; down -> +max_finite / -inf.
    ``saturate=True`` formats clamp every overflow to +-max_finite (NaN stays
    NaN).  A format without inf (``has_inf=False``) maps an infinite result to
    +-max_finite when saturating, else to NaN (OCP "non-saturating" mode).
    Infinities that are *exact* (an infinite operand, x/0) stay infinite in a
    format with inf.

Named formats
    ``fp32`` (ieee 32/8), ``fp16`` (ieee 16/5), ``bf16`` (ieee 16/8),
    ``e5m2`` (OCP FP8 E5M2 = ieee 8/5, with inf), ``e4m3`` (OCP FP8 E4M3: bias
    7, p=4, no inf, the single all-ones code is NaN, max 448, saturating,
    subnormals: p=4, emin=-8, emax=9 with ``has_nan=True`` meaning the top
    binade loses its last value), ``e2m1`` (OCP MX FP4: p=2, emin=0, emax=3, no
    inf/NaN, max 6, saturating), ``bNeE`` (= ieee N/E, e.g. ``b15e4``), and the
    custom form ``p=11,emin=-8,emax=7,subnormal=off`` (``subnormal`` defaults
    to on, optional ``saturate=on``; ``emin=none,emax=none`` or just ``p=11``
    is the MPFR default, practically *unbounded* exponent range, stored as
    ``emin = emax = None``).

Rounding modes: :class:`Rounding` (nearest = ties to even, up = toward +inf,
down = toward -inf, zero, away), mapping 1:1 to gmpy2's RoundToNearest,
RoundUp, RoundDown, RoundToZero, RoundAwayZero (see ``Rounding.gmpy2_name``).

This module is pure Python (no gmpy2 import) and the lowest of the numerics core:
``mpfr_ref`` builds the gmpy2 contexts and ``fastfp`` the vectorised numpy engine on top of it,
and :mod:`qcompile.numerics.formats` (the public import path, with the registry of every
number-format family) re-exports it.
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import ClassVar

__all__ = [
    "FormatError",
    "FloatFormat",
    "Rounding",
    "default_exp_bits",
    "parse_format",
    "MPFR_EMIN_MIN",
    "MPFR_EMAX_MAX",
    "MAX_EXPONENT",
]

# MPFR's exponent limits on 64-bit builds (mpfr_get_emin_min / mpfr_get_emax_max).
MPFR_EMIN_MIN = 1 - 2**62
MPFR_EMAX_MAX = 2**62 - 1
# MPFR's default exponent range (what an "unbounded" format runs with).
MPFR_DEFAULT_EMIN = 1 - 2**30
MPFR_DEFAULT_EMAX = 2**30 - 1
MAX_BITS = 64
MAX_PRECISION = 64
# Largest |emin|, |emax| accepted: MPFR takes up to 2**62, but the exact rational bounds
# (max_finite_exact = m * 2**emax, quanta) are Python integers of |e| bits, so 2**20 keeps
# them under a megabit (binary256 needs 2**18); 10**11 would take minutes and gigabytes.
MAX_EXPONENT = 2**20


class FormatError(ValueError):
    """An impossible or unparsable floating-point format (one-line message)."""


def _fail(msg: str) -> FormatError:
    return FormatError(" ".join(str(msg).split()))


class Rounding(enum.Enum):
    """IEEE/MPFR rounding-direction attributes."""

    NEAREST = "nearest"  # ties to even (MPFR_RNDN)
    UP = "up"  # toward +inf (MPFR_RNDU)
    DOWN = "down"  # toward -inf (MPFR_RNDD)
    ZERO = "zero"  # toward zero (MPFR_RNDZ)
    AWAY = "away"  # away from zero (MPFR_RNDA)

    @property
    def gmpy2_name(self) -> str:
        """Name of the matching gmpy2 constant (``getattr(gmpy2, mode.gmpy2_name)``)."""
        return _GMPY2_NAMES[self]

    @classmethod
    def parse(cls, s: "str | Rounding") -> "Rounding":
        if isinstance(s, Rounding):
            return s
        key = str(s).strip().lower().replace("-", "_").replace(" ", "_")
        try:
            return _ROUNDING_ALIASES[key]
        except KeyError:
            raise _fail(
                f"unknown rounding mode {s!r} (expected one of: nearest, up, down, zero, away)"
            ) from None

    def __str__(self) -> str:  # pragma: no cover - cosmetic
        return self.value


_GMPY2_NAMES = {
    Rounding.NEAREST: "RoundToNearest",
    Rounding.UP: "RoundUp",
    Rounding.DOWN: "RoundDown",
    Rounding.ZERO: "RoundToZero",
    Rounding.AWAY: "RoundAwayZero",
}

_ROUNDING_ALIASES = {}
for _m, _names in {
    Rounding.NEAREST: ("nearest", "n", "rn", "rne", "rndn", "nearest_even", "ties_to_even",
                       "tie_even", "roundtonearest", "even"),
    Rounding.UP: ("up", "u", "ru", "rndu", "ceil", "ceiling", "toward_positive", "towardpositive",
                  "+inf", "roundup"),
    Rounding.DOWN: ("down", "d", "rd", "rndd", "floor", "toward_negative", "towardnegative",
                    "-inf", "rounddown"),
    Rounding.ZERO: ("zero", "z", "rz", "rndz", "trunc", "truncate", "toward_zero", "towardzero",
                    "chop", "roundtozero"),
    Rounding.AWAY: ("away", "a", "ra", "rnda", "away_from_zero", "awayfromzero", "roundawayzero"),
}.items():
    for _n in _names:
        _ROUNDING_ALIASES[_n] = _m


def default_exp_bits(bits: int) -> int:
    """Default ``--exp-bits``: 4 up to 16 bits, 5 up to 24 bits, 8 above."""
    if bits <= 16:
        return 4
    if bits <= 24:
        return 5
    return 8


def _pow2_float(e: int) -> float | None:
    """2**e as a float64, or None if not exactly representable."""
    if e < -1074 or e > 1023:
        return None
    return math.ldexp(1.0, e)


def _frac_to_float(x: Fraction) -> float | None:
    """Exact conversion of a dyadic Fraction to float64, or None if inexact/out of range."""
    try:
        f = float(x)
    except OverflowError:
        return None
    if math.isinf(f) or Fraction(f) != x:
        return None
    return f


@dataclass(frozen=True)
class FloatFormat:
    """A binary floating-point format in MPFR conventions (see module docstring).

    ``emin``/``emax`` are MPFR exponents (``x = m * 2**e``, ``0.5 <= |m| < 1``);
    both ``None`` means the MPFR default ("unbounded") exponent range.
    ``has_nan`` only matters when ``has_inf`` is False: then True means the
    all-ones code of the top binade is NaN (OCP E4M3, max = (1 - 2**(1-p)) *
    2**emax) and False means there is no NaN code (OCP E2M1, max =
    (1 - 2**-p) * 2**emax; such a format must saturate).
    """

    p: int
    emin: int | None
    emax: int | None
    subnormal: bool = True
    saturate: bool = False
    has_inf: bool = True
    name: str = ""
    has_nan: bool = True
    family: ClassVar[str] = "float"  # the registry family (qcompile.numerics.formats)

    def __post_init__(self) -> None:
        p, emin, emax = self.p, self.emin, self.emax
        if isinstance(p, bool) or not isinstance(p, int):
            raise _fail(f"precision p must be an integer, got {p!r}")
        if p < 2:
            raise _fail(f"impossible format: precision p={p} < 2")
        if p > MAX_PRECISION:
            raise _fail(f"impossible format: precision p={p} > {MAX_PRECISION}")
        if (emin is None) != (emax is None):
            raise _fail("emin and emax must both be set or both be None (unbounded)")
        if emin is not None:
            for nm, v in (("emin", emin), ("emax", emax)):
                if isinstance(v, bool) or not isinstance(v, int):
                    raise _fail(f"{nm} must be an integer, got {v!r}")
            if emin > emax:
                raise _fail(f"impossible format: emin={emin} > emax={emax}")
            if emin < MPFR_EMIN_MIN or emax > MPFR_EMAX_MAX:
                raise _fail(f"impossible format: exponent range [{emin}, {emax}] exceeds MPFR's")
            for nm, v in (("emin", emin), ("emax", emax)):
                if not -MAX_EXPONENT <= v <= MAX_EXPONENT:
                    raise _fail(f"format field {nm}={v} is outside the supported range "
                                f"[-{MAX_EXPONENT}, {MAX_EXPONENT}]; give a smaller exponent "
                                "range, or emin=none,emax=none for MPFR's default range")
            if self.subnormal and emax < emin + p - 1:
                raise _fail(
                    f"impossible format: with subnormals the top binade 2^{emax} has fewer than "
                    f"p={p} bits (need emax >= emin + p - 1 = {emin + p - 1})")
        if not self.has_inf and not self.has_nan and not self.saturate:
            raise _fail("a format without inf and NaN must saturate")
        if not self.has_inf and emin is None:
            raise _fail("an unbounded format always has inf")

    # ------------------------------------------------------------------ constructors
    @classmethod
    def ieee(cls, bits: int, exp_bits: int | None = None, name: str = "") -> "FloatFormat":
        """IEEE-754-style binary format: 1 sign bit, ``exp_bits`` exponent bits."""
        if isinstance(bits, bool) or not isinstance(bits, int):
            raise _fail(f"--bits must be an integer, got {bits!r}")
        if exp_bits is None:
            exp_bits = default_exp_bits(bits)
        if isinstance(exp_bits, bool) or not isinstance(exp_bits, int):
            raise _fail(f"--exp-bits must be an integer, got {exp_bits!r}")
        if bits > MAX_BITS:
            raise _fail(f"impossible format: --bits {bits} > {MAX_BITS}")
        if exp_bits < 2:
            raise _fail(f"impossible format: --exp-bits {exp_bits} < 2")
        p = bits - exp_bits
        if p < 2:
            raise _fail(
                f"impossible format: --bits {bits} --exp-bits {exp_bits} leaves precision "
                f"p={p} < 2 (needs at least one stored mantissa bit)")
        bias = 2 ** (exp_bits - 1) - 1
        return cls(p=p, emin=3 - bias - p, emax=bias + 1, subnormal=True, saturate=False,
                   has_inf=True, name=name or f"b{bits}e{exp_bits}")

    @classmethod
    def unbounded(cls, p: int, name: str = "") -> "FloatFormat":
        """Precision ``p`` with MPFR's default (practically unbounded) exponent range."""
        return cls(p=p, emin=None, emax=None, subnormal=False, name=name or f"p{p}-unbounded")

    @classmethod
    def named(cls, name: str) -> "FloatFormat":
        key = str(name).strip().lower().replace("-", "_")
        if key in _NAMED:
            return _NAMED[key]()
        m = re.fullmatch(r"b(\d+)(?:e(\d+))?", key)
        if m:
            return cls.ieee(int(m.group(1)), None if m.group(2) is None else int(m.group(2)))
        raise _fail(f"unknown float format {name!r} (known: {', '.join(sorted(_NAMED))}, bNeE, "
                    f"or p=..,emin=..,emax=..,subnormal=on|off)")

    # ------------------------------------------------------------------ properties
    @property
    def bounded(self) -> bool:
        return self.emin is not None

    @property
    def qmin_exp(self) -> int | None:
        """log2 of the quantum of the smallest values (every value is a multiple of it)."""
        if self.emin is None:
            return None
        return self.emin - 1 if self.subnormal else self.emin - self.p

    @property
    def max_finite_exact(self) -> Fraction | None:
        if self.emax is None:
            return None
        if not self.has_inf and self.has_nan:
            m = Fraction(2**self.p - 2, 2**self.p)  # last code of the top binade is NaN
        else:
            m = Fraction(2**self.p - 1, 2**self.p)
        return m * Fraction(2) ** self.emax

    @property
    def max_finite(self) -> float | None:
        """Largest finite value as a float (None if not representable in float64)."""
        m = self.max_finite_exact
        return None if m is None else _frac_to_float(m)

    @property
    def min_normal(self) -> float | None:
        """Smallest positive value with full precision p (None if unbounded/unrepresentable)."""
        if self.emin is None:
            return None
        return _pow2_float(self.emin + self.p - 2 if self.subnormal else self.emin - 1)

    @property
    def min_subnormal(self) -> float | None:
        """Smallest positive value (= min_normal when subnormal=False)."""
        if self.emin is None:
            return None
        return _pow2_float(self.emin - 1)

    @property
    def bits(self) -> int | None:
        """Storage width when this is an IEEE-like (or OCP-like) encoding, else None."""
        if self.emin is None or not self.subnormal:
            return None
        # IEEE-like: emax = bias + 1 (top code reserved) ; OCP-like without inf: emax = bias + 2
        bias = self.emax - 1 if self.has_inf else self.emax - 2
        if bias < 1 or (bias + 1) & bias:
            return None
        e_bits = (bias + 1).bit_length()  # bias = 2**(E-1) - 1
        if self.emin != 3 - bias - self.p:
            return None
        n = 1 + e_bits + self.p - 1
        return n if n <= MAX_BITS else None

    @property
    def exp_bits(self) -> int | None:
        b = self.bits
        return None if b is None else b - self.p

    @property
    def group(self) -> str:
        """Plot series: the float formats with the same number of exponent bits."""
        return f"float E={self.exp_bits}"

    def spec(self) -> str:
        """A string that :func:`parse_format` maps back to an equal format."""
        if self.name and self.name in _NAMED and _NAMED[self.name]() == self:
            return self.name
        if self.emin is None:
            return f"p={self.p},emin=none,emax=none"
        s = f"p={self.p},emin={self.emin},emax={self.emax},subnormal={'on' if self.subnormal else 'off'}"
        if self.saturate:
            s += ",saturate=on"
        if not self.has_inf:
            s += ",inf=off"
            if not self.has_nan:
                s += ",nan=off"
        return s

    def describe(self) -> str:
        parts = [self.name or "custom", f"p={self.p}"]
        b = self.bits
        if b is not None:
            parts.append(f"({b} bits: 1 sign, {b - self.p} exp, {self.p - 1} mantissa)")
        if self.emin is None:
            parts.append("unbounded exponent (MPFR default range)")
        else:
            parts.append(f"emin={self.emin} emax={self.emax} (MPFR convention)")
            parts.append("subnormals" if self.subnormal else "no subnormals")
            mf = self.max_finite
            mf_s = f"{mf:.6g}" if mf is not None else f"(1-2^-{self.p})*2^{self.emax}"
            parts.append(f"max {mf_s}")
            mn = self.min_normal
            parts.append(f"min normal {mn:.6g}" if mn is not None else "min normal <2^-1074")
            if self.subnormal:
                ms = self.min_subnormal
                parts.append(f"min subnormal {ms:.6g}" if ms is not None else "min subnormal <2^-1074")
        if self.has_inf:
            parts.append("inf/NaN")
        elif self.has_nan:
            parts.append("no inf, NaN")
        else:
            parts.append("no inf/NaN")
        if self.saturate:
            parts.append("saturating")
        return ", ".join(parts)

    def __str__(self) -> str:
        return self.name or self.spec()


def _e4m3() -> FloatFormat:
    return FloatFormat(p=4, emin=-8, emax=9, subnormal=True, saturate=True, has_inf=False,
                       name="e4m3", has_nan=True)


def _e2m1() -> FloatFormat:
    return FloatFormat(p=2, emin=0, emax=3, subnormal=True, saturate=True, has_inf=False,
                       name="e2m1", has_nan=False)


_NAMED = {
    "fp32": lambda: FloatFormat.ieee(32, 8, name="fp32"),
    "fp16": lambda: FloatFormat.ieee(16, 5, name="fp16"),
    "bf16": lambda: FloatFormat.ieee(16, 8, name="bf16"),
    "e5m2": lambda: FloatFormat.ieee(8, 5, name="e5m2"),
    "e4m3": _e4m3,
    "e2m1": _e2m1,
}
for _alias, _target in {
    "float32": "fp32", "binary32": "fp32", "single": "fp32",
    "float16": "fp16", "binary16": "fp16", "half": "fp16",
    "bfloat16": "bf16",
    "fp8_e4m3": "e4m3", "fp8e4m3": "e4m3", "e4m3fn": "e4m3", "fp8_e4m3fn": "e4m3",
    "fp8_e5m2": "e5m2", "fp8e5m2": "e5m2",
    "fp4": "e2m1", "fp4_e2m1": "e2m1", "fp4e2m1": "e2m1",
}.items():
    _NAMED[_alias] = _NAMED[_target]

_ONOFF = {"on": True, "off": False, "true": True, "false": False, "1": True, "0": False,
          "yes": True, "no": False}


def _parse_custom(spec: str) -> FloatFormat:
    fields: dict[str, str] = {}
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        if "=" not in item:
            raise _fail(f"bad format field {item!r} in {spec!r} (expected key=value)")
        k, v = (t.strip().lower() for t in item.split("=", 1))
        if k in fields:
            raise _fail(f"duplicate field {k!r} in format {spec!r}")
        fields[k] = v
    known = {"p", "emin", "emax", "subnormal", "saturate", "inf", "nan"}
    unknown = set(fields) - known
    if unknown:
        raise _fail(f"unknown field(s) {', '.join(sorted(unknown))} in format {spec!r} "
                    f"(expected p, emin, emax, subnormal, saturate)")
    if "p" not in fields:
        raise _fail(f"format {spec!r} lacks p=")

    def _int(k: str) -> int | None:
        v = fields[k]
        if v in ("none", "unbounded", "default"):
            return None
        try:
            return int(v, 0)
        except ValueError:
            raise _fail(f"format field {k}={v!r} is not an integer") from None

    def _flag(k: str, default: bool) -> bool:
        if k not in fields:
            return default
        try:
            return _ONOFF[fields[k]]
        except KeyError:
            raise _fail(f"format field {k}={fields[k]!r} must be on or off") from None

    p = _int("p")
    if p is None:
        raise _fail(f"format {spec!r}: p must be an integer")
    emin = _int("emin") if "emin" in fields else None
    emax = _int("emax") if "emax" in fields else None
    if (emin is None) != (emax is None):
        raise _fail(f"format {spec!r}: give both emin and emax (or neither for the MPFR default range)")
    if emin is None:
        return FloatFormat.unbounded(p, name="")
    return FloatFormat(p=p, emin=emin, emax=emax, subnormal=_flag("subnormal", True),
                       saturate=_flag("saturate", False), has_inf=_flag("inf", True),
                       has_nan=_flag("nan", True), name="")


def parse_format(spec: "str | FloatFormat") -> FloatFormat:
    """Parse a named format, ``bNeE``, or ``p=..,emin=..,emax=..,subnormal=on|off``."""
    if isinstance(spec, FloatFormat):
        return spec
    if not isinstance(spec, str):
        raise _fail(f"format spec must be a string, got {type(spec).__name__}")
    s = spec.strip()
    if not s:
        raise _fail("empty format spec")
    if "=" in s:
        return _parse_custom(s)
    return FloatFormat.named(s)
