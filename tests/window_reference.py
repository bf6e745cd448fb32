"""Convolution and pooling written from their definitions as direct loops over every output
and window element -- slow, obvious and independent of graphflux's numpy implementations
(which use strided views and einsum) and of its native kernels."""
import itertools

import numpy as np


def _pairs(pad, n):
    return [(p, p) for p in pad] if len(pad) == n else [(pad[2 * i], pad[2 * i + 1])
                                                        for i in range(n)]


def conv(x, w, stride, pad, dilation, groups=1, flipped=False):
    """y[n, o, p] = sum_{c, k} w[o, c, k~] x[n, g Cg + c, p * stride + k * dilation - lo], with
    k~ = K - 1 - k for a true convolution (flipped=False, NNlib's convention)."""
    nsp = x.ndim - 2
    pad = _pairs(pad, nsp)
    O, cg = w.shape[:2]
    K = w.shape[2:]
    og = O // groups
    out = [(x.shape[2 + i] + pad[i][0] + pad[i][1] - dilation[i] * (K[i] - 1) - 1) // stride[i]
           + 1 for i in range(nsp)]
    y = np.zeros((x.shape[0], O) + tuple(out))
    for n, o in itertools.product(range(x.shape[0]), range(O)):
        g = o // og
        for p in itertools.product(*[range(s) for s in out]):
            total = 0.0
            for c in range(cg):
                for k in itertools.product(*[range(s) for s in K]):
                    at = [p[i] * stride[i] + k[i] * dilation[i] - pad[i][0] for i in range(nsp)]
                    if all(0 <= at[i] < x.shape[2 + i] for i in range(nsp)):
                        kk = k if flipped else tuple(K[i] - 1 - k[i] for i in range(nsp))
                        total += w[(o, c) + kk] * x[(n, g * cg + c) + tuple(at)]
            y[(n, o) + p] = total
    return y


def pool(x, window, stride, pad, kind):
    """Max (padding never wins; a NaN in the window gives NaN) or mean (padding counts as zeros
    in the divisor) over each window."""
    nsp = x.ndim - 2
    pad = _pairs(pad, nsp)
    out = [(x.shape[2 + i] + pad[i][0] + pad[i][1] - window[i]) // stride[i] + 1
           for i in range(nsp)]
    y = np.zeros(x.shape[:2] + tuple(out))
    for n, c in itertools.product(range(x.shape[0]), range(x.shape[1])):
        for p in itertools.product(*[range(s) for s in out]):
            vals = []
            for k in itertools.product(*[range(s) for s in window]):
                at = [p[i] * stride[i] + k[i] - pad[i][0] for i in range(nsp)]
                if all(0 <= at[i] < x.shape[2 + i] for i in range(nsp)):
                    vals.append(x[(n, c) + tuple(at)])
            if kind == "max":
                y[(n, c) + p] = np.nan if any(np.isnan(vals)) else max(vals)
            else:
                y[(n, c) + p] = sum(vals) / np.prod(window)
    return y


def maxpool_grad(x, dy, window, stride, pad):
    """Each window's cotangent to its first maximum in row-major window order."""
    nsp = x.ndim - 2
    pad = _pairs(pad, nsp)
    dx = np.zeros(x.shape)
    for n, c in itertools.product(range(x.shape[0]), range(x.shape[1])):
        for p in itertools.product(*[range(s) for s in dy.shape[2:]]):
            best, where = None, None
            for k in itertools.product(*[range(s) for s in window]):
                at = tuple(p[i] * stride[i] + k[i] - pad[i][0] for i in range(nsp))
                if all(0 <= at[i] < x.shape[2 + i] for i in range(nsp)):
                    v = x[(n, c) + at]
                    if best is None or v > best:
                        best, where = v, at
            dx[(n, c) + where] += dy[(n, c) + p]
    return dx
