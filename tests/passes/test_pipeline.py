"""Pipeline strings (grammar, typed options, errors) and the pass manager (requires/ensures,
error wrapping, verify after each pass, instruments, truthful ``modified``)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pytest

import qcompile.passes as passes_pkg
from qcompile.errors import OptionError, QCompileError, UnsupportedOpError
from qcompile.frontend import lift
from qcompile.ir import DType, Graph, Node, TensorType, Use, format_graph
from qcompile.passes import (
    REGISTRY,
    Check,
    DumpDir,
    Pass,
    PassContext,
    PassError,
    PassResult,
    PreconditionError,
    PrintAfter,
    describe_options,
    parse_pipeline,
    run_pipeline,
)
from qcompile.testing import zoo


# -- dummy passes ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Dummy(Pass):
    name = "dummy"
    iters: int = 10
    rate: float = 0.5
    flag: bool = False
    mode: Literal["fast", "slow"] = "fast"
    bits: Literal[4, 8] = 8
    keep: tuple[str, ...] = ()
    sizes: tuple[int, ...] = (1, 2)
    label: str = "x"
    limit: int | None = None

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        return PassResult(graph, False)


@dataclass(frozen=True)
class Other(Pass):
    name = "other"
    x: int = 0

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        return PassResult(graph, False)


DUMMIES = {"dummy": Dummy, "other": Other, "fold": Dummy, "cleanup": Other}


def parse(text: str) -> list[Pass]:
    return parse_pipeline(text, DUMMIES)


def option_error(text: str, registry=None) -> str:
    with pytest.raises(OptionError) as err:
        parse_pipeline(text, registry or DUMMIES)
    msg = str(err.value)
    assert msg and "\n" not in msg
    return msg


# -- grammar -------------------------------------------------------------------------------------------------
def test_defaults():
    assert parse("dummy") == [Dummy()]
    assert parse("dummy{}") == [Dummy()]
    assert parse(" dummy , other ") == [Dummy(), Other()]


def test_options_typed_by_annotation():
    (p,) = parse("dummy{iters=3,rate=1e-3,flag=true,mode=slow,bits=4,label=hello,limit=7}")
    assert p == Dummy(iters=3, rate=1e-3, flag=True, mode="slow", bits=4, label="hello", limit=7)
    assert type(p.iters) is int and type(p.rate) is float and p.flag is True
    assert p.bits == 4 and type(p.bits) is int  # Literal of ints gives the int
    (q,) = parse("dummy{limit=none}")
    assert q.limit is None


@pytest.mark.parametrize("raw,value", [("true", True), ("1", True), ("yes", True), ("on", True),
                                       ("False", False), ("0", False), ("no", False),
                                       ("off", False)])
def test_bool_spellings(raw, value):
    assert parse(f"dummy{{flag={raw}}}")[0].flag is value


def test_list_continuation():
    (p,) = parse("dummy{keep=first,last}")
    assert p.keep == ("first", "last")
    (p,) = parse("dummy{keep=first,last,iters=3}")  # a key= ends the list
    assert p.keep == ("first", "last") and p.iters == 3
    (p,) = parse("dummy{sizes=3,5,8,keep=a}")
    assert p.sizes == (3, 5, 8) and p.keep == ("a",)
    (p,) = parse("dummy{keep=only}")
    assert p.keep == ("only",)
    (p,) = parse("dummy{keep=}")
    assert p.keep == ()


def test_whitespace_and_several_passes():
    ps = parse("dummy { iters = 3 , keep = a , b } , other{x=2}, dummy")
    assert ps == [Dummy(iters=3, keep=("a", "b")), Other(x=2), Dummy()]


def test_spec_round_trips():
    p = Dummy(iters=3, flag=True, mode="slow", keep=("first", "last"), bits=4)
    assert p.spec().startswith("dummy{")
    assert parse(p.spec()) == [p]
    assert Dummy().spec() == "dummy"


def test_describe_options():
    rows = {name: (typ, default) for name, typ, default in describe_options(Dummy)}
    assert rows["iters"] == ("int", "10")
    assert rows["flag"] == ("bool", "false")
    assert rows["mode"] == ("fast|slow", "fast")
    assert rows["sizes"][1] == "1,2"


# -- errors ------------------------------------------------------------------------------------------------
def test_unknown_pass_suggests_nearest():
    msg = option_error("fodl")
    assert "unknown pass 'fodl'" in msg and "did you mean 'fold'?" in msg
    assert "valid passes: cleanup, dummy, fold, other" in msg
    msg = option_error("fold,cleanp")
    assert "did you mean 'cleanup'?" in msg


def test_unknown_pass_with_real_registry():
    msg = option_error("fodl", REGISTRY)
    assert "did you mean 'fold'?" in msg
    assert "zzzzzz" in option_error("zzzzzz", REGISTRY) and "did you mean" not in option_error(
        "zzzzzz", REGISTRY)


def test_unknown_option_lists_valid_ones():
    msg = option_error("dummy{iter=3}")
    assert "unknown option 'iter'" in msg and "did you mean 'iters'?" in msg
    assert "valid options: iters, rate, flag, mode, bits, keep, sizes, label, limit" in msg
    msg = option_error("other{y=1}")
    assert "valid options: x" in msg


@pytest.mark.parametrize("text,words", [
    ("dummy{iters=abc}", "not an integer"),
    ("dummy{iters=1.5}", "not an integer"),
    ("dummy{rate=fast}", "not a number"),
    ("dummy{flag=maybe}", "not a boolean"),
    ("dummy{mode=medium}", "not one of fast, slow"),
    ("dummy{mode=slwo}", "did you mean 'slow'"),
    ("dummy{bits=3}", "not one of 4, 8"),
    ("dummy{sizes=1,x}", "not an integer"),
    ("dummy{limit=many}", "not an integer"),
])
def test_bad_values(text, words):
    msg = option_error(text)
    assert words in msg and msg.startswith("pass 'dummy': option ")


@pytest.mark.parametrize("text,words", [
    ("dummy{iters=3", "missing '}'"),
    ("dummy}", "unbalanced '}'"),
    ("dummy{iters=3}}", "unbalanced '}'"),
    ("dummy{iters=3},other{", "missing '}'"),
])
def test_unbalanced_braces(text, words):
    assert words in option_error(text)


@pytest.mark.parametrize("text", ["", "   ", "dummy,,other", "dummy,", ",dummy", "9lives",
                                  "dummy other"])
def test_malformed(text):
    option_error(text)


def test_value_before_any_key():
    assert "is not key=value" in option_error("dummy{first}")


# -- run_pipeline: requires / ensures -----------------------------------------------------------------------
def _marked(g: Graph) -> str | None:
    return None if g.meta.get("marked") else "the graph carries no mark"


MARKED = Check("marked", _marked, "the graph is marked")


@dataclass(frozen=True)
class Marker(Pass):
    name = "marker"
    ensures = (MARKED,)

    def run(self, graph, ctx):
        graph.meta["marked"] = True
        return PassResult(graph, True)


@dataclass(frozen=True)
class Needy(Pass):
    name = "needy"
    requires = (MARKED,)

    def run(self, graph, ctx):
        return PassResult(graph, False)


@dataclass(frozen=True)
class Liar(Pass):
    """Claims to ensure the mark but does not set it."""

    name = "liar"
    ensures = (MARKED,)

    def run(self, graph, ctx):
        return PassResult(graph, False)


@dataclass(frozen=True)
class Crash(Pass):
    name = "crash"

    def run(self, graph, ctx):
        return 1 // 0


@dataclass(frozen=True)
class Unsupported(Pass):
    name = "unsupported"

    def run(self, graph, ctx):
        raise UnsupportedOpError("mpfr", {"Erf": ["erf_1", "erf_2"]})


@dataclass(frozen=True)
class Corrupt(Pass):
    """Breaks use-def symmetry behind the API's back."""

    name = "corrupt"

    def run(self, graph, ctx):
        n = graph.nodes[0]
        del n.inputs[0]._uses[Use(n, 0)]
        return PassResult(graph, True)


@dataclass(frozen=True)
class AddRelu(Pass):
    """Appends a Relu on the output (truthfully modified)."""

    name = "addrelu"

    def run(self, graph, ctx):
        out = graph.outputs[0]
        n = Node("Relu", [out], [out.type])
        graph.append(n)
        graph.outputs[0] = n.output
        return PassResult(graph, True, {"added": 1})


TEST_REGISTRY = {c.name: c for c in (Marker, Needy, Liar, Crash, Unsupported, Corrupt, AddRelu)}


@pytest.fixture
def registry(monkeypatch):
    monkeypatch.setattr(passes_pkg, "REGISTRY", TEST_REGISTRY)
    return TEST_REGISTRY


def tiny() -> Graph:
    g = Graph("tiny")
    x = g.add_input("x", TensorType(DType.FLOAT, (1, 4)))
    n = Node("Relu", [x], [x.type], name="relu")
    g.append(n)
    g.outputs.append(n.output)
    return g


def pipe(text: str):
    return parse_pipeline(text, TEST_REGISTRY)


def test_requires_failure_names_the_pass_that_ensures_it(registry):
    with pytest.raises(PreconditionError) as err:
        run_pipeline(tiny(), pipe("addrelu,needy"))
    msg = str(err.value)
    assert isinstance(err.value, QCompileError) and "\n" not in msg
    assert msg.startswith("'needy' needs 'marked' (the graph carries no mark)")
    assert "run 'marker' or 'liar' first" in msg
    assert "Passes so far: ['addrelu']" in msg


def test_requires_hint_without_maker(monkeypatch):
    monkeypatch.setattr(passes_pkg, "REGISTRY", {"needy": Needy})
    with pytest.raises(PreconditionError, match="fix the model"):
        run_pipeline(tiny(), [Needy()])


def test_requires_satisfied(registry):
    res = run_pipeline(tiny(), pipe("marker,needy"))
    assert [p.name for p, _, _ in res.results] == ["marker", "needy"]
    assert [r.modified for _, r, _ in res.results] == [True, False]


def test_ensures_checked(registry):
    with pytest.raises(PassError, match="'liar' did not establish 'marked'"):
        run_pipeline(tiny(), pipe("liar"))
    run_pipeline(tiny(), pipe("liar"), PassContext(verify_each=False))  # checks are off


def test_requires_checked_on_the_current_graph(registry):
    g = tiny()
    g.meta["marked"] = True
    run_pipeline(g, pipe("needy"))


# -- run_pipeline: errors ------------------------------------------------------------------------------------
def test_crash_wrapped_with_history(registry):
    with pytest.raises(PassError) as err:
        run_pipeline(tiny(), pipe("marker,addrelu,crash,needy"))
    msg = str(err.value)
    assert msg == ("pass 'crash' failed after ['marker', 'addrelu']: "
                   "ZeroDivisionError: integer division or modulo by zero")
    assert isinstance(err.value.__cause__, ZeroDivisionError)


def test_user_error_in_pass_keeps_its_type(registry):
    with pytest.raises(UnsupportedOpError) as err:
        run_pipeline(tiny(), pipe("unsupported"))
    assert str(err.value).startswith("pass 'unsupported': the mpfr backend does not support")
    assert err.value.ops == {"Erf": ["erf_1", "erf_2"]}


def test_verify_after_each_pass_catches_corruption(registry):
    with pytest.raises(PassError) as err:
        run_pipeline(tiny(), pipe("addrelu,corrupt,addrelu"))
    msg = str(err.value)
    assert "pass 'corrupt'" in msg and "['addrelu']" in msg
    assert "missing from its use list" in msg


def test_verify_each_off(registry):
    res = run_pipeline(tiny(), pipe("corrupt"), PassContext(verify_each=False))
    assert res.results[0][1].modified is True


# -- instruments ----------------------------------------------------------------------------------------------
def test_print_after(registry):
    out = io.StringIO()
    g = tiny()
    ctx = PassContext(instruments=[PrintAfter(["addrelu"], out)])
    res = run_pipeline(g, pipe("marker,addrelu"), ctx)
    assert out.getvalue() == "// IR after 'addrelu'\n" + format_graph(res.graph)


def test_print_after_all(registry):
    out = io.StringIO()
    run_pipeline(tiny(), pipe("marker,addrelu,needy"),
                 PassContext(instruments=[PrintAfter(["all"], out)]))
    headers = [ln for ln in out.getvalue().splitlines() if ln.startswith("//")]
    assert headers == ["// IR after 'marker'", "// IR after 'addrelu'", "// IR after 'needy'"]


def test_dump_dir(tmp_path, registry):
    g = tiny()
    texts = [format_graph(g)]
    d = tmp_path / "dumps" / "nested"
    ctx = PassContext(instruments=[DumpDir(d)])
    res = run_pipeline(g, pipe("addrelu,addrelu"), ctx)
    assert sorted(p.name for p in d.iterdir()) == ["00-input.txt", "01-addrelu.txt",
                                                   "02-addrelu.txt"]
    assert (d / "00-input.txt").read_text() == texts[0]
    assert (d / "02-addrelu.txt").read_text() == format_graph(res.graph)
    assert (d / "01-addrelu.txt").read_text().count("Relu(") == 2


def test_instrument_hooks_order(registry):
    calls = []

    class Spy:
        def before(self, p, graph):
            calls.append(("before", p.name))

        def after(self, p, graph, result, seconds):
            assert seconds >= 0 and result.graph is graph
            calls.append(("after", p.name, result.modified))

    run_pipeline(tiny(), pipe("marker,needy"), PassContext(instruments=[Spy()]))
    assert calls == [("before", "marker"), ("after", "marker", True),
                     ("before", "needy"), ("after", "needy", False)]


def test_dump_dir_with_real_passes(tmp_path):
    g = lift(zoo.identity_dropout_model())
    before = format_graph(g)
    res = run_pipeline(g, parse_pipeline("fold,cleanup"), PassContext(instruments=[DumpDir(tmp_path)]))
    assert (tmp_path / "00-input.txt").read_text() == before
    assert (tmp_path / "01-fold.txt").read_text() == before  # nothing to fold
    assert (tmp_path / "02-cleanup.txt").read_text() == format_graph(res.graph)


# -- modified is truthful ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("builder", [zoo.conv_bn_relu, zoo.identity_dropout_model,
                                     zoo.all_ops_model, zoo.shared_weight_conv_bn,
                                     zoo.bn_after_non_foldable, zoo.gemm_bn, zoo.mini_resnet])
def test_modified_matches_actual_change(builder):
    g = lift(builder())
    for p in parse_pipeline("fold,cleanup,fold,cleanup"):
        before = format_graph(g)
        res = run_pipeline(g, [p])
        (_, r, _), = res.results
        assert r.modified == (format_graph(res.graph) != before), (p.name, r.stats)
        g = res.graph


def test_pipeline_result_graph_and_seconds(registry):
    g = tiny()
    res = run_pipeline(g, pipe("addrelu"))
    assert res.graph is g
    (p, r, secs), = res.results
    assert r.stats == {"added": 1} and secs >= 0
    assert np.isfinite(secs)


def test_repeated_option_is_an_error():
    from qcompile.errors import OptionError

    with pytest.raises(OptionError, match="given twice"):
        parse_pipeline("cleanup{fold_constants=true,fold_constants=false}")
