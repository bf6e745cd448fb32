"""The reference interpreter: evaluates any Graph node by node with the numpy implementations.
It is the oracle the passes and the native code are tested against."""
import numpy as np

from graphflux.compiler.graph import toposort

from .numpy_impls import IMPLS


def _run(graph, bindings, stop=None):
    """Evaluate every node the roots reach, in order; `stop(node, value)` may end the walk
    early by returning True (then returns that node)."""
    values = dict(bindings)
    for node in toposort(graph.roots()):
        if node.id in values:
            continue
        if node.op == "const":
            values[node.id] = node.value
            continue
        if node.op in ("input", "scalar"):
            raise KeyError(f"no binding for graph input {node.attrs.get('name')}")
        args = [values[i.id] for i in node.inputs]
        values[node.id] = np.asarray(IMPLS[node.op](*args, **node.attrs), dtype=node.dtype)
        if stop is not None and stop(node, values[node.id]):
            return values, node
    return values, None


def evaluate(graph, bindings):
    """Run `graph`. `bindings` maps input/scalar node id -> array or float.
    Returns ({output name: array}, {update target id: array})."""
    values, _ = _run(graph, bindings)
    outputs = {k: values[n.id] for k, n in graph.outputs}
    updates = {t.id: values[v.id] for t, v in graph.updates}
    return outputs, updates


def first_nonfinite(graph, bindings):
    """The first node, in execution order, whose value has a NaN or an infinity (None if
    none does): what NonFiniteLoss points the user at."""
    with np.errstate(all="ignore"):
        _, node = _run(graph, bindings, lambda n, v: n.dtype.kind == "f" and
                       not np.all(np.isfinite(v)))
    return node
