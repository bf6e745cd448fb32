"""Native convolutions: implicit im2col in blocks, into the GEMM.

A convolution is a matrix product per sample and group -- the weight (O/g x R, R = C/g times
the window size) times the patch matrix (R x output positions) -- so it runs on the same
register-tiled GEMM as a Dense layer (compiler.matmul's one-thread entry point). The patch
matrix is never built whole: each task copies a block of whole output lines' patches into its
own scratch (PATCH_BYTES, so the block stays in L2 while the GEMM packs it) and multiplies
that block. The three members of the family (compiler.window_geometry) share the walk:

    forward    y[s, g] block      = W[g] @ patches(x[s, g], block)
    transpose  patches            = W[g]^T @ dy[s, g] block, added back into dx[s, g]
    filter     partials[chunk, g] += dy[s, g] block @ patches(x[s, g], block)^T

Samples are split across the pool's threads in `tasks` shares. The filter gradient sums over
samples, so it sums in FILTER_CHUNKS fixed chunks of samples, each into its own partial
result, added in chunk order afterwards: the same numbers on one thread or many."""
import math

import numpy as np
from llvmlite import ir

from . import conv_direct, conv_filter_direct, thread_pool
from .loops import I64, for_range, gep, i64, internal_function, share, smin
from .matmul import EPILOGUE_TYPE, NC, declare_serial_gemm, pack_elements

PATCH_BYTES = 96 * 1024
"""A task's block of patches (well inside a 512 KiB L2 beside the GEMM's packed panels)."""
FILTER_CHUNKS = 8
MAX_TASKS = 8
ALIGN_ELEMENTS = 16
PTR = ir.PointerType()


def block_lines(g, itemsize):
    """Output lines (one (d, h) each, `g.out[2]` positions long) per block of patches."""
    lines = g.out[0] * g.out[1]
    return max(1, min(lines, PATCH_BYTES // max(1, g.patch_rows() * g.out[2] * itemsize)))


def _gemm_sizes(g, mode, cols):
    """(M, N, K) of one block's product."""
    og, rows = g.o // g.groups, g.patch_rows()
    return {"forward": (og, cols, rows), "transpose": (rows, cols, og),
            "filter": (og, rows, cols)}[mode]


def _round(n):
    return -(-n // ALIGN_ELEMENTS) * ALIGN_ELEMENTS


def task_regions(g, mode, dtype, vw):
    """Element offsets of a task's patches, packed A and packed B, and its total size."""
    dtype = np.dtype(dtype)
    cols = block_lines(g, dtype.itemsize) * g.out[2]
    pa, pb = pack_elements(*_gemm_sizes(g, mode, cols), vw, dtype)
    patches = _round(g.patch_rows() * cols)
    return 0, patches, patches + _round(pa), patches + _round(pa) + _round(pb)


def direct(g, mode, dtype, vw):
    """Whether the kernel is computed without patches (compiler.conv_direct and
    compiler.conv_filter_direct)."""
    if mode == "filter":
        return conv_filter_direct.applies(g, np.dtype(dtype).itemsize, vw)
    return conv_direct.plan(g, mode) is not None


def _work_elements(g, mode, dtype, vw):
    """A task's scratch: its padded input copy on the direct paths (none for the weight
    gradient), else its patch block and packing buffers."""
    plan = conv_direct.plan(g, mode)
    if plan is not None:
        return _round(conv_direct.scratch_elements(plan))
    return 0 if direct(g, mode, dtype, vw) else task_regions(g, mode, dtype, vw)[3]


def conv_buffers(g, mode, dtype, vw, threads):
    """(work bytes, partials bytes, tasks) a ConvKernel needs."""
    dtype = np.dtype(dtype)
    tasks = max(1, min(threads, MAX_TASKS))
    total = _work_elements(g, mode, dtype, vw)
    partials = FILTER_CHUNKS * g.o * g.patch_rows() * dtype.itemsize if mode == "filter" else 0
    return tasks * total * dtype.itemsize, partials, tasks


def _floor_div(b, a, s):
    """floor(a / s) for a constant s > 0 and any sign of a (sdiv truncates towards zero)."""
    neg = b.icmp_signed("<", a, i64(0))
    return b.sdiv(b.sub(a, b.select(neg, i64(s - 1), i64(0))), i64(s))


def _clamp(b, v, lo, hi):
    v = b.select(b.icmp_signed("<", v, lo), lo, v)
    return smin(b, v, hi)


def _walk_patches(b, g, l0, l1, ty, row_body):
    """For every patch row r (channel c of the group, window offset k) and output line l in
    [l0, l1): row_body(r, l, valid, in_row, lo, hi, offset) where `valid` says the line's
    (d, h) input row exists, `in_row` is its element offset in one group's input, and output
    positions [lo, hi) of the line read input column w * stride + offset."""
    (_, oh, ow), (id_, ih, iw) = g.out, g.inp
    cg = g.c // g.groups
    kd_n, kh_n, kw_n = g.window
    s0, s1, s2 = g.stride
    d0, d1, d2 = g.dilation
    p0, p1, p2 = g.low

    def oriented(k, n):
        return k if g.flipped else b.sub(i64(n - 1), k)

    def per_row(c, kd, kh, kw):
        r = b.add(b.mul(b.add(b.mul(b.add(b.mul(c, i64(kd_n)), kd), i64(kh_n)), kh),
                        i64(kw_n)), kw)
        kd2, kh2, kw2 = oriented(kd, kd_n), oriented(kh, kh_n), oriented(kw, kw_n)
        offset = b.sub(b.mul(kw2, i64(d2)), i64(p2))
        lo = _clamp(b, _floor_div(b, b.add(b.neg(offset), i64(s2 - 1)), s2), i64(0), i64(ow))
        hi = _clamp(b, _floor_div(b, b.add(b.sub(i64(iw), offset), i64(s2 - 1)), s2), lo,
                    i64(ow))

        def per_line(line):
            od_, oh_ = b.sdiv(line, i64(oh)), b.srem(line, i64(oh))
            at_d = b.sub(b.add(b.mul(od_, i64(s0)), b.mul(kd2, i64(d0))), i64(p0))
            at_h = b.sub(b.add(b.mul(oh_, i64(s1)), b.mul(kh2, i64(d1))), i64(p1))
            valid = b.and_(b.and_(b.icmp_signed(">=", at_d, i64(0)),
                                  b.icmp_signed("<", at_d, i64(id_))),
                           b.and_(b.icmp_signed(">=", at_h, i64(0)),
                                  b.icmp_signed("<", at_h, i64(ih))))
            in_row = b.add(b.mul(b.add(b.mul(c, i64(id_)), at_d), i64(ih * iw)),
                           b.mul(at_h, i64(iw)))
            row_body(r, b.sub(line, l0), valid, in_row, lo, hi, offset)
        for_range(b, l0, l1, per_line, name="line")
    for_range(b, 0, cg, lambda c: for_range(b, 0, kd_n, lambda kd: for_range(
        b, 0, kh_n, lambda kh: for_range(b, 0, kw_n, lambda kw: per_row(c, kd, kh, kw),
                                         name="kw"), name="kh"), name="kd"), name="c")


def emit_patches(module, g, ty, name):
    """void name(ptr x_group, ptr patches, i64 l0, i64 l1): the patch block of lines [l0, l1),
    row-major (rows x (l1 - l0) * ow), zeros where the window reads padding."""
    fn = internal_function(module, name, [PTR, PTR, I64, I64], noalias=2)
    x, dst, l0, l1 = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    ow, s2 = g.out[2], g.stride[2]
    cols = b.mul(b.sub(l1, l0), i64(ow))
    zero = ir.Constant(ty, 0.0)

    def row(r, line, valid, in_row, lo, hi, offset):
        out = gep(b, dst, b.add(b.mul(r, cols), b.mul(line, i64(ow))), ty)
        with b.if_else(valid) as (inside, outside):
            with inside:
                src = gep(b, x, in_row, ty)
                for_range(b, 0, lo, lambda w: b.store(zero, gep(b, out, w, ty)), name="zlo")
                for_range(b, lo, hi, lambda w: b.store(b.load(gep(
                    b, src, b.add(b.mul(w, i64(s2)), offset), ty), typ=ty), gep(b, out, w, ty)),
                    name="copy")
                for_range(b, hi, ow, lambda w: b.store(zero, gep(b, out, w, ty)), name="zhi")
            with outside:
                for_range(b, 0, ow, lambda w: b.store(zero, gep(b, out, w, ty)), name="zrow")
    _walk_patches(b, g, l0, l1, ty, row)
    b.ret_void()
    return fn


def emit_unpatches(module, g, ty, name):
    """void name(ptr patches, ptr dx_group, i64 l0, i64 l1): add each patch element back into
    the input element it was read from (the adjoint of emit_patches), in a fixed order."""
    fn = internal_function(module, name, [PTR, PTR, I64, I64], noalias=2)
    src, dx, l0, l1 = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    ow, s2 = g.out[2], g.stride[2]
    cols = b.mul(b.sub(l1, l0), i64(ow))

    def row(r, line, valid, in_row, lo, hi, offset):
        patch = gep(b, src, b.add(b.mul(r, cols), b.mul(line, i64(ow))), ty)
        with b.if_then(valid):
            target = gep(b, dx, in_row, ty)

            def add(w):
                p = gep(b, target, b.add(b.mul(w, i64(s2)), offset), ty)
                b.store(b.fadd(b.load(p, typ=ty), b.load(gep(b, patch, w, ty), typ=ty)), p)
            for_range(b, lo, hi, add, name="add")
    _walk_patches(b, g, l0, l1, ty, row)
    b.ret_void()
    return fn


def _zero(b, ptr, count, ty):
    for_range(b, 0, count, lambda e: b.store(ir.Constant(ty, 0.0), gep(b, ptr, e, ty)),
              name="zero")


def emit_task(module, kern, name, ty, vw):
    """void name.task(ptr args, i64 t): task t of the kernel; args holds the first operand,
    the second, the output, the work scratch, the partials and the batch length."""
    g, mode = kern.geometry, kern.mode
    dtype = np.dtype(kern.out.dtype)
    is_f32 = dtype.itemsize == 4
    direct_path, plan = direct(g, mode, dtype, vw), conv_direct.plan(g, mode)
    if not direct_path:
        gemm = declare_serial_gemm(module, ty, vw)
        patches_fn = emit_patches(module, g, ty, name + ".patches") if mode != "transpose" \
            else None
        unpatch_fn = emit_unpatches(module, g, ty, name + ".unpatch") if mode == "transpose" \
            else None
    task = internal_function(module, name + ".task", [PTR, I64])
    words, t = task.args
    b = ir.IRBuilder(task.append_basic_block("entry"))
    first, second, out, work, partials = (
        b.inttoptr(b.load(gep(b, words, k, I64), typ=I64), PTR) for k in range(5))
    n = b.load(gep(b, words, 5, I64), typ=I64)
    mine = gep(b, work, b.mul(t, i64(_work_elements(g, mode, dtype, vw))), ty)
    if not direct_path:
        patches, pack_a, pack_b = (gep(b, mine, off, ty)
                                   for off in task_regions(g, mode, dtype, vw)[:3])
    og, rows, cg = g.o // g.groups, g.patch_rows(), g.c // g.groups
    plane_in = g.inp[0] * g.inp[1] * g.inp[2]
    positions = g.out[0] * g.out[1] * g.out[2]
    lines, ow = g.out[0] * g.out[1], g.out[2]
    step = block_lines(g, dtype.itemsize)
    no_epilogue = [ir.Constant(ir.PointerType(EPILOGUE_TYPE), None), ir.Constant(PTR, None),
                   i64(0), i64(0)]

    def product(a, bm, c, m, nn, k, strides, ldc, accumulate):
        """C (ldc apart) = or += A @ B, A m x k and B k x n at `strides` (sam, sak, sbk, sbn)."""
        b.call(gemm, [a, bm, c, pack_a, pack_b] + [i64(v) for v in (m, nn, k, *strides, ldc)]
               + [i64(NC[is_f32])] + no_epilogue + [i64(accumulate)])

    def finish(s):
        """The epilogue (compiler.epilogue) on sample s, when the kernel has one."""
        if kern.epilogue is not None:
            epi = b.inttoptr(b.load(gep(b, words, 6, I64), typ=I64), ir.PointerType(EPILOGUE_TYPE))
            epi_args = b.inttoptr(b.load(gep(b, words, 7, I64), typ=I64), PTR)
            b.call(epi, [epi_args, s, i64(0), i64(1), i64(g.o)])

    def sample(s, part=None):
        x_s = gep(b, first, b.mul(s, i64(g.c * plane_in)), ty)
        if mode == "transpose":
            dx_s = gep(b, out, b.mul(s, i64(g.c * plane_in)), ty)
            _zero(b, dx_s, g.c * plane_in, ty)

        def group(gi):
            x_g = gep(b, x_s, b.mul(gi, i64(cg * plane_in)), ty)
            w_g = gep(b, second, b.mul(gi, i64(og * rows)), ty)

            def block(l0):
                l1 = smin(b, b.add(l0, i64(step)), i64(lines))
                cols = b.mul(b.sub(l1, l0), i64(ow))
                at = b.add(b.mul(b.add(b.mul(s, i64(g.groups)), gi), i64(og * positions)),
                           b.mul(l0, i64(ow)))
                if mode == "forward":
                    b.call(patches_fn, [x_g, patches, l0, l1])
                    product(w_g, patches, gep(b, out, at, ty), og, cols, rows,
                            (rows, 1, cols, 1), positions, 0)
                elif mode == "transpose":       # first is dy, second the weight
                    product(w_g, gep(b, first, at, ty), patches, rows, cols, og,
                            (1, rows, positions, 1), cols, 0)
                    b.call(unpatch_fn, [patches, gep(b, dx_s, b.mul(gi, i64(cg * plane_in)),
                                                     ty), l0, l1])
                else:                           # first is x, second dy
                    b.call(patches_fn, [x_g, patches, l0, l1])
                    product(gep(b, second, at, ty), patches, gep(b, part, b.mul(
                        gi, i64(og * rows)), ty), og, rows, cols, (positions, 1, 1, cols), rows, 1)
            for_range(b, 0, lines, block, step=step, name="block")
        for_range(b, 0, g.groups, group, name="group")
        finish(s)

    if plan is not None:
        def direct_sample(s):
            x_s = gep(b, first, b.mul(s, i64(plan.groups * plan.cin * math.prod(plan.src))), ty)
            if plan.padded():
                conv_direct.copy_padded(b, plan, x_s, mine, ty)
                x_s = mine
            y_s = gep(b, out, b.mul(s, i64(plan.groups * plan.cout * math.prod(plan.out))), ty)
            conv_direct.emit_sample(b, plan, x_s, second, y_s, ty, vw)
            finish(s)
        for_range(b, *share(b, t, kern.tasks, n), direct_sample, name="s")
    elif mode == "filter":
        def chunk(j):
            part = gep(b, partials, b.mul(j, i64(g.o * rows)), ty)
            if direct_path:
                conv_filter_direct.emit_chunk(b, g, first, second, part,
                                              *share(b, j, FILTER_CHUNKS, n), ty, vw)
                return
            _zero(b, part, g.o * rows, ty)
            for_range(b, *share(b, j, FILTER_CHUNKS, n), lambda s: sample(s, part), name="s")
        tasks = kern.tasks
        j0 = b.sdiv(b.mul(t, i64(FILTER_CHUNKS)), i64(tasks))
        j1 = b.sdiv(b.mul(b.add(t, i64(1)), i64(FILTER_CHUNKS)), i64(tasks))
        for_range(b, j0, j1, chunk, name="chunk")
    else:
        for_range(b, *share(b, t, kern.tasks, n), sample, name="s")
    b.ret_void()
    return task


def emit_combine(module, kern, name, ty):
    """void name.combine(ptr partials, ptr dw): dw = the chunks' partial results added in
    chunk order."""
    fn = internal_function(module, name + ".combine", [PTR, PTR], noalias=2)
    partials, dw = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    size = kern.geometry.o * kern.geometry.patch_rows()

    def element(e):
        total = b.load(gep(b, partials, e, ty), typ=ty)
        for j in range(1, FILTER_CHUNKS):
            total = b.fadd(total, b.load(gep(b, partials, b.add(e, i64(j * size)), ty), typ=ty))
        b.store(total, gep(b, dw, e, ty))
    for_range(b, 0, size, element, name="e")
    b.ret_void()
    return fn


def call_conv(body, kern, ty, vw):
    """The kernel's call in the step: its tasks, split across the pool when the pool says it
    pays, then (filter gradient) the chunks' sum."""
    task = body.function(kern, lambda module, k, name: emit_task(module, k, name, ty, vw))
    loops = ".task" if direct(kern.geometry, kern.mode, kern.out.dtype, vw) else \
        ".unpatch" if kern.mode == "transpose" else ".patches"
    kern.function = task.name[:-len(".task")] + loops      # its loops (and the GEMM's)
    n = body.extent(kern, kern.geometry.n, 0 in kern.batch)
    partials = body.base(kern.partials) if kern.partials is not None else \
        ir.Constant(PTR, None)
    values = [body.at(kern.first), body.at(kern.second), body.at(kern.out),
              body.base(kern.work), partials, n] + (
        list(body.epilogue(kern)) if kern.epilogue is not None else [])     # words 6 and 7
    body.run_tasks(task, values, kern.tasks, kern.flops(), sum(
        lay.nbytes() for lay in kern.layouts()), thread_pool.WORK_KINDS.index("flops"))
    if kern.mode == "filter":
        combine = body.function(kern, lambda module, k, name: emit_combine(module, k, name, ty),
                                "combine")
        body.b.call(combine, [partials, body.at(kern.out)])
