"""Normalisation layers: LayerNorm over the last axis, BatchNorm per channel (axis 1)."""
import numpy as np

from graphflux.compiler import ops

from ..activations import identity
from ..bindings import HoldsArrays
from ..errors import ShapeError
from ..modes import is_active, write_state


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
    """Normalise each channel -- axis 1 of (N, C, ...), the features of (N, C) -- over every
    other axis; trainable `beta`, `gamma`; running `mean`, `var` (not trainable) updated by
    training steps and used in test mode."""

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
        nd = len(x.shape)
        axes = (0,) + tuple(range(2, nd)) if nd > 1 else ()
        per_channel = (self.mean.shape[0],) + (1,) * max(nd - 2, 0)   # (C, 1, 1) for NCHW

        def channels(v):
            return v if v is None or nd <= 2 else ops.reshape(v, per_channel)
        if is_active(self):
            k = int(np.prod([x.shape[a] for a in axes]))
            if k < 2:
                raise ShapeError(f"BatchNorm({self.mean.shape[0]}) in training got a batch of "
                                 f"shape {tuple(x.shape)}: one value per channel, whose variance "
                                 "is undefined; train on batches of 2 or more, or use "
                                 "gf.testmode(layer)")
            mu = ops.mean(x, axes)
            var = ops.mean(ops.square(ops.sub(x, channels(mu))), axes)
            m = self.momentum
            write_state(self.mean, ops.add(ops.mul(self.mean, 1 - m),
                                           ops.mul(ops.stop_gradient(mu), m)))
            write_state(self.var, ops.add(ops.mul(self.var, 1 - m),
                                          ops.mul(ops.stop_gradient(var), m * k / max(k - 1, 1))))
        else:
            mu, var = self.mean, self.var
        y = ops.div(ops.sub(x, channels(mu)), ops.sqrt(ops.add(channels(var), self.eps)))
        if self.gamma is not None:
            y = ops.add(ops.mul(y, channels(self.gamma)), channels(self.beta))
        return self.σ(y)

    def __repr__(self):
        return f"BatchNorm({self.mean.shape[0]})"
