"""Eager mode: the same models and losses run op by op on numpy, recording a tape; the backward
pass applies the same VJP rules as symbolic AD, on numpy arrays. It is the baseline `graphflux
bench` compares against and the second implementation tests compare with."""
import numpy as np

from graphflux.compiler.errors import ShapeError
from graphflux.compiler.ops import NUMPY_ELEMENTWISE
from graphflux.compiler.source import user_source_line
from graphflux.compiler.tracer import (Context, Tracer, buffer_owner, refuse_parameter_copy,
                                       refuse_parameter_view)

from . import tape_backward
from .numpy_impls import IMPLS


class EagerTensor(Tracer):
    """A numpy value with its tape entry: the op, its operands' values (`inputs`) and where
    each came from (`refs`: a tape position or parameter position for a tensor, else what the
    structure key records of a constant), and its own `index` (on the tape from 0, parameters
    from -1 down)."""

    __slots__ = ("value", "op", "inputs", "refs", "attrs", "ctx", "index")

    def __init__(self, value, op, inputs, refs, attrs, ctx, index):
        self.value, self.op, self.inputs, self.refs = value, op, inputs, refs
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
    """One eager evaluation of a loss over parameter arrays `arrays`: the tape, its structure
    key (`signature`) and the state updates layers asked for."""

    computes = True

    def __init__(self, arrays):
        self.arrays = list(arrays)
        name = getattr(arrays, "name", None)    # a Params names its arrays
        self.by_shape = {}   # shape -> (array, name) of the parameters of that shape
        for i, a in enumerate(self.arrays):
            self.by_shape.setdefault(a.shape, []).append((a, name(a) if name else f"p{i}"))
        self.copies = set()  # ids of the parameter copies stop_gradient made this evaluation
        self.tape = []
        self.signature = []  # per tape entry, what its VJP depends on besides values
        self.updates = []    # (array, new value), applied by the caller once the loss is finite
        self.positions = {id(a): -1 - i for i, a in enumerate(self.arrays)}
        self.owners = {}     # id(buffer owner) -> parameters in its memory
        for a in self.arrays:
            self.owners.setdefault(id(buffer_owner(a)), []).append(a)
        self.leaves = [EagerTensor(a, None, (), (), None, self, -1 - i)
                       for i, a in enumerate(self.arrays)]
        self.idle = True     # False from the start of an evaluation until release()

    def add_update(self, array, value):
        self.updates.append((array, value.value if isinstance(value, EagerTensor) else value))

    def apply_updates(self):
        for array, value in self.updates:
            np.copyto(array, value)

    def record(self, op, args, attrs):
        values, refs, tracked = [], [], False
        for a in args:
            cls = type(a)
            if cls is EagerTensor:
                values.append(a.value)
                refs.append(a.index)
                tracked = True
                continue
            values.append(a)
            if cls is np.ndarray:
                position = self.positions.get(id(a))
                if position is not None:
                    refs.append(position)
                    tracked = True
                    continue
                if a.base is not None or id(a) in self.owners:
                    refuse_parameter_view(a, self.owners)
                same_shape = self.by_shape.get(a.shape)
                if same_shape and id(a) not in self.copies:
                    refuse_parameter_copy(a, same_shape)
                refs.append((a.shape, a.dtype.char))
            else:   # numpy scalars keep their dtype in arithmetic, Python numbers are weak
                refs.append(a.dtype.char if isinstance(a, np.generic) else cls)
        try:
            if op == "elementwise":
                fn = attrs["fn"]
                fast = NUMPY_ELEMENTWISE.get(fn)
                value = fast(*values) if fast is not None else IMPLS[op](*values, fn=fn)
                key = fn
            else:
                value = IMPLS[op](*values, **attrs)
                key = tuple(attrs.items())
        except ValueError as e:
            shapes = ", ".join(str(np.shape(v)) for v in values)
            raise ShapeError(f"{e} -- in {attrs.get('fn', op)} with operand shapes {shapes}, at "
                             f"{user_source_line()}") from None
        if not tracked:
            return value
        if op == "stop_gradient":    # untracked; a copy when it is a parameter's array
            if refs[0] >= 0:
                return value
            value = np.array(value)
            self.copies.add(id(value))
            return value
        refs = tuple(refs)
        t = EagerTensor(value, op, values, refs, attrs, self, len(self.tape))
        self.tape.append(t)
        self.signature.append((op, key, refs))
        return t

    def release(self):
        """Drop the tape (it and the tensors refer to each other, so without this only the
        cyclic garbage collector would free a step's arrays); the context can then record
        the next evaluation over the same parameters."""
        self.tape.clear()
        self.signature.clear()
        self.updates.clear()
        self.copies.clear()
        self.idle = True


def backward(ctx, loss, owned=True):
    """Cotangents of `loss` (an EagerTensor) for each of the context's parameter arrays (None
    if unreached). With `owned` they are fresh C-contiguous arrays of the parameter's dtype
    that the caller may keep; an optimiser that only reads them passes owned=False. (A
    cotangent is never a parameter's own array: every VJP rule computes it from the seed.)
    The first time a tape of some structure is seen, its entries' VJP rules run on numpy one
    by one; from the second time on, the backward generated for that structure runs
    (tape_backward), which computes the same numbers without a Python dispatch per op."""
    arrays = ctx.arrays
    if type(loss) is not EagerTensor:
        return [None] * len(arrays)
    key = (tuple(ctx.signature), loss.index, tuple([(a.shape, a.dtype.char) for a in arrays]))
    generated = tape_backward.lookup(key)
    if generated is not None:
        grads = generated.run(ctx.tape, arrays)
    else:
        grads = run_vjp_rules(ctx.tape, loss, len(arrays))
        tape_backward.seen(key, ctx.tape, loss, ctx.leaves)
    if owned:
        seen = set()
        for i, (a, g) in enumerate(zip(arrays, grads)):
            if g is not None:
                if type(g) is not np.ndarray or g.dtype != a.dtype or g.base is not None \
                        or id(g) in seen or not g.flags.c_contiguous:
                    g = grads[i] = np.array(g, dtype=a.dtype)
                seen.add(id(g))
    return grads


def run_vjp_rules(tape, loss, n_params):
    """The backward pass op by op: each entry's VJP rule on numpy arrays, from the loss back;
    returns the cotangent per parameter position. Runs outside any context, so the rules' op
    calls compute with numpy directly."""
    cot = tape_backward.sweep(tape, loss.index, np.ones((), dtype=loss.dtype),
                              lambda t: t.value, lambda t: t.inputs)
    return [cot.get(-1 - i) for i in range(n_params)]
