"""Pooling layers on `(N, C, *spatial)`, Flux 0.13's. The window's rank comes from `k` or,
for an int `k` and the global and adaptive pools, from the input."""
from graphflux.compiler.window_ops import maxpool, meanpool

from ..errors import ShapeError


class _Pool:
    function = None

    def __init__(self, k, *, pad=0, stride=None):
        self.k, self.pad, self.stride = k, pad, stride

    def __call__(self, x):
        return type(self).function(x, self.k, pad=self.pad, stride=self.stride)

    def __repr__(self):
        return f"{type(self).__name__}({self.k!r})"


class MaxPool(_Pool):
    """The maximum of each window (stride: the window); NaN in a window gives NaN."""
    function = staticmethod(maxpool)


class MeanPool(_Pool):
    """The mean of each window, padding counted in the divisor (NNlib)."""
    function = staticmethod(meanpool)


class _Global:
    function = None

    def __call__(self, x):
        return type(self).function(x, tuple(x.shape[2:]))

    def __repr__(self):
        return f"{type(self).__name__}()"


class GlobalMaxPool(_Global):
    """(N, C, *spatial) -> (N, C, 1, ...): the maximum over each channel's whole plane."""
    function = staticmethod(maxpool)


class GlobalMeanPool(_Global):
    function = staticmethod(meanpool)


def adaptive_window(size, out):
    """Flux's rule: stride = in // out, k = in - (out - 1) * stride (not PyTorch's windows)."""
    if not 1 <= out <= size:
        raise ShapeError(f"an adaptive pool cannot make {out} outputs from an axis of {size}")
    stride = size // out
    return size - (out - 1) * stride, stride


class _Adaptive:
    function = None

    def __init__(self, out):
        self.out = out

    def __call__(self, x):
        spatial = tuple(x.shape[2:])
        out = (self.out,) * len(spatial) if isinstance(self.out, int) else tuple(self.out)
        if len(out) != len(spatial):
            raise ShapeError(f"{self!r} got an input of shape {tuple(x.shape)}: {len(out)} "
                             f"output sizes for {len(spatial)} spatial axes")
        k, stride = zip(*[adaptive_window(n, o) for n, o in zip(spatial, out)])
        return type(self).function(x, k, stride=stride)

    def __repr__(self):
        return f"{type(self).__name__}({self.out!r})"


class AdaptiveMaxPool(_Adaptive):
    function = staticmethod(maxpool)


class AdaptiveMeanPool(_Adaptive):
    function = staticmethod(meanpool)
