"""sympy expression -> numpy source, the runtime's printer for elementwise functions.

Written here rather than with sympy.lambdify so that selects (NaN where a condition's operand
is NaN, see elementwise.select_function), powers and dtypes come out exactly as the LLVM lowering
computes them (python floats stay weak, so float32 stays float32). Each node other than a symbol
or a number is spelled by its head's entry in compiler.scalar_functions, the table the LLVM
printer reads too."""
import math

from graphflux.compiler.scalar_functions import HEADS


def to_numpy_source(expr, names):
    def p(e):
        if e.is_Symbol:
            return names[e.name]
        if e.is_number and not e.is_Boolean:
            return number(float(e))
        head = HEADS.get(type(e).__name__)
        if head is None:
            raise NotImplementedError(f"no numpy printer for sympy {e.func.__name__}")
        if callable(head.numpy):
            return head.numpy(p, e)
        return head.numpy.format(*[p(a) for a in e.args])

    def number(v):
        """A constant (sqrt(2/pi) too) as a Python float, which numpy treats as weak: printed
        as np.sqrt(2.0) it would be a float64 scalar, and gelu of float32 float64."""
        return repr(v) if math.isfinite(v) else f"float('{v}')"

    return p(expr)
