"""The graph IR: immutable nodes in SSA form, and a Graph that names a step's inputs, outputs and
in-place updates. Every stage of the compiler (traced, differentiated, optimised) is a Graph, so
one printer serves them all."""
import itertools
import math

import numpy as np

_ids = itertools.count()


class Node:
    """One value: `op` applied to `inputs` with hashable `attrs`, of static `shape` and `dtype`.

    `source` is the user's "file:line" that created it, carried through every pass so errors
    and listings point at user code. `value` holds the array of a `const` node."""

    __slots__ = ("op", "inputs", "attrs", "shape", "dtype", "source", "value", "id")

    def __init__(self, op, inputs, attrs, shape, dtype, source="", value=None):
        self.op = op
        self.inputs = tuple(inputs)
        self.attrs = dict(attrs)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.source = source
        self.value = value
        self.id = next(_ids)

    @property
    def size(self):
        return math.prod(self.shape)

    def key(self):
        """Structural identity used by CSE: same op, attrs and inputs compute the same value."""
        if self.op == "const":
            return ("const", self.dtype.str, self.shape, self.value.tobytes())
        if self.op in ("input", "scalar"):
            return (self.op, self.id)
        return (self.op, tuple(sorted(self.attrs.items())), tuple(i.id for i in self.inputs))

    def __repr__(self):
        return f"Node(%{self.id} {self.op} {dtype_name(self.dtype)}{list(self.shape)})"


def dtype_name(dtype):
    return {"float32": "f32", "float64": "f64", "int64": "i64", "int32": "i32", "bool": "bool"}.get(
        np.dtype(dtype).name, np.dtype(dtype).name)


def type_str(node):
    return f"{dtype_name(node.dtype)}[{','.join(map(str, node.shape))}]"


def toposort(roots):
    """Nodes reachable from `roots`, each after its inputs (iterative: graphs can be deep)."""
    order, seen = [], set()
    for root in roots:
        if root.id in seen:
            continue
        stack = [(root, iter(root.inputs))]
        seen.add(root.id)
        while stack:
            node, it = stack[-1]
            child = next(it, None)
            if child is None:
                stack.pop()
                order.append(node)
            elif child.id not in seen:
                seen.add(child.id)
                stack.append((child, iter(child.inputs)))
    return order


class Graph:
    """A step: ordered `inputs` (source nodes the caller binds), named `outputs`, `updates`,
    pairs (input node, new value) written back in place after the step, and `checks`, pairs
    (parameter index, gradient node) that must be finite before any update is written.

    `groups` maps node id -> fusion group number once `fuse_elementwise` has run, so listings
    show which nodes become one loop."""

    def __init__(self, inputs, outputs, updates=(), name="step", groups=None, checks=()):
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.updates = list(updates)
        self.checks = list(checks)
        self.name = name
        self.groups = dict(groups or {})
        self._nodes = None

    def roots(self):
        return [n for _, n in self.outputs] + [v for _, v in self.updates] + \
            [g for _, g in self.checks]

    @property
    def nodes(self):
        """Unused inputs, then every node the roots reach in topological order -- computed
        once: a Graph is not changed after it is made (passes build new ones)."""
        if self._nodes is None:
            reachable = toposort(self.roots())
            ids = {n.id for n in reachable}
            self._nodes = [n for n in self.inputs if n.id not in ids] + reachable
        return self._nodes

    def replace(self, mapping, groups=None):
        """A new Graph whose outputs and updates are remapped through `mapping` (id -> Node)."""
        get = lambda n: mapping.get(n.id, n)
        return Graph(self.inputs, [(k, get(n)) for k, n in self.outputs],
                     [(t, get(v)) for t, v in self.updates], self.name,
                     self.groups if groups is None else groups,
                     [(i, get(g)) for i, g in self.checks])

    def __len__(self):
        return len(self.nodes)

    def __str__(self):
        return format_graph(self)

    def to_dot(self):
        return graph_to_dot(self)


def _attr_text(node):
    parts = []
    for k, v in sorted(node.attrs.items()):
        parts.append(f"{k}={v}")
    if node.op == "const":
        v = node.value
        parts.append(f"value={v.item()!r}" if v.size == 1 else f"value=<{v.size} values>")
    return ", ".join(parts)


def format_graph(graph):
    """A jaxpr-like listing: one line per node with type, attributes, fusion group and source."""
    nodes = graph.nodes
    names = {n.id: f"%{i}" for i, n in enumerate(nodes)}
    sig = ", ".join(f"{names[n.id]}:{n.attrs.get('name', n.op)}:{type_str(n)}" for n in graph.inputs)
    lines = [f"graph {graph.name}({sig}) {{"]
    input_ids = {n.id for n in graph.inputs}
    for n in nodes:
        if n.id in input_ids:
            continue
        args = ", ".join(names[i.id] for i in n.inputs)
        attrs = _attr_text(n)
        call = f"{n.op}({args}{'; ' + attrs if attrs and args else attrs})"
        group = f"  [kernel {graph.groups[n.id]}]" if n.id in graph.groups else ""
        src = f"  # {n.source}" if n.source else ""
        lines.append(f"  {names[n.id]}: {type_str(n)} = {call}{group}{src}")
    for k, n in graph.outputs:
        lines.append(f"  output {k} = {names[n.id]}")
    for t, v in graph.updates:
        lines.append(f"  update {t.attrs.get('name', names[t.id])} <- {names[v.id]}")
    for i, g in graph.checks:
        lines.append(f"  check finite {names[g.id]} (gradient of parameter {i})")
    lines.append("}")
    return "\n".join(lines)


def graph_to_dot(graph):
    """Graphviz text; nodes of one fusion group sit in one cluster."""
    nodes = graph.nodes
    names = {n.id: f"n{i}" for i, n in enumerate(nodes)}
    lines = [f'digraph "{graph.name}" {{', "  node [shape=box, fontsize=10];"]
    clusters = {}
    for n in nodes:
        label = f"{n.attrs.get('name', n.op)}\\n{type_str(n)}"
        decl = f'    {names[n.id]} [label="{label}"];'
        if n.id in graph.groups:
            clusters.setdefault(graph.groups[n.id], []).append(decl)
        else:
            lines.append(decl)
    for g, decls in sorted(clusters.items()):
        lines.append(f'  subgraph cluster_{g} {{ label="kernel {g}"; style=dashed;')
        lines.extend(decls)
        lines.append("  }")
    for n in nodes:
        for i in n.inputs:
            lines.append(f"  {names[i.id]} -> {names[n.id]};")
    lines.append("}")
    return "\n".join(lines)
