"""Initialisers and random generators for layers."""
import math

import numpy as np

_default_rng = np.random.default_rng()


def as_rng(rng):
    """Every `rng` argument accepts a numpy Generator, an int seed or None."""
    if isinstance(rng, np.random.Generator):
        return rng
    return _default_rng if rng is None else np.random.default_rng(rng)


def nfan(*dims):
    """(fan_in, fan_out) of a weight of shape `dims`: (out,), (out, in), or a convolution's
    (out, in, *window), whose window size counts in both fans (Flux's nfan)."""
    if len(dims) == 1:
        return 1, dims[0]
    window = math.prod(dims[2:])
    return dims[1] * window, dims[0] * window


def glorot_uniform(*dims, rng=None, dtype=np.float32):
    """U(-sqrt(6/(fan_in+fan_out)), +...), Flux's default initialiser; dims are (out, in) or
    (out, in, *window)."""
    fan_in, fan_out = nfan(*dims)
    scale = np.sqrt(24.0 / (fan_in + fan_out))
    return ((as_rng(rng).random(dims) - 0.5) * scale).astype(dtype)
