"""graphflux: Flux.jl's training API for Python, where the loss is never run op by op: it is
traced, differentiated symbolically, optimised and lowered through LLVM to one native function
per training step."""
from . import compiler, runtime  # noqa: F401  (the runtime registers the numpy op table)
from . import datasets, losses, optimise  # noqa: F401
from .activations import elementwise, identity, logsoftmax, relu, sigmoid, softmax, tanh, σ  # noqa: F401
from .arrays import exp, log, matmul, max, mean, reshape, sqrt, sum, transpose, where  # noqa: F401
from .compiled import compile  # noqa: F401
from .data import DataLoader, onecold, onehotbatch  # noqa: F401
from .errors import GraphfluxError, NonFiniteLoss  # noqa: F401
from .gradients import gradient, pullback, update, withgradient  # noqa: F401
from .layers import Chain, Dense, glorot_uniform  # noqa: F401
from .optimise import Adam, Descent, Momentum  # noqa: F401
from .params import Grads, Params, params, trainable  # noqa: F401
from .training import StepInfo, epochs, skip, stop, throttle, train  # noqa: F401

__version__ = "0.1.0"


def _preload():
    """Start, in the background, the two slow parts of a first compile that depend on nothing
    the user does: importing sympy (~0.4 s; needed to compile, never to trace) and compiling
    the float32 GEMM library for this CPU (~0.3 s of LLVM, which releases the GIL).
    GRAPHFLUX_PRELOAD=0 turns this off."""
    import os
    import sys
    import threading
    if os.environ.get("GRAPHFLUX_PRELOAD", "1") == "0":
        return
    if "sympy" not in sys.modules:
        threading.Thread(target=__import__, args=("sympy",), name="graphflux-sympy").start()
    from .compiler.pipeline import gemm_object
    threading.Thread(target=gemm_object, args=("float32",), name="graphflux-gemm").start()


_preload()
