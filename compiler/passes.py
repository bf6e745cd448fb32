"""Optimisation passes: each a pure, named `Graph -> Graph` function; `PIPELINE` lists them in
order. Each is tested by "the reference interpreter gives the same numbers before and after"
plus the structure it should produce."""
import time

import numpy as np

from . import ops
from .fusion import fuse_elementwise
from .graph import Node

SMALL_CONSTANT = 64   # folding never materialises constants larger than this many elements


def rebuild(graph, rewrite):
    """Walk `graph` in topological order, rebuilding each node on its rewritten inputs and
    offering it to `rewrite(node) -> Node | None`. Returns the new Graph."""
    mapping = {}
    for node in graph.nodes:
        if node.inputs:
            ins = tuple(mapping.get(i.id, i) for i in node.inputs)
            if any(a is not b for a, b in zip(ins, node.inputs)):
                node_new = Node(node.op, ins, node.attrs, node.shape, node.dtype, node.source,
                                node.value)
                mapping[node.id] = node_new
                node = node_new
        replaced = rewrite(node)
        if replaced is not None and replaced is not node:
            first = [k for k, v in mapping.items() if v is node]
            for k in first:
                mapping[k] = replaced
            mapping[node.id] = replaced
    return graph.replace(mapping, groups={})


def eliminate_dead_code(graph):
    """Keep only nodes that reach an output or update (Graph.nodes is already that set; this
    pass drops the fusion annotations of removed nodes and makes the step explicit)."""
    live = {n.id for n in graph.nodes}
    return graph.replace({}, groups={k: v for k, v in graph.groups.items() if k in live})


def eliminate_common_subexpressions(graph):
    """Merge nodes with the same op, attributes and inputs (constants by value)."""
    seen = {}

    def rewrite(node):
        if node.op in ("input", "scalar"):
            return None
        key = node.key()
        if key in seen:
            return seen[key]
        seen[key] = node
        return None
    return rebuild(graph, rewrite)


def fold_constants(graph):
    """Evaluate nodes whose inputs are all small constants, with the numpy implementations."""
    def rewrite(node):
        if not node.inputs or node.op == "const" or node.size > SMALL_CONSTANT:
            return None
        if not all(i.op == "const" for i in node.inputs) or node.op not in ops.NUMPY_IMPLS:
            return None
        with np.errstate(all="ignore"):
            value = ops.NUMPY_IMPLS[node.op](*[i.value for i in node.inputs], **node.attrs)
        return Node("const", (), {}, node.shape, node.dtype, node.source,
                    np.asarray(value, dtype=node.dtype).reshape(node.shape))
    return rebuild(graph, rewrite)


def _const_equal(node, x):
    return node.op == "const" and node.size == 1 and float(node.value.reshape(())) == x


def simplify_algebra(graph):
    """Identities that save work: x*1, x+0, double transposes, transposes folded into matmul
    flags (so W.T in Dense never materialises), reshape/broadcast no-ops."""
    def rewrite(node):
        op, ins, a = node.op, node.inputs, node.attrs
        if op == "elementwise" and len(ins) == 2:
            x, y = ins
            fn = a["fn"]
            for keep, other, unit in ((x, y, 1.0), (y, x, 1.0)):
                if fn == "mul" and _const_equal(other, unit) and keep.shape == node.shape:
                    return keep
            if fn in ("add", "sub") and _const_equal(y, 0.0) and x.shape == node.shape:
                return x
            if fn == "add" and _const_equal(x, 0.0) and y.shape == node.shape:
                return y
            if fn == "div" and _const_equal(y, 1.0) and x.shape == node.shape:
                return x
        if op == "matmul":
            x, y = ins
            ta, tb = a["ta"], a["tb"]
            changed = False
            if x.op == "transpose" and len(x.shape) == 2:
                x, ta, changed = x.inputs[0], not ta, True
            if y.op == "transpose" and len(y.shape) == 2:
                y, tb, changed = y.inputs[0], not tb, True
            if changed:
                return Node("matmul", (x, y), {"ta": ta, "tb": tb}, node.shape, node.dtype,
                            node.source)
        if op == "transpose":
            x = ins[0]
            if x.op == "matmul" and len(node.shape) == 2:
                p, q = x.inputs
                return Node("matmul", (q, p), {"ta": not x.attrs["tb"], "tb": not x.attrs["ta"]},
                            node.shape, node.dtype, node.source)
            if x.op == "transpose":
                perm = tuple(x.attrs["perm"][i] for i in a["perm"])
                if perm == tuple(range(len(perm))):
                    return x.inputs[0]
        if op == "reshape" and ins[0].op == "reshape":
            return Node("reshape", ins[0].inputs, a, node.shape, node.dtype, node.source)
        if op in ("reshape", "broadcast") and ins[0].shape == node.shape:
            return ins[0]
        return None
    return rebuild(graph, rewrite)


PIPELINE = (
    eliminate_dead_code,
    fold_constants,
    simplify_algebra,
    eliminate_common_subexpressions,
    fold_constants,
    eliminate_dead_code,
    fuse_elementwise,
)


def optimize(graph, pipeline=PIPELINE):
    """Run the passes in order; returns (graph, stats) with node counts and seconds per pass."""
    stats = []
    for p in pipeline:
        t = time.perf_counter()
        graph = p(graph)
        stats.append((p.__name__, len(graph), time.perf_counter() - t))
    return graph, stats
