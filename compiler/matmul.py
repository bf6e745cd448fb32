"""Matrix product C = A @ B as a register-tiled, packed GEMM (the BLIS loop structure).

A and B are read through arbitrary (row, column) strides, so transposed operands cost nothing
extra: packing copies a KC x NC block of B into NR-wide column panels and an MC x KC block of A
into MR-high row panels (zero-padded at the edges). The micro-kernel holds an MR x NR tile of C
in MR * NR/VW vector accumulators across the whole k loop, broadcasting one A element and FMAing
it against NR/VW vectors of B. With AVX2 float32 that is 6 x 16: 12 ymm accumulators."""
from llvmlite import ir

from . import thread_pool
from .loops import I64, element_size, for_range, gep, i64, smin, splat, vector_call

MR = 6
KC = 256
MC = 72
NC = {True: 256, False: 128}     # by "is float32": a packed B block stays within L2


def _micro_kernel(module, name, ty, vw):
    """void uk(ptr Ap, ptr Bp, ptr C, i64 ldc, i64 kc, i1 acc, i64 rows, i64 cols)."""
    nr = 2 * vw
    vty = ir.VectorType(ty, vw)
    ptr = ir.PointerType()
    fnty = ir.FunctionType(ir.VoidType(), [ptr, ptr, ptr, I64, I64, ir.IntType(1), I64, I64])
    fn = ir.Function(module, fnty, name=name)
    fn.linkage = "internal"
    ap, bp, c, ldc, kc, acc_flag, rows, cols = fn.args
    for a in (ap, bp, c):
        a.add_attribute("noalias")
    align = element_size(ty)
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    entry = b.block
    loop = fn.append_basic_block("k")
    out = fn.append_basic_block("store")
    b.branch(loop)
    b.position_at_end(loop)
    k = b.phi(I64, name="k")
    k.add_incoming(i64(0), entry)
    zero = ir.Constant(vty, [0.0] * vw)
    acc = [[b.phi(vty) for _ in range(2)] for _ in range(MR)]
    for row in acc:
        for p in row:
            p.add_incoming(zero, entry)
    bvec = [b.load(gep(b, bp, b.add(b.mul(k, i64(nr)), i64(j * vw)), ty), typ=vty, align=align)
            for j in range(2)]
    new = []
    for r in range(MR):
        a = b.load(gep(b, ap, b.add(b.mul(k, i64(MR)), i64(r)), ty), typ=ty, align=align)
        av = splat(b, a, vty)
        new.append([vector_call(b, "fma", av, bvec[j], acc[r][j]) for j in range(2)])
    for r in range(MR):
        for j in range(2):
            acc[r][j].add_incoming(new[r][j], loop)
    k_next = b.add(k, i64(1))
    k.add_incoming(k_next, loop)
    b.cbranch(b.icmp_signed("<", k_next, kc), loop, out)

    b.position_at_end(out)
    full = b.and_(b.icmp_signed("==", rows, i64(MR)), b.icmp_signed("==", cols, i64(nr)))
    fast = fn.append_basic_block("full")
    edge = fn.append_basic_block("edge")
    done = fn.append_basic_block("done")
    b.cbranch(full, fast, edge)

    b.position_at_end(fast)
    for r in range(MR):
        for j in range(2):
            p = gep(b, c, b.add(b.mul(i64(r), ldc), i64(j * vw)), ty)
            old = b.load(p, typ=vty, align=align)
            v = b.select(acc_flag, b.fadd(old, new[r][j]), new[r][j])
            b.store(v, p, align=align)
    b.branch(done)

    b.position_at_end(edge)
    tile = b.alloca(ty, size=MR * nr)
    for r in range(MR):
        for j in range(2):
            for lane in range(vw):
                v = b.extract_element(new[r][j], ir.Constant(ir.IntType(32), lane))
                b.store(v, gep(b, tile, r * nr + j * vw + lane, ty))

    def copy_row(i):
        def copy_col(j):
            src = b.load(gep(b, tile, b.add(b.mul(i, i64(nr)), j), ty), typ=ty)
            dst = gep(b, c, b.add(b.mul(i, ldc), j), ty)
            old = b.load(dst, typ=ty)
            b.store(b.select(acc_flag, b.fadd(old, src), src), dst)
        for_range(b, 0, cols, copy_col, name="j")
    for_range(b, 0, rows, copy_row, name="i")
    b.branch(done)
    b.position_at_end(done)
    b.ret_void()
    return fn


def _blocking(M, N, K, vw, is_f32):
    nr = 2 * vw
    kc = min(K, KC)
    nc = min(-(-N // nr) * nr, NC[is_f32])
    mc = min(-(-M // MR) * MR, MC)
    return kc, nc, mc


def pack_elements(M, N, K, vw, dtype, threads=1):
    """Elements of the packing buffers (A blocks, B blocks) the GEMM for these sizes needs:
    one share per thread when the product is large enough that it may be split."""
    kc, nc, mc = _blocking(M, N, K, vw, dtype.itemsize == 4)
    shares = min(threads, MAX_THREADS) if 2 * M * N * K >= MIN_SPLIT_FLOPS else 1
    return shares * mc * kc, shares * kc * nc


def gemm_name(ty, vw):
    return f"gf_gemm_{'f32' if isinstance(ty, ir.FloatType) else 'f64'}_x{vw}"


MAX_THREADS = 16
N_ARGS = 19
SCRATCH_BYTES = MAX_THREADS * N_ARGS * 8   # each block's arguments
MIN_SPLIT_FLOPS = 1 << 16
"""Products below this never split (their packing buffers have one share); above it the thread
pool decides at run time (compiler.thread_pool, gf_pool_ways) from the measured cost of a
split."""


EPILOGUE_TYPE = ir.FunctionType(ir.VoidType(), [ir.PointerType()] + [I64] * 4)
"""void epilogue(ptr args, i64 row0, i64 col0, i64 rows, i64 cols): run on each block of C
as soon as it is final (compiler.epilogue)."""


def _gemm_type():
    """(A, B, C, packA, packB, scratch, M, N, K, sam, sak, sbk, sbn, ldc, epilogue, its args)"""
    ptr = ir.PointerType()
    return ir.FunctionType(ir.VoidType(), [ptr] * 6 + [I64] * 8
                           + [ir.PointerType(EPILOGUE_TYPE), ptr])


def _serial_type():
    """(A, B, C, packA, packB, M, N, K, sam, sak, sbk, sbn, ldc, nc_cap, epilogue, its args,
    row0, col0, accumulate): row0 and col0 place this C in the whole product's, for the
    epilogue; accumulate != 0 adds the product to C instead of storing it."""
    ptr = ir.PointerType()
    return ir.FunctionType(ir.VoidType(), [ptr] * 5 + [I64] * 9
                           + [ir.PointerType(EPILOGUE_TYPE), ptr, I64, I64, I64])


def serial_name(ty, vw):
    """The one-thread GEMM, exported from the library for kernels that run many small products
    inside their own split (compiler.convolution): no pool, per-call packing buffers."""
    return gemm_name(ty, vw) + "_serial"


def declare_serial_gemm(module, ty, vw):
    name = serial_name(ty, vw)
    if name in module.globals:
        return module.globals[name]
    return ir.Function(module, _serial_type(), name=name)


def declare_gemm(module, ty, vw):
    """Declare the shared GEMM in a step's module; its body lives in the GEMM library object
    (`gemm_library`), compiled once per process and linked into every engine."""
    name = gemm_name(ty, vw)
    if name in module.globals:
        return module.globals[name]
    return ir.Function(module, _gemm_type(), name=name)


def threads_symbol(ty, vw):
    """The library's i64 global: how many shares of the packing buffers a step planned (the
    most ways a product may be split)."""
    return gemm_name(ty, vw) + "_threads"


def gemm_library(ty, vw):
    """A module defining `void gemm(ptr A, ptr B, ptr C, ptr packA, ptr packB, ptr scratch,
    i64 M, N, K, sam, sak, sbk, sbn, ldc)`: C[M,N] (row-major, rows ldc apart) =
    A[M,K] @ B[K,N], with
    A and B read at element strides (sam, sak) and (sbk, sbn). One function serves every
    product of a dtype. A product the thread pool says to split is cut into column blocks (or
    row blocks when M > N: each block then packs all of B, the smaller operand), one per
    thread, each packing into its own share of the packing buffers (a B block as large as in a
    serial product: each core has its own L2 here -- measured on mlp-wide's products, halving
    the blocks for a shared L2 lost 2-5%). Every element of C is
    summed in the same order whatever the split, so the result does not depend on the threads."""
    module = ir.Module(name=gemm_name(ty, vw))
    serial = _define_gemm(module, serial_name(ty, vw), ty, vw)
    _define_parallel(module, gemm_name(ty, vw), serial, ty, vw)
    return module


def _define_parallel(module, name, serial, ty, vw):
    """gemm(...) = ask the pool how many ways to split, write each block's arguments into the
    scratch, and run the blocks as one pool task."""
    ptr = ir.PointerType()
    nr = 2 * vw
    is_f32 = isinstance(ty, ir.FloatType)
    threads = ir.GlobalVariable(module, I64, name=threads_symbol(ty, vw))
    threads.initializer = i64(1)
    task = ir.Function(module, thread_pool.TASK_TYPE, name=name + ".block")
    task.linkage = "internal"
    tb = ir.IRBuilder(task.append_basic_block("entry"))
    base = tb.mul(task.args[1], i64(N_ARGS))
    kinds = [ptr] * 5 + [I64] * 9 + [ir.PointerType(EPILOGUE_TYPE), ptr, I64, I64, I64]
    tb.call(serial, [tb.load(gep(tb, task.args[0], tb.add(base, i64(i)), I64), typ=kind)
                     for i, kind in enumerate(kinds)])
    tb.ret_void()

    fn = ir.Function(module, _gemm_type(), name=name)
    A, B, C, PA, PB, scratch, M, N, K, sam, sak, sbk, sbn, ldc, epi, epi_args = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    flops = b.mul(b.mul(b.mul(M, N), K), i64(2))
    size = 4 if is_f32 else 8
    data = b.mul(b.add(b.mul(M, N), b.sdiv(b.add(b.mul(M, K), b.mul(K, N)), i64(2))), i64(size))
    ways = b.call(thread_pool.declare_ways(module),
                  [flops, data, i64(thread_pool.WORK_KINDS.index("flops"))])
    t = smin(b, smin(b, b.load(threads, typ=I64), ways), MAX_THREADS)
    parallel = b.and_(b.icmp_signed(">", t, i64(1)),
                      b.icmp_signed(">=", flops, i64(MIN_SPLIT_FLOPS)))
    par_bb, ser_bb = fn.append_basic_block("parallel"), fn.append_basic_block("serial")
    b.cbranch(parallel, par_bb, ser_bb)
    b.position_at_end(ser_bb)
    b.call(serial, [A, B, C, PA, PB, M, N, K, sam, sak, sbk, sbn, ldc, i64(NC[is_f32]),
                    epi, epi_args, i64(0), i64(0), i64(0)])
    b.ret_void()

    b.position_at_end(par_bb)
    pa_size, pb_size = _pack_sizes_ir(b, M, N, K, vw, is_f32)
    by_cols = b.icmp_signed(">=", N, M)
    unit = b.select(by_cols, i64(nr), i64(MR))
    extent = b.select(by_cols, N, M)
    units = b.sdiv(b.add(extent, b.sub(unit, i64(1))), unit)
    per = b.mul(b.sdiv(b.add(units, b.sub(t, i64(1))), t), unit)   # block length
    count = b.sdiv(b.add(extent, b.sub(per, i64(1))), per)          # blocks actually used

    def block_args(i):
        start = b.mul(i, per)
        length = smin(b, per, b.sub(extent, start))
        a_off = b.select(by_cols, i64(0), b.mul(start, sam))
        b_off = b.select(by_cols, b.mul(start, sbn), i64(0))
        c_off = b.select(by_cols, start, b.mul(start, ldc))
        m = b.select(by_cols, M, length)
        n = b.select(by_cols, length, N)
        return [gep(b, A, a_off, ty), gep(b, B, b_off, ty), gep(b, C, c_off, ty),
                gep(b, PA, b.mul(i, pa_size), ty), gep(b, PB, b.mul(i, pb_size), ty),
                m, n, K, sam, sak, sbk, sbn, ldc, i64(NC[is_f32]), epi, epi_args,
                b.select(by_cols, i64(0), start), b.select(by_cols, start, i64(0)), i64(0)]

    def write_args(i):
        for k, v in enumerate(block_args(i)):
            b.store(v, gep(b, scratch, b.add(b.mul(i, i64(N_ARGS)), i64(k)), I64))
    for_range(b, 0, count, write_args, name="block")
    b.call(thread_pool.declare_run(module), [task, scratch, count])
    b.ret_void()
    return fn


def _pack_sizes_ir(b, M, N, K, vw, is_f32):
    """The per-thread packing sizes (elements), as pack_elements computes them."""
    nr = 2 * vw
    kc = smin(b, K, KC)
    nc = smin(b, b.mul(b.sdiv(b.add(N, i64(nr - 1)), i64(nr)), i64(nr)), NC[is_f32])
    mc = smin(b, b.mul(b.sdiv(b.add(M, i64(MR - 1)), i64(MR)), i64(MR)), MC)
    return b.mul(mc, kc), b.mul(kc, nc)


def _full_or_edge(b, full, contiguous, kc, per_k, contiguous_rows, name):
    """Pack one panel: without bounds checks when it lies inside the matrix (every panel but
    the last; with whole vectors when its rows are also contiguous), else with the checks
    that zero-fill past the edge."""
    with b.if_else(full) as (inside, edge):
        with inside:
            if contiguous is None:
                for_range(b, 0, kc, lambda k: per_k(k, False), name=name)
            else:
                with b.if_else(contiguous) as (dense, strided):
                    with dense:
                        for_range(b, 0, kc, contiguous_rows, name=name + "v")
                    with strided:
                        for_range(b, 0, kc, lambda k: per_k(k, False), name=name)
        with edge:
            for_range(b, 0, kc, lambda k: per_k(k, True), name=name + "e")


def _define_gemm(module, name, ty, vw):
    nr = 2 * vw
    vty = ir.VectorType(ty, vw)
    align = element_size(ty)
    mc_cap = MC
    uk = _micro_kernel(module, name + ".uk", ty, vw)
    fn = ir.Function(module, _serial_type(), name=name)
    A, B, C, PA, PB, M, N, K, sam, sak, sbk, sbn, ldc, nc_cap_arg, epi, epi_args, r0, c0, \
        accumulate = fn.args
    for a in fn.args[:5]:
        a.add_attribute("noalias")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    zero = ir.Constant(ty, 0.0)
    kc_max = smin(b, K, KC)
    nc_max = smin(b, b.mul(b.sdiv(b.add(N, i64(nr - 1)), i64(nr)), i64(nr)), nc_cap_arg)
    mc_max = smin(b, b.mul(b.sdiv(b.add(M, i64(MR - 1)), i64(MR)), i64(MR)), mc_cap)
    m_last = b.sub(M, i64(1))

    def jc_body(jc):
        nc = smin(b, nc_max, b.sub(N, jc))

        def pc_body(pc):
            kc = smin(b, kc_max, b.sub(K, pc))
            npanels = b.sdiv(b.add(nc, i64(nr - 1)), i64(nr))

            def pack_b(q):
                col0 = b.add(jc, b.mul(q, i64(nr)))

                def pack_b_k(k, checked):
                    src_row = b.mul(b.add(pc, k), sbk)
                    base = b.mul(b.add(b.mul(q, kc), k), i64(nr))
                    if checked:     # the last panel: its columns in a loop, then zeros
                        valid = b.sub(N, col0)

                        def copy(cc):
                            v = b.load(gep(b, B, b.add(src_row, b.mul(b.add(col0, cc), sbn)),
                                           ty), typ=ty)
                            b.store(v, gep(b, PB, b.add(base, cc), ty))
                        for_range(b, 0, valid, copy, name="pbc")
                        for_range(b, valid, nr, lambda cc: b.store(
                            zero, gep(b, PB, b.add(base, cc), ty)), name="pbz")
                        return
                    for cc in range(nr):
                        col = b.add(col0, i64(cc))
                        v = b.load(gep(b, B, b.add(src_row, b.mul(col, sbn)), ty), typ=ty)
                        b.store(v, gep(b, PB, b.add(base, i64(cc)), ty))

                def pack_b_rows(k):
                    src = gep(b, B, b.add(b.mul(b.add(pc, k), sbk), col0), ty)
                    dst = gep(b, PB, b.mul(b.add(b.mul(q, kc), k), i64(nr)), ty)
                    for half in range(2):
                        v = b.load(gep(b, src, half * vw, ty), typ=vty, align=align)
                        b.store(v, gep(b, dst, half * vw, ty), align=align)
                _full_or_edge(b, b.icmp_signed("<=", b.add(col0, i64(nr)), N), b.icmp_signed(
                    "==", sbn, i64(1)), kc, pack_b_k, pack_b_rows, "pbk")
            for_range(b, 0, npanels, pack_b, name="pbq")

            def ic_body(ic):
                mc = smin(b, mc_max, b.sub(M, ic))
                mpanels = b.sdiv(b.add(mc, i64(MR - 1)), i64(MR))

                def pack_a(p):
                    row0 = b.add(ic, b.mul(p, i64(MR)))

                    def pack_a_k(k, checked):
                        src_col = b.mul(b.add(pc, k), sak)
                        base = b.mul(b.add(b.mul(p, kc), k), i64(MR))
                        for r in range(MR):
                            row = b.add(row0, i64(r))
                            ok = b.icmp_signed("<", row, M) if checked else None
                            rowc = b.select(ok, row, m_last) if checked else row
                            v = b.load(gep(b, A, b.add(b.mul(rowc, sam), src_col), ty), typ=ty)
                            b.store(b.select(ok, v, zero) if checked else v,
                                    gep(b, PA, b.add(base, i64(r)), ty))
                    _full_or_edge(b, b.icmp_signed("<=", b.add(row0, i64(MR)), M), None, kc,
                                  pack_a_k, None, "pak")
                for_range(b, 0, mpanels, pack_a, name="pap")

                def jr_body(q):
                    cols = smin(b, i64(nr), b.sub(nc, b.mul(q, i64(nr))))

                    def ir_body(p):
                        rows = smin(b, i64(MR), b.sub(mc, b.mul(p, i64(MR))))
                        a_panel = gep(b, PA, b.mul(b.mul(p, kc), i64(MR)), ty)
                        b_panel = gep(b, PB, b.mul(b.mul(q, kc), i64(nr)), ty)
                        row0 = b.add(ic, b.mul(p, i64(MR)))
                        col0 = b.add(jc, b.mul(q, i64(nr)))
                        c_tile = gep(b, C, b.add(b.mul(row0, ldc), col0), ty)
                        first = b.or_(b.icmp_signed("!=", pc, i64(0)),
                                      b.icmp_signed("!=", accumulate, i64(0)))
                        b.call(uk, [a_panel, b_panel, c_tile, ldc, kc, first, rows, cols])
                    for_range(b, 0, mpanels, ir_body, name="ir")
                for_range(b, 0, npanels, jr_body, name="jr")
                final = b.icmp_signed(">=", b.add(pc, kc), K)
                with b.if_then(b.and_(final, b.icmp_unsigned("!=", epi, ir.Constant(
                        epi.type, None)))):
                    b.call(epi, [epi_args, b.add(r0, ic), b.add(c0, jc), mc, nc])
            for_range(b, 0, M, ic_body, step=mc_max, name="ic")
        for_range(b, 0, K, pc_body, step=kc_max, name="pc")
    for_range(b, 0, N, jc_body, step=nc_max, name="jc")
    b.ret_void()
    return fn
