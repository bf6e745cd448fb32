"""Reverse-mode differentiation as a graph-to-graph transform (Theano style).

VJP rules are written with graphflux op functions, so the same rule builds gradient nodes while
tracing and computes numbers in eager mode (where its arguments are numpy arrays). Each rule takes
(g, out, ins, attrs, need) -- the output cotangent, the forward output, the forward inputs, the
node attributes and which inputs need a gradient -- and returns one cotangent (or None) per input."""
import numpy as np

from . import elementwise as ew
from . import ops
from .errors import CompileError
from .graph import Node, toposort


def _vjp_elementwise(g, out, ins, attrs, need):
    fn = attrs["fn"]
    a = ins[0]
    b = ins[1] if len(ins) > 1 else None
    if fn == "add":
        parts = [g, g]
    elif fn == "sub":
        parts = [g, ops.neg(g) if need[1] else None]
    elif fn == "neg":
        parts = [ops.neg(g)]
    elif fn == "mul":
        parts = [ops.mul(g, b) if need[0] else None, ops.mul(g, a) if need[1] else None]
    elif fn == "div":
        parts = [ops.div(g, b) if need[0] else None,
                 ops.elementwise("v1_div", a, b, out, g) if need[1] else None]
    else:
        f = ew.get(fn)
        parts = [ops.elementwise(f.vjp(i).name, *ins, out, g) if need[i] else None
                 for i in range(len(ins))]
    for i, p in enumerate(parts):
        if p is not None:
            parts[i] = ops.sum_to_shape(p, ins[i].shape) if need[i] else None
    return parts


def _keepdims_shape(x, axes):
    return tuple(1 if d in axes else s for d, s in enumerate(x.shape))


def _vjp_reduce_sum(g, out, ins, attrs, need):
    x = ins[0]
    if len(g.shape):        # a 0-d total broadcasts as it is
        g = ops.reshape(g, _keepdims_shape(x, attrs["axes"]))
    return [ops.broadcast_to(g, x.shape)]


def _vjp_reduce_max(g, out, ins, attrs, need):
    """Ties share the cotangent equally, as in JAX and PyTorch's amax."""
    x = ins[0]
    keep = _keepdims_shape(x, attrs["axes"])
    mask = ops.elementwise("equal", x, ops.reshape(out, keep))
    count = ops.sum(mask, attrs["axes"], keepdims=True)
    return [ops.mul(mask, ops.div(ops.reshape(g, keep), count))]


def _vjp_matmul(g, out, ins, attrs, need):
    a, b = ins
    ta, tb = attrs["ta"], attrs["tb"]
    ga = gb = None
    if need[0]:
        ga = ops.matmul(b, g, ta=tb, tb=True) if ta else ops.matmul(g, b, tb=not tb)
    if need[1]:
        gb = ops.matmul(g, a, ta=True, tb=ta) if tb else ops.matmul(a, g, ta=not ta)
    return [ga, gb]


def _vjp_cast(g, out, ins, attrs, need):
    return [ops.cast(g, ins[0].dtype)]


def _vjp_reshape(g, out, ins, attrs, need):
    return [ops.reshape(g, ins[0].shape)]


def _vjp_transpose(g, out, ins, attrs, need):
    return [ops.transpose(g, tuple(int(p) for p in np.argsort(attrs["perm"])))]


def _vjp_broadcast(g, out, ins, attrs, need):
    return [ops.sum_to_shape(g, ins[0].shape)]


def _vjp_slice(g, out, ins, attrs, need):
    return [ops.bind("unslice", (g,), {"shape": tuple(ins[0].shape), **attrs})]


def _vjp_unslice(g, out, ins, attrs, need):
    return [ops.bind("slice", (g,), {k: attrs[k] for k in ("starts", "stops", "steps")})]


def _vjp_stop_gradient(g, out, ins, attrs, need):
    return [None]


_CONV = ("stride", "pad", "dilation", "groups", "flipped")


def _conv_attrs(attrs, **extra):
    return dict({k: attrs[k] for k in _CONV}, **extra)


def _vjp_conv(g, out, ins, attrs, need):
    """conv is bilinear: its input gradient is conv_transpose, its weight gradient
    conv_filter_grad, both with the forward's attributes."""
    x, w = ins
    return [ops.bind("conv_transpose", (g, w), _conv_attrs(attrs, spatial=x.shape[2:]))
            if need[0] else None,
            ops.bind("conv_filter_grad", (x, g), _conv_attrs(attrs, window=w.shape[2:]))
            if need[1] else None]


def _vjp_conv_transpose(g, out, ins, attrs, need):
    dy, w = ins
    return [ops.bind("conv", (g, w), _conv_attrs(attrs)) if need[0] else None,
            ops.bind("conv_filter_grad", (g, dy), _conv_attrs(attrs, window=w.shape[2:]))
            if need[1] else None]


def _vjp_conv_filter_grad(g, out, ins, attrs, need):
    x, dy = ins
    return [ops.bind("conv_transpose", (dy, g), _conv_attrs(attrs, spatial=x.shape[2:]))
            if need[0] else None,
            ops.bind("conv", (x, g), _conv_attrs(attrs)) if need[1] else None]


def _pool_attrs(attrs, **extra):
    return dict({k: attrs[k] for k in ("window", "stride", "pad")}, **extra)


def _vjp_maxpool(g, out, ins, attrs, need):
    return [ops.bind("maxpool_grad", (ins[0], g), _pool_attrs(attrs))]


def _vjp_meanpool(g, out, ins, attrs, need):
    return [ops.bind("meanpool_grad", (g,), _pool_attrs(attrs, spatial=ins[0].shape[2:]))]


def _vjp_meanpool_grad(g, out, ins, attrs, need):
    return [ops.bind("meanpool", (g,), _pool_attrs(attrs))]


def _vjp_maxpool_grad(g, out, ins, attrs, need):
    raise CompileError("second derivatives through max pooling are not supported (the "
                       "gradient of maxpool_grad); differentiate a loss once, or use meanpool")


VJP_RULES = {
    "elementwise": _vjp_elementwise,
    "cast": _vjp_cast,
    "reduce_sum": _vjp_reduce_sum,
    "reduce_max": _vjp_reduce_max,
    "matmul": _vjp_matmul,
    "reshape": _vjp_reshape,
    "transpose": _vjp_transpose,
    "broadcast": _vjp_broadcast,
    "slice": _vjp_slice,
    "unslice": _vjp_unslice,
    "stop_gradient": _vjp_stop_gradient,
    "random": _vjp_stop_gradient,
    "conv": _vjp_conv,
    "conv_transpose": _vjp_conv_transpose,
    "conv_filter_grad": _vjp_conv_filter_grad,
    "maxpool": _vjp_maxpool,
    "meanpool": _vjp_meanpool,
    "maxpool_grad": _vjp_maxpool_grad,
    "meanpool_grad": _vjp_meanpool_grad,
}


def differentiate(loss, wrt, ctx):
    """Gradient nodes of the scalar node `loss` with respect to each node of `wrt`, recorded in
    the TraceContext `ctx`. Returns {node id: Node or None}; None where the loss does not depend
    on the node. Only nodes on a path from `wrt` to `loss` are differentiated."""
    order = toposort([loss])
    needs = {w.id for w in wrt}
    for n in order:
        if any(i.id in needs for i in n.inputs) and n.op != "stop_gradient":
            needs.add(n.id)
    if loss.id not in needs:
        return {w.id: None for w in wrt}
    seed = Node("const", (), {}, (), loss.dtype, loss.source, np.ones((), loss.dtype))
    cot = {loss.id: ctx.wrap(seed)}
    for n in reversed(order):
        g = cot.get(n.id)
        if g is None or n.inputs == () or n.id not in needs:
            continue
        need = [i.id in needs for i in n.inputs]
        ctx.source_override = n.source + " (vjp)" if n.source else None
        try:
            grads = VJP_RULES[n.op](g, ctx.wrap(n), [ctx.wrap(i) for i in n.inputs], n.attrs, need)
        finally:
            ctx.source_override = None
        for i, gi, nd in zip(n.inputs, grads, need):
            if gi is None or not nd:
                continue
            cot[i.id] = ops.add(cot[i.id], gi) if i.id in cot else gi
    return {w.id: (cot[w.id].node if w.id in cot else None) for w in wrt}
