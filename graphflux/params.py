"""Params and Grads: which arrays train, and their gradients, both keyed by array identity.

`params` records, for every array it collects, the slot it came from (an attribute of a layer,
an element of a list, a value of a dict), so that tracing can put a tracer in that slot while
the loss runs and the user's model code needs no change."""
import types
import warnings
from collections.abc import Mapping

import numpy as np

_IGNORED = (str, bytes, bool, int, float, complex, type(None), types.FunctionType,
            types.BuiltinFunctionType, types.MethodType, types.ModuleType, type, np.generic)


def trainable(obj):
    """The name -> array/sub-layer dict params walks for `obj`: `obj.trainable()` if defined,
    else its attributes in assignment order."""
    custom = getattr(type(obj), "trainable", None)
    if callable(custom):
        return dict(custom(obj))
    return dict(vars(obj)) if hasattr(obj, "__dict__") else {}


class Params:
    """An insertion-ordered set of arrays, by identity. Holds references, never copies."""

    def __init__(self, xs=()):
        self._arrays = []
        self._index = {}
        self.slots = {}   # id(array) -> list of (container, key)
        self._flat = None  # cached slot_list()
        self.names = {}   # id(array) -> dotted path, for listings and messages
        for x in xs:
            self.add(x)

    def add(self, x, slot=None, name=None):
        key = id(x)
        if key not in self._index:
            self._index[key] = len(self._arrays)
            self._arrays.append(x)
            self.slots[key] = []
            self.names[key] = name or f"p{len(self._arrays) - 1}"
        if slot is not None and slot not in self.slots[key]:
            self.slots[key].append(slot)
            self._flat = None
        return self

    def slot_list(self):
        """Every slot as (array position, array, container, key, whether it is an item of a
        list or dict rather than an attribute) -- for swapping tracers in and out each step."""
        if self._flat is None:
            self._flat = [(i, a, c, k, isinstance(c, (list, dict)))
                          for i, a in enumerate(self._arrays) for c, k in self.slots[id(a)]]
        return self._flat

    def index(self, x):
        return self._index[id(x)]

    def name(self, x):
        return self.names[id(x)]

    def __len__(self):
        return len(self._arrays)

    def __iter__(self):
        return iter(self._arrays)

    def __getitem__(self, i):
        return self._arrays[i]

    def __contains__(self, x):
        return id(x) in self._index

    def __repr__(self):
        inner = ", ".join(f"{np.dtype(a.dtype).name}{list(a.shape)}" for a in self._arrays)
        return f"Params([{inner}])"


def params(*xs):
    """Collect the arrays of layers, lists, tuples and dicts depth-first in first-seen order;
    numbers, strings and functions are ignored (Flux's `params`)."""
    ps = Params()
    seen = set()

    def walk(x, slot, name):
        if isinstance(x, np.ndarray):
            if x.dtype.kind in "fiuc":
                ps.add(x, slot, name)
            return
        if isinstance(x, _IGNORED) or callable(x) and not hasattr(x, "__dict__"):
            return
        if id(x) in seen:
            return
        seen.add(id(x))
        if isinstance(x, Params):
            for a in x:
                ps.add(a, None, x.name(a))
                for s in x.slots[id(a)]:
                    ps.add(a, s)
        elif isinstance(x, list):
            for i, v in enumerate(x):
                walk(v, (x, i), f"{name}.{i}" if name else str(i))
        elif isinstance(x, tuple):
            for i, v in enumerate(x):
                walk(v, None, f"{name}.{i}" if name else str(i))
        elif isinstance(x, dict):
            for k, v in x.items():
                walk(v, (x, k), f"{name}.{k}" if name else str(k))
        elif hasattr(x, "__dict__"):
            for k, v in trainable(x).items():
                on_object = k in vars(x) and vars(x)[k] is v
                walk(v, (x, k) if on_object else None, f"{name}.{k}" if name else k)

    for x in xs:
        walk(x, None, "")
    return ps


def get_slot(slot):
    container, key = slot
    if isinstance(container, (list, dict)):
        return container[key]
    return getattr(container, key)


class SlotWatch:
    """What every recorded slot of `ps` holds now, to notice cheaply (identity checks, no
    calls) a slot that later holds another array: `layer.weight = new` in any class."""

    def __init__(self, ps):
        self._held = [(container, key, isinstance(container, (list, dict)),
                       get_slot((container, key)))
                      for p in ps for container, key in ps.slots[id(p)]]

    def changed(self):
        """The first slot, as (container, key), that no longer holds what it held; or None."""
        for container, key, item, p in self._held:
            if (container[key] if item else getattr(container, key)) is not p:
                return container, key
        return None


class Grads(Mapping):
    """Gradients keyed by parameter identity: `gs[p]` is a fresh array the caller owns, or None
    where the loss does not depend on `p`. `gs1 + gs2` and `gs * c` accumulate."""

    def __init__(self, ps, values):
        self.params = ps
        self._values = list(values)

    def __getitem__(self, p):
        if not isinstance(p, np.ndarray) or p not in self.params:
            raise KeyError("not a parameter of this Grads (gradients are keyed by the "
                           "parameter array itself, by identity)")
        return self._values[self.params.index(p)]

    def __iter__(self):
        return iter(self.params)

    def __len__(self):
        return len(self.params)

    def __contains__(self, p):
        return isinstance(p, np.ndarray) and p in self.params

    def keys(self):
        return list(self.params)

    def values(self):
        return list(self._values)

    def items(self):
        return list(zip(self.params, self._values))

    def _combine(self, other, f):
        if other.params is not self.params and list(map(id, other.params)) != list(map(id, self.params)):
            raise ValueError("Grads can only be combined when they share the same params")
        out = []
        for a, b in zip(self._values, other._values):
            out.append(a if b is None else b if a is None else f(a, b))
        return Grads(self.params, out)

    def __add__(self, other):
        return self._combine(other, lambda a, b: a + b)

    def __mul__(self, c):
        return Grads(self.params, [None if v is None else v * c for v in self._values])

    __rmul__ = __mul__

    def __repr__(self):
        return f"Grads({len(self)} params)"


def warn_unused(ps, grads):
    """One warning naming the parameters the loss did not reach."""
    warn_names([ps.name(p) for p, g in zip(ps, grads) if g is None])


def warn_names(missing):
    if missing:
        warnings.warn(f"the loss does not depend on parameter(s) {', '.join(missing)}: their "
                      "gradient is None (used only through plain numpy, or not at all)",
                      stacklevel=4)


def as_params(ps):
    return ps if isinstance(ps, Params) else params(ps)
