"""IR core: use-def symmetry kept by the mutators, topological order, names, clone, sort."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qcompile.frontend import lift
from qcompile.ir import (
    DType,
    Graph,
    IRError,
    Node,
    TensorType,
    Use,
    Value,
    VerifyError,
    format_graph,
    verify,
)
from qcompile.testing import zoo

T4 = TensorType(DType.FLOAT, (1, 4))


def uses_of(v: Value) -> set[tuple[str, int]]:
    return {(u.node.name, u.index) for u in v.uses()}


def assert_symmetric(g: Graph) -> None:
    """Invariant 1 checked directly (independently of verify)."""
    for n in g.nodes:
        for i, v in enumerate(n.inputs):
            if v is not None:
                assert Use(n, i) in v.uses()
    for v in g.values():
        for u in v.uses():
            assert u.node.inputs[u.index] is v
            assert u.node.graph is g


# -- construction ----------------------------------------------------------------------------
def test_node_construction_registers_uses(diamond):
    a, b, c, d = diamond.nodes
    assert uses_of(a.output) == {("b", 0), ("c", 0)}
    assert a.output.consumers() == (b, c)
    assert d.inputs == (b.output, c.output)
    assert a.output.producer is a and a.output.index == 0
    verify(diamond)
    assert_symmetric(diamond)


def test_same_value_twice_in_one_node():
    g = Graph()
    x = g.add_input("x", T4)
    n = Node("Add", [x, x], [T4])
    g.append(n)
    g.outputs.append(n.output)
    assert uses_of(x) == {(n.name, 0), (n.name, 1)}
    assert x.consumers() == (n,)  # one consumer, two uses
    y = g.add_input("y", T4)
    n.replace_input(1, y)
    assert uses_of(x) == {(n.name, 0)} and uses_of(y) == {(n.name, 1)}
    verify(g)


def test_inputs_are_read_only_tuple(diamond):
    d = diamond.nodes[-1]
    assert isinstance(d.inputs, tuple)
    with pytest.raises(AttributeError):
        d.inputs = ()  # type: ignore[misc]


def test_output_property_requires_single_output():
    n = Node("Split", [None], [T4, T4])
    with pytest.raises(IRError, match="2 outputs"):
        _ = n.output
    with pytest.raises(IRError, match="output names"):
        Node("Relu", [None], [T4], output_names=["a", "b"])


# -- replace_input / replace_all_uses_with / replace_value -------------------------------------
def test_replace_input_moves_the_use(diamond):
    a, b, c, d = diamond.nodes
    x = diamond.inputs[0]
    d.replace_input(1, a.output)
    assert uses_of(c.output) == set()
    assert uses_of(a.output) == {("b", 0), ("c", 0), ("d", 1)}
    d.replace_input(0, x)
    assert uses_of(b.output) == set() and ("d", 0) in uses_of(x)
    d.replace_input(0, x)  # no-op
    verify(diamond)
    assert_symmetric(diamond)


def test_replace_input_negative_index(diamond):
    d = diamond.nodes[-1]
    a_out = diamond.nodes[0].output
    d.replace_input(-1, a_out)  # the last input, recorded under its real index
    assert d.inputs[1] is a_out and Use(d, 1) in a_out.uses()
    assert not any(u.index < 0 for u in a_out.uses())
    verify(diamond)
    with pytest.raises(IndexError):
        d.replace_input(2, a_out)
    with pytest.raises(IndexError):
        d.replace_input(-3, a_out)
    verify(diamond)


def test_replace_input_with_none_and_back(diamond):
    d = diamond.nodes[-1]
    b_out = d.inputs[0]
    d.replace_input(0, None)
    assert d.inputs[0] is None and uses_of(b_out) == set()
    d.replace_input(0, b_out)
    assert uses_of(b_out) == {("d", 0)}
    verify(diamond)


def test_replace_input_refuses_later_value(diamond):
    a, b, c, d = diamond.nodes
    before = format_graph(diamond)
    with pytest.raises(IRError, match="before it is defined"):
        b.replace_input(0, c.output)  # c comes after b
    with pytest.raises(IRError, match="before it is defined"):
        a.replace_input(0, a.output)  # self-loop
    stray = Value("stray", T4)
    with pytest.raises(IRError, match="neither an input"):
        b.replace_input(0, stray)
    other = Graph("other")
    foreign = other.add_const("k", np.zeros(4, np.float32))
    with pytest.raises(IRError, match="does not belong"):
        b.replace_input(0, foreign)
    assert format_graph(diamond) == before
    verify(diamond)
    assert uses_of(c.output) == {("d", 1)}


def test_replace_all_uses_with(diamond):
    a, b, c, d = diamond.nodes
    x = diamond.inputs[0]
    a.output.replace_all_uses_with(x)
    assert uses_of(a.output) == set()
    assert uses_of(x) == {("a", 0), ("b", 0), ("c", 0)}
    a.output.replace_all_uses_with(a.output)  # self: no-op
    verify(diamond)
    assert_symmetric(diamond)


def test_replace_all_uses_with_refusal_changes_nothing(diamond):
    """b.output is used by d only; a.output by b and c. Redirecting a's uses to c.output is
    illegal for b (before c) and for c itself; no use may move."""
    a, b, c, d = diamond.nodes
    before = format_graph(diamond)
    with pytest.raises(IRError):
        a.output.replace_all_uses_with(c.output)
    assert format_graph(diamond) == before
    assert uses_of(a.output) == {("b", 0), ("c", 0)}
    verify(diamond)


def test_replace_all_uses_with_refusal_is_atomic():
    """The first use (by d, after c) could move, the second (by b, before c) cannot: the
    refusal must not leave d rewired."""
    g = Graph()
    x = g.add_input("x", T4)
    a = Node("Relu", [x], [T4], name="a")
    d = Node("Add", [a.output, a.output], [T4], name="d")  # registers its uses first
    b = Node("Relu", [a.output], [T4], name="b")
    c = Node("Relu", [x], [T4], name="c")
    g.append(a, b, c)
    g.insert_after(c, d)
    g.outputs += [d.output, b.output]
    assert [u.node.name for u in a.output.uses()] == ["d", "d", "b"]
    with pytest.raises(IRError):
        a.output.replace_all_uses_with(c.output)
    assert d.inputs == (a.output, a.output)
    assert uses_of(c.output) == set()
    verify(g)


def test_replace_all_uses_with_leaves_graph_outputs(diamond):
    d = diamond.nodes[-1]
    x = diamond.inputs[0]
    d.output.replace_all_uses_with(x)  # d has no node uses; graph outputs are not touched
    assert diamond.outputs == [d.output]


def test_replace_value_keeps_public_output_name(diamond):
    a, b, c, d = diamond.nodes
    diamond.replace_value(d.output, b.output)
    assert diamond.outputs == [b.output]
    assert b.output.name == "d"  # the public name moved to the new value
    assert d.output.name != "d"
    diamond.remove(d)
    verify(diamond)
    assert diamond.find_value("d") is b.output


def test_replace_value_moves_node_uses_too(diamond):
    a, b, c, d = diamond.nodes
    diamond.replace_value(b.output, a.output)
    assert uses_of(b.output) == set()
    assert uses_of(a.output) == {("b", 0), ("c", 0), ("d", 0)}
    assert a.output.name == "a"  # not an output: no renaming
    diamond.remove(b)
    verify(diamond)


def test_replace_value_with_graph_input_keeps_input_name(diamond):
    x = diamond.inputs[0]
    d = diamond.nodes[-1]
    diamond.replace_value(d.output, x)
    assert diamond.outputs == [x] and x.name == "x"
    diamond.remove(d)
    verify(diamond)


# -- remove / add_input ----------------------------------------------------------------------------
def test_remove_safe_refuses_used_node(diamond):
    a, b, c, d = diamond.nodes
    before = format_graph(diamond)
    with pytest.raises(IRError, match="is used by b, c"):
        diamond.remove(a)
    with pytest.raises(IRError, match="graph output"):
        diamond.remove(d)
    assert format_graph(diamond) == before
    verify(diamond)


def test_remove_unused_node_detaches_inputs(diamond):
    a, b, c, d = diamond.nodes
    d.replace_input(1, b.output)
    diamond.remove(c)
    assert c.graph is None and c not in diamond.nodes
    assert uses_of(a.output) == {("b", 0)}
    verify(diamond)
    # names are freed: a new node may take c's names
    n = Node("Sigmoid", [a.output], [T4], name="c", output_names=["c"])
    diamond.insert_after(a, n)
    assert n.name == "c" and n.output.name == "c"
    verify(diamond)


def test_remove_unsafe(diamond):
    a, b, c, d = diamond.nodes
    diamond.remove(a, safe=False)
    assert a.graph is None
    assert uses_of(diamond.inputs[0]) == set()
    with pytest.raises(VerifyError, match="not defined"):
        verify(diamond)  # b and c now read a value that no longer exists


def test_remove_node_not_in_graph(diamond):
    with pytest.raises(IRError, match="not in graph"):
        diamond.remove(Node("Relu", [None], [T4]))


def test_add_input(chain):
    g = chain(1)
    relu = g.nodes[0]
    w = g.initializers["w"]
    idx = relu.add_input(w)
    assert idx == 1 and relu.inputs[1] is w
    assert uses_of(w) == {(relu.name, 1)}
    relu.add_input(None)
    assert len(relu.inputs) == 3
    with pytest.raises(VerifyError, match="has 2 inputs"):
        verify(g)  # Relu takes one input: arity is checked
    relu.replace_input(1, None)
    verify(g)  # trailing omitted inputs do not count


def test_add_input_refused_leaves_node_unchanged(diamond):
    a, b, c, d = diamond.nodes
    with pytest.raises(IRError):
        b.add_input(d.output)  # d is later
    assert b.inputs == (a.output,)
    verify(diamond)


def test_remove_const(chain):
    g = chain(2)
    w = g.initializers["w"]
    with pytest.raises(IRError, match="still used"):
        g.remove_const(w)
    g.nodes[1].replace_input(1, g.inputs[0])
    g.remove_const(w)
    assert "w" not in g.initializers
    assert g.add_const("w", np.zeros(1, np.float32)).name == "w"  # name freed
    verify(g)
    with pytest.raises(IRError, match="not a constant"):
        g.remove_const(g.inputs[0])
    with pytest.raises(IRError, match="not a constant"):
        g.remove_const(w)  # already removed


# -- insertion keeps topological order ---------------------------------------------------------------
def test_insert_before_and_after(diamond):
    a, b, c, d = diamond.nodes
    n1 = Node("Relu", [a.output], [T4], name="n1")
    n2 = Node("Relu", [n1.output], [T4], name="n2")
    diamond.insert_after(a, n1, n2)  # a batch: n2 uses n1, inserted just before it
    assert [n.name for n in diamond.nodes] == ["a", "n1", "n2", "b", "c", "d"]
    n3 = Node("Tanh", [n2.output], [T4], name="n3")
    diamond.insert_before(d, n3)
    assert diamond.nodes.index(n3) == 5
    d.replace_input(0, n3.output)
    verify(diamond)
    assert diamond.position(n3) == 5


def test_insert_refuses_to_break_topological_order(diamond):
    a, b, c, d = diamond.nodes
    before = format_graph(diamond)
    late = Node("Relu", [c.output], [T4], name="late")
    with pytest.raises(IRError, match="before it is defined"):
        diamond.insert_before(c, late)
    with pytest.raises(IRError, match="before it is defined"):
        diamond.insert_after(a, late)
    # a batch whose second node is bad: the first one is not inserted either
    ok = Node("Relu", [a.output], [T4], name="ok")
    bad = Node("Relu", [d.output], [T4], name="bad")
    with pytest.raises(IRError):
        diamond.insert_after(b, ok, bad)
    assert format_graph(diamond) == before
    verify(diamond)  # refused nodes keep no uses in the graph
    assert uses_of(c.output) == {("d", 1)}
    assert uses_of(a.output) == {("b", 0), ("c", 0)}
    # the refused node can still be inserted at a legal place
    diamond.insert_after(c, late)
    assert uses_of(c.output) == {("d", 1), ("late", 0)}
    verify(diamond)


def test_insert_refuses_nodes_of_another_graph_or_twice(diamond):
    a, b, c, d = diamond.nodes
    with pytest.raises(IRError, match="already belongs"):
        diamond.insert_after(d, b)
    other = build_other()
    with pytest.raises(IRError, match="outside graph"):
        diamond.append(Node("Relu", [other.nodes[0].output], [T4]))
    verify(diamond)
    n = Node("Relu", [a.output], [T4])
    with pytest.raises(IRError, match="already belongs"):
        diamond.append(n, n)
    verify(diamond)


def build_other() -> Graph:
    g = Graph("other")
    x = g.add_input("x", T4)
    g.append(Node("Relu", [x], [T4]))
    return g


def test_nodes_is_a_snapshot(chain):
    g = chain(4)
    snap = g.nodes
    for n in g.nodes:  # deleting while iterating is allowed
        if n.op == "Add":
            n.output.replace_all_uses_with(n.inputs[0])
            if n.output in g.outputs:
                g.replace_value(n.output, n.inputs[0])
            g.remove(n)
    assert len(snap) == 4 and len(g.nodes) == 2
    verify(g)


# -- names ---------------------------------------------------------------------------------------------
def test_unique_names_and_separate_namespaces():
    g = Graph()
    x = g.add_input("relu", T4)
    n1 = Node("Relu", [x], [T4], name="relu", output_names=["relu"])
    n2 = Node("Relu", [n1.output], [T4], name="relu", output_names=["relu"])
    n3 = Node("Relu", [n2.output], [T4])  # unnamed: named after its op
    g.append(n1, n2, n3)
    g.outputs.append(n3.output)
    assert n1.name == "relu"  # node names do not collide with value names
    assert n2.name != "relu" and n2.name.startswith("relu")
    assert len({n1.name, n2.name, n3.name}) == 3
    values = [v.name for v in g.values()]
    assert len(values) == len(set(values)) == 4
    assert x.name == "relu" and n1.output.name != "relu"
    c1 = g.add_const("k", np.zeros(1, np.float32))
    c2 = g.add_const("k", np.ones(1, np.float32))
    assert c1.name == "k" and c2.name != "k" and set(g.initializers) == {"k", c2.name}
    assert g.unique_name("relu", node=True) not in {n.name for n in g.nodes}
    verify(g)


# -- clone -------------------------------------------------------------------------------------------------
def test_clone_is_deep_and_prints_identically(diamond):
    w = diamond.add_const("w", np.arange(4, dtype=np.float32))
    diamond.nodes[-1].attrs["note"] = (1, 2)
    diamond.nodes[1].add_input(None)
    text = format_graph(diamond)
    g2 = diamond.clone()
    assert format_graph(g2) == text
    verify(g2)
    assert_symmetric(g2)
    assert not set(map(id, g2.nodes)) & set(map(id, diamond.nodes))
    assert not set(map(id, g2.values())) & set(map(id, diamond.values()))
    assert not np.shares_memory(g2.initializers["w"].const, w.const)
    # mutate the clone every way we can
    a2, b2, c2, d2 = g2.nodes
    g2.initializers["w"].const[0] = 42.0
    d2.attrs["note"] = (3,)
    d2.replace_input(0, a2.output)
    g2.remove(b2)
    g2.replace_value(d2.output, c2.output)
    g2.add_const("extra", np.zeros(2, np.float32))
    assert format_graph(diamond) == text
    assert w.const[0] == 0.0 and diamond.nodes[-1].attrs["note"] == (1, 2)
    verify(diamond)
    verify(g2)


def test_clone_keeps_name_authority(diamond):
    g2 = diamond.clone()
    assert diamond.unique_name("a") == g2.unique_name("a")
    assert diamond.unique_name("d", node=True) == g2.unique_name("d", node=True)


def test_clone_of_lifted_model(shared_data):
    g = lift(shared_data / "cifar10_resnet20.onnx")
    g2 = g.clone()
    assert str(g2) == str(g)
    verify(g2)


def test_clone_of_zoo_model():
    g = lift(zoo.all_ops_model())
    assert format_graph(g.clone()) == format_graph(g)


# -- sort ------------------------------------------------------------------------------------------------
def test_sort_restores_topological_order(diamond):
    a, b, c, d = diamond.nodes
    diamond._nodes.reverse()  # corrupt the order behind the API's back
    diamond._pos = None
    with pytest.raises(VerifyError, match="not defined before it"):
        verify(diamond)
    diamond.sort()
    verify(diamond)
    assert diamond.nodes[0] is a and diamond.nodes[-1] is d
    assert diamond.position(d) == 3


def test_sort_is_stable_on_sorted_graph(chain):
    g = chain(6)
    order = g.nodes
    g.sort()
    assert g.nodes == order


def test_sort_detects_cycles(diamond):
    a, b, c, d = diamond.nodes
    # make a read d's output (a cycle), bypassing replace_input's check
    x = a._inputs[0]
    del x._uses[Use(a, 0)]
    a._inputs[0] = d.output
    d.output._uses[Use(a, 0)] = None
    with pytest.raises(IRError, match="cycle"):
        diamond.sort()


def test_sort_reports_missing_producer(diamond):
    diamond.remove(diamond.nodes[0], safe=False)
    with pytest.raises(IRError, match="producer is not in graph"):
        diamond.sort()


# -- property test: random mutations keep the invariants -----------------------------------------------
OPS = ("Relu", "Add", "Concat", "Sigmoid")


def random_dag(data) -> Graph:
    g = Graph("rand")
    vals = [g.add_input("x", T4), g.add_input("y", T4)]
    vals.append(g.add_const("w", np.ones(4, np.float32)))
    for _ in range(data.draw(st.integers(1, 8), label="n_nodes")):
        op = data.draw(st.sampled_from(OPS))
        arity = {"Relu": 1, "Sigmoid": 1, "Add": 2}.get(op) or data.draw(st.integers(1, 3))
        ins = [data.draw(st.sampled_from(vals)) for _ in range(arity)]
        n = Node(op, ins, [T4], attrs={"axis": 0} if op == "Concat" else None)
        g.append(n)
        vals.append(n.output)
    outs = [n.output for n in g.nodes]
    g.outputs.append(outs[-1])
    if len(outs) > 1 and data.draw(st.booleans()):
        g.outputs.append(data.draw(st.sampled_from(outs[:-1])))
    return g


def _mutate(g: Graph, data) -> Graph:
    nodes = g.nodes
    vals = list(g.values())
    kind = data.draw(st.sampled_from(
        ["replace_input", "rauw", "replace_value", "remove", "insert", "add_input", "clone",
         "sort", "remove_const", "add_const"]))
    if kind == "clone":
        g2 = g.clone()
        assert format_graph(g2) == format_graph(g)
        return g2
    if kind == "sort":
        before = g.nodes
        g.sort()
        assert g.nodes == before  # already sorted: stable
        return g
    if kind == "add_const":
        g.add_const(data.draw(st.sampled_from(["w", "c", "x"])), np.zeros(4, np.float32))
        return g
    if kind == "remove_const":
        if g.initializers:
            g.remove_const(data.draw(st.sampled_from(list(g.initializers.values()))))
        return g
    if not nodes:
        return g
    node = data.draw(st.sampled_from(nodes))
    if kind == "replace_input":
        if node.inputs:
            i = data.draw(st.integers(-len(node.inputs), len(node.inputs) - 1))
            node.replace_input(i, data.draw(st.sampled_from(vals)))
    elif kind == "rauw":
        node.output.replace_all_uses_with(data.draw(st.sampled_from(vals)))
    elif kind == "replace_value":
        g.replace_value(node.output, data.draw(st.sampled_from(vals)))
    elif kind == "remove":
        g.remove(node)
    elif kind == "insert":
        new = Node("Relu", [data.draw(st.sampled_from(vals))], [T4])
        if data.draw(st.booleans()):
            g.insert_before(node, new)
        else:
            g.insert_after(node, new)
    elif kind == "add_input" and node.op == "Concat":
        node.add_input(data.draw(st.sampled_from(vals)))
    return g


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_mutations_keep_invariants(data):
    g = random_dag(data)
    verify(g)
    for _ in range(data.draw(st.integers(1, 15), label="n_mutations")):
        before = format_graph(g)
        try:
            g = _mutate(g, data)
        except IRError:
            # a refused mutation changes nothing
            assert format_graph(g) == before
        verify(g)
        assert_symmetric(g)
        names = [v.name for v in g.values()]
        assert len(names) == len(set(names))
        node_names = [n.name for n in g.nodes]
        assert len(node_names) == len(set(node_names))


def test_remove_drop_dead_consts_keeps_shared_ones():
    import numpy as np

    from qcompile.ir import DType, Graph, Node, TensorType

    g = Graph("g")
    x = g.add_input("x", TensorType(DType.FLOAT, (2,)))
    only = g.add_const("only", np.ones(2, np.float32))
    shared = g.add_const("shared", np.ones(2, np.float32))
    t = TensorType(DType.FLOAT, (2,))
    a = Node("Add", [x, only], [t], name="a")
    b = Node("Mul", [a.outputs[0], shared], [t], name="b")
    c = Node("Mul", [b.outputs[0], shared], [t], name="c")
    g.append(a, b, c)
    g.outputs.append(c.outputs[0])
    b.outputs[0].replace_all_uses_with(a.outputs[0])
    g.remove(b, drop_dead_consts=True)
    assert "shared" in g.initializers  # still read by c
    c.replace_input(0, x)
    g.remove(a, drop_dead_consts=True)
    assert "only" not in g.initializers
    verify(g)
