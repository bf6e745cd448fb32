"""Counted loops in LLVM IR in the shape the loop vectoriser wants: an i64 induction variable
from `start` by a constant `step`, one exit test at the bottom, guarded for zero trips."""
from llvmlite import ir

I64 = ir.IntType(64)


def i64(v):
    return v if isinstance(v, ir.Value) else ir.Constant(I64, int(v))


def for_range(b, start, stop, body, step=1, name="i"):
    """Emit `for i in range(start, stop, step): body(i)`; leaves `b` after the loop."""
    start, stop = i64(start), i64(stop)
    fn = b.function
    header = fn.append_basic_block(f"{name}.body")
    done = fn.append_basic_block(f"{name}.end")
    b.cbranch(b.icmp_signed("<", start, stop), header, done)
    pre = b.block
    b.position_at_end(header)
    i = b.phi(I64, name=name)
    i.add_incoming(start, pre)
    body(i)
    nxt = b.add(i, step if isinstance(step, ir.Value) else i64(step), name=f"{name}.next")
    i.add_incoming(nxt, b.block)
    b.cbranch(b.icmp_signed("<", nxt, stop), header, done)
    b.position_at_end(done)


def smin(b, x, y):
    x, y = i64(x), i64(y)
    return b.select(b.icmp_signed("<", x, y), x, y)


def gep(b, ptr, index, ty):
    return b.gep(ptr, [i64(index)], inbounds=True, source_etype=ty)


def internal_function(module, name, args, noalias=0):
    """`void name(args...)`, internal, nounwind and noinline (kernels stay separate functions
    LLVM optimises once each); its first `noalias` arguments are noalias pointers."""
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), args), name=name)
    fn.linkage = "internal"
    fn.attributes.add("nounwind")
    fn.attributes.add("noinline")
    for a in fn.args[:noalias]:
        a.add_attribute("noalias")
    return fn


def share(b, index, shares, n):
    """(lo, hi): share `index` of [0, n) cut into `shares` (a constant) equal shares, the last
    ones shorter or empty."""
    per = b.sdiv(b.add(n, i64(shares - 1)), i64(shares))
    lo = smin(b, b.mul(index, per), n)
    return lo, smin(b, b.add(lo, per), n)


def vector_call(b, name, *args):
    """llvm.<name> on vectors of the arguments' type (fma, maximum, ...), declared once."""
    vty = args[0].type
    suffix = f"v{vty.count}{'f64' if isinstance(vty.element, ir.DoubleType) else 'f32'}"
    full = f"llvm.{name}.{suffix}"
    fn = b.module.globals.get(full) or ir.Function(
        b.module, ir.FunctionType(vty, [vty] * len(args)), name=full)
    return b.call(fn, list(args))


def concat_vectors(b, parts):
    """One vector of `parts` (a power-of-two count of equal vectors) end to end."""
    while len(parts) > 1:
        width = parts[0].type.count
        mask = ir.Constant(ir.VectorType(ir.IntType(32), 2 * width), list(range(2 * width)))
        parts = [b.shuffle_vector(parts[i], parts[i + 1], mask) for i in range(0, len(parts), 2)]
    return parts[0]


def element_size(ty):
    """Bytes of a float element (its natural alignment)."""
    return 8 if isinstance(ty, ir.DoubleType) else 4


def splat(b, x, vty):
    """A vector of type `vty` with every lane x."""
    undef = ir.Constant(vty, ir.Undefined)
    ins = b.insert_element(undef, x, ir.Constant(ir.IntType(32), 0))
    return b.shuffle_vector(ins, undef, ir.Constant(ir.VectorType(ir.IntType(32), vty.count),
                                                    [0] * vty.count))


def entry_alloca(b, ty):
    """A slot at the start of the function's entry block, where LLVM promotes it to a
    register (an accumulator carried across loops)."""
    entry = b.function.entry_basic_block
    with b.goto_block(entry):
        b.position_at_start(entry)
        return b.alloca(ty)


def line_pieces(n, vw):
    """(first element, lanes) of vectors covering a line of `n` elements: vectors of `vw`
    lanes, then one per set bit of what is left (12 = 8 + 4), so there is no masked tail."""
    out, j, lanes = [], 0, vw
    while j < n:
        while lanes > n - j:
            lanes //= 2
        out.append((j, lanes))
        j += lanes
    return out


ACCUMULATORS = {64: 28, 32: 12, 16: 12}
"""Vector accumulators a kernel may keep in registers, by vector size in bytes: 32 zmm
registers leave room for the operands' vectors; 16 ymm or xmm do not hold more than 12
beside them."""


def accumulator_budget(itemsize, vw):
    return ACCUMULATORS.get(vw * itemsize, 12)
