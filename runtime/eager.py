"""Eager mode: the same models and losses run op by op on numpy, recording a tape; the backward
pass applies the same VJP rules as symbolic AD, on numpy arrays. It is the baseline `graphflux
bench` compares against and the second implementation tests compare with."""
import numpy as np

from graphflux.compiler.autodiff import VJP_RULES
from graphflux.compiler.errors import ShapeError, TraceError
from graphflux.compiler.ops import NUMPY_ELEMENTWISE
from graphflux.compiler.source import user_source_line
from graphflux.compiler.tracer import Context, Tracer

from . import tape_backward
from .numpy_impls import IMPLS


class EagerTensor(Tracer):
    """A numpy value with its tape entry: the op, its input values and the tensors among them,
    and its position (`index`: on the tape from 0, parameters from -1 down)."""

    __slots__ = ("value", "op", "inputs", "parents", "attrs", "ctx", "index")

    def __init__(self, value, op, inputs, parents, attrs, ctx, index):
        self.value, self.op, self.inputs, self.parents = value, op, inputs, parents
        self.attrs, self.ctx, self.index = attrs, ctx, index

    shape = property(lambda self: self.value.shape)
    dtype = property(lambda self: self.value.dtype)

    def __bool__(self):
        return bool(self.value)

    def __float__(self):
        return float(self.value)

    def __repr__(self):
        return f"EagerTensor({self.value!r})"


class EagerContext(Context):
    computes = True
    def __init__(self, arrays):
        self.tape = []
        self.signature = []  # per tape entry, what its VJP depends on besides values
        self.updates = []    # (array, new value), applied by the caller once the loss is finite
        self.leaves = {}
        for i, a in enumerate(arrays):
            self.leaves[id(a)] = (a, EagerTensor(a, None, (), (), {}, self, -1 - i))

    def add_update(self, array, value):
        self.updates.append((array, value.value if isinstance(value, EagerTensor) else value))

    def apply_updates(self):
        for array, value in self.updates:
            np.copyto(array, value)

    def leaf(self, array):
        return self.leaves[id(array)][1]

    def lift(self, x):
        entry = self.leaves.get(id(x))
        if entry is not None:
            return entry[1]
        base = x.base
        if base is None:
            return None
        while base is not None:
            if id(base) in self.leaves:
                raise TraceError(
                    "a parameter was used through a numpy view or copy (for example W.T computed "
                    "by numpy on the array itself): graphflux cannot see through it. Use the "
                    f"layer's attribute inside the loss instead, at {user_source_line()}")
            base = base.base
        return None

    def record(self, op, args, attrs):
        leaves = self.leaves
        vals, parents, refs, tracked = [], [], [], False
        for a in args:
            cls = type(a)
            if cls is EagerTensor:
                vals.append(a.value)
                parents.append(a)
                refs.append(a.index)
                tracked = True
                continue
            if cls is np.ndarray:
                entry = leaves.get(id(a))
                if entry is not None:
                    vals.append(a)
                    parents.append(entry[1])
                    refs.append(entry[1].index)
                    tracked = True
                    continue
                if a.base is not None:
                    self.lift(a)            # refuses a numpy view of a parameter
                refs.append((a.shape, a.dtype.char))
            else:   # numpy scalars keep their dtype in arithmetic, Python numbers are weak
                refs.append(a.dtype.char if isinstance(a, np.generic) else cls)
            vals.append(a)
            parents.append(None)
        try:
            fast = NUMPY_ELEMENTWISE.get(attrs["fn"]) if op == "elementwise" else None
            value = fast(*vals) if fast is not None else IMPLS[op](*vals, **attrs)
        except ValueError as e:
            shapes = ", ".join(str(np.shape(v)) for v in vals)
            raise ShapeError(f"{e} -- in {attrs.get('fn', op)} with operand shapes {shapes}, at "
                             f"{user_source_line()}") from None
        if not tracked:
            return value
        if op == "stop_gradient":    # untracked; a copy when it is a parameter's array
            return np.array(value) if parents[0].op is None else value
        t = EagerTensor(value, op, vals, parents, attrs, self, len(self.tape))
        self.tape.append(t)
        self.signature.append((op, tuple(attrs.items()), tuple(refs)))
        return t

    def release(self):
        """Drop the tape (it and the tensors refer to each other, so without this only the
        cyclic garbage collector would free a step's arrays)."""
        self.tape.clear()
        self.signature.clear()
        self.leaves.clear()


def backward(ctx, loss, wrt):
    """Cotangents of `loss` (an EagerTensor) for each leaf array in `wrt` (None if unreached).
    The first time a tape of some structure is seen, its entries' VJP rules run on numpy one
    by one; from the second time on, the backward generated for that structure runs
    (tape_backward), which computes the same numbers without a Python dispatch per op."""
    if not isinstance(loss, EagerTensor):
        return [None] * len(wrt)
    leaves = [ctx.leaf(a) for a in wrt]
    key = (tuple(ctx.signature), loss.index, tuple((t.index, t.value.shape, t.value.dtype.char)
                                                    for t in leaves))
    generated = tape_backward.lookup(key)
    if generated is not None:
        grads = generated(ctx.tape, wrt)
    else:
        grads = run_vjp_rules(ctx.tape, loss, leaves)
        tape_backward.seen(key, ctx.tape, loss, leaves)
    out, seen = [], set()
    for a, g in zip(wrt, grads):
        if g is not None and (type(g) is not np.ndarray or g.dtype != a.dtype or g.base is not None
                              or not g.flags.c_contiguous or id(g) in seen):
            g = np.array(g, dtype=a.dtype)
        if g is not None:
            seen.add(id(g))
        out.append(g)
    return out


def run_vjp_rules(tape, loss, leaves):
    """The backward pass op by op: each entry's VJP rule on numpy arrays, from the loss back.
    Runs outside any context, so the rules' op calls compute with numpy directly."""
    cot = {loss.index: np.ones((), dtype=loss.dtype)}
    pop = cot.pop
    for t in reversed(tape):
        g = pop(t.index, None)
        if g is None:
            continue
        parents = t.parents
        grads = VJP_RULES[t.op](g, t.value, t.inputs, t.attrs, [p is not None for p in parents])
        for p, gi in zip(parents, grads):
            if p is not None and gi is not None:
                key = p.index
                prev = cot.get(key)
                cot[key] = gi if prev is None else prev + gi
    return [cot.get(t.index) for t in leaves]
