"""sympy expression -> numpy source, the runtime's printer for elementwise functions.

Written here rather than with sympy.lambdify so that Piecewise, powers and dtypes come out exactly
as the LLVM lowering computes them (python floats stay weak, so float32 stays float32)."""


def to_numpy_source(expr, names):
    import sympy as sp

    def p(e):
        if e.is_Symbol:
            return names[e.name]
        if e.is_Number:
            return repr(float(e))
        if e is sp.pi or e is sp.E:
            return repr(float(e))
        if e.is_Add:
            return "(" + " + ".join(p(a) for a in e.args) + ")"
        if e.is_Mul:
            return "(" + " * ".join(p(a) for a in e.args) + ")"
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
        if isinstance(e, sp.Piecewise):
            (v, c), rest = e.args[0], e.args[1:]
            if c is sp.true:
                return p(v)
            return f"np.where({p(c)}, {p(v)}, {p(sp.Piecewise(*rest)) if rest else 'np.nan'})"
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

    return p(expr)
