"""Sliding windows -- convolutions and pooling -- as shapes: the attributes their primitives
carry, how they are normalised from what users write, and the shape rules.

All six primitives work on batch-first, channels-first arrays `(N, C, *spatial)` with one, two
or three spatial axes. Attributes are tuples with one entry per spatial axis, so graphs hash,
compare and cache like any other:

    stride, dilation  (s1, ...)        pad  ((lo1, hi1), ...)        groups  g
    flipped           NNlib's flag: False is a true convolution (the kernel is flipped),
                      True cross-correlation
    window            a pooling window (k1, ...)

The convolution family is defined once, as the forward map, and its two companions are its
exact adjoints with the same attributes:

    conv(x, w)[n, o, p]  = sum_{c, k} w[o, c, k~] x[n, g(o) Cg + c, p s + k d - lo]
    conv_transpose(dy, w)   the gradient of conv with respect to x (also ConvTranspose)
    conv_filter_grad(x, dy) the gradient of conv with respect to w

with k~ = K - 1 - k unless `flipped`, and w of shape (O, C / groups, *K)."""
from .errors import ShapeError


def spatial_tuple(value, n, what):
    """An int or a tuple of `n` ints, as a tuple of `n` ints >= 1."""
    out = (value,) * n if isinstance(value, int) else tuple(value)
    if len(out) != n or not all(isinstance(v, int) and v >= 1 for v in out):
        raise ShapeError(f"{what} must be a positive int or a tuple of {n} positive ints (one per "
                         f"spatial axis), got {value!r}")
    return out


class SamePad:
    """Padding that keeps the spatial size at stride 1: (k - 1) * dilation in total per axis,
    an odd extra element on the low side (Flux's rule; PyTorch puts it on the high side)."""

    def __repr__(self):
        return "SamePad()"


def pad_pairs(pad, n, window=None, dilation=None):
    """`pad` as ((lo, hi), ...) per spatial axis: an int, one int per axis, a flat tuple of two
    per axis in graphflux's axis order (lo1, hi1, lo2, hi2, ...), or SamePad()."""
    if isinstance(pad, SamePad):
        total = [(k - 1) * d for k, d in zip(window, dilation)]
        return tuple(((t + 1) // 2, t // 2) for t in total)
    if isinstance(pad, int):
        pad = (pad,) * n
    pad = tuple(pad)
    if not all(isinstance(p, int) and p >= 0 for p in pad):
        raise ShapeError(f"pad must be ints >= 0, got {pad!r}")
    if len(pad) == n:
        return tuple((p, p) for p in pad)
    if len(pad) == 2 * n:
        return tuple((pad[2 * i], pad[2 * i + 1]) for i in range(n))
    raise ShapeError(f"pad must be an int, {n} ints (one per spatial axis), {2 * n} ints (low "
                     f"and high per axis) or gf.SamePad(), got {pad!r}")


def output_size(size, window, stride, dilation, pad):
    return (size + pad[0] + pad[1] - dilation * (window - 1) - 1) // stride + 1


def transpose_size(size, window, stride, dilation, pad):
    """The input length a conv maps to `size` outputs with no input left over."""
    return (size - 1) * stride - pad[0] - pad[1] + dilation * (window - 1) + 1


def _out_spatial(op, x_shape, window, attrs, src):
    out = tuple(output_size(n, k, s, d, p) for n, k, s, d, p in zip(
        x_shape[2:], window, attrs["stride"], attrs["dilation"], attrs["pad"]))
    if any(o < 1 for o in out):
        raise ShapeError(f"{op}: a window of {tuple(window)} (dilation {attrs['dilation']}, "
                         f"padding {attrs['pad']}) does not fit in an input of spatial size "
                         f"{tuple(x_shape[2:])}, at {src}")
    return out


def _check_rank(op, shape, n, what, src):
    if len(shape) != n + 2:
        raise ShapeError(f"{op}: {what} has shape {tuple(shape)}, but a window over {n} spatial "
                         f"axes needs {n + 2} axes (N, C, {', '.join('DHW'[3 - n:])}), at {src}")


def _check_channels(op, cin, w_shape, groups, src):
    if cin != w_shape[1] * groups:
        raise ShapeError(f"{op}: the input has {cin} channels but the weight {tuple(w_shape)} "
                         f"takes {w_shape[1]} x {groups} groups = {w_shape[1] * groups}, at {src}")
    if w_shape[0] % groups:
        raise ShapeError(f"{op}: {w_shape[0]} output channels do not split into {groups} groups, "
                         f"at {src}")


def rule_conv(ins, attrs, src):
    x, w = ins
    n = len(attrs["stride"])
    _check_rank("conv", x.shape, n, "the input", src)
    _check_rank("conv", w.shape, n, "the weight", src)
    _check_channels("conv", x.shape[1], w.shape, attrs["groups"], src)
    return (x.shape[0], w.shape[0]) + _out_spatial("conv", x.shape, w.shape[2:], attrs, src), \
        x.dtype


def rule_conv_transpose(ins, attrs, src):
    dy, w = ins
    n = len(attrs["stride"])
    _check_rank("conv_transpose", dy.shape, n, "the input", src)
    if dy.shape[1] != w.shape[0]:
        raise ShapeError(f"conv_transpose: the input has {dy.shape[1]} channels but the weight "
                         f"{tuple(w.shape)} takes {w.shape[0]}, at {src}")
    x_shape = (dy.shape[0], w.shape[1] * attrs["groups"]) + tuple(attrs["spatial"])
    if _out_spatial("conv_transpose", x_shape, w.shape[2:], attrs, src) != tuple(dy.shape[2:]):
        raise ShapeError(f"conv_transpose: an output of spatial size {attrs['spatial']} does not "
                         f"give {tuple(dy.shape[2:])} back under the convolution, at {src}")
    return x_shape, dy.dtype


def rule_conv_filter_grad(ins, attrs, src):
    x, dy = ins
    g = attrs["groups"]
    w_shape = (dy.shape[1], x.shape[1] // g) + tuple(attrs["window"])
    if _out_spatial("conv_filter_grad", x.shape, attrs["window"], attrs, src) != \
            tuple(dy.shape[2:]) or x.shape[0] != dy.shape[0]:
        raise ShapeError(f"conv_filter_grad: shapes {tuple(x.shape)} and {tuple(dy.shape)} do "
                         f"not belong to one convolution, at {src}")
    return w_shape, x.dtype


def rule_pool(ins, attrs, src):
    x = ins[0]
    _check_rank("pool", x.shape, len(attrs["window"]), "the input", src)
    return x.shape[:2] + _out_spatial("pool", x.shape, attrs["window"],
                                      dict(attrs, dilation=(1,) * len(attrs["window"])), src), \
        x.dtype


def rule_maxpool_grad(ins, attrs, src):
    return ins[0].shape, ins[0].dtype


def rule_meanpool_grad(ins, attrs, src):
    dy = ins[0]
    return dy.shape[:2] + tuple(attrs["spatial"]), dy.dtype


SHAPE_RULES = {
    "conv": rule_conv,
    "conv_transpose": rule_conv_transpose,
    "conv_filter_grad": rule_conv_filter_grad,
    "maxpool": rule_pool,
    "meanpool": rule_pool,
    "maxpool_grad": rule_maxpool_grad,
    "meanpool_grad": rule_meanpool_grad,
}
