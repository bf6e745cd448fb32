"""Matrix product C = A @ B as a register-tiled, packed GEMM (the BLIS loop structure).

A and B are read through arbitrary (row, column) strides, so transposed operands cost nothing
extra: packing copies a KC x NC block of B into NR-wide column panels and an MC x KC block of A
into MR-high row panels (zero-padded at the edges). The micro-kernel holds an MR x NR tile of C
in MR * NR/VW vector accumulators across the whole k loop, broadcasting one A element and FMAing
it against NR/VW vectors of B. With AVX2 float32 that is 6 x 16: 12 ymm accumulators."""
from llvmlite import ir

from .loops import I64, for_range, gep, i64, smin

MR = 6
KC = 256
MC = 72
NC = {True: 256, False: 128}     # by "is float32": a packed B block stays within L2


def _fma(module, vty):
    name = f"llvm.fma.v{vty.count}{'f64' if isinstance(vty.element, ir.DoubleType) else 'f32'}"
    if name in module.globals:
        return module.globals[name]
    return ir.Function(module, ir.FunctionType(vty, [vty] * 3), name=name)


def _splat(b, x, vty):
    undef = ir.Constant(vty, ir.Undefined)
    ins = b.insert_element(undef, x, ir.Constant(ir.IntType(32), 0))
    mask = ir.Constant(ir.VectorType(ir.IntType(32), vty.count), [0] * vty.count)
    return b.shuffle_vector(ins, undef, mask)


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
    align = 8 if isinstance(ty, ir.DoubleType) else 4
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    fma = _fma(module, vty)
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
        av = _splat(b, a, vty)
        new.append([b.call(fma, [av, bvec[j], acc[r][j]]) for j in range(2)])
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
    one share per thread when the product is large enough to be split."""
    kc, nc, mc = _blocking(M, N, K, vw, dtype.itemsize == 4)
    shares = threads if 2 * M * N * K >= PARALLEL_FLOPS and N >= M else 1
    return min(shares, MAX_THREADS) * mc * kc, min(shares, MAX_THREADS) * kc * nc


def gemm_name(ty, vw):
    return f"gf_gemm_{'f32' if isinstance(ty, ir.FloatType) else 'f64'}_x{vw}"


MAX_THREADS = 16
N_ARGS = 14
SCRATCH_BYTES = MAX_THREADS * (N_ARGS + 1) * 8   # thread arguments and ids


def _gemm_type():
    """(A, B, C, packA, packB, scratch, M, N, K, sam, sak, sbk, sbn)"""
    ptr = ir.PointerType()
    return ir.FunctionType(ir.VoidType(), [ptr] * 6 + [I64] * 7)


def _serial_type():
    """(A, B, C, packA, packB, M, N, K, sam, sak, sbk, sbn, ldc, nc_cap)"""
    ptr = ir.PointerType()
    return ir.FunctionType(ir.VoidType(), [ptr] * 5 + [I64] * 9)


def declare_gemm(module, ty, vw):
    """Declare the shared GEMM in a step's module; its body lives in the GEMM library object
    (`gemm_library`), compiled once per process and linked into every engine."""
    name = gemm_name(ty, vw)
    if name in module.globals:
        return module.globals[name]
    return ir.Function(module, _gemm_type(), name=name)


def threads_symbol(ty, vw):
    """The library's i64 global holding how many threads a large product may use."""
    return gemm_name(ty, vw) + "_threads"


def gemm_library(ty, vw):
    """A module defining `void gemm(ptr A, ptr B, ptr C, ptr packA, ptr packB, i64 M, N, K,
    sam, sak, sbk, sbn)`: C[M,N] (row-major, contiguous) = A[M,K] @ B[K,N], with A and B read at
    element strides (sam, sak) and (sbk, sbn). One function serves every product of a dtype.
    A product of at least PARALLEL_FLOPS is split into row or column blocks run on
    `<name>_threads` threads (pthreads started and joined inside the call, so the step stays
    one native call); each thread packs into its own share of the packing buffers."""
    module = ir.Module(name=gemm_name(ty, vw))
    serial = _define_gemm(module, gemm_name(ty, vw) + ".serial", ty, vw)
    _define_parallel(module, gemm_name(ty, vw), serial, ty, vw)
    return module


PARALLEL_FLOPS = 1 << 27   # measured on this 2-vCPU VM: mlp-wide 11.4 -> 8.7 ms per step


def _define_parallel(module, name, serial, ty, vw):
    """gemm(...) = split the larger of M and N into `threads` blocks (multiples of the
    register tile), run block 0 here and the rest on pthreads, join."""
    ptr = ir.PointerType()
    nr = 2 * vw
    threads = ir.GlobalVariable(module, I64, name=threads_symbol(ty, vw))
    threads.initializer = i64(1)
    create = ir.Function(module, ir.FunctionType(ir.IntType(32), [ptr, ptr, ptr, ptr]),
                         name="pthread_create")
    join = ir.Function(module, ir.FunctionType(ir.IntType(32), [I64, ptr]), name="pthread_join")
    n_args = N_ARGS
    worker = ir.Function(module, ir.FunctionType(ptr, [ptr]), name=name + ".worker")
    worker.linkage = "internal"
    wb = ir.IRBuilder(worker.append_basic_block("entry"))
    pack = worker.args[0]
    vals = []
    for i in range(n_args):
        slot = gep(wb, pack, i, I64)
        vals.append(wb.load(slot, typ=ptr if i < 5 else I64))
    wb.call(serial, vals)
    wb.ret(ir.Constant(ptr, None))

    fn = ir.Function(module, _gemm_type(), name=name)
    A, B, C, PA, PB, scratch, M, N, K, sam, sak, sbk, sbn = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    t = b.load(threads, typ=I64)
    flops = b.mul(b.mul(b.mul(M, N), K), i64(2))
    parallel = b.and_(b.icmp_signed(">", t, i64(1)), b.icmp_signed(">=", flops, i64(PARALLEL_FLOPS)))
    # column blocks only: with row blocks each thread packs all of B, and that lost (measured)
    parallel = b.and_(parallel, b.icmp_signed(">=", N, M))
    par_bb, ser_bb = fn.append_basic_block("parallel"), fn.append_basic_block("serial")
    b.cbranch(parallel, par_bb, ser_bb)
    b.position_at_end(ser_bb)
    b.call(serial, [A, B, C, PA, PB, M, N, K, sam, sak, sbk, sbn, N,
                    i64(NC[isinstance(ty, ir.FloatType)])])
    b.ret_void()

    b.position_at_end(par_bb)
    pa_size, pb_size = _pack_sizes_ir(b, M, N, K, vw, isinstance(ty, ir.FloatType))
    # threads may share a core's L2: each packs a B block 1/threads the usual size
    nc_shared = b.mul(b.sdiv(b.sdiv(i64(NC[isinstance(ty, ir.FloatType)]), t), i64(nr)), i64(nr))
    nc_shared = b.select(b.icmp_signed("<", nc_shared, i64(nr)), i64(nr), nc_shared)
    by_cols = b.icmp_signed(">=", N, M)
    unit = b.select(by_cols, i64(nr), i64(MR))
    extent = b.select(by_cols, N, M)
    units = b.sdiv(b.add(extent, b.sub(unit, i64(1))), unit)
    per = b.mul(b.sdiv(b.add(units, b.sub(t, i64(1))), t), unit)   # block length
    count = b.sdiv(b.add(extent, b.sub(per, i64(1))), per)          # blocks actually used
    args = scratch                       # N_ARGS words per thread, then the thread ids
    tids = gep(b, scratch, MAX_THREADS * n_args, I64)
    count = smin(b, count, MAX_THREADS)

    def block_args(i):
        start = b.mul(i, per)
        length = smin(b, per, b.sub(extent, start))
        a_off = b.select(by_cols, i64(0), b.mul(start, sam))
        b_off = b.select(by_cols, b.mul(start, sbn), i64(0))
        c_off = b.select(by_cols, start, b.mul(start, N))
        m = b.select(by_cols, M, length)
        n = b.select(by_cols, length, N)
        return [gep(b, A, a_off, ty), gep(b, B, b_off, ty), gep(b, C, c_off, ty),
                gep(b, PA, b.mul(i, pa_size), ty), gep(b, PB, b.mul(i, pb_size), ty),
                m, n, K, sam, sak, sbk, sbn, N, nc_shared]

    def spawn(i):
        vals = block_args(i)
        base = b.mul(i, i64(n_args))
        for k, v in enumerate(vals):
            b.store(v, gep(b, args, b.add(base, i64(k)), I64))
        b.call(create, [gep(b, tids, i, I64), ir.Constant(ptr, None), worker,
                        gep(b, args, base, I64)])
    for_range(b, 1, count, spawn, name="spawn")
    b.call(serial, block_args(i64(0)))

    def wait(i):
        b.call(join, [b.load(gep(b, tids, i, I64), typ=I64), ir.Constant(ptr, None)])
    for_range(b, 1, count, wait, name="join")
    b.ret_void()
    return fn


def _pack_sizes_ir(b, M, N, K, vw, is_f32):
    """The per-thread packing sizes (elements), as pack_elements computes them."""
    nr = 2 * vw
    kc = smin(b, K, KC)
    nc = smin(b, b.mul(b.sdiv(b.add(N, i64(nr - 1)), i64(nr)), i64(nr)), NC[is_f32])
    mc = smin(b, b.mul(b.sdiv(b.add(M, i64(MR - 1)), i64(MR)), i64(MR)), MC)
    return b.mul(mc, kc), b.mul(kc, nc)


def _define_gemm(module, name, ty, vw):
    nr = 2 * vw
    mc_cap = MC
    uk = _micro_kernel(module, name + ".uk", ty, vw)
    fn = ir.Function(module, _serial_type(), name=name)
    fn.linkage = "internal"
    A, B, C, PA, PB, M, N, K, sam, sak, sbk, sbn, ldc, nc_cap_arg = fn.args
    for a in fn.args[:5]:
        a.add_attribute("noalias")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    zero = ir.Constant(ty, 0.0)
    kc_max = smin(b, K, KC)
    nc_max = smin(b, b.mul(b.sdiv(b.add(N, i64(nr - 1)), i64(nr)), i64(nr)), nc_cap_arg)
    mc_max = smin(b, b.mul(b.sdiv(b.add(M, i64(MR - 1)), i64(MR)), i64(MR)), mc_cap)
    m_last, n_last = b.sub(M, i64(1)), b.sub(N, i64(1))

    def jc_body(jc):
        nc = smin(b, nc_max, b.sub(N, jc))

        def pc_body(pc):
            kc = smin(b, kc_max, b.sub(K, pc))
            npanels = b.sdiv(b.add(nc, i64(nr - 1)), i64(nr))

            def pack_b(q):
                def pack_b_k(k):
                    src_row = b.mul(b.add(pc, k), sbk)
                    base = b.mul(b.add(b.mul(q, kc), k), i64(nr))
                    col0 = b.add(jc, b.mul(q, i64(nr)))
                    for cc in range(nr):
                        col = b.add(col0, i64(cc))
                        ok = b.icmp_signed("<", col, N)
                        colc = b.select(ok, col, n_last)
                        v = b.load(gep(b, B, b.add(src_row, b.mul(colc, sbn)), ty), typ=ty)
                        b.store(b.select(ok, v, zero), gep(b, PB, b.add(base, i64(cc)), ty))
                for_range(b, 0, kc, pack_b_k, name="pbk")
            for_range(b, 0, npanels, pack_b, name="pbq")

            def ic_body(ic):
                mc = smin(b, mc_max, b.sub(M, ic))
                mpanels = b.sdiv(b.add(mc, i64(MR - 1)), i64(MR))

                def pack_a(p):
                    row0 = b.add(ic, b.mul(p, i64(MR)))

                    def pack_a_k(k):
                        src_col = b.mul(b.add(pc, k), sak)
                        base = b.mul(b.add(b.mul(p, kc), k), i64(MR))
                        for r in range(MR):
                            row = b.add(row0, i64(r))
                            ok = b.icmp_signed("<", row, M)
                            rowc = b.select(ok, row, m_last)
                            v = b.load(gep(b, A, b.add(b.mul(rowc, sam), src_col), ty), typ=ty)
                            b.store(b.select(ok, v, zero), gep(b, PA, b.add(base, i64(r)), ty))
                    for_range(b, 0, kc, pack_a_k, name="pak")
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
                        first = b.icmp_signed("!=", pc, i64(0))
                        b.call(uk, [a_panel, b_panel, c_tile, ldc, kc, first, rows, cols])
                    for_range(b, 0, mpanels, ir_body, name="ir")
                for_range(b, 0, npanels, jr_body, name="jr")
            for_range(b, 0, M, ic_body, step=mc_max, name="ic")
        for_range(b, 0, K, pc_body, step=kc_max, name="pc")
    for_range(b, 0, N, jc_body, step=nc_max, name="jc")
    b.ret_void()
    return fn
