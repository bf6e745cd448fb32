"""Tracing a user's loss into the step graph: parameters enter through their slots, data
through positional arguments; then symbolic AD and, with an optimiser, its update rule traced on
top. The result names each graph input's source so the runtime can bind it."""
import functools
import hashlib
import inspect
import threading
import time

import numpy as np

from graphflux.compiler import ops
from graphflux.compiler.autodiff import differentiate
from graphflux.compiler.errors import GraphfluxError, TraceError
from graphflux.compiler.graph import Graph
from graphflux.compiler.tracer import Tracer, TraceContext

from .modes import training
from .params import warn_unused


TRACE_LOCK = threading.RLock()
"""Held while a loss runs with stand-ins in the model's slots (tracing, eager steps): two
threads doing that at once would see each other's tracers."""


class ParameterError(GraphfluxError, TypeError):
    """A parameter the native step cannot update in place."""


def check_params(ps):
    """Parameters must be float, C-contiguous, aligned, native byte order, writeable and
    non-overlapping: the native step updates them in place through their pointers."""
    dtype = None
    for p in ps:
        name = ps.name(p)
        if p.dtype.kind != "f" or p.dtype.itemsize not in (4, 8):
            raise ParameterError(f"parameter {name} has dtype {p.dtype}; only float32/float64 "
                                 "arrays can be trained -- convert it with .astype(np.float32) "
                                 "or leave it out of gf.params")
        if not p.dtype.isnative:
            raise ParameterError(f"parameter {name} has byte order {p.dtype.str} (not this "
                                 "machine's); convert it with "
                                 f".astype(np.{p.dtype.name}) and assign it back to the layer")
        if not p.flags.c_contiguous or not p.flags.writeable or not p.flags.aligned:
            raise ParameterError(f"parameter {name} must be a C-contiguous, aligned, writeable "
                                 "array (use np.ascontiguousarray and assign it back to the "
                                 "layer)")
        if p.base is not None and any(q is not p and np.shares_memory(p, q) for q in ps):
            raise ParameterError(f"parameter {name} overlaps another parameter in memory")
        dtype = dtype or p.dtype
    return dtype or np.dtype(np.float32)


class installed:
    """Put `values[i]` into every slot params recorded for `ps[i]` that still holds it,
    restoring on exit. (A slot that now holds another array keeps it: the model no longer
    uses the parameter there.) A class over Params.slot_list, not a generator: eager mode
    enters it every step."""

    def __init__(self, ps, values):
        self.ps, self.values, self.saved = ps, values, []

    def __enter__(self):
        values, saved = self.values, self.saved
        try:
            for i, p, container, key, item in self.ps.slot_list():
                if item:
                    if container[key] is p:
                        saved.append((container, key, item, p))
                        container[key] = values[i]
                elif getattr(container, key) is p:
                    saved.append((container, key, item, p))
                    setattr(container, key, values[i])
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        for container, key, item, p in reversed(self.saved):
            if item:
                container[key] = p
            else:
                setattr(container, key, p)
        self.saved.clear()


class TracedLoss:
    """A loss traced for one input signature: the forward `graph`, and what the runtime binds
    besides parameters and data -- the arrays the loss captured, in `("captured", k)` order."""

    def __init__(self, ctx, graph, loss_node, pnodes, seconds):
        self.ctx, self.graph, self.loss_node, self.pnodes = ctx, graph, loss_node, pnodes
        self.captured = [arr for arr, _ in ctx.captured.values()]
        self.seconds = seconds


def _as_loss_node(out, ctx):
    if isinstance(out, (tuple, list)):
        raise TraceError(f"the loss returned a {type(out).__name__} of {len(out)} values; it "
                         "must return a scalar (return the loss alone, and compute auxiliary "
                         "outputs outside it)")
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


def trace_loss(loss, ps, batch):
    """Trace `loss(*batch)` (batch may be empty for closures) into the forward graph."""
    t0 = time.perf_counter()
    ctx = TraceContext()
    pnodes = [ctx.add_param(p, ps.name(p), ("param", i)).node for i, p in enumerate(ps)]
    args = [ctx.new_input(a.shape, a.dtype, f"x{i}", "data", ("data", i))
            if isinstance(a, np.ndarray) else a for i, a in enumerate(batch)]
    with TRACE_LOCK, installed(ps, [ctx.wrap(n) for n in pnodes]), ctx, training():
        loss_node = _as_loss_node(loss(*args), ctx)
    graph = Graph(list(ctx.inputs), [("loss", loss_node)], list(ctx.updates), name="loss")
    return TracedLoss(ctx, graph, loss_node, pnodes, {"trace": time.perf_counter() - t0})


def step_graph(traced, ps, opt=None, warn=True, weighted=False):
    """Differentiate a traced loss and, with an optimiser, trace its update on top.
    Returns the step Graph: outputs `loss` (and `grad:<param>` without an optimiser), updates
    of parameters and optimiser state, and a finiteness check of every gradient. `weighted`
    differentiates the loss times the batch length (batch_weight) instead: a data-parallel
    rank's share of a gradient summed over ranks (graphflux.distributed)."""
    t0 = time.perf_counter()
    ctx, loss_node = traced.ctx, traced.loss_node
    with ctx:
        seed = loss_node
        if weighted:
            seed = ops.mul(ctx.wrap(loss_node), float(batch_weight(traced.graph))).node
        grads = differentiate(seed, traced.pnodes, ctx)
    glist = [grads[n.id] for n in traced.pnodes]
    if opt is not None and len(ps) and all(g is None for g in glist):
        raise TraceError(no_parameter_message(ps))
    if warn:
        warn_unused(ps, glist)
    outputs, updates = [("loss", loss_node)], list(ctx.updates)
    for i, (p, pn, g) in enumerate(zip(ps, traced.pnodes, glist)):
        if g is None:
            continue
        if opt is None:
            outputs.append((f"grad:{ps.name(p)}", g))
        else:
            updates.extend(trace_update(ctx, opt, p, i, pn, g, ps.name(p)))
    traced.seconds["ad"] = time.perf_counter() - t0
    checks = [(i, g) for i, g in enumerate(glist) if g is not None]
    return Graph(list(ctx.inputs), outputs, updates, name="step", checks=checks)


def batch_weight(graph):
    """A batch's weight in a data-parallel sum: the length of axis 0 of the first data
    argument that is an array (1 when none is). A batch-symbolic step (compiler.batch_axis)
    sees it as the batch length, like the 1/n of a mean."""
    shapes = sorted((n.attrs["ref"][1], n.shape) for n in graph.inputs
                    if n.attrs.get("role") == "data" and n.shape)
    return shapes[0][1][0] if shapes else 1


def no_parameter_message(ps):
    return (f"the loss does not depend on any parameter ({len(ps)} given, e.g. {ps.name(ps[0])}), "
            "so training cannot change anything: compute the model's output inside the loss "
            "(loss(x, y) = mse(model(x), y)), not before it")


def trace_update(ctx, opt, p, index, pnode, gnode, name):
    """Trace `opt`'s update of parameter `p` (input `pnode`, gradient `gnode`) into `ctx`:
    its state arrays and scalars become inputs; returns the (target, new value) updates."""
    record = opt.slot(p)
    st = {k: ctx.new_input(arr.shape, arr.dtype, f"{name}.{k}", "state", ("state", index, k))
          for k, arr in record.arrays.items()}
    sc = {k: ctx.new_scalar(p.dtype, f"{name}.{k}", ("scalar", index, k))
          for k in opt.scalars(record.host)}
    ctx.source_override = f"{type(opt).__name__} update of {name}"
    try:
        with ctx:
            x = ctx.wrap(pnode)
            delta, new = opt.rule(x, ctx.wrap(gnode), st, sc)
            new_x = ops.sub(x, delta)
    finally:
        ctx.source_override = None
    return [(pnode, new_x.node)] + [(st[k].node, new[k].node) for k in record.arrays]


def input_array(ref, ps, opt, batch, captured):
    """The array a graph input's `ref` names: ("data", i), ("param", i), ("captured", k) or
    ("state", i, name) -- the one place that resolves them."""
    kind = ref[0]
    if kind == "data":
        return batch[ref[1]]
    if kind == "param":
        return ps[ref[1]]
    if kind == "captured":
        return captured[ref[1]]
    return opt.slot(ps[ref[1]]).arrays[ref[2]]


def optimiser_description(opt):
    """What of an optimiser shapes the compiled step -- its rules (class and source), state and
    scalar names; not its hyperparameter values, which are runtime scalars: part of the key."""
    if opt is None:
        return "gradients"
    rules = [_rule_fingerprint(type(o)) for o in getattr(opt, "os", [opt])]
    return (f"{_rule_fingerprint(type(opt))} {rules} state={list(opt.state_names)} "
            f"scalars={list(opt.scalars(opt.host_init()))}")


@functools.lru_cache(maxsize=None)
def _rule_fingerprint(cls):
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        source = ""
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    return f"{cls.__module__}.{cls.__qualname__}@{digest}"
