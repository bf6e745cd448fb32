"""Each elementwise function as a small LLVM function of scalars, `gf_fn.<name>.<f32|f64>`.

A fused loop calls one of these per node instead of printing the group's composed expression:
the functions are linked into the step module before optimisation and always inlined, so the
loop LLVM vectorises is the same arithmetic, while building a kernel costs a call per node,
whatever the depth of the chain, and needs no sympy. sympy runs only where a function's body
is first emitted: once per function, dtype and machine -- the text is kept in memory and in
the runtime's store (the GEMM library's), keyed by graphflux's source, so a later process
compiles built-in activations without importing sympy at all."""
import hashlib
import threading

from llvmlite import ir

from . import elementwise as ew
from .fingerprint import source_fingerprint
from .llvm_backend import LIBRARY_STORE

_TEXTS = {}
_LOCK = threading.Lock()


_PREFIX = "gf_fn."


def function_name(fn_name, ty, constants):
    """`gf_fn.<name>.<f32|f64>`, then `@k=<hex float>` per argument k fixed to a constant: a
    constant argument is part of the body (x**3 must stay an integer power, not exp(3 log x))."""
    width = "f64" if isinstance(ty, ir.DoubleType) else "f32"
    return f"{_PREFIX}{fn_name}.{width}" + "".join(f"@{k}={float(v).hex()}"
                                                 for k, v in sorted(constants.items()))


def declare(module, fn_name, ty, constants):
    """The function in `module`, declared (its body comes from `definition` at link time);
    it takes the arguments that are not among `constants` (position -> value)."""
    name = function_name(fn_name, ty, constants)
    fn = module.globals.get(name)
    if fn is None:
        arity = ew.get(fn_name).arity - len(constants)
        fn = ir.Function(module, ir.FunctionType(ty, [ty] * arity), name=name)
    return fn


def definitions(module):
    """The IR texts defining the scalar functions `module` (a step) declares, to link in."""
    return [definition(f.name) for f in module.functions if f.name.startswith(_PREFIX)]


def definition(name):
    """The IR text of a module defining function `name` (as `declare` named it)."""
    with _LOCK:
        text = _TEXTS.get(name)
        if text is None:
            key = hashlib.sha256(f"scalar {name} {source_fingerprint()}".encode()).hexdigest()
            data = LIBRARY_STORE[0].get(key) if LIBRARY_STORE else None
            text = data.decode() if data is not None else _emit(name)
            if data is None and LIBRARY_STORE:
                LIBRARY_STORE[0].put(key, text.encode())
            _TEXTS[name] = text
        return text


def _emit(name):
    """Print the function's sympy expression as LLVM (the one place that imports sympy)."""
    import sympy as sp
    from .scalar_codegen import emit_expressions
    head, *fixed = name.split("@")
    fn_name, width = head[len(_PREFIX):].rsplit(".", 1)
    constants = {int(k): float.fromhex(v) for k, v in (c.split("=") for c in fixed)}
    ty = ir.DoubleType() if width == "f64" else ir.FloatType()
    fn_def = ew.get(fn_name)
    params = [s for k, s in enumerate(fn_def.symbols) if k not in constants]
    expr = fn_def.expr.xreplace({fn_def.symbols[k]: sp.Float(v, 17)
                                 for k, v in constants.items()})
    module = ir.Module(name=name)
    f = ir.Function(module, ir.FunctionType(ty, [ty] * len(params)), name=name)
    f.linkage = "linkonce_odr"
    f.attributes.add("alwaysinline")
    f.attributes.add("nounwind")
    b = ir.IRBuilder(f.append_basic_block("entry"))
    b.ret(emit_expressions(b, [expr], dict(zip(params, f.args)), ty)[0])
    return str(module)
