"""Lowering a Plan to one LLVM module: a function per kernel over `noalias` pointers, and the
exported step function that calls them in order.

    i32 step(ptr bufs, ptr scalars)

`bufs[0]` is the arena, `bufs[i]` the i-th external array (inputs, parameters, state, constants,
outputs); `scalars` the float64 host scalars (learning rate, beta^t, ...). The step runs every
compute kernel, then checks that the loss is finite (else it returns 1) and that every gradient
is (else it returns 2 + the parameter's index), before the update kernels: parameters,
optimiser state, running statistics and counters are never written from a non-finite step."""
import numpy as np
from llvmlite import ir

from . import transcendental as tr
from .loops import I64, for_range, gep, i64
from .matmul import declare_gemm
from .plan import FiniteCheckKernel, GemmKernel, RandomKernel
from .scalar_codegen import emit_expressions

PTR = ir.PointerType()
I32 = ir.IntType(32)
REDUCE_FLAGS = ("reassoc", "contract")


def llvm_type(dtype):
    dtype = np.dtype(dtype)
    return {"float32": ir.FloatType(), "float64": ir.DoubleType(), "int64": ir.IntType(64),
            "int32": ir.IntType(32), "bool": ir.IntType(8), "uint8": ir.IntType(8),
            "int8": ir.IntType(8), "int16": ir.IntType(16)}[dtype.name]


def _convert(b, v, src, dst_ty):
    src = np.dtype(src)
    if src.kind == "f":
        if isinstance(dst_ty, ir.DoubleType) and src.itemsize == 4:
            return b.fpext(v, dst_ty)
        if isinstance(dst_ty, ir.FloatType) and src.itemsize == 8:
            return b.fptrunc(v, dst_ty)
        return v
    if src.kind in "bu":
        return b.uitofp(v, dst_ty)
    return b.sitofp(v, dst_ty)


def _collapse(shape, operand_strides):
    """Merge adjacent iteration dims that every operand walks contiguously, so loops are as
    few and as long as possible (the innermost one is what vectorises)."""
    dims = [(s, [st[d] for st in operand_strides]) for d, s in enumerate(shape) if s != 1]
    if not dims:
        return (), [() for _ in operand_strides]
    merged = [dims[0]]
    for s, sts in dims[1:]:
        ps, psts = merged[-1]
        if all(p == q * s for p, q in zip(psts, sts)):
            merged[-1] = (ps * s, sts)
        else:
            merged.append((s, sts))
    shape = tuple(s for s, _ in merged)
    strides = [tuple(sts[k] for _, sts in merged) for k in range(len(operand_strides))]
    return shape, strides


def _kernel_function(module, name, buffers):
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [PTR] * len(buffers)), name=name)
    fn.linkage = "internal"
    fn.attributes.add("nounwind")
    for a in fn.args:
        a.add_attribute("noalias")
    return fn


def _distinct_buffers(layouts):
    out = []
    for lay in layouts:
        if all(lay.buffer is not b for b in out):
            out.append(lay.buffer)
    return out


def emit_loop_kernel(module, kern):
    ty = llvm_type(kern.dtype)
    layouts = [lay for lay, _ in kern.inputs] + [lay for lay, _, _ in kern.outputs]
    buffers = _distinct_buffers(layouts)
    fn = _kernel_function(module, kern.name, buffers)
    arg = {id(buf): a for buf, a in zip(buffers, fn.args)}
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    shape, strides = _collapse(kern.shape, [lay.strides for lay in layouts])
    n_in = len(kern.inputs)
    if int(np.prod(kern.shape, dtype=np.int64)) == 0:
        b.ret_void()
        return fn, buffers

    for lay, _, mode in kern.outputs:
        if mode in ("sum", "max"):
            count = int(np.prod([s for s, st in zip(lay.shape, lay.strides) if st != 0],
                                dtype=np.int64))
            init = ir.Constant(ty, 0.0 if mode == "sum" else -np.inf)
            base = arg[id(lay.buffer)]
            for_range(b, 0, count, lambda i, base=base, off=lay.offset:
                      b.store(init, gep(b, base, b.add(i, i64(off)), ty)), name="init")

    def body(indices):
        def offset(lay, st):
            off = i64(lay.offset)
            for i, s in zip(indices, st):
                if s:
                    off = b.add(off, b.mul(i, i64(s)))
            return off
        env = {}
        for (lay, sym), st in zip(kern.inputs, strides[:n_in]):
            lty = llvm_type(lay.dtype)
            v = b.load(gep(b, arg[id(lay.buffer)], offset(lay, st), lty), typ=lty)
            env[sym] = _convert(b, v, lay.dtype, ty)
        values = emit_expressions(b, [e for _, e, _ in kern.outputs], env, ty)
        for (lay, _, mode), st, v in zip(kern.outputs, strides[n_in:], values):
            p = gep(b, arg[id(lay.buffer)], offset(lay, st), ty)
            if mode == "sum":
                v = b.fadd(b.load(p, typ=ty), v, flags=REDUCE_FLAGS)
            elif mode == "max":
                v = tr.call(b, "maximum", ty, b.load(p, typ=ty), v)
            b.store(v, p)

    def nest(depth, indices):
        if depth == len(shape):
            body(indices)
            return
        for_range(b, 0, shape[depth], lambda i: nest(depth + 1, indices + [i]),
                  name=f"d{depth}")
    nest(0, [])
    b.ret_void()
    return fn, buffers


MIX = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)


def emit_random_kernel(module, kern):
    """out[i] = 24 bits of splitmix64's finaliser over (key, counter, i), as a float in [0, 1)
    -- the same bits runtime.numpy_impls.random computes."""
    ty = llvm_type(kern.out.dtype)
    buffers = _distinct_buffers([kern.counter, kern.out])
    fn = _kernel_function(module, kern.name, buffers)
    arg = {id(buf): a for buf, a in zip(buffers, fn.args)}
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    cty = llvm_type(kern.counter.dtype)
    raw = b.load(gep(b, arg[id(kern.counter.buffer)], kern.counter.offset, cty), typ=cty)
    counter = b.fptosi(raw, I64) if np.dtype(kern.counter.dtype).kind == "f" else raw
    c1, c2, c3 = (ir.Constant(I64, m - 2 ** 64 if m >= 2 ** 63 else m) for m in MIX)
    base = b.add(b.mul(i64(kern.key % 2 ** 64 - (2 ** 64 if kern.key % 2 ** 64 >= 2 ** 63
                                                  else 0)), c1), b.mul(counter, c2))
    scale = ir.Constant(ty, 2.0 ** -24)

    def body(i):
        z = b.add(base, b.mul(i, c3))
        z = b.mul(b.xor(z, b.lshr(z, i64(30))), c2)
        z = b.mul(b.xor(z, b.lshr(z, i64(27))), c3)
        z = b.xor(z, b.lshr(z, i64(31)))
        u = b.fmul(b.uitofp(b.lshr(z, i64(40)), ty), scale)
        b.store(u, gep(b, arg[id(kern.out.buffer)], b.add(i, i64(kern.out.offset)), ty))
    count = int(np.prod(kern.out.shape, dtype=np.int64))
    if count:
        for_range(b, 0, count, body, name="r")
    b.ret_void()
    return fn, buffers


def emit_finite_check(module, kern):
    """flag = sum of (x - x) over the gradient, accumulated in its own type (so the loop
    vectorises like any sum) and stored as a double."""
    src = kern.src
    ty = llvm_type(src.dtype)
    buffers = _distinct_buffers([src, kern.flag])
    fn = _kernel_function(module, kern.name, buffers)
    arg = {id(buf): a for buf, a in zip(buffers, fn.args)}
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    acc = b.alloca(ty, name="acc")
    b.store(ir.Constant(ty, 0.0), acc)
    shape, (strides,) = _collapse(src.shape, [src.strides])

    def body(indices):
        off = i64(src.offset)
        for i, st in zip(indices, strides):
            if st:
                off = b.add(off, b.mul(i, i64(st)))
        x = b.load(gep(b, arg[id(src.buffer)], off, ty), typ=ty)
        b.store(b.fadd(b.load(acc, typ=ty), b.fsub(x, x), flags=REDUCE_FLAGS), acc)

    def nest(depth, indices):
        if depth == len(shape):
            body(indices)
            return
        for_range(b, 0, shape[depth], lambda i: nest(depth + 1, indices + [i]),
                  name=f"d{depth}")
    if int(np.prod(src.shape, dtype=np.int64)):
        nest(0, [])
    total = b.load(acc, typ=ty)
    if not isinstance(ty, ir.DoubleType):
        total = b.fpext(total, ir.DoubleType())
    b.store(total, gep(b, arg[id(kern.flag.buffer)], kern.flag.offset, ir.DoubleType()))
    b.ret_void()
    return fn, buffers


EMITTERS = {RandomKernel: emit_random_kernel, FiniteCheckKernel: emit_finite_check}


def _branch_unless(b, step, ok, status, what):
    """Return `status` from the step unless `ok`; go on in a new block otherwise."""
    bad = step.append_basic_block(f"nonfinite_{what}")
    good = step.append_basic_block(f"{what}_finite")
    b.cbranch(ok, good, bad)
    b.position_at_end(bad)
    b.ret(I32(status))
    b.position_at_end(good)


def lower(plan, step_name, vector_width):
    """The LLVM module (llvmlite.ir) of a Plan, exporting `step_name`."""
    module = ir.Module(name=step_name)
    step = ir.Function(module, ir.FunctionType(I32, [PTR, PTR]), name=step_name)
    step.attributes.add("nounwind")
    bufs_arg, scalars_arg = step.args
    bufs_arg.name, scalars_arg.name = "bufs", "scalars"
    b = ir.IRBuilder(step.append_basic_block("entry"))
    arena = b.load(gep(b, bufs_arg, 0, PTR), typ=PTR, name="arena")
    ext = {}

    def base(buf):
        if buf.kind == "scalars":
            return scalars_arg
        if buf.kind == "arena":
            return b.gep(arena, [i64(buf.offset)], inbounds=True, source_etype=ir.IntType(8))
        if buf.slot not in ext:
            ext[buf.slot] = b.load(gep(b, bufs_arg, buf.slot, PTR), typ=PTR,
                                   name=f"ext{buf.slot}")
        return ext[buf.slot]

    def at(lay):
        ty = llvm_type(lay.dtype)
        return gep(b, base(lay.buffer), lay.offset, ty)

    def call_kernel(kern):
        if isinstance(kern, GemmKernel):
            dtype = np.dtype(kern.out.dtype)
            fn = declare_gemm(module, llvm_type(dtype), vector_width[dtype])
            b.call(fn, [at(kern.a), at(kern.b), at(kern.out), base(kern.pack_a),
                        base(kern.pack_b), base(kern.scratch)]
                   + [i64(v) for v in (kern.m, kern.n, kern.k)]
                   + [i64(v) for v in kern.a.strides + kern.b.strides])
        else:
            fn, buffers = EMITTERS.get(type(kern), emit_loop_kernel)(module, kern)
            b.call(fn, [base(buf) for buf in buffers])

    for kern in plan.kernels:
        call_kernel(kern)
    if plan.loss_layout is not None:
        ty = llvm_type(plan.loss_layout.dtype)
        loss = b.load(at(plan.loss_layout), typ=ty, name="loss")
        _branch_unless(b, step, b.fcmp_ordered("<", tr.call(b, "fabs", ty, loss),
                                               ir.Constant(ty, np.inf)), 1, "loss")
    for kern in plan.checks:
        flag = b.load(at(kern.flag), typ=ir.DoubleType(), name=f"finite{kern.index}")
        _branch_unless(b, step, b.fcmp_ordered("==", flag, ir.Constant(ir.DoubleType(), 0.0)),
                       2 + kern.index, f"gradient{kern.index}")
    for kern in plan.update_kernels:
        call_kernel(kern)
    b.ret(I32(0))
    return module

