"""The primitive op set and the op functions everything else is written with.

Each primitive has a shape/dtype rule here; its VJP rule lives in `autodiff`, its numpy
implementation in `graphflux.runtime.numpy_impls` (registered into NUMPY_IMPLS when the runtime is
imported) and its LLVM lowering in `lower`. An op function called on tracers records a node in the
active context; called on plain arrays it runs the numpy implementation."""
import math

import numpy as np

from .errors import ShapeError, TraceError
from .tracer import TABLES, Tracer, _stack as _contexts
from .window_geometry import SHAPE_RULES as WINDOW_SHAPE_RULES

NUMPY_IMPLS = {}
NUMPY_ELEMENTWISE = {}   # fn name -> numpy function, filled by the runtime (eager fast path)


def _shape_error(op, detail, shapes, source):
    shown = ", ".join(str(tuple(s)) for s in shapes)
    return ShapeError(f"{detail} -- in {op} with operand shapes {shown}, at {source}")


def broadcast_shapes(op, shapes, source):
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        raise _shape_error(op, "operands do not broadcast together (numpy rules; reshape one "
                           "of them or fix the layer sizes)", shapes, source) from None


def _norm_axes(op, axes, ndim, shape):
    out = []
    for a in axes:
        if not -ndim <= a < ndim:
            raise _shape_error(op, f"axis {a} is out of range for a {ndim}-d operand",
                               [shape], _src())
        out.append(a % ndim)
    return tuple(sorted(set(out)))


def _rule_elementwise(ins, attrs, src):
    shape = broadcast_shapes(attrs["fn"], [i.shape for i in ins], src)
    return shape, ins[0].dtype


def _rule_cast(ins, attrs, src):
    return ins[0].shape, np.dtype(attrs["dtype"])


def _rule_reduce(ins, attrs, src):
    x, axes = ins[0], attrs["axes"]
    if attrs["keepdims"]:
        return tuple(1 if d in axes else s for d, s in enumerate(x.shape)), x.dtype
    return tuple(s for d, s in enumerate(x.shape) if d not in axes), x.dtype


def _rule_matmul(ins, attrs, src):
    a, b = ins
    if len(a.shape) != 2 or len(b.shape) != 2:
        raise _shape_error("matmul", "matmul takes 2-d operands", [a.shape, b.shape], src)
    m, k = a.shape[::-1] if attrs["ta"] else a.shape
    k2, n = b.shape[::-1] if attrs["tb"] else b.shape
    if k != k2:
        raise _shape_error("matmul", f"inner dimensions differ ({k} vs {k2})",
                           [a.shape, b.shape], src)
    return (m, n), a.dtype


def _rule_reshape(ins, attrs, src):
    shape = attrs["shape"]
    if int(np.prod(shape)) != ins[0].size:
        raise _shape_error("reshape", f"cannot reshape {ins[0].size} elements to {shape}",
                           [ins[0].shape], src)
    return shape, ins[0].dtype


def _rule_transpose(ins, attrs, src):
    return tuple(ins[0].shape[p] for p in attrs["perm"]), ins[0].dtype


def _rule_broadcast(ins, attrs, src):
    shape = attrs["shape"]
    if broadcast_shapes("broadcast", [ins[0].shape, shape], src) != shape:
        raise _shape_error("broadcast", f"cannot broadcast to {shape}", [ins[0].shape], src)
    return shape, ins[0].dtype


def _rule_slice(ins, attrs, src):
    return tuple(len(range(a, b, c)) for a, b, c in zip(attrs["starts"], attrs["stops"],
                                                        attrs["steps"])), ins[0].dtype


def _rule_unslice(ins, attrs, src):
    return attrs["shape"], ins[0].dtype


def _rule_random(ins, attrs, src):
    return attrs["shape"], np.dtype(attrs["dtype"])


def _rule_same(ins, attrs, src):
    return ins[0].shape, ins[0].dtype


SHAPE_RULES = {
    "elementwise": _rule_elementwise,
    "cast": _rule_cast,
    "reduce_sum": _rule_reduce,
    "reduce_max": _rule_reduce,
    "matmul": _rule_matmul,
    "reshape": _rule_reshape,
    "transpose": _rule_transpose,
    "broadcast": _rule_broadcast,
    "slice": _rule_slice,
    "unslice": _rule_unslice,
    "stop_gradient": _rule_same,
    "random": _rule_random,
    **WINDOW_SHAPE_RULES,
}
PRIMITIVES = tuple(SHAPE_RULES)
TABLES.update(shape=SHAPE_RULES, numpy=NUMPY_IMPLS)


def bind(op, args, attrs):
    """Apply primitive `op`: record a node when a context is tracing, else run numpy."""
    if _contexts:
        return _contexts[-1].record(op, args, attrs)
    for a in args:
        if isinstance(a, Tracer):
            return a.ctx.record(op, args, attrs)
    return NUMPY_IMPLS[op](*args, **attrs)


def _traced(*args):
    """Whether an op records a node (a context is active, or an operand is traced). Otherwise
    it runs on numpy values, and numpy's dtype rules hold: the graph's -- one floating dtype
    per node, since native kernels compute in float32 or float64 -- are for graphs only."""
    if _contexts:
        return True
    for a in args:
        if isinstance(a, Tracer):
            return True
    return False


def _is_tensor(x):
    return type(x) is np.ndarray or isinstance(x, (Tracer, np.ndarray))


def _dtype(x):
    return x.dtype if _is_tensor(x) else None


# ---- elementwise -------------------------------------------------------------------------------

def elementwise(fn, *args):
    """Apply a registered ElementwiseFn (by name) with numpy broadcasting; operands are promoted
    to one floating dtype, Python numbers take the tensors' dtype."""
    if not _contexts:
        for x in args:
            if isinstance(x, Tracer):
                break
        else:
            f = NUMPY_ELEMENTWISE.get(fn)
            return f(*args) if f is not None else NUMPY_IMPLS["elementwise"](*args, fn=fn)
    elif _contexts[-1].computes:       # eager: numpy promotes dtypes itself, as traced code does
        return _contexts[-1].record("elementwise", args, {"fn": fn})
    dt, mixed = None, False
    for x in args:
        d = getattr(x, "dtype", None) if not isinstance(x, (float, int)) else None
        if d is not None and isinstance(x, (Tracer, np.ndarray)):
            if dt is None:
                dt = d
            elif d is not dt and d != dt:
                mixed = True
    if mixed or (dt is not None and dt.kind != "f"):
        dt = np.result_type(*[x.dtype for x in args if _is_tensor(x)])
        if dt.kind != "f":
            dt = np.dtype(np.float64 if dt.itemsize > 4 else np.float32)
        args = tuple(cast(x, dt) if _is_tensor(x) and x.dtype != dt else x for x in args)
    return bind("elementwise", args, {"fn": fn})


def cast(x, dtype):
    dtype = np.dtype(dtype)
    if _dtype(x) == dtype:
        return x
    return bind("cast", (x,), {"dtype": dtype.str})


def add(a, b): return elementwise("add", a, b)
def sub(a, b): return elementwise("sub", a, b)
def mul(a, b): return elementwise("mul", a, b)
def div(a, b): return elementwise("div", a, b)
def neg(a): return elementwise("neg", a)
def exp(x): return elementwise("exp", x)
def log(x): return elementwise("log", x)
def tanh(x): return elementwise("tanh", x)
def sigmoid(x): return elementwise("sigmoid", x)
def relu(x): return elementwise("relu", x)
def sqrt(x): return elementwise("sqrt", x)
def square(x): return elementwise("square", x)
def abs(x): return elementwise("abs", x)  # noqa: A001 -- mirrors numpy's name
def maximum(a, b): return elementwise("maximum", a, b)
def minimum(a, b): return elementwise("minimum", a, b)
def where(cond, a, b): return elementwise("where", cond, a, b)


def power(a, b):
    if type(b) in (int, float) and b == 2 and _traced(a):
        return square(a)
    return elementwise("pow", a, b)


# ---- reductions ------------------------------------------------------------------------------

def _axes(x, axis):
    nd = len(x.shape)
    if axis is None:
        return tuple(range(nd))
    if type(axis) is int or isinstance(axis, np.integer):
        if -nd <= axis < nd:
            return (axis % nd,)
        axis = (axis,)
    return _norm_axes("reduce", tuple(axis), nd, x.shape)


def _src():
    from .source import user_source_line
    return user_source_line()


def sum(x, axis=None, keepdims=False):  # noqa: A001
    x = _as_float(x)
    return bind("reduce_sum", (x,), {"axes": _axes(x, axis), "keepdims": bool(keepdims)})


def max(x, axis=None, keepdims=False):  # noqa: A001
    x = _as_float(x)
    return bind("reduce_max", (x,), {"axes": _axes(x, axis), "keepdims": bool(keepdims)})


def mean(x, axis=None, keepdims=False):
    """The sum times 1/n. Untraced, integers and booleans are summed in int64 and the product
    with 1/n is float64: numpy's mean, dtype included."""
    x = _as_float(x)
    axes = _axes(x, axis)
    shape = x.shape
    total = bind("reduce_sum", (x,), {"axes": axes, "keepdims": bool(keepdims)})
    return mul(total, 1.0 / math.prod([shape[a] for a in axes]))


def _as_float(x):
    """A reduction's operand: traced, of a floating dtype (the graph's rule); untraced, as a
    numpy array, whose reduction then follows numpy's rules (np.sum of int64 is int64)."""
    dtype = getattr(x, "dtype", None)
    if dtype is not None and dtype.kind == "f" and (type(x) is np.ndarray or
                                                     isinstance(x, Tracer)):
        return x
    if not _traced(x):
        return np.asarray(x)
    if not _is_tensor(x):
        x = np.asarray(x) if isinstance(x, np.generic) else np.asarray(x, dtype=np.float64)
    if x.dtype.kind != "f":
        return cast(x, np.float32 if x.dtype.itemsize <= 4 else np.float64)
    return x


# ---- linear algebra and movement ---------------------------------------------------------------

def matmul(a, b, ta=False, tb=False):
    """a @ b for 2-d operands, with a 1-d operand promoted as numpy does. Untraced it is numpy's
    matmul itself: its dtype promotion, a scalar from two vectors, stacks of matrices."""
    if not _traced(a, b):
        return bind("matmul", (a, b), {"ta": bool(ta), "tb": bool(tb)})
    da, db = getattr(a, "dtype", None), getattr(b, "dtype", None)
    if da is not None and db is not None and da != db and _is_tensor(a) and _is_tensor(b):
        dt = np.result_type(a.dtype, b.dtype)
        a, b = cast(a, dt), cast(b, dt)
    if len(a.shape) == 1 and not ta:
        return reshape(matmul(reshape(a, (1, a.shape[0])), b, False, tb), (-1,))
    if len(b.shape) == 1 and not tb:
        return reshape(matmul(a, reshape(b, (b.shape[0], 1)), ta, False), (-1,))
    return bind("matmul", (a, b), {"ta": bool(ta), "tb": bool(tb)})


def reshape(x, shape):
    if type(shape) is not tuple or not all(type(s) is int for s in shape):
        shape = tuple(int(s) for s in (shape if isinstance(shape, (tuple, list)) else (shape,)))
    if shape == x.shape:
        return x
    if -1 in shape:
        known = int(np.prod([s for s in shape if s != -1]))
        total = int(np.prod(x.shape))
        shape = tuple(total // known if known and s == -1 else s for s in shape)
    if tuple(shape) == tuple(x.shape):
        return x
    return bind("reshape", (x,), {"shape": shape})


def transpose(x, axes=None):
    nd = len(x.shape)
    perm = tuple(reversed(range(nd))) if axes is None else tuple(a % nd for a in axes)
    if perm == tuple(range(nd)):
        return x
    return bind("transpose", (x,), {"perm": perm})


def broadcast_to(x, shape):
    shape = tuple(int(s) for s in shape)
    if tuple(x.shape) == shape:
        return x
    return bind("broadcast", (x,), {"shape": shape})


def stop_gradient(x):
    return bind("stop_gradient", (x,), {})


RANDOM_MIX = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)
"""splitmix64's constants: z = key*MIX[0] + counter*MIX[1] + index*MIX[2], then its finaliser
with MIX[1] and MIX[2] -- the one definition the native kernel and numpy both use."""


def random_uniform(counter, shape, key, dtype=np.float32):
    """Uniform numbers in [0, 1) with 24 random bits each, a pure function of (key, counter,
    element index): counter-based, so native code and numpy draw the same bits, and a step
    that passes a new counter draws new ones without recompiling."""
    return bind("random", (counter,), {"shape": tuple(int(s) for s in shape), "key": int(key),
                                       "dtype": np.dtype(dtype).str})


def sum_to_shape(g, shape):
    """Undo numpy broadcasting: sum `g` down to `shape` (the VJP of implicit broadcasting)."""
    gshape, shape = g.shape, tuple(shape)
    if gshape == shape:
        return g
    lead = len(gshape) - len(shape)
    kept = tuple(lead + i for i, s in enumerate(shape) if s == 1 and gshape[lead + i] != 1)
    if lead == 0:
        return bind("reduce_sum", (g,), {"axes": kept, "keepdims": True})
    total = bind("reduce_sum", (g,), {"axes": tuple(range(lead)) + kept, "keepdims": False})
    return reshape(total, shape) if kept else total


def getitem(x, index):
    """Basic indexing: integers, slices with positive steps, None and Ellipsis."""
    if not isinstance(index, tuple):
        index = (index,)
    if any(isinstance(i, (np.ndarray, list, Tracer)) for i in index):
        raise TraceError("graphflux supports basic indexing only (integers, slices, None); "
                         f"advanced (array) indexing is not supported yet, at {_src()}")
    if Ellipsis in index:
        at = index.index(Ellipsis)
        fill = len(x.shape) - (len([i for i in index if i is not None]) - 1)
        index = index[:at] + (slice(None),) * fill + index[at + 1:]
    starts, stops, steps, out_shape, dim = [], [], [], [], 0
    for i in index:
        if i is None:
            out_shape.append(1)
            continue
        n = x.shape[dim]
        if isinstance(i, slice):
            a, b, c = i.indices(n)
            if c <= 0:
                raise TraceError(f"negative slice steps are not supported yet, at {_src()}")
            starts.append(a), stops.append(b), steps.append(c)
            out_shape.append(len(range(a, b, c)))
        else:
            k = int(i)
            if not -n <= k < n:
                raise ShapeError(f"index {k} is out of bounds for axis {dim} with size {n}, "
                                 f"at {_src()}")
            k %= n
            starts.append(k), stops.append(k + 1), steps.append(1)
        dim += 1
    for d in range(dim, len(x.shape)):
        starts.append(0), stops.append(x.shape[d]), steps.append(1)
        out_shape.append(x.shape[d])
    full = [len(range(a, b, c)) for a, b, c in zip(starts, stops, steps)]
    y = x
    if full != list(x.shape):
        y = bind("slice", (x,), {"starts": tuple(starts), "stops": tuple(stops),
                                 "steps": tuple(steps)})
    return reshape(y, tuple(out_shape))

