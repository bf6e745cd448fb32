"""Array functions for losses and models; they work on numpy arrays and on traced values."""
from graphflux.compiler.ops import (exp, log, matmul, max, mean, reshape, sqrt, sum,  # noqa: F401
                                    transpose, where)
from graphflux.compiler.window_geometry import SamePad  # noqa: F401
from graphflux.compiler.window_ops import conv, conv_transpose, maxpool, meanpool  # noqa: F401


def flatten(x):
    """Flux's `flatten`, batch-first: every axis after the first folded into one, in C order --
    `(N, C, H, W)` becomes `(N, C*H*W)`; a single observation (a vector) stays as it is."""
    if len(x.shape) <= 1:
        return x
    return reshape(x, (x.shape[0], -1))
