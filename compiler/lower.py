"""Lowering a Plan to one LLVM module: a function per kernel over `noalias` pointers, and the
exported step function that calls them in order.

Kernels stay separate functions (`noinline`), so LLVM optimises each once instead of one huge
step, and structurally identical kernels (the same code over other buffers: the layers of a
deep MLP) are emitted once and called several times. Each call in the step is preceded by a
comment naming the graph nodes it computes (as the optimised graph's listing numbers them) and
the user's source lines. `EMITTERS` maps each kernel kind to the code that emits its call.

    i32 step(ptr bufs, ptr scalars)

`bufs[0]` is the arena, `bufs[i]` the i-th external array (inputs, parameters, state, constants,
outputs); `scalars` the float64 host scalars (learning rate, beta^t, ...). The step runs every
compute kernel, then checks that the loss is finite (else it returns 1) and that every gradient
is (else it returns 2 + the parameter's index), before the update kernels: parameters,
optimiser state, running statistics and counters are never written from a non-finite step."""
import numpy as np
from llvmlite import ir

from . import thread_pool
from . import transcendental as tr
from .batch_axis import BATCH_LENGTH
from .convolution import call_conv, conv_buffers
from .loops import I64, for_range, gep, i64, internal_function, smin
from .pooling import call_pool
from .matmul import EPILOGUE_TYPE, SCRATCH_BYTES, declare_gemm, pack_elements
from .ops import RANDOM_MIX
from .scalar_library import declare as declare_scalar

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


def _collapse(shape, operand_strides, batch=()):
    """Merge adjacent iteration dims that every operand walks contiguously, so loops are as
    few and as long as possible (the innermost one is what vectorises). A batch dimension
    (run to the run-time length) merges only with dims inside it, so the merged loop still
    covers a prefix of its range. Returns (shape, strides per operand, batch flag per dim)."""
    dims = [(s, [st[d] for st in operand_strides], d in batch)
            for d, s in enumerate(shape) if s != 1]
    if not dims:
        return (), [() for _ in operand_strides], ()
    merged = [dims[0]]
    for s, sts, is_batch in dims[1:]:
        ps, psts, p_batch = merged[-1]
        if not is_batch and all(p == q * s for p, q in zip(psts, sts)):
            merged[-1] = (ps * s, sts, p_batch)
        else:
            merged.append((s, sts, is_batch))
    shape = tuple(s for s, _, _ in merged)
    strides = [tuple(sts[k] for _, sts, _ in merged) for k in range(len(operand_strides))]
    return shape, strides, tuple(f for _, _, f in merged)


def run_extent(b, size, is_batch, n, capacity):
    """A loop's trip count: `size`, or for a batch dimension size / capacity * n (the run-time
    batch length `n`)."""
    return b.mul(i64(size // capacity), n) if is_batch else i64(size)


class CpuBackend:
    """What this backend needs from the planner, stated here so the planner imports none of
    it: the GEMM's packing buffers (sized by the SIMD width) and its per-thread scratch."""

    def __init__(self, vector_width, threads):
        self.vector_width, self.threads = vector_width, threads

    def reduction_chunks(self, kern):
        """(chunks, partials bytes) for a loop kernel that reduces over its first loop and is
        large enough to split, else (0, 0): it then sums in REDUCTION_CHUNKS fixed chunks,
        each into its own partial results, added in chunk order -- the same order whatever
        the thread count."""
        partial, per_chunk = partial_outputs(kern)
        rows = next((s for s in kern.shape if s != 1), 0)
        if not partial or int(np.prod(kern.shape, dtype=np.int64)) < MIN_SPLIT_ELEMENTS or \
                rows < REDUCTION_CHUNKS:
            return 0, 0
        return REDUCTION_CHUNKS, REDUCTION_CHUNKS * per_chunk * np.dtype(kern.dtype).itemsize

    def conv_buffers(self, geometry, mode, dtype):
        """(work bytes, partials bytes, tasks) of a convolution kernel (compiler.convolution)."""
        return conv_buffers(geometry, mode, dtype, self.vector_width[np.dtype(dtype)],
                            self.threads)

    def gemm_buffers(self, m, n, k, dtype):
        """(packed A bytes, packed B bytes, thread scratch bytes) for an m x k @ k x n GEMM."""
        dtype = np.dtype(dtype)
        pa, pb = pack_elements(m, n, k, self.vector_width[dtype], dtype, self.threads)
        return pa * dtype.itemsize, pb * dtype.itemsize, SCRATCH_BYTES


def _kernel_function(module, name, n_buffers, ranged=False, batched=False, chunked=False):
    """`void name(ptr buffers...)`; with `ranged` two more arguments `i64 lo, i64 hi`: the
    kernel runs rows [lo, hi) of its first loop, so the thread pool can split it; with
    `chunked` then `i64 chunk, ptr partials`: its reductions over that loop go to that
    chunk's partial results; with `batched` a last `i64 n`, the run-time batch length."""
    return internal_function(module, name, [PTR] * n_buffers + [I64] * (2 * ranged)
                             + [I64, PTR] * chunked + [I64] * batched, noalias=n_buffers)


MIN_SPLIT_ELEMENTS = 1 << 15
"""Kernels with fewer elements are never split and get no ranged entry point; above it the
thread pool decides at run time from the measured cost of a split (gf_pool_ways). A ranged
loop has a run-time trip count, which costs LLVM time (measured on mlp-wide: a floor of 2048
made the cold compile 35% longer, 65536 15%); below about 15k elements a split cannot save
more than its fixed cost (1-6 us here) at 4 elements a nanosecond anyway."""
SPLIT_ALIGN = 64
"""Chunks of a one-loop kernel start at multiples of this, so each chunk's vector loop covers
the elements it would cover in a serial run and only the last chunk has a scalar tail."""


REDUCTION_CHUNKS = 8
"""A reduction over a split loop is summed in this many chunks, fixed by the kernel (not by
the threads): each chunk's partial results are added in chunk order afterwards, so the result
is the same on one thread or many."""


def partial_outputs(kern):
    """([(output index, offset in a chunk's partials)], elements of one chunk's partials) for
    a loop kernel's reduction outputs that do not move along its first loop (a bias
    gradient's sum over the batch)."""
    first = next((d for d, s in enumerate(kern.shape) if s != 1), None)
    out, at = [], 0
    for j, (lay, _, mode) in enumerate(kern.outputs):
        if first is not None and mode in ("sum", "max") and lay.strides[first] == 0:
            out.append((j, at))
            at += 1 + sum((n - 1) * st for n, st in zip(lay.shape, lay.strides) if st)
    return out, at


def iteration(kern):
    """(loop shape, strides per layout, ranged, batch flag per loop) of a loop or finite-check
    kernel: its loops after collapsing, and whether its first loop may be split into ranges --
    large enough, and every output moves along that loop, so chunks write disjoint elements,
    or its reductions over that loop go to fixed chunks' partial results (`kern.chunks`)."""
    cached = kern.__dict__.get("_iteration")
    if cached is None:
        layouts = kern.layouts() if kern.kind == "loop" else [kern.src]
        source = kern.shape if kern.kind == "loop" else kern.src.shape
        shape, strides, flags = _collapse(source, [lay.strides for lay in layouts], kern.batch)
        outputs = strides[len(kern.reads()):] if kern.kind == "loop" else []
        ranged = bool(kern.chunks) if kern.kind == "loop" and kern.chunks else (
            len(shape) > 0 and int(np.prod(shape, dtype=np.int64)) >= MIN_SPLIT_ELEMENTS
            and all(st[0] != 0 for st in outputs))
        cached = kern._iteration = (shape, strides, ranged, flags)
    return cached


def _extents(b, fn, kern, rows=None):
    """The run-time trip count of each collapsed loop of `kern` in its function `fn` (whose
    last argument is the batch length when the kernel has a batch dimension); `rows`, the
    ranged (lo, hi) arguments, replace the first loop's."""
    shape, _, _, flags = iteration(kern)
    n = fn.args[-1] if kern.batch else None
    extents = [run_extent(b, s, f, n, kern.capacity) for s, f in zip(shape, flags)]
    if rows is not None:
        extents[0] = tuple(rows)
    return extents


def element_offset(b, start, indices, strides):
    """start + sum(index * stride), skipping the zero strides of broadcast axes."""
    off = i64(start)
    for i, st in zip(indices, strides):
        if st:
            off = b.add(off, b.mul(i, i64(st)))
    return off


def split_bytes(kern):
    """The data a split of `kern` may have to move between the cores (gf_pool_ways): what it
    writes, and half of what it reads -- inputs the other core only read are in both caches."""
    return sum(lay.nbytes() for lay in kern.writes()) + \
        sum(lay.nbytes() for lay in kern.reads()) // 2


def loop_nest(b, extents, body):
    """Nested counted loops, one per (start, stop) of `extents` (plain sizes count from 0),
    calling `body(indices)` innermost."""
    extents = [e if isinstance(e, (tuple, list)) else (0, e) for e in extents]

    def nest(depth, indices):
        if depth == len(extents):
            body(indices)
            return
        start, stop = extents[depth]
        for_range(b, start, stop, lambda i: nest(depth + 1, indices + [i]), name=f"d{depth}")
    nest(0, [])


def emit_loop_kernel(module, kern, name):
    ty = llvm_type(kern.dtype)
    buffers = kern.buffers()
    shape, strides, ranged, _ = iteration(kern)
    fn = _kernel_function(module, name, len(buffers), ranged, bool(kern.batch),
                          bool(kern.chunks))
    arg = {id(buf): a for buf, a in zip(buffers, fn.args)}
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    n_in = len(kern.inputs)
    if int(np.prod(kern.shape, dtype=np.int64)) == 0:
        b.ret_void()
        return fn
    extents = _extents(b, fn, kern, fn.args[len(buffers):len(buffers) + 2] if ranged else None)
    into = {}                   # output index -> (base, offset): this chunk's partial results
    if kern.chunks:
        chunk, partials = fn.args[len(buffers) + 2:len(buffers) + 4]
        partial, per_chunk = partial_outputs(kern)
        for j, at in partial:
            into[j] = (gep(b, partials, b.mul(chunk, i64(per_chunk)), ty), at)

    for j, ((lay, _, mode), st) in enumerate(zip(kern.outputs, strides[n_in:])):
        if mode in ("sum", "max"):
            init = ir.Constant(ty, 0.0 if mode == "sum" else -np.inf)
            base, off = into.get(j, (arg[id(lay.buffer)], kern.relative(lay)))
            kept = [d for d in range(len(shape)) if st[d] != 0]
            loop_nest(b, [extents[d] for d in kept], lambda idx, base=base, off=off, kept=kept,
                      st=st: b.store(init, gep(b, base, element_offset(
                          b, off, idx, [st[d] for d in kept]), ty)))

    loop_nest(b, extents, lambda indices: _element(b, module, kern, arg, strides, indices,
                                                   into))
    b.ret_void()
    return fn


def emit_combine(module, kern, name):
    """`void name.combine(ptr buffers..., ptr partials[, i64 n])`: each reduction output of
    a chunked kernel (`partial_outputs`) = its chunks' partial results, added (or maxed) in
    chunk order."""
    ty = llvm_type(kern.dtype)
    buffers = kern.buffers()
    fn = internal_function(module, name + ".combine",
                           [PTR] * (len(buffers) + 1) + [I64] * bool(kern.batch))
    arg = {id(buf): a for buf, a in zip(buffers, fn.args)}
    partials = fn.args[len(buffers)]
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    shape, strides, _, _ = iteration(kern)
    extents = _extents(b, fn, kern)
    partial, per_chunk = partial_outputs(kern)
    n_in = len(kern.inputs)
    for j, at in partial:
        lay, _, mode = kern.outputs[j]
        st = strides[n_in + j]
        kept = [d for d in range(len(shape)) if st[d] != 0]

        def one(idx, lay=lay, mode=mode, st=st, kept=kept, at=at):
            steps = [st[d] for d in kept]
            total = None
            for c in range(kern.chunks):
                v = b.load(gep(b, partials, element_offset(b, c * per_chunk + at, idx, steps),
                               ty), typ=ty)
                total = v if total is None else (
                    b.fadd(total, v, flags=REDUCE_FLAGS) if mode == "sum" else
                    tr.call(b, "maximum", ty, total, v))
            b.store(total, gep(b, arg[id(lay.buffer)],
                               element_offset(b, kern.relative(lay), idx, steps), ty))
        loop_nest(b, [extents[d] for d in kept], one)
    b.ret_void()
    return fn


def _element(b, module, kern, arg, strides, indices, into=None):
    """One element of a loop kernel at `indices`: load its inputs, evaluate its calls, store
    or accumulate its outputs (`strides`: per layout, over the loops `indices` count; `into`:
    output index -> (base, offset) where that output goes instead of its own buffer)."""
    ty = llvm_type(kern.dtype)
    n_in = len(kern.inputs)
    into = into or {}

    def offset(lay, st):
        return element_offset(b, kern.relative(lay), indices, st)
    loaded, results = [], []
    for lay, st in zip(kern.inputs, strides[:n_in]):
        lty = llvm_type(lay.dtype)
        v = b.load(gep(b, arg[id(lay.buffer)], offset(lay, st), lty), typ=lty)
        loaded.append(_convert(b, v, lay.dtype, ty))

    def value(ref):
        kind, x = ref
        return loaded[x] if kind == "in" else results[x] if kind == "op" else ir.Constant(ty, x)
    for fn_name, args in kern.calls:
        constants = {k: x for k, (kind, x) in enumerate(args) if kind == "num"}
        results.append(b.call(declare_scalar(module, fn_name, ty, constants),
                              [value(a) for a in args if a[0] != "num"]))
    for j, ((lay, ref, mode), st) in enumerate(zip(kern.outputs, strides[n_in:])):
        v = value(ref)
        if j in into:
            base, at = into[j]
            p = gep(b, base, element_offset(b, at, indices, st), ty)
        else:
            p = gep(b, arg[id(lay.buffer)], offset(lay, st), ty)
        if mode == "sum":
            v = b.fadd(b.load(p, typ=ty), v, flags=REDUCE_FLAGS)
        elif mode == "max":
            v = tr.call(b, "maximum", ty, b.load(p, typ=ty), v)
        b.store(v, p)


def emit_epilogue(module, kern, name):
    """`void name.epilogue(ptr args, i64 row0, i64 col0, i64 rows, i64 cols)`: the loop
    kernel `kern` (over a product's (m, n) output, elementwise) on one block of rows and
    columns, called by the GEMM as each block of C is finished, while it is in cache; `args`
    holds its buffers' pointers. Over a convolution's (N, C, *spatial) output the block is
    samples by channels, each whole."""
    fn = ir.Function(module, EPILOGUE_TYPE, name=name + ".epilogue")
    fn.linkage = "internal"
    fn.attributes.add("nounwind")
    words, row0, col0, rows, cols = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    arg = {id(buf): b.inttoptr(b.load(gep(b, words, k, I64), typ=I64), PTR)
           for k, buf in enumerate(kern.buffers())}
    strides = [lay.strides for lay in kern.layouts()]
    loop_nest(b, [(row0, b.add(row0, rows)), (col0, b.add(col0, cols))] + list(kern.shape[2:]),
              lambda indices: _element(b, module, kern, arg, strides, indices))
    b.ret_void()
    return fn


def emit_random_kernel(module, kern, name):
    """out[i] = 24 bits of splitmix64's finaliser over (key, counter, i), as a float in [0, 1)
    -- the same bits runtime.numpy_impls.random computes."""
    ty = llvm_type(kern.out.dtype)
    buffers = kern.buffers()
    fn = _kernel_function(module, name, len(buffers), batched=bool(kern.batch))
    arg = {id(buf): a for buf, a in zip(buffers, fn.args)}
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    cty = llvm_type(kern.counter.dtype)
    raw = b.load(gep(b, arg[id(kern.counter.buffer)], kern.relative(kern.counter), cty),
                 typ=cty)
    counter = b.fptosi(raw, I64) if np.dtype(kern.counter.dtype).kind == "f" else raw
    c1, c2, c3 = (ir.Constant(I64, m - 2 ** 64 if m >= 2 ** 63 else m) for m in RANDOM_MIX)
    base = b.add(b.mul(i64(kern.key % 2 ** 64 - (2 ** 64 if kern.key % 2 ** 64 >= 2 ** 63
                                                  else 0)), c1), b.mul(counter, c2))
    scale = ir.Constant(ty, 2.0 ** -24)

    def body(i):
        z = b.add(base, b.mul(i, c3))
        z = b.mul(b.xor(z, b.lshr(z, i64(30))), c2)
        z = b.mul(b.xor(z, b.lshr(z, i64(27))), c3)
        z = b.xor(z, b.lshr(z, i64(31)))
        u = b.fmul(b.uitofp(b.lshr(z, i64(40)), ty), scale)
        b.store(u, gep(b, arg[id(kern.out.buffer)], b.add(i, i64(kern.relative(kern.out))),
                       ty))
    count = int(np.prod(kern.out.shape, dtype=np.int64))
    if count:      # a batch dimension is axis 0 (compiler.batch_axis), so a prefix is drawn
        for_range(b, 0, run_extent(b, count, bool(kern.batch), fn.args[-1], kern.capacity),
                  body, name="r")
    b.ret_void()
    return fn


def emit_finite_check(module, kern, name):
    """Sum (x - x) over the gradient's rows [lo, hi), accumulated in its own type (so the loop
    vectorises like any sum), and store it into the flag (a double) only when it is not 0:
    the step zeroes the flag first, and chunks running at once store nothing or NaN, in any
    order, with the same outcome."""
    src = kern.src
    ty = llvm_type(src.dtype)
    buffers = kern.buffers()
    shape, (strides,), ranged, _ = iteration(kern)
    fn = _kernel_function(module, name, len(buffers), ranged, bool(kern.batch))
    arg = {id(buf): a for buf, a in zip(buffers, fn.args)}
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    acc = b.alloca(ty, name="acc")
    b.store(ir.Constant(ty, 0.0), acc)

    def body(indices):
        off = element_offset(b, kern.relative(src), indices, strides)
        x = b.load(gep(b, arg[id(src.buffer)], off, ty), typ=ty)
        b.store(b.fadd(b.load(acc, typ=ty), b.fsub(x, x), flags=REDUCE_FLAGS), acc)

    if int(np.prod(src.shape, dtype=np.int64)):
        loop_nest(b, _extents(b, fn, kern, fn.args[len(buffers):len(buffers) + 2]
                              if ranged else None), body)
    total = b.load(acc, typ=ty)
    if not isinstance(ty, ir.DoubleType):
        total = b.fpext(total, ir.DoubleType())
    bad, out = fn.append_basic_block("not_finite"), fn.append_basic_block("out")
    b.cbranch(b.fcmp_unordered("!=", total, ir.Constant(ir.DoubleType(), 0.0)), bad, out)
    b.position_at_end(bad)
    thread_pool.store_atomic(b, total, gep(b, arg[id(kern.flag.buffer)],
                                           kern.relative(kern.flag), ir.DoubleType()),
                             "monotonic", 8)
    b.branch(out)
    b.position_at_end(out)
    b.ret_void()
    return fn


def _branch_unless(b, step, ok, status, what):
    """Return `status` from the step unless `ok`; go on in a new block otherwise."""
    bad = step.append_basic_block(f"nonfinite_{what}")
    good = step.append_basic_block(f"{what}_finite")
    b.cbranch(ok, good, bad)
    b.position_at_end(bad)
    b.ret(I32(status))
    b.position_at_end(good)


class _Module:
    """The module being built, and the kernel functions emitted so far by structure (shared
    by every function of the step, so identical kernels share one)."""

    def __init__(self, module, vector_width, batch_slot=None):
        self.module, self.vector_width = module, vector_width
        self.functions = {}
        self.batch_slot = batch_slot     # where the scalars vector holds the batch length

    def body(self, name, returns):
        """A new function of the step, `(ptr bufs, ptr scalars)`, to emit kernel calls into."""
        return _Body(self, name, returns)


class _Body:
    """One function of the step -- the exported step or one of its segments -- with its IR
    builder and the base pointer of each buffer."""

    def __init__(self, owner, name, returns):
        self.owner, self.module, self.vector_width = owner, owner.module, owner.vector_width
        self.fn = ir.Function(self.module, ir.FunctionType(returns, [PTR, PTR]), name=name)
        self.fn.attributes.add("nounwind")
        self.bufs, self.scalars = self.fn.args
        self.bufs.name, self.scalars.name = "bufs", "scalars"
        self.b = ir.IRBuilder(self.fn.append_basic_block("entry"))
        self.arena = self.b.load(gep(self.b, self.bufs, 0, PTR), typ=PTR, name="arena")
        self.arrays = {}
        self.n = None

    def base(self, buf):
        b = self.b
        if buf.kind == "scalars":
            return self.scalars
        if buf.kind == "arena":
            return b.gep(self.arena, [i64(buf.offset)], inbounds=True,
                         source_etype=ir.IntType(8))
        # loaded at each use: a value kept from the first use would live across the whole
        # step, and a long step's register allocation would pay for thousands of those
        return b.load(gep(b, self.bufs, buf.slot, PTR), typ=PTR, name=f"ext{buf.slot}")

    def at(self, lay):
        return gep(self.b, self.base(lay.buffer), lay.offset, llvm_type(lay.dtype))

    def function(self, kern, emit, role="kernel"):
        """The function `emit` makes for `kern` in this `role` (the kernel itself, its
        epilogue or its combine step), emitted once per structure."""
        key = (role,) + kern.structure()
        fn = self.owner.functions.get(key)
        if fn is None:
            fn = self.owner.functions[key] = emit(self.module, kern, kern.name)
        return fn

    def extent(self, kern, size, is_batch):
        """A trip count of `kern` at run time (compiler.batch_axis for batch dimensions)."""
        return run_extent(self.b, size, is_batch, self.batch_length() if is_batch else None,
                          kern.capacity)

    def pointers(self, kern):
        """For each buffer of `kern`, a pointer to the first byte the kernel touches (its code
        holds offsets relative to that, so it is shareable)."""
        origins = kern.origins()
        return [self.b.gep(self.base(buf), [i64(origins[id(buf)])], inbounds=True,
                           source_etype=ir.IntType(8)) if origins[id(buf)] else self.base(buf)
                for buf in kern.buffers()]

    def call_function(self, kern, emit):
        """Call the kernel's function with its buffers' pointers (`pointers`). A ranged
        kernel is split across the thread pool when the pool says it pays."""
        b = self.b
        args = self.pointers(kern)
        fn = self.function(kern, emit)
        kern.function = fn.name          # shared by identical kernels: the listing says so
        tail = [self.batch_length()] if kern.batch else []
        if len(fn.args) == len(args) + len(tail):
            b.call(fn, args + tail)
            return
        shape, _, _, flags = iteration(kern)
        extent = self.extent(kern, shape[0], flags[0])
        ways = b.call(thread_pool.declare_ways(self.module),
                      [i64(int(np.prod(shape, dtype=np.int64))), i64(split_bytes(kern)),
                       i64(thread_pool.WORK_KINDS.index("elements"))])
        if kern.chunks:        # fixed chunks, whoever runs them, then added in order
            partials = self.base(kern.partials)
            per = b.sdiv(b.add(extent, i64(kern.chunks - 1)), i64(kern.chunks))
            chunks = i64(kern.chunks)
        split, serial, after = (self.fn.append_basic_block(f"{kern.name}.{x}")
                                for x in ("split", "serial", "after"))
        b.cbranch(b.icmp_signed(">", ways, i64(1)), split, serial)
        if kern.chunks:
            b.position_at_end(serial)
            for_range(b, 0, kern.chunks, lambda c: b.call(fn, args + [
                b.mul(c, per), smin(b, b.mul(b.add(c, i64(1)), per), extent), c, partials]
                + tail), name=f"{kern.name}.chunk")
        else:
            b.position_at_end(serial)
            b.call(fn, args + [i64(0), extent] + tail)
        b.branch(after)
        b.position_at_end(split)
        if not kern.chunks:
            align = SPLIT_ALIGN if len(shape) == 1 else 1
            per = b.sdiv(b.add(extent, b.sub(ways, i64(1))), ways)
            per = b.mul(b.sdiv(b.add(per, i64(align - 1)), i64(align)), i64(align))
            chunks = b.sdiv(b.add(extent, b.sub(per, i64(1))), per)
        words = self.task_arguments(len(args) + 4)
        extra = [per, extent, tail[0] if tail else i64(0)] + \
            ([b.ptrtoint(partials, I64)] if kern.chunks else [])
        for k, v in enumerate([b.ptrtoint(a, I64) for a in args] + extra):
            b.store(v, gep(b, words, k, I64))
        task = self.task(fn, len(args), bool(tail), bool(kern.chunks))
        b.call(thread_pool.declare_run(self.module), [task, words, chunks])
        b.branch(after)
        b.position_at_end(after)
        if kern.chunks:
            b.call(self.function(kern, emit_combine, "combine"), args + [partials] + tail)

    def run_tasks(self, task, values, count, work, nbytes, kind):
        """task(args, t) for t in [0, count), `args` holding `values` (pointers or i64): on the
        pool's threads when gf_pool_ways says a split of `work` over `nbytes` of data pays,
        else one after another here. Either way every task computes the same numbers."""
        b = self.b
        words = self.task_arguments(len(values))
        for k, v in enumerate(values):
            b.store(b.ptrtoint(v, I64) if isinstance(v.type, ir.PointerType) else v,
                    gep(b, words, k, I64))
        ways = b.call(thread_pool.declare_ways(self.module), [i64(work), i64(nbytes), i64(kind)])
        with b.if_else(b.icmp_signed(">", ways, i64(1))) as (split, serial):
            with split:
                b.call(thread_pool.declare_run(self.module), [task, words, i64(count)])
            with serial:
                for_range(b, 0, count, lambda t: b.call(task, [words, t]), name="task")

    def batch_length(self):
        """The run-time batch length (i64), read from its host scalar at the function's entry."""
        if self.n is None:
            with self.b.goto_entry_block():
                self.b.position_before(self.fn.entry_basic_block.instructions[0])
                slot = gep(self.b, self.scalars, self.owner.batch_slot, ir.DoubleType())
                self.n = self.b.fptosi(self.b.load(slot, typ=ir.DoubleType()), I64, name="n")
        return self.n

    def task_arguments(self, n):
        """An i64 array in this function's frame for a task's arguments (one per function,
        as large as its largest task needs: tasks run one after another)."""
        return self._frame_array("task_args", n)

    def _frame_array(self, name, n):
        size, array = self.arrays.get(name, (0, None))
        if size < n:
            with self.b.goto_entry_block():
                self.b.position_before(self.fn.entry_basic_block.instructions[0])
                array = self.b.alloca(I64, size=max(n, 16), name=name)
            self.arrays[name] = max(n, 16), array
        return array

    def epilogue(self, kern):
        """(function, argument words) for `kern`'s epilogue (compiler.epilogue): the words hold
        its buffers' pointers, in an array of their own, since a convolution passes them on
        inside its task's arguments."""
        epi = kern.epilogue
        fn = self.function(epi, emit_epilogue, "epilogue")
        epi.function = fn.name
        words = self._frame_array("epilogue_args", len(epi.buffers()))
        for k, ptr in enumerate(self.pointers(epi)):
            self.b.store(self.b.ptrtoint(ptr, I64), gep(self.b, words, k, I64))
        return fn, words

    def task(self, fn, n_buffers, batched, chunked):
        """`void fn.task(ptr args, i64 chunk)`: rows [chunk * per, min(that + per, extent))
        of `fn`; `args` holds its buffers, then per, extent, the batch length and, when
        `chunked`, the partial results (the chunk's index is passed on)."""
        name = fn.name + ".task"
        if name in self.module.globals:
            return self.module.globals[name]
        task = ir.Function(self.module, thread_pool.TASK_TYPE, name=name)
        task.linkage = "internal"
        b = ir.IRBuilder(task.append_basic_block("entry"))
        words, chunk = task.args
        buffers = [b.inttoptr(b.load(gep(b, words, k, I64), typ=I64), PTR)
                   for k in range(n_buffers)]
        per, extent, n, partials = (b.load(gep(b, words, n_buffers + k, I64), typ=I64)
                                    for k in range(4))
        lo = b.mul(chunk, per)
        b.call(fn, buffers + [lo, smin(b, b.add(lo, per), extent)]
               + [chunk, b.inttoptr(partials, PTR)] * chunked + [n] * batched)
        b.ret_void()
        return task


def _call_gemm(body, kern):
    """A call into the GEMM library; its batch dimensions (of m, n, k) run to the run-time
    batch length, and C's row stride is its layout's (planned at the capacity). An epilogue
    (compiler.epilogue) goes as a function and its buffers' pointers."""
    b = body.b
    dtype = np.dtype(kern.out.dtype)
    fn = declare_gemm(body.module, llvm_type(dtype), body.vector_width[dtype])
    sizes = [body.extent(kern, v, d in kern.batch) for d, v in enumerate(kern.dimensions())]
    ldc = kern.out.strides[0] if kern.m > 1 else kern.n
    epilogue, words = ir.Constant(ir.PointerType(EPILOGUE_TYPE), None), ir.Constant(PTR, None)
    if kern.epilogue is not None:
        epilogue, words = body.epilogue(kern)
    b.call(fn, [body.at(kern.a), body.at(kern.b), body.at(kern.out), body.base(kern.pack_a),
                body.base(kern.pack_b), body.base(kern.thread_scratch)]
           + sizes + [i64(v) for v in kern.a.strides + kern.b.strides] + [i64(ldc)]
           + [epilogue, words])


def _call_finite_check(body, kern):
    """The flag starts at 0 and the check's chunks store into it only what is not finite."""
    body.b.store(ir.Constant(ir.DoubleType(), 0.0), body.at(kern.flag))
    body.call_function(kern, emit_finite_check)


EMITTERS = {
    "loop": lambda body, kern: body.call_function(kern, emit_loop_kernel),
    "random": lambda body, kern: body.call_function(kern, emit_random_kernel),
    "finite_check": lambda body, kern: _call_finite_check(body, kern),
    "gemm": _call_gemm,
    "conv": lambda body, kern: call_conv(body, kern, llvm_type(kern.out.dtype),
                                         body.vector_width[np.dtype(kern.out.dtype)]),
    "pool": lambda body, kern: call_pool(body, kern, llvm_type(kern.out.dtype),
                                         body.vector_width[np.dtype(kern.out.dtype)]),
}
"""kernel kind -> emits the kernel's call in the step (and its function, once per structure)."""


def _describe(kern, names):
    """The comment before a kernel's call: what it is, the nodes and the user's lines."""
    nodes = ", ".join(names.get(n.id, "?") for n in kern.nodes)
    lines = sorted({n.source for n in kern.nodes if n.source})
    text = f"{kern.name}: {kern.kind}" + (f" of {nodes}" if nodes else "")
    if kern.epilogue is not None:
        text += f" with epilogue {kern.epilogue.name}"
    return text + (f" from {'; '.join(lines)}" if lines else "")


SEGMENT = 32
"""Kernel calls per segment function: code generation time grows faster than linearly with
one function's length, so a long step is cut into segments the step calls in turn."""


def _segments(module, step_name, kernels, label, names, counters=None, first=0):
    """Emit `kernels` into segment functions; returns them in order. With `counters` (a global
    i64 array), each call is bracketed by cycle-counter reads and its cycles added to
    counters[first + k]: the timed run that says where a step's time goes."""
    out = []
    for start in range(0, len(kernels), SEGMENT):
        seg = module.body(f"{step_name}.{label}{start // SEGMENT}", ir.VoidType())
        seg.fn.linkage = "internal"
        seg.fn.attributes.add("noinline")
        for k, kern in enumerate(kernels[start:start + SEGMENT], start=first + start):
            seg.b.comment(_describe(kern, names))
            if counters is None:
                EMITTERS[kern.kind](seg, kern)
            else:
                _timed(seg, counters, k, lambda: EMITTERS[kern.kind](seg, kern))
        seg.b.ret_void()
        out.append(seg.fn)
    return out


def _timed(body, counters, k, emit):
    b = body.b
    clock = body.module.declare_intrinsic("llvm.readcyclecounter", (), ir.FunctionType(I64, []))
    start = b.call(clock, [])
    emit()
    spent = b.sub(b.call(clock, []), start)
    slot = b.gep(counters, [i64(0), i64(k)], inbounds=True)
    b.store(b.add(b.load(slot, typ=I64), spent), slot)


def profile_symbol(step_name):
    """The global array of per-kernel cycle counts in a step lowered with `profile=True`."""
    return f"{step_name}.cycles"


def lower(plan, step_name, vector_width, profile=False):
    """The LLVM module (llvmlite.ir) of a Plan, exporting `step_name`; with `profile`, also
    the global `profile_symbol(step_name)`: cycles spent in each kernel (compute kernels, then
    updates), summed over the calls."""
    module = ir.Module(name=step_name)
    emission = _Module(module, vector_width, plan.scalar_refs.index(BATCH_LENGTH)
                       if plan.capacity else None)
    counters = None
    if profile:
        n = len(plan.kernels) + len(plan.update_kernels)
        counters = ir.GlobalVariable(module, ir.ArrayType(I64, n), profile_symbol(step_name))
        counters.initializer = ir.Constant(ir.ArrayType(I64, n), None)
    step = emission.body(step_name, I32)
    b = step.b
    for seg in _segments(emission, step_name, plan.kernels, "compute", plan.node_names,
                         counters):
        b.call(seg, [step.bufs, step.scalars])
    if plan.loss_layout is not None:
        ty = llvm_type(plan.loss_layout.dtype)
        loss = b.load(step.at(plan.loss_layout), typ=ty, name="loss")
        _branch_unless(b, step.fn, b.fcmp_ordered("<", tr.call(b, "fabs", ty, loss),
                                                  ir.Constant(ty, np.inf)), 1, "loss")
    for kern in plan.checks:
        flag = b.load(step.at(kern.flag), typ=ir.DoubleType(), name=f"finite{kern.index}")
        _branch_unless(b, step.fn, b.fcmp_ordered("==", flag,
                                                  ir.Constant(ir.DoubleType(), 0.0)),
                       2 + kern.index, f"gradient{kern.index}")
    for seg in _segments(emission, step_name, plan.update_kernels, "update", plan.node_names,
                         counters, len(plan.kernels)):
        b.call(seg, [step.bufs, step.scalars])
    b.ret(I32(0))
    return module
