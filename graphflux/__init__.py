"""graphflux: Flux.jl's training API for Python, where the loss is never run op by op: it is
traced, differentiated symbolically, optimised and lowered through LLVM to one native function
per training step."""
from . import compiler, runtime  # noqa: F401  (the runtime registers the numpy op table)
from . import datasets, distributed, losses, optimise  # noqa: F401
from .activations import (celu, elementwise, elu, gelu, hardsigmoid, hardswish,  # noqa: F401
                          hardtanh, hardσ, identity, leakyrelu, lisht, logcosh, logsigmoid,
                          logsoftmax, logσ, mish, relu, relu6, selu, sigmoid, sigmoid_fast,
                          softmax, softplus, softshrink, softsign, swish, tanh, tanh_fast,
                          tanhshrink, trelu, σ)
from .arrays import (SamePad, conv, conv_transpose, exp, flatten, log, matmul,  # noqa: F401
                     max, maxpool, mean, meanpool, reshape, sqrt, sum, transpose, where)
from .compare import compare  # noqa: F401
from .compiled import compile  # noqa: F401
from .data import DataLoader, onecold, onehotbatch  # noqa: F401
from .errors import GraphfluxError, NonFiniteLoss  # noqa: F401
from .gradients import gradient, pullback, update, withgradient  # noqa: F401
from .jit import jit  # noqa: F401
from .layers import (AdaptiveMaxPool, AdaptiveMeanPool, BatchNorm, Chain, Conv,  # noqa: F401
                     ConvTranspose, CrossCor, Dense, Dropout, GlobalMaxPool, GlobalMeanPool,
                     LayerNorm, MaxPool, MeanPool, glorot_uniform)
from .modes import testmode, trainmode  # noqa: F401
from .optimise import (AdaBelief, AdaDelta, AdaGrad, AdaMax, Adam, AdamW, AMSGrad,  # noqa: F401
                       ClipNorm, ClipValue, Descent, ExpDecay, InvDecay, Momentum, NAdam,
                       Nesterov, OAdam, Optimiser, RAdam, RMSProp, WeightDecay)
from .params import Grads, Params, params, trainable  # noqa: F401
from .modelstate import f32, f64, load, loadmodel, save, state  # noqa: F401
from .training import (OptState, StepInfo, early_stopping, epochs, ncycle,  # noqa: F401
                       patience, plateau, setup, skip, stop, throttle, train)

__version__ = "0.1.0"
