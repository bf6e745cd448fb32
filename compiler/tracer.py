"""Tracing: Tracer values stand in for arrays while a loss runs; the active context records a
node for each op applied to them. (Their Python operators and numpy protocols, which route to
the op functions, are installed by `array_methods`.)

Contexts form a stack: the symbolic `TraceContext` here builds graph nodes; the runtime's eager
context computes numbers and keeps a tape. Both find parameters by identity (`lift`)."""
import math
import numbers

import numpy as np

from .errors import TraceError
from .graph import Node
from .source import user_source_line

_stack = []
TABLES = {}     # "shape" and "numpy": the op tables, registered by ops (which imports this)


def current_context():
    return _stack[-1] if _stack else None


class Context:
    """Entered with `with ctx:`; subclasses define `record(op, args, attrs)`. `computes` says
    whether recording also computes values with numpy (eager) rather than building nodes."""

    computes = False

    def __enter__(self):
        _stack.append(self)
        return self

    def __exit__(self, *exc):
        _stack.pop()


def buffer_owner(a):
    """The object at the end of array `a`'s base chain: the owner of its memory."""
    while isinstance(a, np.ndarray) and a.base is not None:
        a = a.base
    return a


def refuse_parameter_view(x, params_by_owner):
    """Raise if array `x` shares memory with a parameter: a numpy view of it (W.T computed by
    numpy on the array itself) would otherwise become a silent constant. `params_by_owner`
    maps id(buffer_owner(p)) to the parameters p whose memory that object owns."""
    for p in params_by_owner.get(id(buffer_owner(x)), ()):
        if np.shares_memory(x, p):
            raise TraceError(
                "a parameter was used through a numpy view or copy (for example W.T computed "
                "by numpy on the array itself): graphflux cannot see through it. Use the "
                "parameter in graphflux ops or Python operators on the layer's attribute "
                f"(e.g. gf.transpose(W) / x @ layer.weight.T inside the loss), at "
                f"{user_source_line()}")


def refuse_parameter_copy(x, named_params):
    """An array equal to a parameter (with at least two distinct values, so a zero bias and a
    zero mask are not confused) is a numpy copy of it -- W.copy(), np.array(W),
    W.astype(...) -- which would silently freeze the parameter into a constant.
    `named_params` holds (array, name) pairs."""
    for arr, name in named_params:
        if arr.shape == x.shape and arr.size > 1 and arr.item(0) == x.item(0) \
                and arr.item(-1) == x.item(-1) and np.array_equal(arr, x) \
                and not np.all(arr == arr.flat[0]):     # the ends first: eager checks often
            raise TraceError(
                f"an array equal to parameter {name} reached the loss: it looks like a numpy "
                "copy of it (W.copy(), np.array(W), W.astype(...)), which graphflux cannot "
                f"differentiate. Use the parameter itself (cast with gf ops if needed), at "
                f"{user_source_line()}")


class Tracer:
    """An array stand-in. Subclasses provide `ctx`, `shape` and `dtype`."""

    __slots__ = ()
    __array_priority__ = 1000

    @property
    def ndim(self):
        return len(self.shape)

    @property
    def size(self):
        return math.prod(self.shape)

    def __len__(self):
        return self.shape[0]

    def __bool__(self):
        raise TraceError(
            "control flow on traced values is not supported: Python `if`/`while`/`and`/`or` "
            "need a concrete value, but this is a traced array -- use gf.where(cond, a, b) or "
            f"move the decision out of the loss (at {user_source_line()})")

    def __array__(self, dtype=None, copy=None):
        raise TraceError(
            "a traced array was converted to a numpy array: plain numpy (np.asarray, float(), "
            "a numpy function without graphflux support) cannot see traced values -- use "
            f"graphflux ops (gf.sum, gf.exp, ...) inside the loss (at {user_source_line()})")

    def __float__(self):
        return self.__array__()

    def __iter__(self):
        raise TraceError("iterating over a traced array is not supported; index it or use "
                         f"array ops instead (at {user_source_line()})")

class SymbolicTracer(Tracer):
    __slots__ = ("node", "ctx")

    def __init__(self, node, ctx):
        self.node, self.ctx = node, ctx

    shape = property(lambda self: self.node.shape)
    dtype = property(lambda self: self.node.dtype)

    def __repr__(self):
        return f"Tracer({self.node!r})"


class TraceContext(Context):
    """Builds graph nodes. `params` maps id(array) -> input node of each known parameter; any
    other array that reaches an op becomes a `captured` input, bound by identity at call time."""

    source_override = None    # set by autodiff so gradient nodes point at their forward line

    def __init__(self, params=None):
        self.params = {}          # id(array) -> (array, Node)
        self.param_owners = {}    # id(buffer owner) -> parameters in its memory
        self.captured = {}        # id(array) -> (array, Node)
        self.inputs = []          # input nodes in creation order
        self.updates = []         # (input node, new value node): state written by the step
        for i, (arr, name) in enumerate(params or []):
            self.add_param(arr, name, ("param", i))

    def new_input(self, shape, dtype, name, role, ref=None):
        """A graph input. `ref` says where the runtime finds its array -- ("param", i),
        ("data", i), ("captured", k), ("state", i, name) -- and survives serialisation."""
        node = Node("input", (), {"name": name, "role": role, "ref": ref or (role, name)},
                    shape, dtype)
        self.inputs.append(node)
        return SymbolicTracer(node, self)

    def new_scalar(self, dtype, name, ref):
        """A host scalar (learning rate, beta^t, ...) passed to the native step each call."""
        node = Node("scalar", (), {"name": name, "ref": ref}, (), dtype)
        self.inputs.append(node)
        return SymbolicTracer(node, self)

    def add_update(self, array, value):
        """Write `value` into `array` (running statistics) as part of the step -- after the
        loss is known to be finite."""
        self.updates.append((self.lift(array).node, self.lift(value).node
                             if not isinstance(value, Tracer) else value.node))

    def add_param(self, arr, name, ref):
        t = self.new_input(arr.shape, arr.dtype, name, "param", ref)
        self.params[id(arr)] = (arr, t.node)
        self.param_owners.setdefault(id(buffer_owner(arr)), []).append(arr)
        return t

    def wrap(self, node):
        return SymbolicTracer(node, self)

    def lift(self, x):
        """A Tracer for `x`: parameters by identity, a view of a parameter is an error, other
        arrays are captured inputs, numbers are constants (resolved by the caller)."""
        if isinstance(x, Tracer):
            if x.ctx is not self:
                raise TraceError("a traced value from another trace leaked into this one (was "
                                 "a tracer stored outside the loss?), at " + user_source_line())
            return x
        key = id(x)
        if key in self.params:
            return self.wrap(self.params[key][1])
        refuse_parameter_view(x, self.param_owners)
        if key not in self.captured:
            refuse_parameter_copy(x, [(arr, node.attrs["name"])
                                      for arr, node in self.params.values()])
            k = len(self.captured)
            dtype = x.dtype if x.dtype.isnative else x.dtype.newbyteorder("=")
            t = self.new_input(x.shape, dtype, f"captured{k}", "captured", ("captured", k))
            # the array itself: whoever binds it copies one that native code cannot read by
            # pointer (strided, big-endian) on every call, so later changes to it are seen
            self.captured[key] = (x, t.node)
        return self.wrap(self.captured[key][1])

    def record(self, op, args, attrs):
        src = self.source_override or user_source_line()
        ins = []
        for a in args:
            if isinstance(a, (Tracer, np.ndarray)):
                ins.append(self.lift(a).node)
            else:
                ins.append(None)
        ref = next((n for n in ins if n is not None), None)
        if ref is None:
            return TABLES["numpy"][op](*args, **attrs)
        nodes = []
        for a, n in zip(args, ins):
            if n is None:
                if not isinstance(a, (numbers.Number, np.generic)):
                    raise TraceError(f"cannot trace an argument of type {type(a).__name__} in "
                                     f"{op}, at {src}")
                n = Node("const", (), {}, (), ref.dtype, src, np.asarray(a, dtype=ref.dtype))
            nodes.append(n)
        shape, dtype = TABLES["shape"][op](nodes, attrs, src)
        node = Node(op, nodes, attrs, shape, dtype, src)
        return self.wrap(node)
