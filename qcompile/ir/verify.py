"""``verify(graph)``: check the IR invariants; raise :class:`VerifyError` listing every breach."""

from __future__ import annotations

from qcompile.ir.core import Graph, IRError, Use, Value
from qcompile.ir.ops import schema


class VerifyError(IRError):
    """The graph breaks one or more IR invariants (all are listed)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(f"invalid IR: {problems[0]}{more}\n  " + "\n  ".join(problems))


def verify(graph: Graph) -> None:
    """Check use-def symmetry, topological order, unique names, arity and required attributes."""
    problems: list[str] = []
    defined: dict[Value, None] = {}  # ordered, so problems are listed in a stable order
    names: dict[str, Value] = {}

    def define(v: Value, what: str) -> None:
        if v.name in names and names[v.name] is not v:
            problems.append(f"value name %{v.name} is defined twice ({what})")
        names[v.name] = v
        defined[v] = None

    for v in graph.inputs:
        if v.producer is not None or v.is_const:
            problems.append(f"graph input %{v.name} has a producer or a constant")
        define(v, "input")
    for name, v in graph.initializers.items():
        if v.name != name:
            problems.append(f"constant registered as {name!r} is named %{v.name}")
        if v.const is None:
            problems.append(f"constant %{v.name} has no data")
        elif v.type.shape != tuple(v.const.shape):
            problems.append(f"constant %{v.name}: type {v.type} but data shape {v.const.shape}")
        define(v, "constant")

    node_names: set[str] = set()
    all_nodes = set(graph.nodes)
    for node in graph.nodes:
        where = f"{node.qualified_op} {node.name!r}"
        if node.graph is not graph:
            problems.append(f"{where} does not point back to its graph")
        if node.name in node_names:
            problems.append(f"node name {node.name!r} is used twice")
        node_names.add(node.name)
        for i, v in enumerate(node.inputs):
            if v is None:
                continue
            if v not in defined:
                problems.append(f"{where} input {i} %{v.name} is not defined before it")
            if Use(node, i) not in v._uses:
                problems.append(f"{where} input {i} %{v.name} is missing from its use list")
        for i, out in enumerate(node.outputs):
            if out.producer is not node or out.index != i:
                problems.append(f"{where} output {i} %{out.name} does not point back to it")
            define(out, f"output of {node.name}")
        s = schema(node)
        if s is not None:
            n_in = len(node.inputs)
            while n_in and node.inputs[n_in - 1] is None:
                n_in -= 1  # trailing omitted optionals
            if not s.min_inputs <= n_in <= s.max_inputs:
                problems.append(f"{where} has {n_in} inputs, expects {s.min_inputs}..{s.max_inputs}")
            if not s.min_outputs <= len(node.outputs) <= s.max_outputs:
                problems.append(f"{where} has {len(node.outputs)} outputs")
            problems += [f"{where} lacks attribute {a!r}" for a in s.required_attrs if a not in node.attrs]

    for v in defined:
        for use in v._uses:
            if use.node not in all_nodes:
                problems.append(f"%{v.name} lists a use by {use.node!r}, which is not in the graph")
            elif use.index >= len(use.node.inputs) or use.node.inputs[use.index] is not v:
                problems.append(f"%{v.name} lists use {use.node.name}[{use.index}] that is stale")
    for v in graph.outputs:
        if v not in defined:
            problems.append(f"graph output %{v.name} is not defined")
    if problems:
        raise VerifyError(problems)
