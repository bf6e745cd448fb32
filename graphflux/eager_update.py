"""The optimiser's update on numpy arrays (eager mode, `gf.update`).

The rule is the one the compiled step traces, traced here into a graph of its own once per
optimiser, parameter shape and dtype, and run as one generated numpy function
(runtime.numpy_codegen): the same arithmetic in the same order as applying the rule op by op,
without an op-function dispatch per operation."""
import numpy as np

from graphflux.compiler.graph import Graph
from graphflux.compiler.tracer import TraceContext
from graphflux.runtime.numpy_codegen import numpy_function

from .optimise import Rule
from .tracing import optimiser_description, trace_update

_FUNCTIONS = {}


def update_function(opt, x):
    """f(x, g, *state arrays, *scalars) updating x and the state in place."""
    key = (optimiser_description(opt), x.shape, x.dtype.str)
    f = _FUNCTIONS.get(key)
    if f is None:
        ctx = TraceContext()
        pnode = ctx.new_input(x.shape, x.dtype, "x", "param").node
        gnode = ctx.new_input(x.shape, x.dtype, "g", "grad").node
        updates = trace_update(ctx, opt, x, 0, pnode, gnode, "x")
        f = _FUNCTIONS[key] = numpy_function(Graph(ctx.inputs, [], updates, "update"))
    return f


def update_eager(opt, pairs):
    """Apply `opt` to (x, g) pairs as one step (the schedule's `prepare` runs once; parameters
    with the same host state share one set of scalars, cast to the parameter's dtype in
    `opt.scalars` order -- the order trace_update made them inputs -- so the arithmetic
    matches the compiled step)."""
    slot, records = opt.slot, []
    for x, g in pairs:
        if g is not None:
            records.append((slot(x), g))
    rule = type(opt)
    if rule.prepare is not Rule.prepare:
        opt.prepare([st for st, _ in records])
    advances = rule.advance is not Rule.advance
    shared = {}
    for st, g in records:
        x, host = st.x, st.host
        dtype = x.dtype
        key = (host, dtype.char)
        scalars = shared.get(key)
        if scalars is None:
            scalars = shared[key] = tuple(map(dtype.type, opt.scalars(host).values()))
        update = st.numpy_update
        if update is None:
            update = st.numpy_update = update_function(opt, x)
        if type(g) is not np.ndarray or g.dtype != dtype:
            g = np.asarray(g, dtype=dtype)
        update(x, g, *st.arrays.values(), *scalars)
        if advances:
            st.host = opt.advance(host)
