"""Array functions for losses and models; they work on numpy arrays and on traced values."""
from graphflux.compiler.ops import (exp, log, matmul, max, mean, reshape, sqrt, sum,  # noqa: F401
                                    transpose, where)
