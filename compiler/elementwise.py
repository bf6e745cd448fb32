"""Elementwise functions, each defined once by a sympy expression.

The expression is the single source of truth: its derivative (for the VJP), the fused scalar code
of the LLVM lowering and the numpy implementation of the runtime are all derived from it. sympy is
imported lazily, so tracing and loading a cached artifact never need it."""
import functools

_REGISTRY = {}


class ElementwiseFn:
    """A named scalar function of `arity` real arguments.

    `build(*xs)` returns the sympy expression. `grad(y, *xs)`, when given, returns the partial
    derivatives written in terms of the output `y` (sigmoid' = y(1-y)): the same values as the
    symbolic derivative, but stable where the input-only form overflows (exp(-x)/(1+exp(-x))^2 at
    x = -100 is inf/inf). A test checks every such override against sympy's own derivative."""

    def __init__(self, name, arity, build, grad=None, is_cotangent=False):
        self.name, self.arity, self.build, self.grad = name, arity, build, grad
        self.is_cotangent = is_cotangent    # made by vjp(): its last argument is g

    @functools.cached_property
    def symbols(self):
        import sympy
        return sympy.symbols(f"x0:{self.arity}", real=True)

    @functools.cached_property
    def expr(self):
        """The expression, each Piecewise in it made a Select (NaN in, NaN out)."""
        return _nan_selects(self.build(*self.symbols))

    def derivative(self, i):
        """The ElementwiseFn of d(self)/d(x_i), taking (x_0 .. x_{n-1}, y) so that it may use
        the forward output y."""
        name = f"d{i}_{self.name}"
        if name not in _REGISTRY:
            register(ElementwiseFn(name, self.arity + 1, functools.partial(_partial, self, i)))
        return _REGISTRY[name]

    def vjp(self, i):
        """The ElementwiseFn of g * d(self)/d(x_i), taking (x_0 .. x_{n-1}, y, g): one node
        per input cotangent instead of a derivative node and a product, and in eager mode one
        generated numpy function instead of two dispatched ops."""
        name = f"v{i}_{self.name}"
        if name not in _REGISTRY:
            register(ElementwiseFn(name, self.arity + 2, functools.partial(_cotangent, self, i),
                                   is_cotangent=True))
        return _REGISTRY[name]

    def __repr__(self):
        return f"ElementwiseFn({self.name})"


def _partial(fn, i, *syms):
    import sympy
    xs, y = syms[:-1], syms[-1]
    if fn.grad is not None:
        return sympy.sympify(fn.grad(y, *xs)[i])
    expr = fn.build(*xs)
    d = sympy.diff(expr, xs[i])
    if expr.has(*xs) and not expr.is_Symbol:
        d = d.subs(expr, y)
    return d


def _cotangent(fn, i, *syms):
    """g * d; a derivative that is one Piecewise or Select takes g into its branches (relu's
    becomes "g where x > 0, else 0": a select, not a product with a 0/1 mask, which would
    also turn an infinite g into NaN where the mask is 0)."""
    return _into_branches(syms[-1], _partial(fn, i, *syms[:-1]))


def _into_branches(g, d):
    import sympy
    if isinstance(d, sympy.Piecewise):
        return sympy.piecewise_fold(g * d)
    if isinstance(d, select_function()):
        cond, a, b, *operands = d.args
        return d.func(cond, _into_branches(g, a), _into_branches(g, b), *operands)
    return g * d


def register(fn):
    _REGISTRY[fn.name] = fn
    return fn


def get(name):
    try:
        return _REGISTRY[name]
    except KeyError:
        index, _, base = name[1:].partition("_")
        if name[:1] in ("d", "v") and index.isdigit() and base:
            fn = get(base)
            return fn.derivative(int(index)) if name[0] == "d" else fn.vjp(int(index))
        raise


def names():
    return list(_REGISTRY)


def _sp():
    import sympy
    return sympy


@functools.cache
def select_function():
    """The sympy function Select(cond, a, b, *operands): a where cond holds, b where it fails,
    NaN where one of `operands` is NaN. Made on first use, since sympy is imported lazily.

    Every Piecewise of an elementwise function becomes nested Selects whose operands are its
    conditions' (`_nan_selects`), so that a NaN input gives NaN -- relu(NaN) is NaN in Flux and
    PyTorch, and NaN data then reaches the loss, where the non-finite check sees it. sympy's
    Piecewise cannot say this: its real symbols are never NaN, so NaN takes the last branch
    (relu's 0), and where a condition holds another Piecewise (relu(relu(x)) fused), sympy
    folds the two over the real line, which has no NaN either. A Select is opaque to both; its
    derivative keeps the condition and operands, so relu'(NaN) is NaN as well."""
    sp = _sp()

    class Select(sp.Function):
        is_real = True
        is_commutative = True

        @classmethod
        def eval(cls, cond, a, b, *operands):
            if any(o is sp.nan for o in operands):
                return sp.nan
            if cond is sp.true:
                return a
            if cond is sp.false or a == b and not operands:
                return b

        def _eval_derivative(self, s):
            cond, a, b, *operands = self.args
            return Select(cond, a.diff(s), b.diff(s), *operands)
    return Select


def _nan_selects(expr):
    """`expr` with each Piecewise as nested Selects, NaN where an operand of a condition is."""
    sp = _sp()

    def convert(piecewise):
        *pairs, (out, cond) = piecewise.args
        if cond is not sp.true:
            out = _nan_select(cond, out, sp.nan)
        for value, cond in reversed(pairs):
            out = _nan_select(cond, value, out)
        return out
    return sp.sympify(expr).replace(lambda e: isinstance(e, sp.Piecewise), convert)


def _nan_select(cond, a, b):
    """Select(cond, a, b, *operands of cond) in its cheapest form: without the NaN test where a
    branch is NaN by itself when an operand is -- `b`, if a NaN operand makes cond false; else
    `a` under the negated comparison. relu is then "0 where x <= 0, else x", leakyrelu "x where
    x > 0, else a x", and hardsigmoid tests nothing either: one comparison and one select per
    branch, natively and in numpy, as they cost when NaN gave 0."""
    select = select_function()
    operands = sorted(cond.free_symbols, key=_sp().default_sort_key)
    if all(_false_at_nan(cond, o) and _carries_nan(b, o) for o in operands):
        return select(cond, a, b)
    if cond.is_Relational and all(_false_at_nan(cond.negated, o) and _carries_nan(a, o)
                                  for o in operands):
        return select(cond.negated, b, a)
    return select(cond, a, b, *operands)


def _false_at_nan(cond, x):
    """Whether `cond` is false wherever x is NaN, float comparisons with NaN being false
    (all but !=)."""
    sp = _sp()
    if cond.is_Relational:
        return cond.rel_op != "!=" and x in cond.free_symbols
    if isinstance(cond, sp.And):
        return any(_false_at_nan(c, x) for c in cond.args)
    if isinstance(cond, sp.Or):
        return all(_false_at_nan(c, x) for c in cond.args)
    return False


def _carries_nan(e, x):
    """Whether `e` is NaN wherever x is NaN, by arithmetic (both printers compute every
    function that compiler.scalar_functions marks `keeps_nan` so)."""
    from .scalar_functions import keeps_nan
    if e == x:
        return True
    if keeps_nan(e):
        return any(_carries_nan(a, x) for a in e.args)
    if e.is_Pow:        # NaN ** 0 is 1
        return e.exp.is_number and e.exp != 0 and _carries_nan(e.base, x)
    if isinstance(e, select_function()):
        cond, a, b, *operands = e.args
        return x in operands or _carries_nan(b, x) and (_false_at_nan(cond, x) or
                                                        _carries_nan(a, x))
    return False


def has_select(expr):
    """Whether `expr` selects (its numpy form is np.where, whose literals may change dtypes)."""
    return expr.has(select_function())


def _piecewise(*branches):
    """_piecewise((v1, c1), (v2, c2), ..., otherwise): the first v whose condition holds, else
    `otherwise` (and NaN where a condition's operand is NaN: see select_function)."""
    *pairs, otherwise = branches
    return _sp().Piecewise(*pairs, (otherwise, True))


def _select(value_if, cond, value_else):
    """A select with numpy's NaN rules, for comparisons and where: a comparison with NaN is
    false (np.greater), a NaN condition of np.where is true (it is nonzero)."""
    return select_function()(cond, value_if, value_else)


def _builtin(name, arity, grad=None):
    def wrap(build):
        register(ElementwiseFn(name, arity, build, grad))
        return build
    return wrap


@_builtin("add", 2)
def _add(a, b): return a + b


@_builtin("sub", 2)
def _sub(a, b): return a - b


@_builtin("mul", 2)
def _mul(a, b): return a * b


@_builtin("div", 2)
def _div(a, b): return a / b


@_builtin("neg", 1)
def _neg(a): return -a


@_builtin("pow", 2)
def _pow(a, b): return a ** b


@_builtin("square", 1)
def _square(a): return a ** 2


@_builtin("sqrt", 1)
def _sqrt(a): return _sp().sqrt(a)


@_builtin("exp", 1, grad=lambda y, x: [y])
def _exp(a): return _sp().exp(a)


@_builtin("log", 1)
def _log(a): return _sp().log(a)


@_builtin("tanh", 1, grad=lambda y, x: [1 - y ** 2])
def _tanh(a): return _sp().tanh(a)


@_builtin("sigmoid", 1, grad=lambda y, x: [y * (1 - y)])
def _sigmoid(a): return 1 / (1 + _sp().exp(-a))


@_builtin("relu", 1)
def _relu(a): return _piecewise((a, a > 0), 0)


@_builtin("abs", 1)
def _abs(a): return _piecewise((a, a >= 0), -a)


@_builtin("maximum", 2)
def _maximum(a, b): return _piecewise((a, a >= b), b)


@_builtin("minimum", 2)
def _minimum(a, b): return _piecewise((a, a <= b), b)


@_builtin("greater", 2)
def _greater(a, b): return _select(1, a > b, 0)


@_builtin("greater_equal", 2)
def _greater_equal(a, b): return _select(1, a >= b, 0)


@_builtin("less", 2)
def _less(a, b): return _select(1, a < b, 0)


@_builtin("less_equal", 2)
def _less_equal(a, b): return _select(1, a <= b, 0)


@_builtin("equal", 2)
def _equal(a, b): return _select(1, _sp().Eq(a, b), 0)


@_builtin("where", 3)
def _where(c, a, b): return _select(a, _sp().Ne(c, 0), b)


@_builtin("xlogy", 2)
def _xlogy(x, y): return _piecewise((0, _sp().Eq(x, 0)), x * _sp().log(y))


@_builtin("xlogx", 1)
def _xlogx(x): return _piecewise((0, _sp().Eq(x, 0)), x * _sp().log(x))


def _softplus_grad(y, x):
    """sigmoid(x). sympy's derivative of the stable form adds relu'(x) and
    -sign(x) e^-|x| / (1 + e^-|x|), whose one-sided choices at 0 are both 0: softplus'(0)
    would be 0, not 1/2."""
    return [1 / (1 + _sp().exp(-x))]


@_builtin("softplus", 1, grad=_softplus_grad)
def _softplus(x): return _relu(x) + _sp().log(1 + _sp().exp(-_sp().Abs(x)))


@_builtin("leakyrelu", 2)
def _leakyrelu(x, a): return _piecewise((x, x > 0), a * x)


@_builtin("elu", 2)
def _elu(x, a): return _piecewise((x, x > 0), a * (_sp().exp(x) - 1))


@_builtin("celu", 2)
def _celu(x, a): return _piecewise((x, x > 0), a * (_sp().exp(x / a) - 1))


@_builtin("selu", 1)
def _selu(x):
    lam, alpha = 1.0507009873554804934193349852946, 1.6732632423543772848170429916717
    return lam * _piecewise((x, x > 0), alpha * (_sp().exp(x) - 1))


@_builtin("gelu", 1)
def _gelu(x):
    sp = _sp()
    return x / 2 * (1 + sp.tanh(sp.sqrt(2 / sp.pi) * (x + sp.Float("0.044715") * x ** 3)))


@_builtin("swish", 1)
def _swish(x): return x * _sigmoid(x)


@_builtin("hardsigmoid", 1)
def _hardsigmoid(x): return _piecewise((0, x <= -3), (1, x >= 3), (x + 3) / 6)


@_builtin("relu6", 1)
def _relu6(x): return _piecewise((0, x <= 0), (6, x >= 6), x)


@_builtin("hardtanh", 1)
def _hardtanh(x): return _piecewise((-1, x <= -1), (1, x >= 1), x)


@_builtin("hardswish", 1)
def _hardswish(x): return _piecewise((0, x < -3), (x, x > 3), x * (x + 3) / 6)


@_builtin("softshrink", 2)
def _softshrink(x, lam): return _piecewise((x - lam, x > lam), (x + lam, x < -lam), 0)


@_builtin("trelu", 2)
def _trelu(x, theta): return _piecewise((x, x > theta), 0)


@_builtin("softsign", 1)
def _softsign(x): return x / (1 + _sp().Abs(x))


@_builtin("mish", 1)
def _mish(x): return x * _sp().tanh(_softplus(x))


@_builtin("identity", 1)
def _identity(a): return a
