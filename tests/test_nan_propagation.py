"""NaN in, NaN out: every activation graphflux has, and the elementwise maximum, minimum and abs
that composites are written with, give NaN for a NaN input -- on numpy arrays, in eager mode and
compiled -- and so do their gradients, so that NaN data reaches the loss and the gradients,
where the non-finite check sees it (relu(NaN) used to be 0). Infinities give the limits of
NNlib's formulas, and finite values and gradients are unchanged; everything is compared with an
independent numpy formula (gradients with its central differences, kinks with the documented
one-sided choices). One compile per dtype for each of jit and gradient."""
import ctypes
import inspect
import math

import numpy as np
import pytest

import graphflux as gf
import graphflux.activations as activations
from graphflux.compiler import elementwise as ew
from graphflux.compiler import ops
from graphflux.runtime.numpy_impls import UFUNCS, elementwise_function

SELU = (1.0507009873554804934193349852946, 1.6732632423543772848170429916717)


def _softplus(x):
    return np.logaddexp(x, 0.0)


def _gelu(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def _softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _logsoftmax(x):
    z = x - x.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


# name -> (the graphflux function, numpy formula, row-wise). The formulas are NNlib's, so at
# an infinity they give what NNlib gives: the limit (LIMITS), or NaN where the formula meets
# inf * 0 (swish, mish and gelu at -inf) or inf / inf (softsign at +-inf).
ACTIVATIONS = {
    "relu": (gf.relu, lambda x: np.maximum(x, 0.0), False),
    "leakyrelu": (gf.leakyrelu, lambda x: np.where(x > 0, x, 0.01 * x), False),
    "relu6": (gf.relu6, lambda x: np.minimum(np.maximum(x, 0.0), 6.0), False),
    "hardsigmoid": (gf.hardsigmoid, lambda x: np.clip((x + 3) / 6, 0.0, 1.0), False),
    "hardσ": (gf.hardσ, lambda x: np.clip((x + 3) / 6, 0.0, 1.0), False),
    "elu": (gf.elu, lambda x: np.where(x > 0, x, np.expm1(x)), False),
    "celu": (lambda x: gf.celu(x, 0.5), lambda x: np.where(x > 0, x, 0.5 * np.expm1(x / 0.5)),
             False),
    "selu": (gf.selu, lambda x: SELU[0] * np.where(x > 0, x, SELU[1] * np.expm1(x)), False),
    "gelu": (gf.gelu, _gelu, False),
    "swish": (gf.swish, lambda x: x / (1 + np.exp(-x)), False),
    "softplus": (gf.softplus, _softplus, False),
    "softsign": (gf.softsign, lambda x: x / (1 + np.abs(x)), False),
    "mish": (gf.mish, lambda x: x * np.tanh(_softplus(x)), False),
    "sigmoid": (gf.sigmoid, lambda x: 1 / (1 + np.exp(-x)), False),
    "σ": (gf.σ, lambda x: 1 / (1 + np.exp(-x)), False),
    "tanh": (gf.tanh, np.tanh, False),
    "logsigmoid": (gf.logsigmoid, lambda x: -_softplus(-x), False),
    "logσ": (gf.logσ, lambda x: -_softplus(-x), False),
    "identity": (gf.identity, lambda x: x, False),
    "hardtanh": (gf.hardtanh, lambda x: np.clip(x, -1.0, 1.0), False),
    # PyTorch's piecewise form (0 below -3, so 0 at -inf, where x * hardsigmoid(x) is NaN)
    "hardswish": (gf.hardswish, lambda x: np.where(x < -3, 0.0, np.where(x > 3, x,
                                                                          x * (x + 3) / 6)),
                  False),
    "softshrink": (gf.softshrink, lambda x: np.where(x > 0.5, x - 0.5,
                                                     np.where(x < -0.5, x + 0.5, 0 * x)), False),
    "trelu": (gf.trelu, lambda x: np.where(x > 1.0, x, np.where(np.isnan(x), x, 0.0)), False),
    "logcosh": (gf.logcosh, lambda x: x + _softplus(-2 * x) - math.log(2), False),
    "tanhshrink": (gf.tanhshrink, lambda x: x - np.tanh(x), False),
    "lisht": (gf.lisht, lambda x: x * np.tanh(x), False),
    "tanh_fast": (gf.tanh_fast, np.tanh, False),
    "sigmoid_fast": (gf.sigmoid_fast, lambda x: 1 / (1 + np.exp(-x)), False),
    "softmax": (gf.softmax, _softmax, True),
    "logsoftmax": (gf.logsoftmax, _logsoftmax, True),
}
# The elementwise ops composites are written with, each operand order.
OPS = {
    "maximum(x, c)": (lambda x: ops.maximum(x, 0.5), lambda x: np.maximum(x, 0.5), False),
    "maximum(c, x)": (lambda x: ops.maximum(0.5, x), lambda x: np.maximum(0.5, x), False),
    "minimum(x, c)": (lambda x: ops.minimum(x, 0.5), lambda x: np.minimum(x, 0.5), False),
    "minimum(c, x)": (lambda x: ops.minimum(0.5, x), lambda x: np.minimum(0.5, x), False),
    "abs": (ops.abs, np.abs, False),
}
# Fused into one loop, a select's condition holds another select: sympy must not fold them
# (its folding goes over the real line, which has no NaN).
COMPOSED = {
    "relu(relu(x) - 1)": (lambda x: gf.relu(ops.sub(gf.relu(x), 1.0)),
                          lambda x: np.maximum(np.maximum(x, 0.0) - 1, 0.0), False),
    "hardsigmoid(relu(x))": (lambda x: gf.hardsigmoid(gf.relu(x)),
                             lambda x: np.clip((np.maximum(x, 0.0) + 3) / 6, 0.0, 1.0), False),
    "clamp(x, -1, 1)": (lambda x: ops.minimum(ops.maximum(x, -1.0), 1.0),
                        lambda x: np.clip(x, -1.0, 1.0), False),
}
CASES = {**ACTIVATIONS, **OPS, **COMPOSED}
NAMES = list(CASES)

# Derivatives at the kinks this input holds: the branch Flux and PyTorch take there, and for a
# tie of maximum or minimum, its first operand.
KINKS = {
    "maximum(x, c)": {0.5: 1.0}, "maximum(c, x)": {0.5: 0.0},
    "minimum(x, c)": {0.5: 1.0}, "minimum(c, x)": {0.5: 0.0},
    "relu(relu(x) - 1)": {0.0: 0.0, 1.0: 0.0}, "hardsigmoid(relu(x))": {0.0: 0.0, 3.0: 0.0},
    "clamp(x, -1, 1)": {1.0: 1.0},
    "relu": {0.0: 0.0}, "leakyrelu": {0.0: 0.01}, "relu6": {0.0: 0.0, 6.0: 0.0},
    "hardsigmoid": {-3.0: 0.0, 3.0: 0.0}, "hardσ": {-3.0: 0.0, 3.0: 0.0}, "elu": {0.0: 1.0},
    "celu": {0.0: 1.0}, "selu": {0.0: SELU[0] * SELU[1]}, "abs": {0.0: 1.0},
    "hardtanh": {1.0: 0.0}, "hardswish": {-3.0: -0.5, 3.0: 1.5},
    "softshrink": {0.5: 0.0, -0.5: 0.0}, "trelu": {1.0: 0.0},
}

# (f(+inf), f(-inf)), analytic, where NNlib's formula reaches the limit (None: it gives NaN).
LIMITS = {
    "relu": (np.inf, 0.0), "leakyrelu": (np.inf, -np.inf), "relu6": (6.0, 0.0),
    "hardsigmoid": (1.0, 0.0), "hardσ": (1.0, 0.0), "elu": (np.inf, -1.0),
    "celu": (np.inf, -0.5), "selu": (np.inf, -SELU[0] * SELU[1]), "gelu": (np.inf, None),
    "swish": (np.inf, None), "softplus": (np.inf, 0.0), "softsign": (None, None),
    "mish": (np.inf, None), "sigmoid": (1.0, 0.0), "σ": (1.0, 0.0), "tanh": (1.0, -1.0),
    "logsigmoid": (0.0, -np.inf), "logσ": (0.0, -np.inf), "identity": (np.inf, -np.inf),
    "maximum(x, c)": (np.inf, 0.5), "maximum(c, x)": (np.inf, 0.5),
    "minimum(x, c)": (0.5, -np.inf), "minimum(c, x)": (0.5, -np.inf), "abs": (np.inf, np.inf),
    "relu(relu(x) - 1)": (np.inf, 0.0), "hardsigmoid(relu(x))": (1.0, 0.5),
    "clamp(x, -1, 1)": (1.0, -1.0),
    "hardtanh": (1.0, -1.0), "hardswish": (np.inf, 0.0), "softshrink": (np.inf, -np.inf),
    "trelu": (np.inf, 0.0), "logcosh": (np.inf, None), "tanhshrink": (np.inf, -np.inf),
    "lisht": (np.inf, np.inf), "tanh_fast": (1.0, -1.0), "sigmoid_fast": (1.0, 0.0),
}

# Row 0 holds NaNs (softmax's whole row is then NaN), row 1 the infinities, row 2 only finite
# values; the kinks 0, +-3 and 6 appear among them.
X = np.array([[np.nan, -2.5, 0.0, 1.0, np.nan, 3.0, -3.0, 6.0],
              [np.inf, -np.inf, 0.5, -0.5, 1e-3, 4.0, -4.0, 7.0],
              [-7.0, -3.0, -1.3, -0.2, 0.0, 0.4, 2.9, 6.5]])
W = np.random.default_rng(0).uniform(0.5, 1.5, X.shape)
DTYPES = [np.float32, np.float64]


def _tolerance(dtype):
    return dict(rtol=2e-5, atol=2e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)


def _expected(name):
    with np.errstate(all="ignore"):
        return CASES[name][1](X)


def _check_values(got, name, dtype, where):
    assert got.dtype == dtype, f"{name} ({where}): dtype {got.dtype}"
    want = _expected(name)
    assert np.isnan(got[0, 0]), f"{name}({where}) of NaN is {got[0, 0]}, not NaN"
    for at, limit in zip(((1, 0), (1, 1)), LIMITS.get(name, (None, None))):
        if limit is not None:
            np.testing.assert_allclose(got[at], limit, rtol=1e-6,
                                       err_msg=f"{name}({X[at]}) ({where})")
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{name} ({where})")
    np.testing.assert_allclose(got, want, err_msg=f"{name} ({where})", **_tolerance(dtype))


def _numeric_gradient(name):
    """d/dx sum(f(x) * W), central differences of the numpy formula in float64: elementwise
    for an elementwise function, element by element within its row for a row-wise one."""
    _, f, rowwise = CASES[name]
    h = 1e-6
    with np.errstate(all="ignore"):
        if not rowwise:
            return (f(X + h) - f(X - h)) / (2 * h) * W
        grad = np.empty_like(X)
        for i, j in np.ndindex(X.shape):
            up, down = X.copy(), X.copy()
            up[i, j] += h
            down[i, j] -= h
            grad[i, j] = ((f(up) - f(down))[i] * W[i]).sum() / (2 * h)
        return grad


def _check_gradient(got, name, dtype, where):
    assert got.dtype == dtype
    if name != "identity":      # no op of its own: the cotangent passes through unchanged
        assert np.isnan(got[0, 0]), f"the gradient of {name} ({where}) at NaN is {got[0, 0]}"
    if CASES[name][2]:
        assert np.isnan(got[0]).all(), f"{name} ({where}): a row with a NaN has NaN gradients"
    want = _numeric_gradient(name)
    kinks = KINKS.get(name, {})
    for point, slope in kinks.items():
        at = X == point
        np.testing.assert_allclose(got[at], slope * W[at], rtol=1e-6,
                                   err_msg=f"{name}'({point}) ({where})")
    check = np.isfinite(X) & ~np.isin(X, list(kinks))
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(got[check], want[check], err_msg=f"{name}' ({where})", **tol)


def test_every_activation_is_checked():
    public = {n for n, f in vars(activations).items() if not n.startswith("_") and
              callable(f) and not inspect.ismodule(f)}
    assert public - {"elementwise"} == set(ACTIVATIONS)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name", NAMES)
def test_numpy_arrays(name, dtype):
    with np.errstate(all="ignore"):
        got = CASES[name][0](X.astype(dtype))
    _check_values(got, name, dtype, "numpy")


def _loss(*arrays):
    """sum over the activations of sum(f_k(x_k) * w_k): the gradient for w_k is f_k(x_k)
    itself (forward values), the one for x_k is f_k'(x_k) * w_k."""
    n = len(NAMES)
    total = 0.0
    for k, name in enumerate(NAMES):
        total = ops.add(total, gf.sum(ops.mul(CASES[name][0](arrays[k]), arrays[n + k])))
    return total


@pytest.fixture(scope="module", params=[(m, d) for m in ("eager", "compiled") for d in DTYPES],
                ids=lambda p: f"{p[0]}-{np.dtype(p[1]).name}")
def gradients(request):
    mode, dtype = request.param
    xs = [X.astype(dtype) for _ in NAMES]
    ws = [W.astype(dtype) for _ in NAMES]
    with np.errstate(all="ignore"):
        grads = gf.gradient(_loss, *xs, *ws, mode=mode)
    n = len(NAMES)
    return mode, dtype, {name: (grads[n + k], grads[k]) for k, name in enumerate(NAMES)}


@pytest.mark.parametrize("name", NAMES)
def test_values_and_gradients_in_eager_and_compiled_mode(gradients, name):
    mode, dtype, results = gradients
    values, grad = results[name]
    _check_values(values, name, dtype, f"{mode}, forward of the gradient")
    _check_gradient(grad, name, dtype, mode)


@pytest.fixture(scope="module", params=DTYPES, ids=["f32", "f64"])
def jitted(request):
    dtype = request.param
    f = gf.jit(lambda x: tuple(CASES[name][0](x) for name in NAMES))
    return dtype, dict(zip(NAMES, f(X.astype(dtype))))


@pytest.mark.parametrize("name", NAMES)
def test_jit(jitted, name):
    dtype, results = jitted
    _check_values(results[name], name, dtype, "jit")


@pytest.mark.parametrize("mode", ["compiled", "eager"])
def test_nan_data_through_relu_stops_training_at_the_loss(mode):
    """The issue's case: relu used to turn NaN data into zeros, and the step trained on."""
    rng = np.random.default_rng(1)
    W1 = rng.standard_normal((4, 2)).astype(np.float32)
    ps = gf.params(W1)
    x = rng.standard_normal((3, 4)).astype(np.float32)
    x[2, 1] = np.nan
    y = np.zeros((3, 2), np.float32)
    before = W1.copy()
    with pytest.raises(gf.NonFiniteLoss) as e:
        gf.train(lambda x, y: gf.losses.mse(gf.matmul(gf.relu(x), W1), y), ps, [(x, y)],
                 gf.Descent(0.1), mode=mode)
    assert e.value.what == "loss"
    np.testing.assert_array_equal(W1, before)


@pytest.mark.parametrize("name", sorted(UFUNCS))
def test_numpy_functions_equal_their_definitions_at_nan_and_infinities(name):
    """The built-ins that skip their generated function on numpy arrays (np.maximum for
    maximum, ...) against it, where the two could differ: NaN, infinities, zeros, ties."""
    v = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 2.0, -1.5, 0.5])
    args = [v[:, None], v[None, :], np.flip(v)[:, None]][:ew.get(name).arity]
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(UFUNCS[name](*args), elementwise_function(name)(*args))


def _scalar_function(expr, symbols):
    """expr (sympy) as a native double(double, double) through the LLVM printer."""
    import llvmlite.binding as llvm
    from llvmlite import ir

    from graphflux.compiler.scalar_codegen import emit_expressions
    ty = ir.DoubleType()
    module = ir.Module(name="printer")
    fn = ir.Function(module, ir.FunctionType(ty, [ty, ty]), name="f")
    b = ir.IRBuilder(fn.append_basic_block())
    b.ret(emit_expressions(b, [expr], dict(zip(symbols, fn.args)), ty)[0])
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    machine = llvm.Target.from_default_triple().create_target_machine()
    engine = llvm.create_mcjit_compiler(llvm.parse_assembly(str(module)), machine)
    engine.finalize_object()
    f = ctypes.CFUNCTYPE(ctypes.c_double, ctypes.c_double, ctypes.c_double)(
        engine.get_function_address("f"))
    f.engine = engine
    return f


@pytest.mark.parametrize("which", ["Max", "Min", "sign"])
def test_llvm_printer_keeps_nan_in_sympy_functions(which):
    """Max, Min and sign, which a user's gf.elementwise may use, as numpy computes them."""
    import sympy as sp
    x, y = sp.symbols("x y", real=True)
    expr, ref = {"Max": (sp.Max(x, y), np.maximum), "Min": (sp.Min(x, y), np.minimum),
                 "sign": (sp.sign(x) + 0 * y, lambda a, b: np.sign(a))}[which]
    f = _scalar_function(expr, (x, y))
    for a in (np.nan, np.inf, -np.inf, 0.0, 1.5, -2.0):
        for c in (np.nan, 0.5, -np.inf):
            np.testing.assert_array_equal(f(a, c), ref(a, c), err_msg=f"{which}({a}, {c})")
