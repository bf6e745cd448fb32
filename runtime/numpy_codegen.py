"""A graph as one generated Python function of numpy expressions.

Eager mode runs the optimiser's update (traced once per parameter shape) and the backward of a
tape structure (tape_backward) with it: each step pays one Python call plus the numpy
arithmetic instead of an op-function dispatch per arithmetic op. Each node computes what its
numpy implementation computes, in the same order, so the numbers equal running the graph op by
op; what changes is only how: elementwise expressions inline, structural ops as expressions,
broadcasts left to numpy where that gives the same operands."""
import re

import numpy as np

from graphflux.compiler import elementwise as ew
from graphflux.compiler.graph import toposort

from .numpy_impls import IMPLS, UFUNCS, elementwise_function, is_exact
from .sympy_numpy import to_numpy_source

_HOLE = "\x00{}\x00"


class _Line:
    """`var = expr`; `ufunc` and `args` when expr is one ufunc applied to `args`, so the line
    can instead write its result into an update's target array (out=)."""

    def __init__(self, var, expr, ufunc=None, args=()):
        self.var, self.expr, self.ufunc, self.args = var, expr, ufunc, list(args)

    def text(self):
        return f"{self.var} = {self.expr}" if self.var else self.expr


def numpy_function(graph):
    """A function for `graph`: it takes the values of `graph.inputs` in order, writes every
    update into its target's array in place and returns the outputs' values as a tuple. A
    target is written once nothing later reads its old value. Its `source` attribute holds the
    generated code."""
    nodes = toposort(graph.roots())
    uses, readers = {}, {}
    for n in nodes:
        for i in n.inputs:
            uses[i.id] = uses.get(i.id, 0) + 1
            readers.setdefault(i.id, []).append(n)
    rooted = {n.id for n in graph.roots()}
    names = {n.id: f"i{k}" for k, n in enumerate(graph.inputs)}
    namespace, lines = {"np": np}, []
    folded = {}     # broadcast node id -> its operand's shape, for broadcasts left to numpy

    def constant(value, prefix):
        key = f"{prefix}{len(namespace)}"
        namespace[key] = value
        return key

    for n in nodes:
        if n.id in names:
            continue
        if n.op == "const":
            names[n.id] = constant(n.value, "c")
            continue
        args = [names[i.id] for i in n.inputs]
        if n.op == "stop_gradient" or (n.op == "broadcast" and n.id not in rooted and
                                       _broadcast_is_implicit(n, readers[n.id], folded)):
            names[n.id] = args[0]
            if n.op == "broadcast":
                folded[n.id] = n.inputs[0].shape
            continue
        ufunc = None
        inline = n.op == "elementwise" and _inline_keeps_shape(n, folded)
        if inline:
            expr = _inline(n.attrs["fn"], args, lines, names, n.inputs)
            if n.attrs["fn"] in UFUNCS:
                ufunc, args = UFUNCS[n.attrs["fn"]].__name__, [names[i.id] for i in n.inputs]
        elif n.op == "elementwise":
            f = constant(elementwise_function(n.attrs["fn"]), "f")
            expr = f"{f}({', '.join(args)})"
        elif n.op in SOURCE:
            expr = SOURCE[n.op](*args, **n.attrs)
        else:
            f = constant(IMPLS[n.op], "f")
            expr = f"{f}({', '.join(args)}, **{constant(dict(n.attrs), 'a')})"
        if inline and uses.get(n.id, 0) == 1 and n.id not in rooted:
            names[n.id] = expr
        else:
            names[n.id] = f"t{len(lines)}"
            lines.append(_Line(names[n.id], expr, ufunc, args))
    outputs = [names[n.id] for _, n in graph.outputs]
    for target, value in graph.updates:
        _write_update(lines, outputs, names[target.id], names[value.id])
    body = [line.text() for line in lines] + [f"return ({''.join(o + ', ' for o in outputs)})"]
    params = ", ".join(f"i{k}" for k in range(len(graph.inputs)))
    source = f"def {graph.name}({params}):\n" + "".join(f"    {line}\n" for line in body)
    exec(compile(source, f"<graphflux numpy {graph.name}>", "exec"), namespace)
    function = namespace[graph.name]
    function.source = source
    return function


# The structural ops as numpy source: the expressions their IMPLS entries evaluate, printed
# into the function instead of called through a keyword-argument wrapper.
SOURCE = {
    "reduce_sum": lambda x, axes, keepdims:
        f"np.add.reduce({x}, axis={axes!r}, keepdims={keepdims!r})",
    "reduce_max": lambda x, axes, keepdims:
        f"np.maximum.reduce({x}, axis={axes!r}, keepdims={keepdims!r})",
    "matmul": lambda a, b, ta, tb: f"({a}){'.T' if ta else ''} @ ({b}){'.T' if tb else ''}",
    "reshape": lambda x, shape: f"({x}).reshape({shape!r})",
    "transpose": lambda x, perm: f"({x}).transpose({perm!r})",
}


def _inline_keeps_shape(node, folded):
    """Whether elementwise `node`'s sympy expression, printed inline, gives its shape and
    dtype: always for an exact function; for one with unused operands (a cotangent that does
    not read the primal output, say) when the operands it reads span the node's shape in the
    node's dtype. Selects keep their generated function (np.where fix-ups)."""
    name = node.attrs["fn"]
    if is_exact(name) and not any(i.id in folded for i in node.inputs):
        return True
    fn = ew.get(name)
    if ew.has_select(fn.expr):
        return False
    used = [i for s, i in zip(fn.symbols, node.inputs) if s in fn.expr.free_symbols]
    return bool(used) and all(i.dtype == node.dtype for i in used) and tuple(
        np.broadcast_shapes(*[folded.get(i.id, i.shape) for i in used])) == tuple(node.shape)


def _broadcast_is_implicit(node, readers, folded):
    """Whether broadcast `node` can be left to numpy's own broadcasting: every reader is an
    elementwise op printed inline whose other operands already span its shape in its dtype
    (another broadcast operand counted at its unbroadcast shape, since it may be left too).
    The materialised copy is then skipped, and the numbers are the same."""
    source = node.inputs[0]
    for r in readers:
        if r.op != "elementwise" or ew.has_select(ew.get(r.attrs["fn"]).expr):
            return False
        fn = ew.get(r.attrs["fn"])
        shapes = []
        for s, i in zip(fn.symbols, r.inputs):
            if i.dtype != r.dtype:
                return False
            if s in fn.expr.free_symbols:
                shapes.append(source.shape if i is node else i.inputs[0].shape
                              if i.op == "broadcast" else folded.get(i.id, i.shape))
        if tuple(np.broadcast_shapes(*shapes)) != tuple(r.shape):
            return False
    return True


def _write_update(lines, outputs, target, value):
    """Write `value` into `target`: straight from the ufunc that computes it when no later
    line reads the target's old value (the later readers of `value` then read the target),
    else by a copy after everything else."""
    at = next((k for k, line in enumerate(lines) if line.var == value), None)
    if at is not None and lines[at].ufunc and not any(
            _reads(line.text(), target) for line in lines[at + 1:]):
        line = lines[at]
        lines[at] = _Line("", f"np.{line.ufunc}({', '.join(line.args)}, out={target})")
        for later in lines[at + 1:]:
            later.expr = _rename(later.expr, value, target)
            later.args = [_rename(a, value, target) for a in later.args]
        outputs[:] = [target if o == value else o for o in outputs]
        return
    lines.append(_Line("", f"np.copyto({target}, {value})"))


def _reads(text, name):
    return re.search(rf"\b{name}\b", text) is not None


def _rename(text, old, new):
    return re.sub(rf"\b{old}\b", new, text)


def _inline(fn, args, lines, names, inputs):
    """fn's numpy expression with the operand expressions substituted; an operand the
    expression reads twice (x*x) is first bound to a variable so it is computed once."""
    f = ew.get(fn)
    body = to_numpy_source(f.expr, {s.name: _HOLE.format(k) for k, s in enumerate(f.symbols)})
    for k, a in enumerate(args):
        hole = _HOLE.format(k)
        if body.count(hole) > 1 and not a.isidentifier():
            var = f"t{len(lines)}"
            lines.append(_Line(var, a))
            names[inputs[k].id] = a = var
        body = body.replace(hole, a)
    return body
