"""Tracing a user's loss into the step graph: parameters enter through their slots, data
through positional arguments; then symbolic AD and, with an optimiser, its update rule traced on
top. The result names each graph input's source so the runtime can bind it."""
import contextlib
import time

import numpy as np

from graphflux.compiler import ops
from graphflux.compiler.autodiff import differentiate
from graphflux.compiler.errors import GraphfluxError, TraceError
from graphflux.compiler.graph import Graph, Node
from graphflux.compiler.tracer import Tracer, TraceContext

from .params import get_slot, set_slot, warn_unused


class ParameterError(GraphfluxError, TypeError):
    """A parameter the native step cannot update in place."""


def check_params(ps):
    """Parameters must be float, C-contiguous, writeable and non-overlapping."""
    dtype = None
    for p in ps:
        name = ps.name(p)
        if p.dtype.kind != "f":
            raise ParameterError(f"parameter {name} has dtype {p.dtype}; only float32/float64 "
                                 "arrays can be trained -- convert it with .astype(np.float32) "
                                 "or leave it out of gf.params")
        if not p.flags.c_contiguous or not p.flags.writeable:
            raise ParameterError(f"parameter {name} must be a C-contiguous, writeable array "
                                 "(use np.ascontiguousarray and assign it back to the layer)")
        if p.base is not None and any(q is not p and np.shares_memory(p, q) for q in ps):
            raise ParameterError(f"parameter {name} overlaps another parameter in memory")
        dtype = dtype or p.dtype
    return dtype or np.dtype(np.float32)


@contextlib.contextmanager
def installed(ps, values):
    """Put `values[i]` into every slot params recorded for `ps[i]` that still holds it,
    restoring on exit. (A slot that now holds another array keeps it: the model no longer
    uses the parameter there.)"""
    saved = []
    try:
        for p, v in zip(ps, values):
            for slot in ps.slots[id(p)]:
                current = get_slot(slot)
                if current is p:
                    saved.append((slot, current))
                    set_slot(slot, v)
        yield
    finally:
        for slot, old in reversed(saved):
            set_slot(slot, old)


class TracedStep:
    """The graphs of one step and where each input comes from:
    `bindings[node id] = (kind, key)` with kind param (index), data (position),
    state (array), captured (array) or scalar ((param index, scalar name))."""

    def __init__(self, graph, grad_graph, bindings, seconds, grad_names):
        self.graph, self.grad_graph = graph, grad_graph
        self.bindings, self.seconds, self.grad_names = bindings, seconds, grad_names


def _as_loss_node(out, ctx):
    if isinstance(out, Tracer):
        node = out.node
    elif isinstance(out, np.ndarray):
        node = ctx.lift(out).node
    else:
        raise TraceError(f"the loss returned {type(out).__name__} {out!r}, which does not depend "
                         "on any parameter or data: return a value computed with graphflux ops")
    if node.shape != () and node.size != 1:
        raise TraceError(f"the loss must be a scalar, got an array of shape {node.shape}; "
                         "reduce it with gf.mean or gf.sum")
    return ops.reshape(ctx.wrap(node), ()).node if node.shape != () else node


def trace_step(loss, ps, batch, opt=None, warn=True):
    """Trace `loss(*batch)` (batch may be empty for closures) and build the step graph."""
    t0 = time.perf_counter()
    ctx = TraceContext()
    bindings = {}
    pnodes = []
    for i, p in enumerate(ps):
        node = ctx.add_param(p, ps.name(p)).node
        pnodes.append(node)
        bindings[node.id] = ("param", i)
    args = []
    for i, a in enumerate(batch):
        if isinstance(a, np.ndarray):
            t = ctx.new_input(a.shape, a.dtype, f"x{i}", "data")
            bindings[t.node.id] = ("data", i)
            args.append(t)
        else:
            args.append(a)
    with installed(ps, [ctx.wrap(n) for n in pnodes]), ctx:
        out = loss(*args)
        loss_node = _as_loss_node(out, ctx)
    for arr, node in ctx.captured.values():
        bindings[node.id] = ("captured", arr)
    graph = Graph(list(ctx.inputs), [("loss", loss_node)], name="loss")
    t1 = time.perf_counter()
    with ctx:
        grads = differentiate(loss_node, pnodes, ctx)
    glist = [grads[n.id] for n in pnodes]
    if warn:
        warn_unused(ps, glist)
    outputs, updates, names = [("loss", loss_node)], [], []
    if opt is None:
        for p, g in zip(ps, glist):
            if g is not None:
                outputs.append((f"grad:{ps.name(p)}", g))
                names.append(ps.name(p))
    else:
        for i, (p, pn, g) in enumerate(zip(ps, pnodes, glist)):
            if g is None:
                continue
            updates.extend(_trace_update(ctx, opt, p, i, pn, g, ps.name(p), bindings))
    grad_graph = Graph(list(ctx.inputs), outputs, updates, name="step")
    seconds = {"trace": t1 - t0, "ad": time.perf_counter() - t1}
    return TracedStep(graph, grad_graph, bindings, seconds, names)


def _trace_update(ctx, opt, p, index, pnode, gnode, name, bindings):
    record = opt.slot(p)
    state, host = record.arrays, record.host
    st = {}
    for k, arr in state.items():
        t = ctx.new_input(arr.shape, arr.dtype, f"{name}.{k}", "state")
        bindings[t.node.id] = ("state", arr)
        st[k] = t
    sc = {}
    for k in opt.scalars(host):
        node = Node("scalar", (), {"name": f"{name}.{k}"}, (), p.dtype)
        ctx.inputs.append(node)
        bindings[node.id] = ("scalar", (index, k))
        sc[k] = ctx.wrap(node)
    with ctx:
        x = ctx.wrap(pnode)
        delta, new = opt.rule(x, ctx.wrap(gnode), st, sc)
        new_x = ops.sub(x, delta)
    return [(pnode, new_x.node)] + [(st[k].node, new[k].node) for k in state]
