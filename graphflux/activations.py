"""Activation functions. Each works on numpy arrays and inside traced or eager code; the
elementwise ones are sympy-defined primitives (see graphflux.compiler.elementwise), the rest
are compositions of graphflux ops."""
import hashlib
import inspect
import math

from graphflux.compiler import elementwise as ew
from graphflux.compiler import ops


def identity(x):
    return x


def sigmoid(x):
    return ops.sigmoid(x)


σ = sigmoid


def relu(x):
    return ops.relu(x)


def tanh(x):
    return ops.tanh(x)


def leakyrelu(x, a=0.01):
    return ops.elementwise("leakyrelu", x, a)


def elu(x, α=1.0):
    return ops.elementwise("elu", x, α)


def celu(x, α=1.0):
    return ops.elementwise("celu", x, α)


def softshrink(x, λ=0.5):
    """x - λ above λ, x + λ below -λ, 0 between (NNlib; the slope at +-λ is 0, as PyTorch's)."""
    return ops.elementwise("softshrink", x, λ)


def trelu(x, θ=1.0):
    """Threshold relu: x above θ, else 0."""
    return ops.elementwise("trelu", x, θ)


def _unary(name, doc):
    def f(x):
        return ops.elementwise(name, x)
    f.__name__, f.__doc__ = name, doc
    return f


softplus = _unary("softplus", "log(1 + exp(x)), computed stably as relu(x) + log1p(exp(-|x|))")
gelu = _unary("gelu", "NNlib's gelu: x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))")
swish = _unary("swish", "x * sigmoid(x)")
selu = _unary("selu", "scaled exponential linear unit (Klambauer et al.)")
hardsigmoid = _unary("hardsigmoid", "max(0, min(1, (x + 3) / 6))")
relu6 = _unary("relu6", "min(max(x, 0), 6)")
softsign = _unary("softsign", "x / (1 + |x|)")
mish = _unary("mish", "x tanh(softplus(x))")
hardtanh = _unary("hardtanh", "max(-1, min(1, x)); slope 0 at +-1, as PyTorch's")
hardswish = _unary("hardswish", "x hardsigmoid(x); slopes -1/2 at -3 and 3/2 at 3, as PyTorch's")
hardσ = hardsigmoid


def logcosh(x):
    """log(cosh(x)) as NNlib writes it, x + softplus(-2x) - log(2), which never overflows."""
    return ops.sub(ops.add(x, softplus(ops.mul(x, -2.0))), math.log(2.0))


def tanhshrink(x):
    """x - tanh(x)."""
    return ops.sub(x, tanh(x))


def lisht(x):
    """x tanh(x)."""
    return ops.mul(x, tanh(x))


def tanh_fast(x):
    """NNlib's faster tanh: graphflux's tanh is already a vectorised polynomial, so the same."""
    return tanh(x)


def sigmoid_fast(x):
    """NNlib's faster sigmoid: the same function here (see tanh_fast)."""
    return sigmoid(x)


def logsigmoid(x):
    """log(sigmoid(x)) = -softplus(-x), never log of a rounded-to-zero sigmoid."""
    return ops.neg(softplus(ops.neg(x)))


logσ = logsigmoid


def softmax(x, axis=-1):
    """exp(x - max) / sum(exp(x - max)) along `axis` (Flux's dims=1 is axis=-1 here),
    computed as exp(x - max) * (1 / sum): one division per row instead of per element, in the
    forward pass and in the gradient."""
    z = ops.sub(x, ops.max(ops.stop_gradient(x), axis, keepdims=True))
    e = ops.exp(z)
    return ops.mul(e, ops.div(1.0, ops.sum(e, axis, keepdims=True)))


def logsoftmax(x, axis=-1):
    """x - max - log(sum(exp(x - max))): the stable form, never log(softmax(x))."""
    z = ops.sub(x, ops.max(ops.stop_gradient(x), axis, keepdims=True))
    return ops.sub(z, ops.log(ops.sum(ops.exp(z), axis, keepdims=True)))


def elementwise(name, f):
    """Define a new elementwise function from `f`, which maps real sympy symbols to a sympy
    expression. Its derivative comes from sympy; it fuses and compiles like a built-in. A
    Piecewise in it is NaN where an operand of its conditions is NaN, as the built-ins are.

        softsign = gf.elementwise("softsign", lambda x: x / (1 + sympy.Abs(x)))
    """
    import sympy
    arity = len(inspect.signature(f).parameters)
    # the definition is part of the name graphs carry (`softsign_3f2a1b...`), so two functions
    # given one name never share a compiled step, a cached artifact or a scalar function
    fn = ew.ElementwiseFn(name, arity, f)
    digest = hashlib.sha256(sympy.srepr(fn.expr).encode()).hexdigest()[:10]
    key = f"{name}_{digest}"
    ew.register(ew.ElementwiseFn(key, arity, f))

    def apply(*xs):
        if len(xs) != arity:
            raise TypeError(f"{name} takes {arity} argument(s), got {len(xs)}")
        return ops.elementwise(key, *xs)
    apply.__name__ = name
    return apply
