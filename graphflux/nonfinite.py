"""Saying where a non-finite value came from: the error a step raises when its loss or a
gradient is NaN or infinite, naming which it was and the first node (op and user line) that
produced a non-finite value. Only the failing step pays for the search: it re-runs the step's
graph in the reference interpreter."""
import numpy as np

from graphflux.runtime.interpreter import first_nonfinite

from .errors import NonFiniteLoss


def first_nonfinite_gradient(grads):
    """The position of the first gradient with a NaN or an infinity, or None."""
    for i, g in enumerate(grads):
        if g is not None and not np.isfinite(g).all():
            return i
    return None


def nonfinite_error(what, loss, graph=None, bindings=None):
    """NonFiniteLoss for `what` ("loss" or "gradient of <name>"), pointing at the first
    non-finite node of `graph` run on `bindings` when given."""
    node = None if graph is None else first_nonfinite(graph, bindings)
    where = "" if node is None else \
        f"; the first non-finite value comes from {node.attrs.get('fn', node.op)} at {node.source}"
    return NonFiniteLoss(f"the {what} is not finite (the loss is {loss}); nothing was "
                         f"updated{where}", what=what, source=None if node is None else node.source)


def eager_nonfinite_error(what, loss, loss_fn, ps, batch):
    """The same for eager mode, whose tape keeps no source lines: trace the loss and its
    gradient (no compile) and search that graph."""
    from .tracing import input_array, step_graph, trace_loss
    traced = trace_loss(loss_fn, ps, batch)
    graph = step_graph(traced, ps, None, warn=False)
    bindings = {n.id: input_array(n.attrs["ref"], ps, None, batch, traced.captured)
                for n in graph.inputs}
    return nonfinite_error(what, loss, graph, bindings)
