"""sympy scalar expression -> LLVM instructions: the body of an elementwise function's scalar
function (compiler.scalar_library), which fused loops call and LLVM inlines.

The expression goes through sympy's `cse` first, so a value it uses twice is computed once;
across the calls of one loop, LLVM's own value numbering shares what they have in common
(tanh(x) in the forward node and in its cotangent). Each node other
than a symbol or a number is emitted by its head's entry in compiler.scalar_functions, the table
the numpy printer reads too."""
from llvmlite import ir

from .errors import CompileError
from .scalar_functions import HEADS


def emit_expressions(b, exprs, env, ty):
    """Emit `exprs` (sympy) with `env` mapping Symbol -> llvm value; returns llvm values."""
    return _Emitter(b, ty, env).all(exprs, "x")


class _Emitter:
    """Emits subexpressions into `b` in type `ty`, each once: called by the table's entries on
    their arguments. The memo is shared by every expression of one kernel."""

    def __init__(self, b, ty, env):
        self.b, self.ty, self.env, self.memo = b, ty, dict(env), {}

    def all(self, exprs, prefix):
        """cse, then emit; the cse symbols get their own prefix, so the memo never confuses
        two different values of the same name."""
        import sympy as sp
        replacements, reduced = sp.cse(exprs, symbols=sp.numbered_symbols(prefix),
                                       optimizations=None)
        for sym, e in replacements:
            self.env[sym] = self(e)
        return [self(e) for e in reduced]

    def __call__(self, e):
        if e in self.env:
            return self.env[e]
        if e not in self.memo:
            self.memo[e] = self._new(e)
        return self.memo[e]

    def _new(self, e):
        if e.is_number and not e.is_Boolean:     # sqrt(2/pi) too: folded in float64
            return ir.Constant(self.ty, float(e))
        head = HEADS.get(type(e).__name__)
        if head is None:
            raise CompileError(f"no LLVM lowering for the sympy function {e.func.__name__} in "
                               f"{e}; the functions there are: {', '.join(sorted(HEADS))}")
        return head.llvm(self, e)
