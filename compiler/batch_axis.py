"""One artifact for every batch length: axis 0 of the batch as a run-time value.

A step is traced at two batch lengths, `n_a` (the batch at hand, which becomes the artifact's
capacity) and `n_b`. The artifact may serve any length up to its capacity only if the two
step graphs are the same graph apart from the batch length: the same ops on the same inputs,
every dimension equal or exactly (n_a, n_b), every attribute equal or differing only where it
holds the batch length, and every constant equal or a number of the form k / n or k * n (a
mean's 1 / n and its gradient). Those constants become host scalars the runtime computes from
the batch length on every call; anything else -- a reshape that folds axis 0 into another
axis, a slice at n - 1, a Python number made from `x.shape[0]` such as BatchNorm's n / (n - 1)
-- and the step is compiled per batch length, with the reason in the log. Two lengths agreeing
does not prove every length does (Python may branch on the length), so the runtime traces each
new shorter length once more and compares its graph with the capacity's before running it.

The planner then plans both graphs; kernels correspond one to one (else: per length), and the
dimensions in which they differ are the batch dimensions the lowering runs to the run-time
length (`mark_kernels`). Memory is planned at the capacity, so every buffer fits any shorter
batch: a batch dimension keeps the capacity's strides and only its loop runs shorter."""
import numpy as np

from .graph import Graph, Node

BATCH_LENGTH = ("batch", "n", 1.0)
"""The host scalar holding the run-time batch length (always present in a batch-symbolic step)."""


class NotSymbolic(Exception):
    """The step's graph depends on the batch length in a way a run-time length cannot cover."""


def batch_scalar_value(ref, n):
    """The value of a batch host scalar ("batch", kind, k) for batch length n."""
    _, kind, k = ref
    return k * n if kind == "n" else k / n


def generalise(graph_a, graph_b, n_a, n_b):
    """`graph_a` with its batch-length constants replaced by host scalars (refs ("batch",
    "inverse", k) for k / n and ("batch", "n", k) for k * n, plus BATCH_LENGTH), and the same
    for `graph_b`; raises NotSymbolic with the reason when the two graphs differ otherwise."""
    nodes_a, nodes_b = graph_a.nodes, graph_b.nodes
    if len(nodes_a) != len(nodes_b) or len(graph_a.inputs) != len(graph_b.inputs):
        raise NotSymbolic("the traced graph has a different number of operations at another "
                          "batch length")
    position = {n.id: i for i, n in enumerate(nodes_b)}
    index_a = {n.id: i for i, n in enumerate(nodes_a)}
    scalars = {}                       # position -> ref
    for i, (a, b) in enumerate(zip(nodes_a, nodes_b)):
        where = f" (at {a.source})" if a.source else ""
        if a.op != b.op or a.dtype != b.dtype or len(a.inputs) != len(b.inputs) or any(
                index_a[x.id] != position[y.id] for x, y in zip(a.inputs, b.inputs)):
            raise NotSymbolic(f"the graph's structure changes with the batch length{where}")
        _check_shape(a.shape, b.shape, n_a, n_b, f"{a.op}{where}")
        if set(a.attrs) != set(b.attrs) or any(
                not _same_or_batch(a.attrs[k], b.attrs[k], n_a, n_b) for k in a.attrs):
            raise NotSymbolic(f"an attribute of {a.op} changes with the batch length{where}")
        if a.op == "const" and a.value.tobytes() != b.value.tobytes():
            scalars[i] = _batch_constant(a, b, n_a, n_b, where)
    ends = [(graph_a, n_a, nodes_a), (graph_b, n_b, nodes_b)]
    return tuple(_substituted(g, nodes, scalars) for g, _, nodes in ends)


def _check_shape(sa, sb, n_a, n_b, what):
    if len(sa) != len(sb) or not all(x == y or (x, y) == (n_a, n_b) for x, y in zip(sa, sb)):
        raise NotSymbolic(f"the shape of {what} is {sa} at batch length {n_a} but {sb} at "
                          f"{n_b}: it is not the batch length in one axis")


def _same_or_batch(x, y, n_a, n_b):
    if x == y:
        return True
    if isinstance(x, tuple) and isinstance(y, tuple) and len(x) == len(y):
        return all(_same_or_batch(p, q, n_a, n_b) for p, q in zip(x, y))
    return (x, y) == (n_a, n_b)


def _batch_constant(a, b, n_a, n_b, where):
    """("batch", "inverse", k) or ("batch", "n", k) for a number that is k / n or k * n at both
    lengths, to the constant's own precision (a float32 1/33 is 1/33 to 3e-8)."""
    if a.value.size != 1:
        raise NotSymbolic(f"a constant array changes with the batch length{where}")
    x, y = float(a.value.item()), float(b.value.item())
    rtol = 4 * float(np.finfo(a.dtype).eps) if a.dtype.kind == "f" else 1e-12
    for kind, k, k_b in (("inverse", x * n_a, y * n_b), ("n", x / n_a, y / n_b)):
        if k and np.isclose(k, k_b, rtol=rtol, atol=0):
            return ("batch", kind, _snapped(k, rtol))
    raise NotSymbolic(f"the number {x!r} at batch length {n_a} is {y!r} at {n_b}, neither "
                      f"k / n nor k * n{where}: a Python number computed from the batch length")


def _snapped(k, rtol):
    """k as the integer or reciprocal of an integer it is within rounding of (a mean's 1 or
    1 / d), so the run-time k / n is what the per-length trace computes."""
    for candidate in (round(k), 1 / round(1 / k) if abs(k) < 1 else None):
        if candidate and abs(candidate - k) <= rtol * abs(k):
            return float(candidate)
    return k


def _substituted(graph, nodes, scalars):
    """`graph` with the constants at `scalars` positions replaced by host-scalar inputs,
    appended after its inputs (so they take the last places of the scalars vector)."""
    added = {}

    def scalar(ref, dtype):
        if ref not in added:
            added[ref] = Node("scalar", (), {"name": f"batch {ref[1]} x{ref[2]:g}", "ref": ref},
                              (), dtype)
        return added[ref]
    scalar(BATCH_LENGTH, np.float64)
    mapping = {}
    for i, node in enumerate(nodes):
        if i in scalars:
            mapping[node.id] = scalar(scalars[i], node.dtype)
        elif node.inputs and any(x.id in mapping for x in node.inputs):
            mapping[node.id] = Node(node.op, [mapping.get(x.id, x) for x in node.inputs],
                                    node.attrs, node.shape, node.dtype, node.source, node.value)
    get = lambda n: mapping.get(n.id, n)  # noqa: E731
    return Graph(list(graph.inputs) + list(added.values()),
                 [(k, get(n)) for k, n in graph.outputs], [(t, get(v)) for t, v in graph.updates],
                 graph.name, {}, [(i, get(g)) for i, g in graph.checks])


def mark_kernels(plan_a, plan_b, n_a, n_b):
    """Record on each kernel of `plan_a` which of its dimensions are the batch length (those in
    which it differs from its counterpart in `plan_b`); raises NotSymbolic when the plans do
    not correspond."""
    kernels_a = plan_a.kernels + plan_a.update_kernels
    kernels_b = plan_b.kernels + plan_b.update_kernels
    if len(kernels_a) != len(kernels_b):
        raise NotSymbolic("the planner makes other kernels at another batch length")
    for ka, kb in zip(kernels_a, kernels_b):
        if ka.kind != kb.kind:
            raise NotSymbolic("the planner makes other kernels at another batch length")
        dims_a, dims_b = ka.dimensions(), kb.dimensions()
        _check_shape(dims_a, dims_b, n_a, n_b, f"kernel {ka.name}")
        ka.batch = tuple(d for d, (x, y) in enumerate(zip(dims_a, dims_b)) if x != y)
        ka.capacity = n_a
        if ka.kind == "random" and ka.batch not in ((), (0,)):
            raise NotSymbolic(f"random numbers drawn over a batch axis other than the first "
                              f"({ka.name})")
    plan_a.capacity = n_a
