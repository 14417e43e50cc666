"""Every number format by name: the ordered registry of format families and the one parser.

The registry is a list of :class:`~qcompile.numerics.format_protocol.Family` entries, in this
order: integer types (``int2``..``int32``, ``uint4``..``uint16``; :mod:`~qcompile.numerics.quant`),
floats (:mod:`~qcompile.numerics.float_format`: ``fp32``, ``fp16``, ``bf16``, ``e5m2``,
``e4m3``, ``e2m1``, ``bNeE``, ``p=..,emin=..,emax=..``), posits (``posit8_1``, ``posit(16,1)``;
:mod:`~qcompile.numerics.posit`). :func:`parse_any` tries every family except the catch-all
(floats) in that order, then the catch-all; the first that accepts the text wins.
:func:`parse_fq` is the same walk over the families ``qcompile.FQ`` can round into.

A new family: write its formats and its ``Family`` in its own module, then add it to
``_REGISTRY`` below (or, e.g. in a test, call :func:`register`).

The floats' entry lives here: ``FloatFormat`` sits below its engines (``fastfp``: vectorised,
``mpfr_ref``: gmpy2), so this module, above both, binds them. It also re-exports the float format
API (this is its public import path: ``from qcompile.numerics.formats import FloatFormat``).
"""

from __future__ import annotations

from dataclasses import replace

from qcompile.numerics import fastfp, mpfr_ref, posit, quant
from qcompile.numerics.float_format import (
    MPFR_EMAX_MAX,
    MPFR_EMIN_MIN,
    FloatFormat,
    FormatError,
    Rounding,
    default_exp_bits,
    parse_format,
)
from qcompile.numerics.format_protocol import Family, NumberFormat

__all__ = [
    "FormatError", "FloatFormat", "Rounding", "default_exp_bits", "parse_format",
    "MPFR_EMIN_MIN", "MPFR_EMAX_MAX", "NumberFormat", "Family", "FLOAT_FAMILY", "register",
    "unregister", "families", "family_of", "spellings", "parse_any", "parse_fq", "format_bits",
]


def _fail(msg: str) -> FormatError:
    return FormatError(" ".join(str(msg).split()))


# ------------------------------------------------------------------ the float family
def _float_saturated(fmt: FloatFormat) -> FloatFormat:
    """Overflow clamps to +-max_finite (a bounded format that does not saturate already)."""
    return replace(fmt, saturate=True) if fmt.bounded and not fmt.saturate else fmt


FLOAT_FAMILY = Family(
    name="float",
    spellings=("fp32/fp16/bf16/e5m2/e4m3/e2m1 (fp4)", "bNeE (e.g. b12e4)",
               "p=..,emin=..,emax=..[,subnormal=on|off]"),
    examples=("fp32", "fp16", "bf16", "e5m2", "e4m3", "e2m1", "b12e4", "b6e3",
              "p=11,emin=-8,emax=7,subnormal=off", "p=8,emin=-6,emax=9,saturate=on", "p=20"),
    parse=parse_format, catch_all=True, saturated=_float_saturated,
    round_fast=lambda fmt, x, mode: fastfp.round_to(x, fmt, mode),
    round_exact=lambda fmt, x, mode: mpfr_ref.ref_round(x, fmt, mode),
    div_fast=lambda fmt, x, s, mode: fastfp.div(x, s, fmt, mode),
    div_exact=lambda fmt, x, s, mode: mpfr_ref.ref_div(x, s, fmt, mode),
)

# ------------------------------------------------------------------ the registry
_REGISTRY: list[Family] = [quant.FAMILY, FLOAT_FAMILY, posit.FAMILY]


def families() -> tuple[Family, ...]:
    """The registered families, in registry (listing) order."""
    return tuple(_REGISTRY)


def register(family: Family) -> Family:
    """Append ``family`` to the registry (tried before the catch-all); returns it."""
    if any(f.name == family.name for f in _REGISTRY):
        raise ValueError(f"a number-format family named {family.name!r} is registered already")
    _REGISTRY.append(family)
    return family


def unregister(name: str) -> None:
    """Remove the family called ``name`` (KeyError if there is none)."""
    for i, f in enumerate(_REGISTRY):
        if f.name == name:
            del _REGISTRY[i]
            return
    raise KeyError(name)


def family_of(fmt) -> Family:
    """The registered family of a format (by its ``family`` attribute)."""
    name = getattr(fmt, "family", None)
    for f in _REGISTRY:
        if f.name == name:
            return f
    raise FormatError(f"{fmt!r} is not a format of a registered family")


def spellings() -> tuple[str, ...]:
    """How the formats of every family are written, in registry order."""
    return tuple(s for f in _REGISTRY for s in f.spellings)


def _walk(fq_only: bool):
    fams = [f for f in _REGISTRY if f.fq or not fq_only]
    return [f for f in fams if not f.catch_all] + [f for f in fams if f.catch_all]


def _unknown(spec) -> FormatError:
    return _fail(f"unknown number format {spec!r}; valid families: " + "; ".join(spellings()))


def parse_any(spec: str):
    """One parser for every format name: an integer :class:`~qcompile.numerics.quant.QType`
    (``int4``, ``uint8``), a :class:`FloatFormat`, a :class:`~qcompile.numerics.posit.PositFormat`
    or a format of any other registered family. FormatError (one line) otherwise: the family's
    own message if the text is its spelling, else the list of families."""
    s = str(spec).strip().lower()
    for fam in _walk(fq_only=False):
        try:
            fmt = fam.parse(s)
        except FormatError as e:
            if fam.catch_all:
                raise _unknown(spec) from None
            raise _fail(str(e)) from None
        if fmt is not None:
            return fmt
    raise _unknown(spec)


def parse_fq(spec: str, *, saturate: bool = True):
    """The format ``spec`` for ``qcompile.FQ``: the :func:`parse_any` walk over the FQ families
    (not the integer types), errors as each family words them (the catch-all's for unknown
    text). ``saturate``: overflow gives +-max_finite instead of inf (the family's
    ``saturated``)."""
    s = str(spec).strip()
    for fam in _walk(fq_only=True):
        fmt = fam.parse(s)
        if fmt is not None:
            return fam.saturated(fmt) if saturate else fmt
    raise _unknown(spec)


def format_bits(fmt) -> int | None:
    """Storage bits of any format from :func:`parse_any` (None: custom float, no encoding)."""
    return fmt.bits


def __getattr__(name: str):
    if name == "FAMILIES":  # the listing as it is now (families may be registered later)
        return spellings()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
