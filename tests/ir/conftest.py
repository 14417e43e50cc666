"""Small hand-built graphs for the IR tests."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from qcompile.ir import DType, Graph, Node, TensorType

T4 = TensorType(DType.FLOAT, (1, 4))


def build_chain(n: int = 3) -> Graph:
    """x -> Relu -> Add(., w) -> Relu -> ... (n nodes) -> output; w is a [4] constant."""
    g = Graph("chain")
    v = g.add_input("x", T4)
    w = g.add_const("w", np.arange(4, dtype=np.float32))
    for i in range(n):
        node = Node("Add", [v, w], [T4], name="add") if i % 2 else Node("Relu", [v], [T4], name="relu")
        g.append(node)
        v = node.output
    g.outputs.append(v)
    return g


def build_diamond() -> Graph:
    """x -> a=Relu(x); b=Relu(a); c=Sigmoid(a); d=Add(b, c) -> output d."""
    g = Graph("diamond")
    x = g.add_input("x", T4)
    a = Node("Relu", [x], [T4], name="a", output_names=["a"])
    b = Node("Relu", [a.output], [T4], name="b", output_names=["b"])
    c = Node("Sigmoid", [a.output], [T4], name="c", output_names=["c"])
    d = Node("Add", [b.output, c.output], [T4], name="d", output_names=["d"])
    g.append(a, b, c, d)
    g.outputs.append(d.output)
    return g


@pytest.fixture
def chain() -> Callable[..., Graph]:
    return build_chain


@pytest.fixture
def diamond() -> Graph:
    return build_diamond()
