"""The sympy heads an elementwise expression may be made of, each once: how the LLVM printer
(compiler.scalar_codegen) emits it and how the numpy printer (runtime.sympy_numpy) spells it.

Both printers handle only leaves (symbols, numbers) themselves and look every other node up
here by its head's name, so a function one printer knows the other knows too, and a missing
entry fails tests/test_scalar_functions.py rather than a user's compile. An entry's `numpy` is
source text -- a template over the printed arguments, or a function (print, expr) -> source
where the arguments need more than a template -- so the runtime imports it as data; its `llvm`
is a function (emit, expr) -> value, `emit(sub)` emitting a subexpression into `emit.b` in type
`emit.ty`. Where numpy has no function (erf, erfc), the numpy spelling is the compiled algorithm
itself (transcendental.erf_of), printed as numpy source by `_NumpySource`."""
import math
from typing import Callable, NamedTuple

from llvmlite import ir

from . import elementwise as ew
from . import transcendental as tr

FLAGS = ("contract",)


class Head(NamedTuple):
    numpy: object           # "np.sin({0})", or a function (print, expr) -> source
    llvm: Callable          # (emit, expr) -> llvm value
    keeps_nan: bool = True  # NaN in any argument gives NaN (elementwise._carries_nan)


def keeps_nan(expr):
    head = HEADS.get(type(expr).__name__)
    return head is not None and head.keeps_nan


# -- numbers shared by both printers: the same operations in the same order -------------------

def add_parts(e):
    """(terms added, terms subtracted): `1 - y*y` is a subtraction, not an addition of -y*y."""
    plus, minus = [], []
    for a in e.args:
        negative = a.as_coeff_Mul()[0].is_negative
        (minus if negative else plus).append(-a if negative else a)
    return plus, minus


def mul_parts(e):
    """(negate, numerator factors, denominator factors): `-g*y/3` is -(g*y / 3), x**-2 a
    division by x**2."""
    import sympy as sp
    coeff, rest = e.as_coeff_Mul()
    negate = coeff.is_negative
    coeff = -coeff if negate else coeff
    num, den = [], []
    if coeff.is_Rational and coeff.p == 1 and coeff.q != 1:
        den.append(sp.Integer(coeff.q))
    elif coeff != 1:
        num.append(coeff)
    for a in sp.Mul.make_args(rest):
        if a.is_Pow and a.exp.is_Number and a.exp.is_negative:
            den.append(a.base ** -a.exp)
        else:
            num.append(a)
    return negate, num, den


def power_form(exponent):
    """How x**exponent is computed: ("int", n) by repeated squaring (1 / x**-n for n < 0),
    ("half", n) for exponent n/2 as sqrt(x) times x**((|n|-1)/2) (reciprocal for n < 0), and
    ("general", None) -- every other exponent, rational or not -- as exp(exponent log x)."""
    if exponent.is_Number:
        v = float(exponent)
        if v.is_integer() and abs(v) < 64:
            return "int", int(v)
        if (2 * v).is_integer() and abs(v) < 64:
            return "half", int(2 * v)
    return "general", None


# -- the LLVM side ----------------------------------------------------------------------------

def _c(g, v):
    return ir.Constant(g.ty, float(v))


def _chain(b, vals, op):
    out = vals[0]
    for v in vals[1:]:
        out = op(out, v, flags=FLAGS)
    return out


def _int_power(g, x, n):
    """x**n for integer n >= 1 by repeated squaring."""
    result, base = None, x
    while n:
        if n & 1:
            result = base if result is None else g.b.fmul(result, base, flags=FLAGS)
        n >>= 1
        if n:
            base = g.b.fmul(base, base, flags=FLAGS)
    return result


def _add_llvm(g, e):
    plus, minus = add_parts(e)
    if not plus:
        return g.b.fneg(_chain(g.b, [g(a) for a in minus], g.b.fadd))
    out = _chain(g.b, [g(a) for a in plus], g.b.fadd)
    for a in minus:
        out = g.b.fsub(out, g(a), flags=FLAGS)
    return out


def _mul_llvm(g, e):
    negate, num, den = mul_parts(e)
    out = _chain(g.b, [g(a) for a in num], g.b.fmul) if num else _c(g, 1.0)
    if den:
        out = g.b.fdiv(out, _chain(g.b, [g(a) for a in den], g.b.fmul), flags=FLAGS)
    return g.b.fneg(out) if negate else out


def _pow_llvm(g, e):
    kind, n = power_form(e.exp)
    if kind == "general":
        return tr.exp(g.b, g.b.fmul(g(e.exp), tr.log(g.b, g(e.base), g.ty), flags=FLAGS), g.ty)
    if n == 0:
        return _c(g, 1.0)
    x = g(e.base)
    if kind == "int":
        p = _int_power(g, x, abs(n))
    else:
        p = tr.call(g.b, "sqrt", g.ty, x)
        if abs(n) > 1:
            p = g.b.fmul(_int_power(g, x, (abs(n) - 1) // 2), p, flags=FLAGS)
    return p if n > 0 else g.b.fdiv(_c(g, 1.0), p, flags=FLAGS)


def _select_llvm(g, e):
    """Select(cond, a, b, *operands): NaN where an operand is NaN (fcmp ord: neither is)."""
    cond, a, otherwise, *operands = e.args
    otherwise = g(otherwise)
    if operands:
        vals = [g(o) for o in operands]
        ordered = g.b.fcmp_ordered("ord", vals[0], vals[-1])
        for v in vals[1:-1]:
            ordered = g.b.and_(ordered, g.b.fcmp_ordered("ord", v, v))
        otherwise = g.b.select(ordered, otherwise, _c(g, math.nan))
    return g.b.select(g(cond), g(a), otherwise)


def _sign_llvm(g, e):
    """x itself where x is 0 or NaN (unordered ==), as np.sign."""
    x = g(e.args[0])
    one = tr.call(g.b, "copysign", g.ty, _c(g, 1.0), x)
    return g.b.select(g.b.fcmp_unordered("==", x, _c(g, 0.0)), x, one)


def _compare_llvm(op):
    """A float comparison, false where an operand is NaN -- but != , true there (as numpy)."""
    if op == "!=":
        return lambda g, e: g.b.fcmp_unordered("!=", g(e.lhs), g(e.rhs))
    return lambda g, e: g.b.fcmp_ordered(op, g(e.lhs), g(e.rhs))


def _fold_llvm(combine):
    """An n-ary head as its binary form folded left to right."""
    def emit(g, e):
        out = g(e.args[0])
        for a in e.args[1:]:
            out = combine(g, out, g(a))
        return out
    return emit


def _intrinsic(name):
    return _fold_llvm(lambda g, a, b: tr.call(g.b, name, g.ty, a, b))


def _unary(fn):
    """fn(b, x, ty): exp, log, tanh."""
    return lambda g, e: fn(g.b, g(e.args[0]), g.ty)


def _algorithm(fn):
    """fn(arith, x): the functions transcendental writes over tr.Arith."""
    return lambda g, e: fn(tr.Arith(g.b, g.ty), g(e.args[0]))


def _boolean(value):
    return lambda g, e: ir.Constant(ir.IntType(1), value)


# -- the numpy side ---------------------------------------------------------------------------

def _add_numpy(p, e):
    plus, minus = add_parts(e)
    if not plus:
        return "(-(" + " + ".join(p(a) for a in minus) + "))"
    return "(" + " + ".join(p(a) for a in plus) + "".join(f" - {p(a)}" for a in minus) + ")"


def _mul_numpy(p, e):
    negate, num, den = mul_parts(e)
    body = " * ".join(p(a) for a in num) if num else "1.0"
    if den:
        body = f"{body} / " + (p(den[0]) if len(den) == 1 else
                               "(" + " * ".join(p(a) for a in den) + ")")
    return f"({'-' if negate else ''}{body})"


def _pow_numpy(p, e):
    """The LLVM side's forms where they are exact or change special values (x**1.5 at -inf is
    NaN, as sqrt(x) x); np.power (correctly rounded or nearly) for the other integer and the
    general exponents, within a few ulp of squaring and of exp(y log x)."""
    kind, n = power_form(e.exp)
    base = p(e.base)
    if kind == "int":
        spelled = {1: base, 2: f"({base} * {base})", -1: f"(1.0 / {base})"}
        return spelled.get(n, f"np.power({base}, {float(n)!r})")
    if kind == "half":
        root = f"np.sqrt({base})"
        if abs(n) > 1:
            root = f"(np.power({base}, {float((abs(n) - 1) // 2)!r}) * {root})"
        return root if n > 0 else f"(1.0 / {root})"
    return f"np.power({base}, {p(e.exp)})"


def _select_numpy(p, e):
    """np.where; NaN as the operands' sum where one is NaN (np.nan would make float32
    float64)."""
    cond, a, otherwise, *operands = e.args
    otherwise = p(otherwise)
    if operands:
        tests = [f"({p(o)} == {p(o)})" for o in operands]
        ordered = tests[0] if len(tests) == 1 else "(" + " & ".join(tests) + ")"
        otherwise = f"np.where({ordered}, {otherwise}, {' + '.join(p(o) for o in operands)})"
    return f"np.where({p(cond)}, {p(a)}, {otherwise})"


def _fold_numpy(template):
    def spell(p, e):
        out = p(e.args[0])
        for a in e.args[1:]:
            out = template.format(out, p(a))
        return out
    return spell


class _NumpySource:
    """transcendental's Arith as numpy source text. A value used more than once is bound by an
    assignment expression, in the order the algorithm makes it, inside one lambda: the whole
    spelling stays one expression over `np`, the only name a generated function can rely on."""

    def __init__(self):
        self.bindings = []

    @staticmethod
    def _v(v):
        return v if isinstance(v, str) else repr(float(v))

    def let(self, v):
        name = f"_{len(self.bindings)}"
        self.bindings.append(f"({name} := {v})")
        return name

    def add(self, a, b):
        return f"({self._v(a)} + {self._v(b)})"

    def sub(self, a, b):
        return f"({self._v(a)} - {self._v(b)})"

    def mul(self, a, b):
        return f"({self._v(a)} * {self._v(b)})"

    def div(self, a, b):
        return f"({self._v(a)} / {self._v(b)})"

    def neg(self, a):
        return f"(-{a})"

    def fma(self, a, b, c):
        return self.add(self.mul(a, b), c)

    def poly(self, x, coeffs):
        out = self._v(coeffs[-1])
        for c in reversed(coeffs[:-1]):
            out = f"({self._v(c)} + {x} * {out})"
        return out

    def less(self, a, b):
        return f"({self._v(a)} < {self._v(b)})"

    def equal(self, a, b):
        return f"({self._v(a)} == {self._v(b)})"

    def where(self, m, a, b):
        return f"np.where({m}, {self._v(a)}, {self._v(b)})"

    def clamp(self, x, lo, hi):
        return f"np.minimum(np.maximum({x}, {self._v(lo)}), {self._v(hi)})"

    def abs(self, x):
        return f"np.abs({x})"

    def copysign(self, x, sign):
        return f"np.copysign({x}, {sign})"

    def floor(self, x):
        return f"np.floor({x})"

    def rint(self, x):
        return f"np.rint({x})"

    def sqrt(self, x):
        return f"np.sqrt({x})"

    def exp(self, x):
        return f"np.exp({x})"

    def log(self, x):
        return f"np.log({x})"


def numpy_algorithm(fn):
    """fn (written over tr.Arith) as a numpy source template over its argument {0}."""
    m = _NumpySource()
    result = fn(m, "_x")
    return "(lambda _x: (" + ", ".join(m.bindings + [result]) + ")[-1])({0})"


# -- the table --------------------------------------------------------------------------------

HEADS = {
    "Add": Head(_add_numpy, _add_llvm),
    "Mul": Head(_mul_numpy, _mul_llvm),
    "Pow": Head(_pow_numpy, _pow_llvm, keeps_nan=False),       # NaN**0 is 1
    "Select": Head(_select_numpy, _select_llvm, keeps_nan=False),
    # a Piecewise that reaches a printer (ElementwiseFn.expr has none) as the same Selects
    "Piecewise": Head(lambda p, e: p(ew._nan_selects(e)), lambda g, e: g(ew._nan_selects(e)),
                      keeps_nan=False),
    "exp": Head("np.exp({0})", _unary(tr.exp)),
    "log": Head("np.log({0})", _unary(tr.log)),
    "tanh": Head("np.tanh({0})", _unary(tr.tanh)),
    "sin": Head("np.sin({0})", _algorithm(tr.sin_of)),
    "cos": Head("np.cos({0})", _algorithm(tr.cos_of)),
    "tan": Head("np.tan({0})", _algorithm(tr.tan_of)),
    "atan": Head("np.arctan({0})", _algorithm(tr.atan_of)),
    "asinh": Head("np.arcsinh({0})", _algorithm(tr.asinh_of)),
    "erf": Head(numpy_algorithm(tr.erf_of), _algorithm(tr.erf_of)),
    "erfc": Head(numpy_algorithm(tr.erfc_of), _algorithm(tr.erfc_of)),
    "Abs": Head("np.abs({0})", lambda g, e: tr.call(g.b, "fabs", g.ty, g(e.args[0]))),
    "sign": Head("np.sign({0})", _sign_llvm),
    # llvm.maximum/minimum: NaN from either operand, as np.maximum/np.minimum
    "Max": Head(_fold_numpy("np.maximum({0}, {1})"), _intrinsic("maximum")),
    "Min": Head(_fold_numpy("np.minimum({0}, {1})"), _intrinsic("minimum")),
    "StrictGreaterThan": Head("({0} > {1})", _compare_llvm(">"), keeps_nan=False),
    "GreaterThan": Head("({0} >= {1})", _compare_llvm(">="), keeps_nan=False),
    "StrictLessThan": Head("({0} < {1})", _compare_llvm("<"), keeps_nan=False),
    "LessThan": Head("({0} <= {1})", _compare_llvm("<="), keeps_nan=False),
    "Equality": Head("({0} == {1})", _compare_llvm("=="), keeps_nan=False),
    "Unequality": Head("({0} != {1})", _compare_llvm("!="), keeps_nan=False),
    "And": Head(_fold_numpy("({0} & {1})"), _fold_llvm(lambda g, a, b: g.b.and_(a, b)),
                keeps_nan=False),
    "Or": Head(_fold_numpy("({0} | {1})"), _fold_llvm(lambda g, a, b: g.b.or_(a, b)),
               keeps_nan=False),
    "Not": Head("(~{0})", lambda g, e: g.b.not_(g(e.args[0])), keeps_nan=False),
    "ITE": Head("np.where({0}, {1}, {2})",
                lambda g, e: g.b.select(*[g(a) for a in e.args]), keeps_nan=False),
    "BooleanTrue": Head("True", _boolean(1), keeps_nan=False),
    "BooleanFalse": Head("False", _boolean(0), keeps_nan=False),
}
