"""The array interface of traced values: Python operators, array methods and numpy's
`__array_ufunc__`/`__array_function__` protocols, each routed to a graphflux op function.
Installed onto Tracer here (not in tracer.py), so that ops imports tracer and not the reverse."""
from . import ops
from .errors import TraceError
from .source import user_source_line
from .tracer import Tracer


class _ArrayMethods:
    # arithmetic
    def __add__(self, o): return ops.add(self, o)
    def __radd__(self, o): return ops.add(o, self)
    def __sub__(self, o): return ops.sub(self, o)
    def __rsub__(self, o): return ops.sub(o, self)
    def __mul__(self, o): return ops.mul(self, o)
    def __rmul__(self, o): return ops.mul(o, self)
    def __truediv__(self, o): return ops.div(self, o)
    def __rtruediv__(self, o): return ops.div(o, self)
    def __pow__(self, o): return ops.power(self, o)
    def __rpow__(self, o): return ops.power(o, self)
    def __neg__(self): return ops.neg(self)
    def __pos__(self): return self
    def __abs__(self): return ops.abs(self)
    def __matmul__(self, o): return ops.matmul(self, o)
    def __rmatmul__(self, o): return ops.matmul(o, self)
    def __gt__(self, o): return ops.elementwise("greater", self, o)
    def __ge__(self, o): return ops.elementwise("greater_equal", self, o)
    def __lt__(self, o): return ops.elementwise("less", self, o)
    def __le__(self, o): return ops.elementwise("less_equal", self, o)
    def __getitem__(self, index): return ops.getitem(self, index)

    # array methods
    @property
    def T(self): return ops.transpose(self)
    def transpose(self, *axes): return ops.transpose(self, axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else (axes or None))
    def reshape(self, *shape): return ops.reshape(self, shape[0] if len(shape) == 1 else shape)
    def sum(self, axis=None, keepdims=False): return ops.sum(self, axis, keepdims)
    def mean(self, axis=None, keepdims=False): return ops.mean(self, axis, keepdims)
    def max(self, axis=None, keepdims=False): return ops.max(self, axis, keepdims)
    def astype(self, dtype): return ops.cast(self, dtype)
    def copy(self): return self  # traced values are immutable; a copy is the same value

    # numpy protocols
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        fn = _UFUNCS.get(ufunc.__name__)
        if method != "__call__" or fn is None or kwargs.get("out") is not None:
            raise TraceError(f"numpy ufunc {ufunc.__name__}.{method} is not supported on traced "
                             f"arrays; use graphflux ops (at {user_source_line()})")
        return fn(*inputs)

    def __array_function__(self, func, types, args, kwargs):
        fn = _FUNCTIONS.get(func.__name__)
        if fn is None:
            raise TraceError(f"numpy.{func.__name__} is not supported on traced arrays; use "
                             f"graphflux ops (at {user_source_line()})")
        return fn(*args, **kwargs)




def _reduce_fn(fn):
    def call(x, axis=None, dtype=None, out=None, keepdims=False, **kw):
        return fn(x, axis, keepdims)
    return call


def _comparison(name):
    return lambda a, b: ops.elementwise(name, a, b)


_UFUNCS = {
    "add": ops.add, "subtract": ops.sub, "multiply": ops.mul, "true_divide": ops.div,
    "divide": ops.div, "negative": ops.neg, "exp": ops.exp, "log": ops.log,
    "tanh": ops.tanh, "sqrt": ops.sqrt, "square": ops.square, "absolute": ops.abs,
    "maximum": ops.maximum, "minimum": ops.minimum, "power": ops.power,
    "matmul": ops.matmul,
    **{name: _comparison(name)
       for name in ("greater", "less", "greater_equal", "less_equal", "equal")},
}

_FUNCTIONS = {
    "sum": _reduce_fn(ops.sum), "mean": _reduce_fn(ops.mean), "max": _reduce_fn(ops.max),
    "amax": _reduce_fn(ops.max), "matmul": ops.matmul, "dot": ops.matmul,
    "transpose": lambda x, axes=None: ops.transpose(x, axes),
    "reshape": lambda x, shape, **kw: ops.reshape(x, shape),
    "where": ops.where,
    "broadcast_to": lambda x, shape, **kw: ops.broadcast_to(x, shape),
    "shape": lambda x: tuple(x.shape), "ndim": lambda x: len(x.shape),
    "size": lambda x, axis=None: x.size if axis is None else x.shape[axis],
}

for _name, _value in vars(_ArrayMethods).items():
    if _name not in ("__dict__", "__weakref__", "__module__", "__qualname__", "__doc__"):
        setattr(Tracer, _name, _value)
