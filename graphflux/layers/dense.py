"""Dense layers: Chain, Dense and Dropout -- small classes a newcomer reads in one screen.
A layer's arrays are its attributes; `gf.params` finds them there and tracing swaps tracers
into those attributes."""
import warnings

import numpy as np

from graphflux.compiler import ops
from graphflux.compiler.ops import matmul
from graphflux.compiler.tracer import Tracer

from ..activations import identity
from ..bindings import HoldsArrays
from ..errors import ArgumentError, UsageError
from ..modes import is_active, write_state
from .init import as_rng, glorot_uniform


class Chain(HoldsArrays):
    """Apply layers (any callables) in order. `m[i]` is a layer, `m[a:b]` a Chain sharing the
    same layer objects (so `gf.params(m[:-1])` freezes the last layer)."""

    def __init__(self, *layers):
        for i, layer in enumerate(layers):
            if not callable(layer):
                raise ArgumentError(f"Chain: layer {i} is {layer!r} ({type(layer).__name__}), "
                                    "which is not callable; every layer must be a callable "
                                    "(a layer or a function such as gf.softmax)")
        self.layers = list(layers)

    def __call__(self, x):
        for layer in self.layers:
            x = layer(x)
        return x

    def __getitem__(self, i):
        if isinstance(i, slice):
            return Chain(*self.layers[i])
        return self.layers[i]

    def __len__(self):
        return len(self.layers)

    def __repr__(self):
        return "Chain(" + ", ".join(map(repr, self.layers)) + ")"


class Dense(HoldsArrays):
    """y = σ(x @ weight.T + bias), weight of shape (out, in), bias (out,)."""

    def __init__(self, in_features, out_features, σ=identity, *, bias=True,
                 init=glorot_uniform):
        for name, n in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
                raise UsageError(f"Dense: {name} must be a whole number >= 0, got {n!r}")
        if not callable(σ):
            raise ArgumentError(f"Dense: the activation σ must be callable, got {σ!r}; pass "
                                "the function itself, e.g. gf.relu")
        self.weight = init(out_features, in_features)
        if bias is True:
            bias = np.zeros(out_features, dtype=self.weight.dtype)
        self.bias = bias if isinstance(bias, np.ndarray) else None
        self.σ = σ
        self._warned = False

    def __call__(self, x):
        x = self._match_dtype(x)
        y = matmul(x, self.weight, tb=True)   # x @ weight.T, without materialising weight.T
        if self.bias is not None:
            y = y + self.bias
        return self.σ(y)

    def _match_dtype(self, x):
        """Flux converts input to the weight's float type, with one warning per layer."""
        w = self.weight
        if isinstance(x, np.ndarray) and isinstance(w, np.ndarray) and x.dtype != w.dtype \
                and x.dtype.kind == "f":
            if not self._warned:
                warnings.warn(f"Dense({w.shape[1]}, {w.shape[0]}) has {w.dtype} weights and got "
                              f"{x.dtype} input; converting the input (slow path)", stacklevel=3)
                self._warned = True
            return x.astype(w.dtype)
        return x

    def __repr__(self):
        name = getattr(self.σ, "__name__", repr(self.σ))
        act = "" if self.σ is identity else f", {name}"
        shape = self.weight.shape if not isinstance(self.weight, Tracer) else self.weight.shape
        return f"Dense({shape[1]}, {shape[0]}{act})"


class Dropout(HoldsArrays):
    """Zero each element with probability p and scale the rest by 1/(1 - p), when active.
    The mask comes from a counter-based generator: `key` (from `seed`) and `counter`, which
    every training step advances (inside the native step, like running statistics), so the
    mask changes each step, is reproducible from the seed, and eager mode draws the same bits."""

    def __init__(self, p, *, seed=None):
        if not 0 <= p <= 1:
            raise UsageError(f"Dropout probability p must be in [0, 1], got {p}")
        self.p = p
        self.key = int(as_rng(seed).integers(0, 2 ** 62)) if not isinstance(seed, int) \
            else seed
        self.counter = np.zeros((), dtype=np.float64)
        self.active = None

    def trainable(self):
        return {}

    def __call__(self, x):
        if not is_active(self) or self.p == 0:
            return x
        u = ops.random_uniform(self.counter, x.shape, self.key, x.dtype)
        write_state(self.counter, ops.add(self.counter, 1.0))
        keep = ops.elementwise("greater_equal", u, self.p)
        scale = 0.0 if self.p == 1 else 1.0 / (1.0 - self.p)   # p = 1 gives exact zeros
        return ops.where(keep, ops.mul(x, scale), 0.0)

    def __repr__(self):
        return f"Dropout({self.p})"
