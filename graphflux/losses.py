"""Flux.Losses 0.13.17, `ŷ` first, written with graphflux ops so each compiles and
differentiates without rules of its own. The class dimension is axis=-1 (Flux's dims=1);
`agg` is applied to the elementwise (or per-observation) losses and must be callable."""
import numbers

import numpy as np

from graphflux.compiler import ops
from graphflux.compiler.errors import GraphfluxError, ShapeError
from graphflux.compiler.source import user_source_line
from graphflux.compiler.tracer import Tracer

from .activations import logsigmoid, logsoftmax

mean = ops.mean


class LossArgumentError(GraphfluxError, ValueError):
    """A loss hyperparameter outside its range."""


class AggError(GraphfluxError, TypeError):
    """`agg` is not a function."""


def _check_agg(agg):
    if not callable(agg):
        raise AggError(f"agg must be a callable such as gf.mean or gf.sum, got {agg!r} "
                        "(a string like 'mean' is not accepted)")


def _shape(a):
    shape = getattr(a, "shape", None)
    return tuple(shape) if shape is not None else np.shape(a)


def _check_sizes(ŷ, y, loss):
    """Flux's _check_sizes: equal shapes, except that y may be a number."""
    if type(y) is not np.ndarray and not isinstance(y, Tracer) and \
            isinstance(y, numbers.Number):
        return
    if _shape(ŷ) != _shape(y):
        raise ShapeError(f"{loss}(ŷ, y) needs ŷ and y of the same shape, got ŷ {_shape(ŷ)} "
                         f"and y {_shape(y)}, at {user_source_line()}")


def _start(ŷ, y, agg, name):
    _check_agg(agg)
    _check_sizes(ŷ, y, name)


def _eps(ŷ):
    dt = np.dtype(ŷ.dtype) if hasattr(ŷ, "dtype") else np.dtype(np.float64)
    return float(np.finfo(dt if dt.kind == "f" else np.float64).eps)


def xlogx(x):
    """x * log(x), and 0 at x == 0."""
    return ops.elementwise("xlogx", x)


def xlogy(x, y):
    """x * log(y), and 0 where x == 0 (so 0 * log(0) = 0)."""
    return ops.elementwise("xlogy", x, y)


def mae(ŷ, y, *, agg=mean):
    """agg(|ŷ - y|)."""
    _start(ŷ, y, agg, "mae")
    return agg(ops.abs(ops.sub(ŷ, y)))


def mse(ŷ, y, *, agg=mean):
    """agg((ŷ - y)^2)."""
    _start(ŷ, y, agg, "mse")
    return agg(ops.square(ops.sub(ŷ, y)))


def msle(ŷ, y, *, agg=mean, eps=None):
    """agg((log((ŷ + eps) / (y + eps)))^2)."""
    _start(ŷ, y, agg, "msle")
    eps = _eps(ŷ) if eps is None else eps
    return agg(ops.square(ops.log(ops.div(ops.add(ŷ, eps), ops.add(y, eps)))))


def huber_loss(ŷ, y, *, agg=mean, delta=1.0):
    """Quadratic below delta, linear above: 0.5 e^2 if |e| < delta else delta (|e| - delta/2)."""
    _start(ŷ, y, agg, "huber_loss")
    err = ops.abs(ops.sub(ŷ, y))
    small = ops.elementwise("less", err, delta)
    quadratic = ops.mul(ops.mul(ops.square(err), small), 0.5)
    linear = ops.mul(ops.mul(ops.sub(err, 0.5 * delta), delta), ops.sub(1.0, small))
    return agg(ops.add(quadratic, linear))


def label_smoothing(y, α, *, axis=-1):
    """y (1 - α) + α / k for k classes along `axis`; `axis=None` for binary labels (α / 2)."""
    if not 0 < α < 1:
        raise LossArgumentError(f"label_smoothing needs 0 < α < 1, got α = {α}")
    k = 2 if axis is None else _shape(y)[axis]
    return ops.add(ops.mul(y, 1 - α), α / k)


def crossentropy(ŷ, y, *, axis=-1, agg=mean, eps=None):
    """agg(-sum(y * log(ŷ + eps), axis)) for probabilities ŷ; prefer logitcrossentropy."""
    _start(ŷ, y, agg, "crossentropy")
    eps = _eps(ŷ) if eps is None else eps
    return agg(ops.neg(ops.sum(xlogy(y, ops.add(ŷ, eps)), axis)))


def logitcrossentropy(ŷ, y, *, axis=-1, agg=mean):
    """agg(-sum(y * logsoftmax(ŷ), axis)): crossentropy on logits, numerically stable."""
    _start(ŷ, y, agg, "logitcrossentropy")
    return agg(ops.neg(ops.sum(ops.mul(y, logsoftmax(ŷ, axis)), axis)))


def binarycrossentropy(ŷ, y, *, agg=mean, eps=None):
    """agg(-xlogy(y, ŷ + eps) - xlogy(1 - y, 1 - ŷ + eps)) for probabilities ŷ."""
    _start(ŷ, y, agg, "binarycrossentropy")
    eps = _eps(ŷ) if eps is None else eps
    pos = xlogy(y, ops.add(ŷ, eps))
    neg = xlogy(ops.sub(1.0, y), ops.add(ops.sub(1.0, ŷ), eps))
    return agg(ops.sub(ops.neg(pos), neg))


def logitbinarycrossentropy(ŷ, y, *, agg=mean):
    """agg((1 - y) ŷ - logsigmoid(ŷ)): binarycrossentropy on logits, numerically stable."""
    _start(ŷ, y, agg, "logitbinarycrossentropy")
    return agg(ops.sub(ops.mul(ops.sub(1.0, y), ŷ), logsigmoid(ŷ)))


def kldivergence(ŷ, y, *, axis=-1, agg=mean, eps=None):
    """agg(sum(xlogx(y), axis)) + crossentropy(ŷ, y): the divergence of ŷ from y."""
    _start(ŷ, y, agg, "kldivergence")
    entropy = agg(ops.sum(xlogx(y), axis))
    return ops.add(entropy, crossentropy(ŷ, y, axis=axis, agg=agg, eps=eps))


def poisson_loss(ŷ, y, *, agg=mean):
    """agg(ŷ - xlogy(y, ŷ))."""
    _start(ŷ, y, agg, "poisson_loss")
    return agg(ops.sub(ŷ, xlogy(y, ŷ)))


def hinge_loss(ŷ, y, *, agg=mean):
    """agg(max(0, 1 - ŷ y)) for labels y in {-1, 1}."""
    _start(ŷ, y, agg, "hinge_loss")
    return agg(ops.relu(ops.sub(1.0, ops.mul(ŷ, y))))


def squared_hinge_loss(ŷ, y, *, agg=mean):
    """agg(max(0, 1 - ŷ y)^2)."""
    _start(ŷ, y, agg, "squared_hinge_loss")
    return agg(ops.square(ops.relu(ops.sub(1.0, ops.mul(ŷ, y)))))


def dice_coeff_loss(ŷ, y, *, smooth=1.0):
    """1 - (2 sum(y ŷ) + smooth) / (sum(y^2) + sum(ŷ^2) + smooth)."""
    _check_sizes(ŷ, y, "dice_coeff_loss")
    num = ops.add(ops.mul(ops.sum(ops.mul(y, ŷ)), 2.0), smooth)
    den = ops.add(ops.add(ops.sum(ops.square(y)), ops.sum(ops.square(ŷ))), smooth)
    return ops.sub(1.0, ops.div(num, den))


def tversky_loss(ŷ, y, *, beta=0.7):
    """1 - (sum(y ŷ) + 1) / (sum(y ŷ + beta (1 - y) ŷ + (1 - beta) y (1 - ŷ)) + 1)
    (Flux's code; its docstring swaps beta)."""
    _check_sizes(ŷ, y, "tversky_loss")
    tp = ops.mul(y, ŷ)
    fp = ops.mul(ops.mul(ops.sub(1.0, y), ŷ), beta)
    fn = ops.mul(ops.mul(y, ops.sub(1.0, ŷ)), 1 - beta)
    den = ops.add(ops.sum(ops.add(ops.add(tp, fp), fn)), 1.0)
    return ops.sub(1.0, ops.div(ops.add(ops.sum(tp), 1.0), den))


def binary_focal_loss(ŷ, y, *, agg=mean, gamma=2, eps=None):
    """agg(-(1 - p_t)^gamma log(p_t)), p_t = y (ŷ + eps) + (1 - y)(1 - ŷ - eps)."""
    _start(ŷ, y, agg, "binary_focal_loss")
    eps = _eps(ŷ) if eps is None else eps
    p = ops.add(ŷ, eps)
    p_t = ops.add(ops.mul(y, p), ops.mul(ops.sub(1.0, y), ops.sub(1.0, p)))
    return agg(ops.mul(ops.power(ops.sub(1.0, p_t), gamma), ops.neg(ops.log(p_t))))


def focal_loss(ŷ, y, *, axis=-1, agg=mean, gamma=2, eps=None):
    """agg(sum(-y (1 - ŷ)^gamma log(ŷ), axis)) with ŷ + eps for probabilities ŷ."""
    _start(ŷ, y, agg, "focal_loss")
    eps = _eps(ŷ) if eps is None else eps
    p = ops.add(ŷ, eps)
    terms = ops.mul(ops.mul(ops.neg(y), ops.power(ops.sub(1.0, p), gamma)), ops.log(p))
    return agg(ops.sum(terms, axis))


def siamese_contrastive_loss(ŷ, y, *, agg=mean, margin=1.0):
    """agg((1 - y) ŷ^2 + y max(0, margin - ŷ)^2)."""
    _start(ŷ, y, agg, "siamese_contrastive_loss")
    if margin < 0:
        raise LossArgumentError(f"siamese_contrastive_loss needs margin >= 0, got {margin}")
    near = ops.mul(ops.sub(1.0, y), ops.square(ŷ))
    far = ops.mul(y, ops.square(ops.relu(ops.sub(margin, ŷ))))
    return agg(ops.add(near, far))
