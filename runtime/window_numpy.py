"""numpy implementations of the sliding-window primitives (compiler.window_geometry): eager
mode's and the reference interpreter's. Windows are strided views of the padded input
(sliding_window_view), contracted with einsum, so a convolution costs a few array passes
rather than a Python loop per output; the adjoints loop over kernel offsets only."""
import itertools

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def _padded(x, pad, value=0.0):
    return np.pad(x, ((0, 0), (0, 0)) + tuple(pad), constant_values=value)


def _windows(xp, window, stride, dilation):
    """(N, C, *out, *window) view: element [n, c, p, k] = xp[n, c, p * stride + k * dilation]."""
    n = len(window)
    extent = tuple((k - 1) * d + 1 for k, d in zip(window, dilation))
    v = sliding_window_view(xp, extent, axis=tuple(range(2, 2 + n)))
    out = (slice(None),) * 2 + tuple(slice(None, None, s) for s in stride) + \
        tuple(slice(None, None, d) for d in dilation)
    return v[out]


def _oriented(w, flipped):
    """The kernel as cross-correlation applies it: a true convolution flips it."""
    n = w.ndim - 2
    return w if flipped else w[(slice(None),) * 2 + (slice(None, None, -1),) * n]


def _grouped(a, groups):
    """(N, C, ...) -> (N, groups, C / groups, ...)."""
    return a.reshape(a.shape[:1] + (groups, a.shape[1] // groups) + a.shape[2:])


def _letters(n):
    return "xyz"[:n], "ijk"[:n]


def conv(x, w, stride, pad, dilation, groups, flipped):
    win = _grouped(_windows(_padded(x, pad), w.shape[2:], stride, dilation), groups)
    wg = _grouped(np.swapaxes(_oriented(w, flipped), 0, 1), groups)    # (Cg, g, Og, *k)
    p, k = _letters(w.ndim - 2)
    y = np.einsum(f"ngc{p}{k},cgo{k}->ngo{p}", win, wg, optimize=True)
    return np.ascontiguousarray(y.reshape((x.shape[0], w.shape[0]) + y.shape[3:]),
                                dtype=np.result_type(x, w))


def conv_transpose(dy, w, stride, pad, dilation, groups, flipped, spatial):
    n = w.ndim - 2
    wk = _oriented(w, flipped)
    og, cg = w.shape[0] // groups, w.shape[1]
    full = tuple(s + lo + hi for s, (lo, hi) in zip(spatial, pad))
    xp = np.zeros((dy.shape[0], groups, cg) + full, dtype=np.result_type(dy, w))
    dyg = _grouped(dy, groups)
    wg = wk.reshape((groups, og, cg) + w.shape[2:])
    p, _ = _letters(n)
    for kidx in itertools.product(*[range(k) for k in w.shape[2:]]):
        part = np.einsum(f"ngo{p},goc->ngc{p}", dyg, wg[(Ellipsis,) + kidx], optimize=True)
        at = tuple(slice(k * d, k * d + (o - 1) * s + 1, s) for k, d, s, o in
                   zip(kidx, dilation, stride, dy.shape[2:]))
        xp[(Ellipsis,) + at] += part
    crop = tuple(slice(lo, lo + s) for s, (lo, _) in zip(spatial, pad))
    x = xp[(Ellipsis,) + crop]
    return np.ascontiguousarray(x.reshape((dy.shape[0], groups * cg) + tuple(spatial)))


def conv_filter_grad(x, dy, stride, pad, dilation, groups, flipped, window):
    win = _grouped(_windows(_padded(x, pad), window, stride, dilation), groups)
    dyg = _grouped(dy, groups)
    p, k = _letters(len(window))
    g = np.einsum(f"ngc{p}{k},ngo{p}->goc{k}", win, dyg, optimize=True)
    g = g.reshape((dy.shape[1], x.shape[1] // groups) + tuple(window))
    return np.ascontiguousarray(_oriented(g, flipped), dtype=np.result_type(x, dy))


def _pool_windows(x, window, stride, pad, value):
    return _windows(_padded(x, pad, value), window, stride, (1,) * len(window))


def maxpool(x, window, stride, pad):
    n = len(window)
    win = _pool_windows(x, window, stride, pad, -np.inf)
    return np.ascontiguousarray(np.max(win, axis=tuple(range(-n, 0))), dtype=x.dtype)


def meanpool(x, window, stride, pad):
    n = len(window)
    win = _pool_windows(x, window, stride, pad, 0.0)
    total = np.sum(win, axis=tuple(range(-n, 0)))
    return np.ascontiguousarray(total / np.prod(window), dtype=x.dtype)


def _scatter_windows(parts, spatial, window, stride, pad, shape, dtype):
    """Add parts[..., kidx] (N, C, *out) into the input position each window offset reads."""
    full = tuple(s + lo + hi for s, (lo, hi) in zip(spatial, pad))
    xp = np.zeros(shape[:2] + full, dtype=dtype)
    out = parts(None)
    for kidx in itertools.product(*[range(k) for k in window]):
        at = tuple(slice(k, k + (o - 1) * s + 1, s) for k, s, o in zip(kidx, stride, out))
        xp[(Ellipsis,) + at] += parts(kidx)
    crop = tuple(slice(lo, lo + s) for s, (lo, _) in zip(spatial, pad))
    return np.ascontiguousarray(xp[(Ellipsis,) + crop])


def maxpool_grad(x, dy, window, stride, pad):
    """Each window's cotangent goes to its first maximum -- or its first NaN, which is what
    made the window's result NaN (np.argmax returns the first NaN)."""
    n = len(window)
    win = _pool_windows(x, window, stride, pad, -np.inf)
    first = np.argmax(win.reshape(win.shape[:2 + n] + (-1,)), axis=-1)
    index = {kidx: i for i, kidx in enumerate(itertools.product(*[range(k) for k in window]))}
    return _scatter_windows(lambda kidx: dy.shape[2:] if kidx is None else
                            np.where(first == index[kidx], dy, 0), x.shape[2:], window, stride,
                            pad, x.shape, dy.dtype)


def meanpool_grad(dy, window, stride, pad, spatial):
    share = dy / np.prod(window)
    return _scatter_windows(lambda kidx: dy.shape[2:] if kidx is None else share, spatial,
                            window, stride, pad, dy.shape, dy.dtype)


IMPLS = {
    "conv": conv,
    "conv_transpose": conv_transpose,
    "conv_filter_grad": conv_filter_grad,
    "maxpool": maxpool,
    "meanpool": meanpool,
    "maxpool_grad": maxpool_grad,
    "meanpool_grad": meanpool_grad,
}
