"""sympy scalar expression -> LLVM instructions: the body of a fused elementwise loop.

The fused group's expressions go through sympy's `cse` first, so a value shared by the forward
and backward halves of a kernel (tanh(x) and 1 - tanh(x)^2) is computed once."""
import math

from llvmlite import ir

from . import elementwise as ew
from . import transcendental as tr
from .errors import CompileError

FLAGS = ("contract",)


def emit_expressions(b, exprs, env, ty, lets=()):
    """Emit `exprs` (sympy) with `env` mapping Symbol -> llvm value; returns llvm values.
    `lets` are (Symbol, expr) bindings emitted first, in order, that later expressions refer
    to by their symbol (a fused kernel's bounded intermediates: compiler.plan)."""
    import sympy as sp
    env, memo = dict(env), {}
    for k, (name, e) in enumerate(lets):
        env[name] = _emit_all(b, [e], env, ty, memo, sp, f"t{k}_")[0]
    return _emit_all(b, exprs, env, ty, memo, sp, "x")


def _emit_all(b, exprs, env, ty, memo, sp, prefix):
    """cse, then emit; the cse symbols get their own prefix, so the memo, shared by every
    call of one kernel, never confuses two different values of the same name."""
    replacements, reduced = sp.cse(exprs, symbols=sp.numbered_symbols(prefix),
                                   optimizations=None)
    for sym, e in replacements:
        env[sym] = _emit(b, e, env, ty, memo, sp)
    return [_emit(b, e, env, ty, memo, sp) for e in reduced]


def _const(ty, v):
    return ir.Constant(ty, float(v))


def _product(b, vals, ty):
    out = vals[0]
    for v in vals[1:]:
        out = b.fmul(out, v, flags=FLAGS)
    return out


def _int_power(b, x, n, ty):
    """x**n for integer n >= 1 by repeated squaring."""
    result, base = None, x
    while n:
        if n & 1:
            result = base if result is None else b.fmul(result, base, flags=FLAGS)
        n >>= 1
        if n:
            base = b.fmul(base, base, flags=FLAGS)
    return result


def _cond(b, c, env, ty, memo, sp):
    if c in env or c in memo:
        return _emit(b, c, env, ty, memo, sp)
    if c is sp.true:
        return ir.Constant(ir.IntType(1), 1)
    if c is sp.false:
        return ir.Constant(ir.IntType(1), 0)
    if isinstance(c, sp.And):
        out = _cond(b, c.args[0], env, ty, memo, sp)
        for a in c.args[1:]:
            out = b.and_(out, _cond(b, a, env, ty, memo, sp))
        return out
    if isinstance(c, sp.Or):
        out = _cond(b, c.args[0], env, ty, memo, sp)
        for a in c.args[1:]:
            out = b.or_(out, _cond(b, a, env, ty, memo, sp))
        return out
    if isinstance(c, sp.Not):
        return b.not_(_cond(b, c.args[0], env, ty, memo, sp))
    if isinstance(c, sp.ITE):
        return b.select(*[_cond(b, a, env, ty, memo, sp) for a in c.args])
    if c.is_Relational:
        lhs, rhs = _emit(b, c.lhs, env, ty, memo, sp), _emit(b, c.rhs, env, ty, memo, sp)
        if c.rel_op == "!=":
            return b.fcmp_unordered("!=", lhs, rhs)
        return b.fcmp_ordered(c.rel_op, lhs, rhs)
    raise CompileError(f"cannot lower the condition {c} to LLVM")


def _emit(b, e, env, ty, memo, sp):
    if e in env:
        return env[e]
    if e in memo:
        return memo[e]
    v = _emit_new(b, e, env, ty, memo, sp)
    memo[e] = v
    return v


def _emit_new(b, e, env, ty, memo, sp):
    emit = lambda x: _emit(b, x, env, ty, memo, sp)  # noqa: E731
    if e.is_Relational or isinstance(e, (sp.And, sp.Or, sp.Not, sp.ITE)):
        return _cond(b, e, env, ty, memo, sp)
    if e.is_Number or e in (sp.pi, sp.E):
        return _const(ty, float(e))
    if e.is_Add:
        terms = [emit(a) for a in e.args]
        out = terms[0]
        for t in terms[1:]:
            out = b.fadd(out, t, flags=FLAGS)
        return out
    if e.is_Mul:
        num, den = [], []
        for a in e.args:
            if a.is_Pow and a.args[1].is_Number and a.args[1] < 0:
                den.append(emit(a.args[0] ** (-a.args[1])))
            elif a.is_Rational and not a.is_Integer and a.p == 1:
                den.append(_const(ty, a.q))
            else:
                num.append(emit(a))
        out = _product(b, num, ty) if num else _const(ty, 1.0)
        if den:
            out = b.fdiv(out, _product(b, den, ty), flags=FLAGS)
        return out
    if e.is_Pow:
        base, ex = e.args
        if ex.is_Number and float(ex).is_integer() and abs(float(ex)) < 64:
            n = int(float(ex))     # x**3.0 (a traced Python float): multiply, never exp(log)
            if n == 0:
                return _const(ty, 1.0)
            p = _int_power(b, emit(base), abs(n), ty)
            return p if n > 0 else b.fdiv(_const(ty, 1.0), p, flags=FLAGS)
        if ex.is_Number and float(ex) == 0.5:
            return tr.call(b, "sqrt", ty, emit(base))
        if ex.is_Number and float(ex) == -0.5:
            return b.fdiv(_const(ty, 1.0), tr.call(b, "sqrt", ty, emit(base)), flags=FLAGS)
        return tr.exp(b, b.fmul(emit(ex), tr.log(b, emit(base), ty), flags=FLAGS), ty)
    if isinstance(e, ew.select_function()):
        cond, a, otherwise, *operands = e.args
        otherwise = emit(otherwise)
        if operands:    # fcmp ord: neither operand is NaN
            vals = [emit(o) for o in operands]
            ordered = b.fcmp_ordered("ord", vals[0], vals[-1])
            for v in vals[1:-1]:
                ordered = b.and_(ordered, b.fcmp_ordered("ord", v, v))
            otherwise = b.select(ordered, otherwise, _const(ty, math.nan))
        return b.select(_cond(b, cond, env, ty, memo, sp), emit(a), otherwise)
    if isinstance(e, sp.exp):
        return tr.exp(b, emit(e.args[0]), ty)
    if isinstance(e, sp.log):
        return tr.log(b, emit(e.args[0]), ty)
    if isinstance(e, sp.tanh):
        return tr.tanh(b, emit(e.args[0]), ty)
    if isinstance(e, sp.Abs):
        return tr.call(b, "fabs", ty, emit(e.args[0]))
    if isinstance(e, sp.sign):
        x = emit(e.args[0])     # x itself where x is 0 or NaN (unordered ==), as np.sign
        one = tr.call(b, "copysign", ty, _const(ty, 1.0), x)
        return b.select(b.fcmp_unordered("==", x, _const(ty, 0.0)), x, one)
    if isinstance(e, (sp.Max, sp.Min)):
        vals = [emit(a) for a in e.args]   # llvm.maximum: NaN from either operand, as np.maximum
        out = vals[0]
        for v in vals[1:]:
            out = tr.call(b, "maximum" if isinstance(e, sp.Max) else "minimum", ty, out, v)
        return out
    raise CompileError(f"no LLVM lowering for the sympy function {e.func.__name__} in {e}; "
                       "write the elementwise function with exp/log/tanh/powers/Piecewise")
