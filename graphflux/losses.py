"""Flux.Losses, `ŷ` first, written with graphflux ops so each compiles and differentiates
without rules of its own. The class dimension is axis=-1 (Flux's dims=1)."""
import numpy as np

from graphflux.compiler import ops
from graphflux.compiler.errors import ShapeError
from graphflux.compiler.source import user_source_line

from .activations import logsoftmax

def _check_agg(agg):
    if not callable(agg):
        raise TypeError(f"agg must be a callable such as gf.mean or gf.sum, got {agg!r} "
                        "(a string like 'mean' is not accepted)")


def _check_sizes(ŷ, y, loss):
    if tuple(ŷ.shape) != tuple(y.shape if hasattr(y, "shape") else np.shape(y)):
        raise ShapeError(f"{loss}(ŷ, y) needs ŷ and y of the same shape, got ŷ {tuple(ŷ.shape)} "
                         f"and y {tuple(getattr(y, 'shape', ()))}, at {user_source_line()}")


def _eps(ŷ):
    dt = ŷ.dtype if np.issubdtype(ŷ.dtype, np.floating) else np.float64
    return float(np.finfo(dt).eps)


def xlogy(x, y):
    """x * log(y), and 0 where x == 0 (so 0 * log(0) = 0)."""
    return ops.elementwise("xlogy", x, y)


def mse(ŷ, y, *, agg=ops.mean):
    """agg((ŷ - y)^2)."""
    _check_agg(agg)
    _check_sizes(ŷ, y, "mse")
    return agg(ops.square(ops.sub(ŷ, y)))


def crossentropy(ŷ, y, *, axis=-1, agg=ops.mean, eps=None):
    """agg(-sum(y * log(ŷ + eps), axis)) for probabilities ŷ; prefer logitcrossentropy."""
    _check_agg(agg)
    _check_sizes(ŷ, y, "crossentropy")
    eps = _eps(ŷ) if eps is None else eps
    return agg(ops.neg(ops.sum(xlogy(y, ops.add(ŷ, eps)), axis)))


def logitcrossentropy(ŷ, y, *, axis=-1, agg=ops.mean):
    """agg(-sum(y * logsoftmax(ŷ), axis)): crossentropy on logits, numerically stable."""
    _check_agg(agg)
    _check_sizes(ŷ, y, "logitcrossentropy")
    return agg(ops.neg(ops.sum(ops.mul(y, logsoftmax(ŷ, axis)), axis)))
