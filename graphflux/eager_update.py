"""The optimiser's update on numpy arrays (eager mode, `gf.update`).

The rule is the one the compiled step traces, traced here into a graph of its own once per
optimiser, parameter shape and dtype, and run as one generated numpy function
(runtime.numpy_codegen): the same arithmetic in the same order as applying the rule op by op,
without an op-function dispatch per operation."""
import numpy as np

from graphflux.compiler.graph import Graph
from graphflux.compiler.tracer import TraceContext
from graphflux.runtime.numpy_codegen import numpy_function

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


def _cast_scalars(opt, host, dtype):
    """The step's scalars as numpy scalars of the parameter's dtype, in `opt.scalars` order
    (the order trace_update made them inputs), so the arithmetic matches the compiled step."""
    cast = dtype.type
    return tuple(cast(v) for v in opt.scalars(host).values())


def update_eager(opt, pairs):
    """Apply `opt` to (x, g) pairs as one step (the schedule's `prepare` runs once; parameters
    with the same host state share one set of scalars)."""
    records = [(opt.slot(x), g) for x, g in pairs if g is not None]
    opt.prepare([st for st, _ in records])
    shared = {}
    for st, g in records:
        x = st.x
        key = (st.host, x.dtype)
        scalars = shared.get(key)
        if scalars is None:
            scalars = shared[key] = _cast_scalars(opt, *key)
        if st.numpy_update is None:
            st.numpy_update = update_function(opt, x)
        st.numpy_update(x, g if type(g) is np.ndarray and g.dtype == x.dtype
                        else np.asarray(g, dtype=x.dtype), *st.arrays.values(), *scalars)
        st.host = opt.advance(st.host)
