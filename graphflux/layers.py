"""Layers: small classes a newcomer reads in one screen. A layer's arrays are its attributes;
`gf.params` finds them there and tracing swaps tracers into those attributes."""
import warnings

import numpy as np

from graphflux.compiler import ops
from graphflux.compiler.ops import matmul
from graphflux.compiler.tracer import Tracer

from .activations import identity
from .bindings import HoldsArrays
from .errors import ArgumentError, ShapeError, UsageError
from .modes import is_active, write_state

_default_rng = np.random.default_rng()


def as_rng(rng):
    """Every `rng` argument accepts a numpy Generator, an int seed or None."""
    if isinstance(rng, np.random.Generator):
        return rng
    return _default_rng if rng is None else np.random.default_rng(rng)


def glorot_uniform(*dims, rng=None, dtype=np.float32):
    """U(-sqrt(6/(fan_in+fan_out)), +...), Flux's default initialiser; dims are (out, in)."""
    fan_out, fan_in = (dims[0], dims[1]) if len(dims) > 1 else (dims[0], 1)
    scale = np.sqrt(24.0 / (fan_in + fan_out))
    return ((as_rng(rng).random(dims) - 0.5) * scale).astype(dtype)


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


class LayerNorm(HoldsArrays):
    """(x - mean) / (std + eps) over the last axis (uncorrected std, eps added to it, as in
    Flux), then a learned scale and shift."""

    def __init__(self, n, σ=identity, *, eps=1e-5, affine=True):
        self.scale = np.ones(n, dtype=np.float32) if affine else None
        self.bias = np.zeros(n, dtype=np.float32) if affine else None
        self.σ, self.eps = σ, eps

    def __call__(self, x):
        mu = ops.mean(x, -1, keepdims=True)
        centred = ops.sub(x, mu)
        std = ops.sqrt(ops.mean(ops.square(centred), -1, keepdims=True))
        y = ops.div(centred, ops.add(std, self.eps))
        if self.scale is not None:
            y = ops.add(ops.mul(y, self.scale), self.bias)
        return self.σ(y)

    def __repr__(self):
        return f"LayerNorm({self.scale.shape[0] if self.scale is not None else '?'})"


class BatchNorm(HoldsArrays):
    """Normalise each feature (last axis) over the batch; trainable `beta`, `gamma`; running
    `mean`, `var` (not trainable) updated by training steps and used in test mode."""

    def __init__(self, n, σ=identity, *, momentum=0.1, eps=1e-5, affine=True):
        self.beta = np.zeros(n, dtype=np.float32) if affine else None
        self.gamma = np.ones(n, dtype=np.float32) if affine else None
        self.mean = np.zeros(n, dtype=np.float32)
        self.var = np.ones(n, dtype=np.float32)
        self.σ, self.momentum, self.eps = σ, momentum, eps
        self.active = None

    def trainable(self):
        return {} if self.beta is None else {"beta": self.beta, "gamma": self.gamma}

    def __call__(self, x):
        axes = tuple(range(len(x.shape) - 1))
        if is_active(self):
            k = int(np.prod([x.shape[a] for a in axes]))
            if k < 2:
                raise ShapeError(f"BatchNorm({self.mean.shape[0]}) in training got a batch of "
                                 f"shape {tuple(x.shape)}: one value per channel, whose variance "
                                 "is undefined; train on batches of 2 or more, or use "
                                 "gf.testmode(layer)")
            mu = ops.mean(x, axes)
            var = ops.mean(ops.square(ops.sub(x, mu)), axes)
            m = self.momentum
            write_state(self.mean, ops.add(ops.mul(self.mean, 1 - m),
                                           ops.mul(ops.stop_gradient(mu), m)))
            write_state(self.var, ops.add(ops.mul(self.var, 1 - m),
                                          ops.mul(ops.stop_gradient(var), m * k / max(k - 1, 1))))
        else:
            mu, var = self.mean, self.var
        y = ops.div(ops.sub(x, mu), ops.sqrt(ops.add(var, self.eps)))
        if self.gamma is not None:
            y = ops.add(ops.mul(y, self.gamma), self.beta)
        return self.σ(y)

    def __repr__(self):
        return f"BatchNorm({self.mean.shape[0]})"


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
