"""What an emulation computes: arithmetic format and rounding, conversion format and rounding,
accumulation rule.  Shared by both engines; see ``qcompile.backends.mpfr`` for the semantics."""

from __future__ import annotations

from dataclasses import dataclass, replace

from qcompile.errors import OptionError
from qcompile.numerics.formats import FloatFormat, FormatError, Rounding, parse_format

ACCUMULATE = ("sequential", "fma", "exact")
COMPAT = ("qresnet",)


@dataclass(frozen=True)
class EmuConfig:
    """``fmt``/``rounding``: every arithmetic result; ``convert_fmt``/``convert_rounding``:
    inputs, weights and constants (converted once, before any arithmetic)."""

    fmt: FloatFormat
    rounding: Rounding = Rounding.NEAREST
    convert_fmt: FloatFormat | None = None
    convert_rounding: Rounding | None = None
    accumulate: str = "sequential"
    gemm_bias_first: bool = False
    compat: str = ""

    def __post_init__(self) -> None:
        if self.convert_fmt is None:
            object.__setattr__(self, "convert_fmt", self.fmt)
        if self.convert_rounding is None:
            object.__setattr__(self, "convert_rounding", self.rounding)
        if self.accumulate not in ACCUMULATE:
            raise OptionError(f"--accumulate: {self.accumulate!r} is not one of "
                              f"{', '.join(ACCUMULATE)}")

    @property
    def mpfr_compare(self) -> bool:
        """Comparisons follow ``mpfr_greater_p``/``mpfr_less_p`` (false when either operand is
        NaN), as the C++ qResNet engine's do: Relu ``x > 0 ? x : +0`` (NaN -> +0), LeakyRelu
        ``x > 0 ? x : alpha*x``, MaxPool ``best = -inf; if (v > best) best = v`` (never a NaN),
        Clip ``x < lo ? lo : (x > hi ? hi : x)``.  Otherwise NaN propagates (IEEE style)."""
        return self.compat == "qresnet"

    @property
    def name(self) -> str:
        return f"compat-{self.compat}" if self.compat else (self.fmt.name or self.fmt.spec())

    def describe(self) -> str:
        s = f"{self.fmt.describe()}; arithmetic rounding {self.rounding.value}"
        if self.convert_fmt != self.fmt:
            s += f"; conversion into {self.convert_fmt.spec()}"
        if self.convert_rounding != self.rounding or self.convert_fmt != self.fmt:
            s += f" rounding {self.convert_rounding.value}"
        s += f"; accumulate {self.accumulate}"
        if self.gemm_bias_first:
            s += "; Gemm bias first"
        if self.mpfr_compare:
            s += "; comparisons as MPFR (false on NaN)"
        return s

    def to_json(self) -> dict:
        return {"name": self.name, "format": self.fmt.spec(), "p": self.fmt.p,
                "emin": self.fmt.emin, "emax": self.fmt.emax, "rounding": self.rounding.value,
                "convert_format": self.convert_fmt.spec(),
                "convert_rounding": self.convert_rounding.value,
                "accumulate": self.accumulate, "gemm_bias_first": self.gemm_bias_first,
                "comparisons": "mpfr" if self.mpfr_compare else "nan-propagating"}


def qresnet() -> EmuConfig:
    """What the C++ qResNet MPFR engine computes (see the README section)."""
    return EmuConfig(fmt=FloatFormat.unbounded(11, name="qresnet-p11"), rounding=Rounding.UP,
                     convert_fmt=parse_format("p=11,emin=-8,emax=7,subnormal=off"),
                     convert_rounding=Rounding.DOWN, gemm_bias_first=True, compat="qresnet")


def make_config(*, bits: int | None = None, exp_bits: int | None = None,
                format: str | None = None, compat: str | None = None,
                rounding: str | None = None, convert_rounding: str | None = None,
                accumulate: str | None = None) -> EmuConfig:
    """Build a config from CLI-style options (exactly one of bits / format / compat)."""
    given = [n for n, v in (("--bits", bits), ("--format", format), ("--compat", compat))
             if v is not None]
    if len(given) != 1:
        raise OptionError("choose the format with exactly one of --bits N [--exp-bits E], "
                          f"--format NAME or --compat qresnet (got {', '.join(given) or 'none'})")
    if exp_bits is not None and bits is None:
        raise OptionError("--exp-bits needs --bits")
    try:
        if compat is not None:
            if compat.strip().lower() not in COMPAT:
                raise OptionError(f"--compat: unknown {compat!r}; known: {', '.join(COMPAT)}")
            cfg = qresnet()
            changes = {}
            if rounding is not None:
                changes["rounding"] = Rounding.parse(rounding)
            if convert_rounding is not None:
                changes["convert_rounding"] = Rounding.parse(convert_rounding)
            if accumulate is not None:
                changes["accumulate"] = accumulate
            return replace(cfg, **changes) if changes else cfg
        fmt = FloatFormat.ieee(bits, exp_bits) if bits is not None else parse_format(format)
        mode = Rounding.parse(rounding or "nearest")
        cmode = Rounding.parse(convert_rounding) if convert_rounding is not None else mode
        return EmuConfig(fmt=fmt, rounding=mode, convert_rounding=cmode,
                         accumulate=accumulate or "sequential")
    except FormatError as e:
        raise OptionError(str(e)) from None
