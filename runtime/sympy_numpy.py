"""sympy expression -> numpy source, the runtime's printer for elementwise functions.

Written here rather than with sympy.lambdify so that selects (NaN where a condition's operand
is NaN, see elementwise.select_function), powers and dtypes come out exactly as the LLVM lowering
computes them (python floats stay weak, so float32 stays float32)."""
import math

from graphflux.compiler import elementwise as ew


def to_numpy_source(expr, names):
    import sympy as sp

    def p(e):
        if e.is_Symbol:
            return names[e.name]
        if e.is_number and not e.is_Boolean:
            return number(float(e))
        if e.is_Add:
            return add(e)
        if e.is_Mul:
            return mul(e)
        if e.is_Pow:
            b, x = e.args
            if x == 2:
                return f"({p(b)} * {p(b)})"
            if x == -1:
                return f"(1.0 / {p(b)})"
            if x == sp.Rational(1, 2):
                return f"np.sqrt({p(b)})"
            if x == -sp.Rational(1, 2):
                return f"(1.0 / np.sqrt({p(b)}))"
            return f"np.power({p(b)}, {p(x)})"
        if isinstance(e, ew.select_function()):
            cond, a, otherwise, *operands = e.args
            otherwise = p(otherwise)
            if operands:    # NaN as the operands' sum: np.nan would make the result float64
                otherwise = f"np.where({ordered(operands)}, {otherwise}, " \
                            f"{' + '.join(p(o) for o in operands)})"
            return f"np.where({p(cond)}, {p(a)}, {otherwise})"
        if isinstance(e, sp.And):
            return "(" + " & ".join(p(a) for a in e.args) + ")"
        if isinstance(e, sp.Or):
            return "(" + " | ".join(p(a) for a in e.args) + ")"
        if isinstance(e, sp.Not):
            return f"(~{p(e.args[0])})"
        if isinstance(e, sp.ITE):
            return f"np.where({p(e.args[0])}, {p(e.args[1])}, {p(e.args[2])})"
        if e is sp.true or e is sp.false:
            return repr(bool(e))
        if e.is_Relational:
            op = {"==": "==", "!=": "!=", ">": ">", "<": "<", ">=": ">=", "<=": "<="}[e.rel_op]
            return f"({p(e.lhs)} {op} {p(e.rhs)})"
        fn = {sp.exp: "np.exp", sp.log: "np.log", sp.tanh: "np.tanh", sp.Abs: "np.abs",
              sp.sign: "np.sign", sp.sin: "np.sin", sp.cos: "np.cos"}.get(e.func)
        if fn is not None:
            return f"{fn}({p(e.args[0])})"
        if e.func in (sp.Max, sp.Min):
            f = "np.maximum" if e.func is sp.Max else "np.minimum"
            out = p(e.args[0])
            for a in e.args[1:]:
                out = f"{f}({out}, {p(a)})"
            return out
        raise NotImplementedError(f"no numpy printer for sympy {e.func.__name__}")

    def ordered(operands):
        """No operand is NaN: x == x is false only for NaN."""
        tests = [f"({p(o)} == {p(o)})" for o in operands]
        return tests[0] if len(tests) == 1 else "(" + " & ".join(tests) + ")"

    def number(v):
        """A constant (sqrt(2/pi) too) as a Python float, which numpy treats as weak: printed
        as np.sqrt(2.0) it would be a float64 scalar, and gelu of float32 float64."""
        return repr(v) if math.isfinite(v) else f"float('{v}')"

    def add(e):
        """Negative terms as subtractions: `1 - y*y` is two numpy calls, not three."""
        plus, minus = [], []
        for a in e.args:
            negative = a.as_coeff_Mul()[0].is_negative
            (minus if negative else plus).append(-a if negative else a)
        if not plus:
            return "(-(" + " + ".join(p(a) for a in minus) + "))"
        return "(" + " + ".join(p(a) for a in plus) + "".join(f" - {p(a)}" for a in minus) + ")"

    def mul(e):
        """Denominators as divisions and a -1 coefficient as one negation: `-g*y/b` is three
        numpy calls, not four."""
        coeff, rest = e.as_coeff_Mul()
        sign = ""
        if coeff == -1:
            sign, coeff = "-", sp.Integer(1)
        num, den = ([] if coeff == 1 else [coeff]), []
        for a in sp.Mul.make_args(rest):
            if a.is_Pow and a.args[1].is_Number and a.args[1].is_negative:
                den.append(a.args[0] ** -a.args[1])
            else:
                num.append(a)
        body = " * ".join(p(a) for a in num) if num else "1.0"
        if den:
            body = f"{body} / " + (p(den[0]) if len(den) == 1 else
                                   "(" + " * ".join(p(a) for a in den) + ")")
        return f"({sign}{body})"

    return p(expr)
