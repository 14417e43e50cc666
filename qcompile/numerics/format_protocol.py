"""What every number format is (:class:`NumberFormat`) and what its family knows (:class:`Family`).

A *number format* ``F`` is a value: a finite set of reals (plus, for some families, signed zeros,
infinities and NaN) with a rounding function ``round_F``. It says

* ``name``: its spelling (``"e4m3"``, ``"posit8_1"``, ``"int8"``; ``""`` for a custom float
  format, whose ``spec()`` is the spelling);
* ``bits``: its storage width, or None when it has no encoding (custom float ranges);
* ``max_finite``: ``max{|v| : v in F finite}`` as a binary64 (None if that is not one);
* ``family``: the name of the registry :class:`Family` that parses and rounds it;
* ``group``: the plot series it belongs to (formats that differ only in width, e.g.
  ``"float E=4"``, ``"posit es=1"``, ``"int"``);
* ``spec()``: a spelling that ``parse_any`` maps back to the same format (equal up to ``name``:
  ``b12e4`` reads back from its ``p=..,emin=..`` spec without the name).

A :class:`Family` is one entry of the ordered registry in :mod:`qcompile.numerics.formats`: it
turns a spelling into a format and rounds into its formats. Both rounding engines compute the
same function, bit for bit:

* ``round_fast(fmt, x, mode)``: ``round_F(x)`` elementwise for a float64 array ``x``;
* ``div_fast(fmt, x, s, mode)``: ``round_F(x / s)`` of the *exact* quotient (one rounding),
  elementwise, ``s`` positive float64 broadcast to ``x``;
* ``round_exact(fmt, x, mode)``: ``round_F(x)`` for one exact value ``x`` (float, int, Fraction,
  ``gmpy2.mpfr``/``mpq``), computed from the definition, returned as a float (or an exact
  ``mpfr`` when binary64 cannot hold it);
* ``div_exact(fmt, x, s, mode)``: ``round_F(x / s)`` for two exact scalars, likewise.

The engines live on the family rather than on the format because formats sit below the engines
that consume them (``fastfp`` and ``mpfr_ref`` take a ``FloatFormat``); methods on the format
would make the numerics core import itself in a circle.

This module is the bottom of the registry: it imports nothing of qcompile but the float format's
``Rounding`` and ``FormatError``, so a family's own module can define its :class:`Family`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from qcompile.numerics.float_format import FormatError, Rounding

__all__ = ["NumberFormat", "Family", "FormatError", "ALL_ROUNDINGS"]

ALL_ROUNDINGS = frozenset(Rounding)


@runtime_checkable
class NumberFormat(Protocol):
    """A number format (see the module docstring for what each member means)."""

    @property
    def name(self) -> str: ...

    @property
    def bits(self) -> int | None: ...

    @property
    def max_finite(self) -> float | None: ...

    @property
    def family(self) -> str: ...

    @property
    def group(self) -> str: ...

    def spec(self) -> str: ...


def _same(fmt):
    return fmt


@dataclass(frozen=True)
class Family:
    """A registry entry: how a family's formats are written, parsed and rounded.

    ``parse(text)`` gets the stripped spelling (``parse_any`` lowercases it first) and returns a
    format, None if ``text`` is not a spelling of this family, or raises :class:`FormatError`
    (one line) if it is one but names an impossible format. A ``catch_all`` family claims every
    text the others do not (it never returns None) and is tried after all of them; its errors
    become ``parse_any``'s list of families. ``spellings`` are listed, in registry order, in that
    message; ``examples`` are spellings of a few of its formats (the registry tests round-trip
    them). ``fq``: the family can be used by ``qcompile.FQ`` (and then the four engines and
    ``roundings`` are given); ``amax_scaled``: FQ's amax scaling maps amax onto ``max_finite``
    (False: the tensor is rounded unscaled); ``saturated(fmt)``: the format with every overflow
    clamped to ``+-max_finite`` (the FQ default; ``fmt`` itself if it always saturates).
    """

    name: str
    spellings: tuple[str, ...]
    parse: Callable[[str], Any]
    examples: tuple[str, ...] = ()
    catch_all: bool = False
    fq: bool = True
    roundings: frozenset = field(default=ALL_ROUNDINGS)
    amax_scaled: bool = True
    saturated: Callable[[Any], Any] = _same
    round_fast: Callable | None = None
    round_exact: Callable | None = None
    div_fast: Callable | None = None
    div_exact: Callable | None = None

    def __post_init__(self) -> None:
        if self.fq and None in (self.round_fast, self.round_exact, self.div_fast,
                                self.div_exact):
            raise ValueError(f"family {self.name!r}: an FQ family needs round_fast, "
                             "round_exact, div_fast and div_exact")
        if isinstance(self.spellings, str) or isinstance(self.examples, str):
            raise TypeError(f"family {self.name!r}: spellings and examples are tuples of strings")

    def check_rounding(self, fmt, mode: Rounding) -> None:
        """FormatError unless ``fmt`` rounds in ``mode``."""
        if mode not in self.roundings:
            raise FormatError(f"{fmt} rounds to {self.roundings_text()} only "
                              f"(got rounding={mode.value})")

    def roundings_text(self) -> str:
        return "/".join(m.value for m in Rounding if m in self.roundings)
