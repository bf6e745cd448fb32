"""The sliding-window op functions: convolutions and pooling on `(N, C, *spatial)` arrays,
on plain arrays (numpy) and on traced values alike. Attributes are normalised here, once, into
the tuples compiler.window_geometry describes."""
import numpy as np

from .errors import ShapeError
from .ops import _traced, bind, cast
from .source import user_source_line
from .window_geometry import SHAPE_RULES, pad_pairs, spatial_tuple, transpose_size


def _bind(op, args, attrs):
    """bind, with the shape rule checked on plain arrays too (numpy would fail obscurely)."""
    if not _traced(*args):
        SHAPE_RULES[op](args, attrs, user_source_line())
    return bind(op, args, attrs)


def _spatial(x, what):
    n = len(x.shape) - 2
    if n not in (1, 2, 3):
        raise ShapeError(f"{what} takes (N, C, L), (N, C, H, W) or (N, C, D, H, W) arrays, got "
                         f"shape {tuple(x.shape)}, at {user_source_line()}")
    return n


def conv_attrs(n, window, stride=1, pad=0, dilation=1, groups=1, flipped=False):
    stride = spatial_tuple(stride, n, "stride")
    dilation = spatial_tuple(dilation, n, "dilation")
    return {"stride": stride, "pad": pad_pairs(pad, n, window, dilation), "dilation": dilation,
            "groups": int(groups), "flipped": bool(flipped)}


def _same_dtype(a, b):
    if _traced(a, b) and a.dtype != b.dtype:
        dt = np.result_type(a.dtype, b.dtype)
        return cast(a, dt), cast(b, dt)
    return a, b


def conv(x, w, *, stride=1, pad=0, dilation=1, groups=1, flipped=False):
    """NNlib's `conv`: a true convolution of `x` (N, C, *spatial) with `w` (O, C / groups,
    *k) -- the kernel flipped -- or, with `flipped=True`, cross-correlation (PyTorch's)."""
    n = _spatial(x, "conv")
    x, w = _same_dtype(x, w)
    return _bind("conv", (x, w), conv_attrs(n, tuple(w.shape[2:]), stride, pad, dilation, groups,
                                           flipped))


def conv_transpose(x, w, *, stride=1, pad=0, dilation=1, groups=1, flipped=False):
    """The gradient of `conv(·, w)` with respect to its input, applied to `x`: `w` is the
    convolution's weight (Cout_of_conv, C / groups, *k), and the result is as large as the
    input that convolution would map exactly onto `x`."""
    n = _spatial(x, "conv_transpose")
    x, w = _same_dtype(x, w)
    attrs = conv_attrs(n, tuple(w.shape[2:]), stride, pad, dilation, groups, flipped)
    attrs["spatial"] = tuple(transpose_size(s, k, st, d, p) for s, k, st, d, p in zip(
        x.shape[2:], w.shape[2:], attrs["stride"], attrs["dilation"], attrs["pad"]))
    return _bind("conv_transpose", (x, w), attrs)


def _pool_attrs(x, k, pad, stride, what):
    n = _spatial(x, what)
    window = spatial_tuple(k, n, "the pooling window")
    stride = window if stride is None else spatial_tuple(stride, n, "stride")
    return {"window": window, "stride": stride, "pad": pad_pairs(pad, n, window, (1,) * n)}


def maxpool(x, k, *, pad=0, stride=None):
    """The maximum over each window (stride defaults to the window); padding never wins, a
    NaN in a window makes its result NaN."""
    return _bind("maxpool", (x,), _pool_attrs(x, k, pad, stride, "maxpool"))


def meanpool(x, k, *, pad=0, stride=None):
    """The mean over each window, padding counted in the divisor (NNlib's rule)."""
    return _bind("meanpool", (x,), _pool_attrs(x, k, pad, stride, "meanpool"))
