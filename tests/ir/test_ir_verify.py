"""verify() catches hand-corrupted graphs (private fields poked) and lists every problem."""

from __future__ import annotations

import numpy as np
import pytest

from qcompile.frontend import lift
from qcompile.ir import (
    QCOMPILE_DOMAIN,
    DType,
    Graph,
    IRError,
    Node,
    TensorType,
    Use,
    Value,
    VerifyError,
    verify,
)
from qcompile.testing import zoo

T4 = TensorType(DType.FLOAT, (1, 4))


def problems(g: Graph) -> list[str]:
    with pytest.raises(VerifyError) as err:
        verify(g)
    return err.value.problems


def only(g: Graph, pattern: str) -> str:
    found = problems(g)
    assert len(found) == 1, found
    assert pattern in found[0], found
    return found[0]


def test_valid_graphs_pass(diamond, chain):
    verify(diamond)
    verify(chain(5))
    verify(lift(zoo.all_ops_model()))
    verify(Graph("empty"))


def test_verify_error_is_an_ir_error(diamond):
    diamond.outputs.append(Value("ghost", T4))
    with pytest.raises(IRError):
        verify(diamond)


def test_stale_use_entry(diamond):
    a, b, c, d = diamond.nodes
    a.output._uses[Use(d, 0)] = None  # d's input 0 is b.output, not a.output
    only(diamond, "lists use d[0] that is stale")


def test_use_index_out_of_range(diamond):
    a, b, c, d = diamond.nodes
    a.output._uses[Use(b, 7)] = None
    only(diamond, "stale")


def test_use_by_node_outside_graph(diamond):
    a = diamond.nodes[0]
    stray = Node("Relu", [a.output], [T4], name="stray")  # registers a use, never inserted
    assert Use(stray, 0) in a.output.uses()
    only(diamond, "which is not in the graph")


def test_missing_use(diamond):
    a, b, c, d = diamond.nodes
    del a.output._uses[Use(c, 0)]
    only(diamond, "'c' input 0 %a is missing from its use list")


def test_node_out_of_order(diamond):
    a, b, c, d = diamond.nodes
    diamond._nodes[:] = [a, d, b, c]  # d moved before its producers
    diamond._pos = None
    found = problems(diamond)
    assert any("'d' input 0 %b is not defined before it" in p for p in found)
    assert any("'d' input 1 %c is not defined before it" in p for p in found)


def test_duplicate_value_name(diamond):
    a, b, c, d = diamond.nodes
    c.output.name = "b"
    only(diamond, "value name %b is defined twice")


def test_duplicate_value_name_across_kinds(chain):
    g = chain(2)
    g.nodes[0].output.name = "w"  # clashes with the constant
    only(g, "%w is defined twice")


def test_duplicate_node_name(diamond):
    diamond.nodes[2].name = "b"
    only(diamond, "node name 'b' is used twice")


def test_output_not_defined(diamond):
    diamond.outputs.append(Value("ghost", T4))
    only(diamond, "graph output %ghost is not defined")


def test_output_of_removed_node(diamond):
    d = diamond.nodes[-1]
    diamond.remove(d, safe=False)
    only(diamond, "graph output %d is not defined")


def test_arity_violation_known_op(diamond):
    a, b, c, d = diamond.nodes
    b.add_input(a.output)  # Relu takes exactly one input
    only(diamond, "Relu 'b' has 2 inputs, expects 1..1")


def test_arity_too_few_inputs():
    g = Graph()
    x = g.add_input("x", TensorType(DType.FLOAT, (1, 3, 4, 4)))
    conv = Node("Conv", [x], [x.type], name="conv")
    g.append(conv)
    g.outputs.append(conv.output)
    only(g, "Conv 'conv' has 1 inputs, expects 2..3")


def test_output_arity():
    g = Graph()
    x = g.add_input("x", T4)
    n = Node("Relu", [x], [T4, T4], name="two")
    g.append(n)
    g.outputs.append(n.outputs[0])
    only(g, "Relu 'two' has 2 outputs")


def test_opaque_op_has_no_schema():
    g = Graph()
    x = g.add_input("x", T4)
    n = Node("Erf", [x, x, x], [T4, T4])  # not in the vocabulary: arity unchecked
    m = Node("Thing", [x], [T4], domain="com.example")
    g.append(n, m)
    g.outputs += [n.outputs[0], m.output]
    verify(g)


def test_missing_required_attr():
    g = Graph()
    x = g.add_input("x", TensorType(DType.FLOAT, (1, 3, 4, 4)))
    pool = Node("MaxPool", [x], [x.type], name="pool")
    cat = Node("Concat", [x, x], [TensorType(DType.FLOAT, (2, 3, 4, 4))], name="cat")
    s = g.add_const("s", np.float32(0.1))
    z = g.add_const("z", np.int8(0))
    qdq = Node("QDQ", [x, s, z], [x.type], domain=QCOMPILE_DOMAIN, name="q", attrs={"bits": 8})
    g.append(pool, cat, qdq)
    g.outputs += [pool.output, cat.output, qdq.output]
    found = problems(g)
    assert found == ["MaxPool 'pool' lacks attribute 'kernel_shape'",
                     "Concat 'cat' lacks attribute 'axis'",
                     "qcompile.QDQ 'q' lacks attribute 'signed'"]


def test_constant_problems(chain):
    g = chain(2)
    w = g.initializers["w"]
    w.const = np.zeros((2, 2), np.float32)  # type says [4]
    only(g, "constant %w: type f32[4] but data shape (2, 2)")
    w.const = None
    only(g, "constant %w has no data")
    g2 = chain(2)
    g2.initializers["w"].name = "renamed"
    found = problems(g2)
    assert any("constant registered as 'w' is named %renamed" in p for p in found)


def test_graph_input_with_producer(diamond):
    a = diamond.nodes[0]
    diamond.inputs.append(a.output)
    found = problems(diamond)
    assert any("graph input %a has a producer" in p for p in found)


def test_output_not_pointing_back(diamond):
    a, b, c, d = diamond.nodes
    b.output.producer = c
    only(diamond, "'b' output 0 %b does not point back to it")


def test_node_graph_backpointer(diamond):
    diamond.nodes[1].graph = None
    only(diamond, "does not point back to its graph")


def test_reports_all_problems_at_once(diamond):
    a, b, c, d = diamond.nodes
    a.output._uses[Use(d, 1)] = None            # stale use
    del a.output._uses[Use(b, 0)]               # missing use
    c.output.name = "b"                          # duplicate value name
    diamond.outputs.append(Value("ghost", T4))   # undefined output
    d.add_input(a.output)                        # Add with 3 inputs
    with pytest.raises(VerifyError) as err:
        verify(diamond)
    found = err.value.problems
    assert len(found) == 5, found
    for pattern in ("stale", "missing from its use list", "defined twice",
                    "graph output %ghost", "has 3 inputs"):
        assert any(pattern in p for p in found), (pattern, found)
    msg = str(err.value)
    assert msg.splitlines()[0].startswith("invalid IR: ") and "(+4 more)" in msg.splitlines()[0]
    assert all(p in msg for p in found)


def test_problems_listed_in_graph_order(chain):
    g = chain(8)
    nodes = g.nodes
    for n in nodes[:-1]:  # each output gets a stale use by the last node
        n.output._uses[Use(nodes[-1], 5)] = None
    found = problems(g)
    assert found == [f"%{n.output.name} lists use {nodes[-1].name}[5] that is stale"
                     for n in nodes[:-1]]
    assert problems(g) == found  # and deterministic
