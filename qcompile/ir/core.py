"""The qcompile IR: a value-centric SSA graph of ONNX-style operations.

Invariants (checked by :func:`qcompile.ir.verify`):

1. ``node.inputs[i] is v``  <=>  ``Use(node, i) in v.uses()`` (use-def symmetry).
2. ``graph.nodes`` is topologically ordered: every input of a node is a graph input, a constant
   (initializer) or the output of an earlier node.
3. Every value has exactly one definer and a unique name within its graph.

Use-def lists change only through the methods here (``Node.replace_input``,
``Value.replace_all_uses_with``, ``Graph.insert_*``, ``Graph.remove``); ``node.inputs`` is a
read-only tuple. Equality is identity, so values and nodes can key dicts (observers, environments).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from qcompile.ir.dtypes import DType

Dim = int | str | None  # int: static; str: symbolic (e.g. "N"); None: unknown
DEFAULT_DOMAIN = ""
QCOMPILE_DOMAIN = "qcompile"


class IRError(Exception):
    """An operation would break an IR invariant."""


@dataclass(frozen=True, slots=True)
class TensorType:
    """Element type and shape. ``shape is None`` means the rank is unknown (opaque ops only)."""

    dtype: DType
    shape: tuple[Dim, ...] | None

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    @property
    def is_static(self) -> bool:
        return self.shape is not None and all(isinstance(d, int) for d in self.shape)

    def __str__(self) -> str:
        if self.shape is None:
            return f"{self.dtype.short}[?]"
        dims = ",".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.dtype.short}[{dims}]"

    @staticmethod
    def of(array: np.ndarray) -> TensorType:
        return TensorType(DType.from_numpy(array.dtype), tuple(int(d) for d in array.shape))


class Use(NamedTuple):
    node: Node
    index: int


class Value:
    """An edge: produced by one node output, or a graph input, or a constant (``const``)."""

    __slots__ = ("name", "type", "producer", "index", "const", "meta", "_uses", "__weakref__")

    def __init__(
        self,
        name: str,
        type: TensorType,
        *,
        const: np.ndarray | None = None,
        producer: Node | None = None,
        index: int = 0,
    ) -> None:
        self.name = name
        self.type = type
        self.producer = producer
        self.index = index
        self.const = const
        self.meta: dict[Any, Any] = {}
        self._uses: dict[Use, None] = {}  # insertion-ordered set

    def uses(self) -> tuple[Use, ...]:
        return tuple(self._uses)

    def consumers(self) -> tuple[Node, ...]:
        return tuple(dict.fromkeys(u.node for u in self._uses))

    @property
    def is_const(self) -> bool:
        return self.const is not None

    def replace_all_uses_with(self, other: Value) -> None:
        """Point every consuming node input at ``other`` (graph outputs: see Graph.replace_value)."""
        if other is self:
            return
        uses = self.uses()
        for use in uses:  # check every use first, so a refusal leaves the graph untouched
            if use.node.graph is not None:
                use.node.graph._check_defined_before(other, use.node)
        for use in uses:
            use.node.replace_input(use.index, other)

    def __repr__(self) -> str:
        return f"%{self.name}: {self.type}"


class Node:
    """One operation. ``outputs`` are created with the node and owned by it."""

    __slots__ = ("op", "domain", "name", "attrs", "graph", "meta", "_inputs", "_outputs")

    def __init__(
        self,
        op: str,
        inputs: Sequence[Value | None],
        output_types: Sequence[TensorType],
        *,
        attrs: Mapping[str, Any] | None = None,
        domain: str = DEFAULT_DOMAIN,
        name: str = "",
        output_names: Sequence[str] | None = None,
    ) -> None:
        self.op = op
        self.domain = domain
        self.name = name
        self.attrs: dict[str, Any] = dict(attrs or {})
        self.graph: Graph | None = None
        self.meta: dict[Any, Any] = {}
        self._inputs: list[Value | None] = []
        names = list(output_names) if output_names is not None else [""] * len(output_types)
        if len(names) != len(output_types):
            raise IRError(f"{op}: {len(names)} output names for {len(output_types)} outputs")
        self._outputs = tuple(
            Value(n, t, producer=self, index=i) for i, (n, t) in enumerate(zip(names, output_types))
        )
        for i, v in enumerate(inputs):
            self._inputs.append(v)
            if v is not None:
                v._uses[Use(self, i)] = None

    @property
    def inputs(self) -> tuple[Value | None, ...]:
        return tuple(self._inputs)

    @property
    def outputs(self) -> tuple[Value, ...]:
        return self._outputs

    @property
    def output(self) -> Value:
        if len(self._outputs) != 1:
            raise IRError(f"{self.op} node {self.name!r} has {len(self._outputs)} outputs")
        return self._outputs[0]

    def replace_input(self, i: int, v: Value | None) -> None:
        """Set input ``i`` to ``v``, keeping both values' use lists in step."""
        i = range(len(self._inputs))[i]  # normalise a negative index: uses record i >= 0
        old = self._inputs[i]
        if old is v:
            return
        if v is not None and self.graph is not None:
            self.graph._check_defined_before(v, self)
        if old is not None:
            del old._uses[Use(self, i)]
        self._inputs[i] = v
        if v is not None:
            v._uses[Use(self, i)] = None

    def add_input(self, v: Value | None) -> int:
        """Append an input (e.g. an optional bias); returns its index."""
        self._inputs.append(None)
        try:
            self.replace_input(len(self._inputs) - 1, v)
        except IRError:
            self._inputs.pop()  # refused: leave the node as it was
            raise
        return len(self._inputs) - 1

    def _detach_inputs(self) -> None:
        for i, v in enumerate(self._inputs):
            if v is not None:
                v._uses.pop(Use(self, i), None)

    @property
    def qualified_op(self) -> str:
        return self.op if self.domain in ("", "ai.onnx") else f"{self.domain}.{self.op}"

    def __repr__(self) -> str:
        return f"<Node {self.qualified_op} {self.name!r}>"


class Graph:
    """Nodes in topological order, graph inputs/outputs, constants and a name authority."""

    def __init__(self, name: str = "graph", opsets: Mapping[str, int] | None = None) -> None:
        self.name = name
        self.opsets: dict[str, int] = dict(opsets or {DEFAULT_DOMAIN: 17})
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.initializers: dict[str, Value] = {}
        self.meta: dict[Any, Any] = {}
        self.doc_string = ""
        self.model_props: dict[str, str] = {}  # producer, ir_version... (round-tripped)
        self.metadata: dict[str, str] = {}  # ONNX metadata_props
        self.functions: list[bytes] = []  # serialized model-local functions, carried opaquely
        self._nodes: list[Node] = []
        self._pos: dict[Node, int] | None = None
        self._names: set[str] = set()  # value names
        self._node_names: set[str] = set()
        self._next = 0

    # ---- reading -------------------------------------------------------------------------
    @property
    def opset(self) -> int:
        return self.opsets.get(DEFAULT_DOMAIN, self.opsets.get("ai.onnx", 17))

    @property
    def nodes(self) -> tuple[Node, ...]:
        """A snapshot, so passes may mutate the graph while they iterate."""
        return tuple(self._nodes)

    def __len__(self) -> int:
        return len(self._nodes)

    def position(self, node: Node) -> int:
        if self._pos is None:
            self._pos = {n: i for i, n in enumerate(self._nodes)}
        try:
            return self._pos[node]
        except KeyError:
            raise IRError(f"{node!r} is not in graph {self.name!r}") from None

    def values(self) -> Iterable[Value]:
        """Every value: inputs, constants, then node outputs in order."""
        yield from self.inputs
        yield from self.initializers.values()
        for n in self._nodes:
            yield from n.outputs

    def find_node(self, name: str) -> Node | None:
        return next((n for n in self._nodes if n.name == name), None)

    def find_value(self, name: str) -> Value | None:
        return next((v for v in self.values() if v.name == name), None)

    def __str__(self) -> str:
        from qcompile.ir.printer import format_graph

        return format_graph(self)

    # ---- names ---------------------------------------------------------------------------
    def unique_name(self, base: str, *, node: bool = False) -> str:
        """A value (or, with ``node``, node) name not yet used in this graph, from ``base``."""
        taken = self._node_names if node else self._names
        base = base or "v"
        cand = base
        while cand in taken:
            self._next += 1
            cand = f"{base}_{self._next}"
        taken.add(cand)
        return cand

    # ---- building ------------------------------------------------------------------------
    def add_input(self, name: str, type: TensorType) -> Value:
        v = Value(self.unique_name(name), type)
        self.inputs.append(v)
        return v

    def add_const(self, name: str, array: np.ndarray, dtype: DType | None = None) -> Value:
        """A new constant value (an ONNX initializer) with a unique name.

        ``dtype`` names an element type numpy lacks (int4/uint4 held widened in int8/uint8)."""
        array = np.asarray(array)
        ttype = TensorType.of(array) if dtype is None else TensorType(dtype, array.shape)
        v = Value(self.unique_name(name), ttype, const=array)
        self.initializers[v.name] = v
        return v

    def remove_const(self, v: Value) -> None:
        if self.initializers.get(v.name) is not v:
            raise IRError(f"%{v.name} is not a constant of graph {self.name!r}")
        if v._uses or v in self.outputs:
            raise IRError(f"constant %{v.name} is still used")
        del self.initializers[v.name]
        self._names.discard(v.name)

    def _name_node(self, node: Node) -> None:
        if node.graph is not None:
            raise IRError(f"{node!r} already belongs to a graph")
        node.name = self.unique_name(node.name or node.op.lower(), node=True)
        for out in node.outputs:
            out.name = self.unique_name(out.name or f"{node.name}_out{out.index}")
        node.graph = self

    def _check_defined_before(self, v: Value, node: Node, at: int | None = None) -> None:
        if v.producer is None:
            if v.is_const:
                if self.initializers.get(v.name) is not v:
                    raise IRError(f"constant %{v.name} does not belong to graph {self.name!r}")
            elif v not in self.inputs:
                raise IRError(f"%{v.name} is neither an input, a constant nor a node output")
            return
        if v.producer.graph is not self:
            raise IRError(f"%{v.name} is produced by a node outside graph {self.name!r}")
        limit = self.position(node) if at is None else at
        if self.position(v.producer) >= limit:
            raise IRError(
                f"{node.qualified_op} {node.name!r} would use %{v.name} before it is defined"
            )

    def _insert_at(self, index: int, nodes: Sequence[Node]) -> None:
        # Check the whole batch before changing anything, so a refusal leaves the graph as it
        # was. A node registers its uses when it is constructed; a refused node's uses are
        # dropped again (re-registered if it is inserted later), so verify() still passes.
        try:
            batch: set[Node] = set()
            for node in nodes:
                if node.graph is not None or node in batch:
                    raise IRError(f"{node!r} already belongs to a graph")
                for v in node.inputs:
                    if v is None:
                        continue
                    if v.producer is not None and v.producer in batch:
                        continue  # defined by an earlier node of the same batch
                    self._check_defined_before(v, node, at=index)
                batch.add(node)
        except IRError:
            for node in nodes:
                if node.graph is None:
                    node._detach_inputs()
            raise
        for k, node in enumerate(nodes):
            at_end = index + k == len(self._nodes)
            for i, v in enumerate(node.inputs):
                if v is not None:
                    v._uses[Use(node, i)] = None
            self._name_node(node)
            self._nodes.insert(index + k, node)
            if self._pos is not None and at_end:
                self._pos[node] = index + k
            else:
                self._pos = None

    def append(self, *nodes: Node) -> None:
        self._insert_at(len(self._nodes), nodes)

    def insert_before(self, anchor: Node, *nodes: Node) -> None:
        self._insert_at(self.position(anchor), nodes)

    def insert_after(self, anchor: Node, *nodes: Node) -> None:
        self._insert_at(self.position(anchor) + 1, nodes)

    def remove(self, node: Node, *, safe: bool = True, drop_dead_consts: bool = False) -> None:
        """Remove ``node``. ``safe`` refuses while any of its outputs is still used.

        ``drop_dead_consts`` also removes the constants it read that nothing else uses now.
        """
        if node.graph is not self:
            raise IRError(f"{node!r} is not in graph {self.name!r}")
        if safe:
            for out in node.outputs:
                if out._uses or out in self.outputs:
                    users = ", ".join(u.node.name for u in out.uses()) or "graph output"
                    raise IRError(f"cannot remove {node!r}: %{out.name} is used by {users}")
        self._nodes.remove(node)
        self._pos = None
        read = [v for v in node.inputs if v is not None and v.is_const]
        node._detach_inputs()
        node.graph = None
        self._node_names.discard(node.name)
        for out in node.outputs:
            self._names.discard(out.name)
        if drop_dead_consts:
            for v in dict.fromkeys(read):
                if not v._uses and v not in self.outputs and self.initializers.get(v.name) is v:
                    self.remove_const(v)

    def replace_value(self, old: Value, new: Value) -> None:
        """Replace every use of ``old`` by ``new``, graph outputs included.

        A graph output keeps its public name: when ``new`` is a node output that is not
        already an output or input, it takes over ``old``'s name (``old`` is renamed).
        """
        old.replace_all_uses_with(new)
        for i, v in enumerate(self.outputs):
            if v is old:
                if new.producer is not None and new not in self.outputs:
                    public = old.name
                    old.name = self.unique_name(public + "_replaced")
                    new.name = public
                self.outputs[i] = new

    def sort(self) -> None:
        """Re-establish topological order (stable: keeps the current order where it can)."""
        order: list[Node] = []
        done: set[Node] = set()
        pending = list(self._nodes)
        members = set(pending)
        for n in pending:  # a producer outside the graph would otherwise be reported as a cycle
            for v in n.inputs:
                if v is not None and v.producer is not None and v.producer not in members:
                    raise IRError(f"{n!r} reads %{v.name}, whose producer is not in graph "
                                  f"{self.name!r}")
        while pending:
            rest = []
            for n in pending:
                if all(v is None or v.producer is None or v.producer in done for v in n.inputs):
                    order.append(n)
                    done.add(n)
                else:
                    rest.append(n)
            if len(rest) == len(pending):
                raise IRError(f"graph {self.name!r} has a cycle through {rest[0]!r}")
            pending = rest
        self._nodes = order
        self._pos = None

    # ---- copying -------------------------------------------------------------------------
    def clone(self) -> Graph:
        """A deep copy (constants copied too), so tests can run passes functionally."""
        g = Graph(self.name, self.opsets)
        g.doc_string = self.doc_string
        g.model_props = dict(self.model_props)
        g.metadata = dict(self.metadata)
        g.functions = list(self.functions)
        g.meta = copy.copy(self.meta)
        vmap: dict[Value, Value] = {}
        for v in self.inputs:
            nv = Value(v.name, v.type)
            nv.meta = dict(v.meta)
            g.inputs.append(nv)
            vmap[v] = nv
        for name, v in self.initializers.items():
            nv = Value(name, v.type, const=np.array(v.const, copy=True))
            nv.meta = dict(v.meta)
            g.initializers[name] = nv
            vmap[v] = nv
        for n in self._nodes:
            nn = Node(
                n.op,
                [None if v is None else vmap[v] for v in n.inputs],
                [o.type for o in n.outputs],
                attrs=copy.deepcopy(n.attrs),
                domain=n.domain,
                name=n.name,
                output_names=[o.name for o in n.outputs],
            )
            nn.meta = dict(n.meta)
            nn.graph = g
            g._nodes.append(nn)
            for o, no in zip(n.outputs, nn.outputs):
                no.meta = dict(o.meta)
                vmap[o] = no
        g.outputs = [vmap[v] for v in self.outputs]
        g._names = set(self._names)
        g._node_names = set(self._node_names)
        g._next = self._next
        return g
