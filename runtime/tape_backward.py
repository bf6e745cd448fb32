"""The backward pass of an eager tape as one generated numpy function, per tape structure.

A training loop records the same tape step after step: the same ops with the same attributes,
shapes and wiring, on new values. Replaying the VJP rules op by op costs a Python dispatch per
op, several times the arithmetic on small arrays. So the second time a structure is seen, the
VJP rules are traced once over a symbolic copy of its tape (the values become graph inputs)
and the resulting graph becomes a numpy function (numpy_codegen); later tapes of that structure
pass their values to it. The forward pass, and so the user's Python, still runs op by op, and
the numbers are those of the op-by-op backward: the same rules, the same numpy arithmetic in the
same order. The structure key is EagerContext.signature: per entry its op, attributes and, per
operand, the entry or parameter it comes from, or the shape and dtype of an untracked array."""
import collections

import numpy as np

from graphflux.compiler import ops
from graphflux.compiler.autodiff import VJP_RULES
from graphflux.compiler.graph import Graph, Node, toposort
from graphflux.compiler.tracer import TraceContext

from .numpy_codegen import numpy_function

CAPACITY = 64           # structures kept (a loop has a handful: full and partial batches)
_SEEN = object()        # seen once: the next sighting generates
_cache = collections.OrderedDict()


def lookup(key):
    """The generated backward for this tape structure, or None."""
    try:
        found = _cache.get(key)
    except TypeError:       # an attribute that cannot be hashed: never cached
        return None
    return None if found is _SEEN else found


def seen(key, tape, loss, leaves):
    """Note a structure that ran op by op; on its second sighting, generate its backward."""
    try:
        found = _cache.get(key)
    except TypeError:
        return
    _cache[key] = _SEEN if found is None else GeneratedBackward(tape, loss, leaves)
    _cache.move_to_end(key)
    while len(_cache) > CAPACITY:
        _cache.popitem(last=False)


class GeneratedBackward:
    """`run(tape, params)`, given a tape of its structure and the parameter arrays, returns the
    cotangent of each parameter (None where the loss does not reach it); `function` is the
    generated numpy function it calls."""

    def __init__(self, tape, loss, leaves):
        graph, fetch, slots = _trace(tape, loss, leaves)
        self.function = numpy_function(graph)
        self.run = _runner(self.function, fetch, slots)


def sweep(tape, loss_index, seed, value, operands):
    """The reverse pass over `tape` from cotangent `seed` at the loss: each entry's VJP rule
    with `value(entry)` and `operands(entry)`, sums where a value is used twice. Returns the
    cotangents by tape or parameter position. On numpy values (outside any context) it is the
    op-by-op backward; inside a TraceContext on symbols, the graph that backward generates."""
    cot = {loss_index: seed}
    for t in reversed(tape):
        g = cot.pop(t.index, None)
        if g is None:
            continue
        refs = t.refs
        grads = VJP_RULES[t.op](g, value(t), operands(t), t.attrs, [type(r) is int for r in refs])
        for r, gi in zip(refs, grads):
            if gi is not None and type(r) is int:
                prev = cot.get(r)
                cot[r] = gi if prev is None else ops.add(prev, gi)
    return cot


def _trace(tape, loss, leaves):
    """The VJP rules traced over a symbolic copy of `tape`: (graph whose inputs are the values
    the rules read, where each input's value is found, output position per leaf)."""
    ctx = TraceContext()
    symbols, fetch = {}, []

    def symbol(where, like, dtype):
        if where not in symbols:
            if isinstance(like, np.ndarray):
                symbols[where] = ctx.new_input(like.shape, like.dtype, f"v{len(fetch)}", "tape")
            else:   # a Python number stays weak (takes the other operand's dtype) at run time
                dt = like.dtype if isinstance(like, np.generic) else dtype
                symbols[where] = ctx.new_scalar(dt, f"v{len(fetch)}", ("tape", len(fetch)))
            fetch.append(where)
        return symbols[where]

    def value(index):
        t = tape[index] if index >= 0 else leaves[-1 - index]
        where = ("param", -1 - index) if index < 0 else ("value", index)
        return symbol(where, t.value, t.value.dtype)

    def operand(t, j):
        r = t.refs[j]
        return value(r) if type(r) is int else symbol(("input", t.index, j), t.inputs[j],
                                                      t.value.dtype)

    seed = Node("const", (), {}, (), loss.dtype, "", np.ones((), loss.dtype))
    with ctx:
        cot = sweep(tape, loss.index, ctx.wrap(seed), lambda t: value(t.index),
                    lambda t: [operand(t, j) for j in range(len(t.inputs))])
    outputs, slots = [], []
    for t in leaves:
        g = cot.get(t.index)
        slots.append(None if g is None else len(outputs))
        if g is not None:
            outputs.append((f"grad{len(outputs)}", g.node))
    if len(ctx.inputs) != len(fetch):
        raise RuntimeError("a VJP rule captured an array while tracing a tape's backward: "
                           "VJP rules must use only op functions on their arguments")
    used = {n.id for n in toposort([n for _, n in outputs])}
    keep = [k for k, n in enumerate(ctx.inputs) if n.id in used]
    graph = Graph([ctx.inputs[k] for k in keep], outputs, name="backward")
    return graph, [fetch[k] for k in keep], slots


def _runner(function, fetch, slots):
    """A generated function (tape, params) -> cotangent per parameter: it reads the graph's
    input values where `fetch` says, calls `function` and places its outputs by `slots`."""
    args = []
    for where in fetch:
        if where[0] == "value":
            args.append(f"T[{where[1]}].value")
        elif where[0] == "param":
            args.append(f"P[{where[1]}]")
        else:
            args.append(f"T[{where[1]}].inputs[{where[2]}]")
    placed = ", ".join("None" if k is None else f"o[{k}]" for k in slots)
    namespace = {"function": function}
    exec(f"def run(T, P):\n    o = function({', '.join(args)})\n    return [{placed}]\n",
         namespace)
    return namespace["run"]
