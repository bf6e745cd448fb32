"""Eager mode: the same models and losses run op by op on numpy, recording a tape; the backward
pass applies the same VJP rules as symbolic AD, on numpy arrays. It is the baseline `graphflux
bench` compares against and the second implementation tests compare with."""
import numpy as np

from graphflux.compiler.autodiff import VJP_RULES
from graphflux.compiler.errors import ShapeError, TraceError
from graphflux.compiler.ops import NUMPY_ELEMENTWISE
from graphflux.compiler.source import user_source_line
from graphflux.compiler.tracer import Context, Tracer

from .numpy_impls import IMPLS


class EagerTensor(Tracer):
    """A numpy value with its tape entry: the op, its input values and the tensors among them."""

    __slots__ = ("value", "op", "inputs", "parents", "attrs", "ctx")

    def __init__(self, value, op, inputs, parents, attrs, ctx):
        self.value, self.op, self.inputs, self.parents = value, op, inputs, parents
        self.attrs, self.ctx = attrs, ctx

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
        self.updates = []    # (array, new value), applied by the caller once the loss is finite
        self.leaves = {}
        for a in arrays:
            self.leaves[id(a)] = (a, EagerTensor(a, None, (), (), {}, self))

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
        vals, parents, tracked = [], [], False
        for a in args:
            cls = type(a)
            if cls is EagerTensor:
                vals.append(a.value)
                parents.append(a)
                tracked = True
                continue
            if cls is np.ndarray:
                entry = leaves.get(id(a))
                if entry is not None:
                    vals.append(a)
                    parents.append(entry[1])
                    tracked = True
                    continue
                if a.base is not None:
                    self.lift(a)            # refuses a numpy view of a parameter
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
        if op == "stop_gradient":    # untracked, and a copy: never the parameter array itself
            return np.array(value)
        t = EagerTensor(value, op, vals, parents, attrs, self)
        self.tape.append(t)
        return t

    def release(self):
        """Drop the tape (it and the tensors refer to each other, so without this only the
        cyclic garbage collector would free a step's arrays)."""
        self.tape.clear()
        self.leaves.clear()


def backward(ctx, loss, wrt):
    """Cotangents of `loss` (an EagerTensor) for each leaf array in `wrt` (None if unreached).
    Runs outside any context, so the VJP rules' op calls compute with numpy directly."""
    if not isinstance(loss, EagerTensor):
        return [None] * len(wrt)
    cot = {id(loss): np.ones((), dtype=loss.dtype)}
    pop = cot.pop
    for t in reversed(ctx.tape):
        g = pop(id(t), None)
        if g is None:
            continue
        parents = t.parents
        grads = VJP_RULES[t.op](g, t.value, t.inputs, t.attrs, [p is not None for p in parents])
        for p, gi in zip(parents, grads):
            if p is not None and gi is not None:
                key = id(p)
                prev = cot.get(key)
                cot[key] = gi if prev is None else prev + gi
    out, seen = [], set()
    for a in wrt:
        g = cot.get(id(ctx.leaf(a)))
        if g is not None and (type(g) is not np.ndarray or g.dtype != a.dtype or g.base is not None
                              or not g.flags.c_contiguous or id(g) in seen):
            g = np.array(g, dtype=a.dtype)
        if g is not None:
            seen.add(id(g))
        out.append(g)
    return out
