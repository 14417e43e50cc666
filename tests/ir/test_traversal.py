"""Analysis views: to_networkx (edges keyed by input index), live_nodes, single_consumer; ops."""

from __future__ import annotations

import networkx as nx

from qcompile.frontend import lift
from qcompile.ir import (
    QCOMPILE_DOMAIN,
    DType,
    Graph,
    Node,
    TensorType,
    is_known,
    live_nodes,
    schema,
    single_consumer,
    to_networkx,
)
from qcompile.testing import zoo

T4 = TensorType(DType.FLOAT, (1, 4))


def test_to_networkx_keeps_operand_positions(diamond):
    a, b, c, d = diamond.nodes
    g = to_networkx(diamond)
    assert isinstance(g, nx.MultiDiGraph)
    assert set(g.nodes) == {a, b, c, d}
    assert g.nodes[d]["op"] == "Add"
    assert set(g.in_edges(d, keys=True)) == {(b, d, 0), (c, d, 1)}
    assert g.edges[b, d, 0]["value"] is b.output and g.edges[c, d, 1]["index"] == 1
    assert list(nx.topological_sort(g))[0] is a


def test_to_networkx_same_value_twice():
    gr = Graph()
    x = gr.add_input("x", T4)
    r = Node("Relu", [x], [T4])
    s = Node("Mul", [r.output, r.output], [T4])
    gr.append(r, s)
    gr.outputs.append(s.output)
    g = to_networkx(gr)
    assert g.number_of_edges(r, s) == 2  # one edge per use, keyed 0 and 1
    assert set(g[r][s]) == {0, 1}


def test_to_networkx_is_a_fresh_view(diamond):
    g1 = to_networkx(diamond)
    diamond.nodes[-1].replace_input(1, diamond.nodes[0].output)
    g2 = to_networkx(diamond)
    assert g1.number_of_edges() == g2.number_of_edges()
    assert g2.has_edge(diamond.nodes[0], diamond.nodes[-1])
    assert not g1.has_edge(diamond.nodes[0], diamond.nodes[-1])


def test_to_networkx_on_resnet_is_a_dag():
    g = lift(zoo.residual_block())
    view = to_networkx(g)
    assert nx.is_directed_acyclic_graph(view)
    assert view.number_of_nodes() == len(g.nodes)
    assert list(nx.topological_sort(view))  # consistent with the IR order
    order = {n: i for i, n in enumerate(g.nodes)}
    assert all(order[u] < order[v] for u, v in view.edges())


def test_single_consumer(diamond):
    a, b, c, d = diamond.nodes
    assert single_consumer(a.output) is None  # b and c
    assert single_consumer(b.output) is d
    assert single_consumer(d.output) is None  # graph output only
    d.replace_input(1, b.output)
    assert single_consumer(b.output) is None  # d uses it twice


def test_live_nodes(diamond):
    a, b, c, d = diamond.nodes
    assert live_nodes(diamond) == {a, b, c, d}
    d.replace_input(1, b.output)
    assert live_nodes(diamond) == {a, b, d}
    diamond.outputs[0] = c.output
    assert live_nodes(diamond) == {a, c}


def test_schema_lookup():
    assert schema(Node("Conv", [], [T4])).min_inputs == 2
    assert schema(Node("Conv", [], [T4], domain="ai.onnx")) is not None
    assert schema(Node("QDQ", [], [T4], domain=QCOMPILE_DOMAIN)).required_attrs == ("bits", "signed")
    assert schema(Node("QDQ", [], [T4])) is None  # QDQ only exists in the qcompile domain
    assert not is_known(Node("Erf", [], [T4]))
    assert not is_known(Node("Conv", [], [T4], domain="com.example"))
