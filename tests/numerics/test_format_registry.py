"""The number-format registry: every family round-trips its spellings through parse_any and
implements the protocol; a family registered here (a fixed-point dummy) is accepted by
parse_any, the FQ machinery (fq_format, fq_round, amax_scale, both MPFR engines), assign's FQ
insertion and sweep, with no other file touched."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import ClassVar

import gmpy2
import numpy as np
import pytest

from qcompile.numerics.format_protocol import Family, NumberFormat
from qcompile.numerics.formats import (
    FormatError,
    Rounding,
    families,
    family_of,
    parse_any,
    register,
    spellings,
    unregister,
)
from qcompile.numerics.fq import amax_scale, fq_format, fq_round

FAMS = families()


def _bits(a):
    a = np.asarray(a, np.float64)
    return np.where(np.isnan(a), 0x7FF8000000000000, a.view(np.int64))


@pytest.mark.parametrize("fam", FAMS, ids=[f.name for f in FAMS])
def test_every_family_round_trips_its_spellings(fam):
    assert fam.examples and fam.spellings
    for text in fam.examples:
        fmt = parse_any(text)
        assert isinstance(fmt, NumberFormat), text
        assert fmt.family == fam.name and family_of(fmt) is fam
        again = parse_any(fmt.spec())
        assert again.spec() == fmt.spec() and again.max_finite == fmt.max_finite
        assert parse_any(f"  {text.upper()} ") == fmt  # parse_any is case-insensitive
        assert isinstance(fmt.group, str) and (fmt.bits is None or fmt.bits > 0)
        if fam.fq:
            assert fq_format(text, saturate=False) == fmt


@pytest.mark.parametrize("fam", [f for f in FAMS if f.fq], ids=lambda f: f.name)
def test_fast_engines_equal_exact_engines(fam):
    x = np.concatenate([np.random.default_rng(3).standard_normal(40) * 3, [0.0, 1e6, -1e-9]])
    for text in fam.examples:
        fmt = fam.saturated(parse_any(text))
        for s in (1.0, 0.37):
            fast = fam.div_fast(fmt, x, np.full_like(x, s), Rounding.NEAREST)
            exact = [float(fam.div_exact(fmt, gmpy2.mpfr(v), gmpy2.mpfr(s), Rounding.NEAREST))
                     for v in x]
            np.testing.assert_array_equal(_bits(fast), _bits(exact), err_msg=f"{text} s={s}")
        np.testing.assert_array_equal(
            _bits(fam.round_fast(fmt, x, Rounding.NEAREST)),
            _bits([float(fam.round_exact(fmt, v, Rounding.NEAREST)) for v in x.tolist()]))


def test_int_family_is_not_an_fq_family():
    assert parse_any("int8").family == "int"
    with pytest.raises(FormatError, match="unknown float format 'int8'"):
        fq_format("int8")


# ----------------------------------------------------------------------------- a new family
@dataclass(frozen=True)
class Fixed:
    """``fxN_F``: N-bit two's complement with F fraction bits, values k / 2**F, saturating."""

    n: int
    f: int
    family: ClassVar[str] = "fixed"

    @property
    def name(self) -> str:
        return f"fx{self.n}_{self.f}"

    @property
    def bits(self) -> int:
        return self.n

    @property
    def kmax(self) -> int:
        return (1 << (self.n - 1)) - 1

    @property
    def max_finite(self) -> float:
        return self.kmax / 2**self.f

    @property
    def group(self) -> str:
        return f"fixed F={self.f}"

    def spec(self) -> str:
        return self.name


def _fx_exact(fmt: Fixed, z: Fraction) -> float:
    k = min(max(round(z * 2**fmt.f), -fmt.kmax - 1), fmt.kmax)  # half to even, clamped
    return k / 2**fmt.f


def _fx_round_exact(fmt, x, mode):
    return _fx_exact(fmt, Fraction(gmpy2.mpq(x)))


def _fx_div_exact(fmt, x, s, mode):
    if gmpy2.is_nan(x) or gmpy2.is_infinite(x):
        return float("nan")
    return _fx_exact(fmt, Fraction(gmpy2.mpq(x) / gmpy2.mpq(s)))


def _fx_round_fast(fmt, x, mode):
    x = np.asarray(x, np.float64)
    return np.ldexp(np.clip(np.rint(np.ldexp(x, fmt.f)), -fmt.kmax - 1, fmt.kmax), -fmt.f)


def _fx_div_fast(fmt, x, s, mode):
    x, s = np.broadcast_arrays(np.asarray(x, np.float64), np.asarray(s, np.float64))
    return np.array([_fx_div_exact(fmt, a, b, mode) for a, b in zip(x.ravel().tolist(),
                                                                     s.ravel().tolist())]
                    ).reshape(x.shape)


def _fx_parse(text: str):
    t = text.strip().lower()
    if not t.startswith("fx"):
        return None
    try:
        n, f = (int(v) for v in t[2:].split("_"))
    except ValueError:
        return None
    if not 2 <= n <= 16 or not 0 <= f < n:
        raise FormatError(f"fixed-point {t}: need 2 <= N <= 16 and 0 <= F < N")
    return Fixed(n, f)


FIXED = Family(name="fixed", spellings=("fxN_F (e.g. fx8_4)",), parse=_fx_parse,
               examples=("fx8_4", "fx12_6"), roundings=frozenset({Rounding.NEAREST}),
               round_fast=_fx_round_fast, round_exact=_fx_round_exact, div_fast=_fx_div_fast,
               div_exact=_fx_div_exact)


@pytest.fixture
def fixed_family():
    register(FIXED)
    try:
        yield FIXED
    finally:
        unregister("fixed")


def test_a_registered_family_is_parsed_everywhere(fixed_family):
    f = parse_any("FX8_4")
    assert f == Fixed(8, 4) and family_of(f) is fixed_family
    assert fq_format("fx8_4") == f
    assert spellings()[-1] == "fxN_F (e.g. fx8_4)"
    with pytest.raises(FormatError, match=r"^fixed-point fx20_4: need"):
        parse_any("fx20_4")
    with pytest.raises(FormatError, match=r"valid families: .*fxN_F \(e\.g\. fx8_4\)$"):
        parse_any("nonsense")
    # the built-in families still win for their own spellings
    assert parse_any("fp16").family == "float" and parse_any("posit8_1").family == "posit"
    from qcompile.driver.sweep import expand_formats, family, pipeline_for
    from qcompile.passes._assign_float import parse_fq

    assert parse_fq("fx8_4", "test") == f
    assert expand_formats("fx8_4,fx12_6") == ["fx8_4", "fx12_6"]
    assert family("fx8_4") == "fixed F=4"
    assert pipeline_for("fx8_4").startswith("assign{policy=uniform,weights=fx8_4")


def test_fq_machinery_rounds_into_a_registered_family(fixed_family):
    f = parse_any("fx8_4")
    x = np.array([0.0, 0.03, 1.0 / 32, 3.0 / 32, -2.49, 100.0, -100.0, np.nan])
    np.testing.assert_array_equal(_bits(fq_round(x, 1.0, f)),
                                  _bits([0.0, 0.0, 0.0, 0.125, -2.5, 127 / 16, -8.0, np.nan]))
    np.testing.assert_array_equal(amax_scale([127 / 8, 0.0], f), [2.0, 1.0])
    got = fq_round(x[:-1], np.array([0.5]), f)
    np.testing.assert_array_equal(got, [_fx_exact(f, Fraction(v) * 2) for v in x[:-1]])
    with pytest.raises(FormatError, match="rounds to nearest only"):
        fixed_family.check_rounding(f, Rounding.UP)


def test_both_mpfr_engines_run_fq_of_a_registered_family(fixed_family):
    from qcompile.backends.mpfr import Interpreter, make_config
    from qcompile.ir import QCOMPILE_DOMAIN, Graph, Node, TensorType

    g = Graph()
    xin = g.add_input("x", TensorType.of(np.zeros((2, 3), np.float32)))
    s = g.add_const("s", np.array([0.25, 0.5, 1.0], np.float32))
    n = Node("FQ", [xin, s], [xin.type], attrs={"format": "fx6_2", "axis": 1},
             domain=QCOMPILE_DOMAIN, name="fq", output_names=["y"])
    g.append(n)
    g.outputs.append(n.output)
    x = np.array([[0.1, -0.3, 2.2], [0.0, np.nan, -9.0]], np.float32)
    cfg = make_config(format="fp32")
    a = Interpreter(g, cfg, "fast").run_numpy({"x": x})["y"]
    b = Interpreter(g, cfg, "reference").run_numpy({"x": x})["y"]
    np.testing.assert_array_equal(_bits(a), _bits(b))
    want = fq_round(x.astype(np.float64), np.array([[0.25, 0.5, 1.0]]), parse_any("fx6_2"))
    np.testing.assert_array_equal(_bits(a), _bits(want * np.array([[0.25, 0.5, 1.0]])))
