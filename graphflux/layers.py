"""Layers: small classes a newcomer reads in one screen. A layer's arrays are its attributes;
`gf.params` finds them there and tracing swaps tracers into those attributes."""
import warnings

import numpy as np

from graphflux.compiler.ops import matmul
from graphflux.compiler.tracer import Tracer

from .activations import identity

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


class Chain:
    """Apply layers (any callables) in order. `m[i]` is a layer, `m[a:b]` a Chain sharing the
    same layer objects (so `gf.params(m[:-1])` freezes the last layer)."""

    def __init__(self, *layers):
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


class Dense:
    """y = σ(x @ weight.T + bias), weight of shape (out, in), bias (out,)."""

    def __init__(self, in_features, out_features, σ=identity, *, bias=True,
                 init=glorot_uniform):
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
