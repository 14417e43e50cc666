"""Analysis views of a graph. A networkx view is built on demand and thrown away, never stored."""

from __future__ import annotations

import networkx as nx

from qcompile.ir.core import Graph, Node, Value


def to_networkx(graph: Graph) -> nx.MultiDiGraph:
    """Nodes are IR nodes; an edge producer -> consumer per use, keyed by the input index.

    Edge data: ``value`` (the IR Value) and ``index``. Graph inputs and constants are not nodes.
    """
    g = nx.MultiDiGraph()
    for n in graph.nodes:
        g.add_node(n, op=n.qualified_op)
    for n in graph.nodes:
        for i, v in enumerate(n.inputs):
            if v is not None and v.producer is not None:
                g.add_edge(v.producer, n, key=i, value=v, index=i)
    return g


def single_consumer(v: Value) -> Node | None:
    """The one node that uses ``v`` (once), or None when it has zero or several uses."""
    uses = v.uses()
    return uses[0].node if len(uses) == 1 else None


def live_nodes(graph: Graph) -> set[Node]:
    """Nodes whose outputs (transitively) reach a graph output."""
    live: set[Node] = set()
    stack = [v.producer for v in graph.outputs if v.producer is not None]
    while stack:
        n = stack.pop()
        if n in live:
            continue
        live.add(n)
        stack += [v.producer for v in n.inputs if v is not None and v.producer is not None]
    return live
