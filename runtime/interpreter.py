"""The reference interpreter: evaluates any Graph node by node with the numpy implementations.
It is the oracle the passes and the native code are tested against."""
import numpy as np

from graphflux.compiler.graph import toposort

from .numpy_impls import IMPLS


def evaluate(graph, bindings):
    """Run `graph`. `bindings` maps input/scalar node id -> array or float.
    Returns ({output name: array}, {update target id: array})."""
    values = dict(bindings)
    for node in toposort(graph.roots()):
        if node.id in values:
            continue
        if node.op == "const":
            values[node.id] = node.value
        elif node.op in ("input", "scalar"):
            raise KeyError(f"no binding for graph input {node.attrs.get('name')}")
        else:
            args = [values[i.id] for i in node.inputs]
            out = IMPLS[node.op](*args, **node.attrs)
            values[node.id] = np.asarray(out, dtype=node.dtype)
    outputs = {k: values[n.id] for k, n in graph.outputs}
    updates = {t.id: values[v.id] for t, v in graph.updates}
    return outputs, updates


def first_nonfinite(graph, bindings):
    """The first node, in execution order, whose value has a NaN or an infinity (None if
    none does): what NonFiniteLoss points the user at."""
    values = dict(bindings)
    with np.errstate(all="ignore"):
        for node in toposort(graph.roots()):
            if node.id not in values:
                if node.op == "const":
                    values[node.id] = node.value
                    continue
                args = [values[i.id] for i in node.inputs]
                values[node.id] = np.asarray(IMPLS[node.op](*args, **node.attrs),
                                             dtype=node.dtype)
                if node.dtype.kind == "f" and not np.all(np.isfinite(values[node.id])):
                    return node
    return None
