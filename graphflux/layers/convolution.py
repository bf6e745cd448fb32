"""Convolution layers, Flux 0.13's, batch-first and channels-first: `(N, C, *spatial)` in and
out, `len(k)` spatial axes (an int k is one axis).

    Conv(k, cin, cout)           weight (cout, cin // groups, *k): a true convolution (the
                                 kernel flipped, as Flux and NNlib)
    CrossCor(k, cin, cout)       the same without the flip (PyTorch's conv)
    ConvTranspose(k, cin, cout)  weight (cin, cout // groups, *k): the gradient of a Conv from
                                 cout to cin channels with respect to its input"""
import numpy as np

from graphflux.compiler import ops
from graphflux.compiler.window_ops import conv, conv_transpose

from ..activations import identity
from ..bindings import HoldsArrays
from ..errors import ArgumentError, UsageError
from .init import glorot_uniform


def _window(k):
    k = (k,) if isinstance(k, (int, np.integer)) else tuple(k)
    if not 1 <= len(k) <= 3 or not all(isinstance(v, (int, np.integer)) and v >= 1 for v in k):
        raise UsageError(f"the kernel size k must be a positive int or a tuple of 1 to 3 of "
                         f"them (one per spatial axis), got {k!r}")
    return tuple(int(v) for v in k)


class _Convolution(HoldsArrays):
    """What the three share: weight, bias, activation and the window's arguments."""
    flipped = False

    def __init__(self, k, cin, cout, σ=identity, *, stride=1, pad=0, dilation=1, groups=1,
                 bias=True, init=glorot_uniform):
        name = type(self).__name__
        if not callable(σ):
            raise ArgumentError(f"{name}: the activation σ must be callable, got {σ!r}")
        for what, n in (("cin", cin), ("cout", cout)):
            if not isinstance(n, (int, np.integer)) or n < 1 or n % groups:
                raise UsageError(f"{name}: {what} = {n!r} must be a positive multiple of "
                                 f"groups = {groups}")
        self.weight = init(*self.weight_shape(_window(k), cin, cout, groups))
        self.bias = np.zeros(cout, dtype=self.weight.dtype) \
            if bias is True else (bias if isinstance(bias, np.ndarray) else None)
        self.σ, self.stride, self.pad, self.dilation, self.groups = σ, stride, pad, dilation, \
            groups

    def window_arguments(self):
        return dict(stride=self.stride, pad=self.pad, dilation=self.dilation, groups=self.groups,
                    flipped=self.flipped)

    def __call__(self, x):
        y = self.apply(x)
        if self.bias is not None:
            y = ops.add(y, ops.reshape(self.bias, (-1,) + (1,) * (len(y.shape) - 2)))
        return self.σ(y)

    def __repr__(self):
        w = self.weight.shape
        cin, cout = self.channels(w)
        act = "" if self.σ is identity else f", {getattr(self.σ, '__name__', self.σ)}"
        return f"{type(self).__name__}({tuple(w[2:])}, {cin} => {cout}{act})"


class Conv(_Convolution):
    """y = σ(conv(x, weight) + bias), the kernel flipped (a true convolution)."""

    @staticmethod
    def weight_shape(k, cin, cout, groups):
        return (cout, cin // groups) + k

    def channels(self, w):
        return w[1] * self.groups, w[0]

    def apply(self, x):
        return conv(x, self.weight, **self.window_arguments())


class CrossCor(Conv):
    """Conv without the flip: cross-correlation, what PyTorch and most frameworks call conv."""
    flipped = True


class ConvTranspose(_Convolution):
    """The gradient of a Conv (cout => cin) with respect to its input, applied to x: upsamples
    by the stride. Equal to PyTorch's conv_transpose with the kernel flipped."""

    @staticmethod
    def weight_shape(k, cin, cout, groups):
        return (cin, cout // groups) + k

    def channels(self, w):
        return w[0], w[1] * self.groups

    def apply(self, x):
        return conv_transpose(x, self.weight, **self.window_arguments())
