"""The process's worker threads, written in LLVM IR over libc alone (pthreads, the futex
syscall), so a step splits a kernel across cores with one native call and no Python.

    i64  gf_pool_start(i64 threads)       start threads - 1 workers (once); returns workers
    i64  gf_pool_ways(i64 work, i64 bytes, i64 kind)  how many ways to split a kernel (1: don't)
    void gf_pool_run(task, ptr args, i64 n)  task(args, chunk) for every chunk in [0, n)
    void gf_pool_stop()                   stop and join the workers

Why it looks like this (measured on a 2-core VM): starting and joining a pthread costs 40-50
us; handing a task to a worker that is spinning costs 0.2-0.3 us; waking a worker parked in the
kernel 15-60 us, sometimes milliseconds. So a worker that finishes a task spins for a while
(`gf_pool_spin_cycles` of the cycle counter) before it parks: within a step, and between the
steps of a training loop, kernels arrive faster than that and find it awake.

Protocol: one task at a time. `counter` holds (epoch << 32 | next chunk); threads claim chunks
with compare-and-swap, so every chunk runs exactly once. The dispatcher takes the `busy`
try-lock; a second dispatcher (another Python thread's step, or a task that dispatches) runs
its chunks serially itself instead of waiting. Before publishing a task the dispatcher stores a
closed counter (no chunks left) for the new epoch, so a worker still looking at the old task
can not claim a chunk of the new one with the old task's size. The caller runs chunks too, then
spins (and at last sleeps) until every chunk is done.

`gf_pool_ways` is where the run-time decision to split lives, from a cost model whose
constants the runtime measures on this machine at start (graphflux.runtime.pool): a split
saves the other threads' share of the kernel's serial time (its work at a fast rate), and costs
a fixed price (the hand-off and the first cache misses) plus the cache lines of its data the
other core has to fetch (`bytes`, capped at a private cache's size: data larger than that
streams from the shared cache whoever reads it). Moving lines between the cores is what makes
small splits lose (measured: 13-40 ns a line, against 0.2 us for the hand-off itself). The
constants live in globals, so they are neither baked into a step nor part of its cache key.
`gf_pool_policy` overrides the model for tests and benchmarks: 1 splits everything the step
offers, 2 nothing."""
import platform

from llvmlite import ir

from .loops import for_range

I32, I64 = ir.IntType(32), ir.IntType(64)
PTR = ir.PointerType()
VOID = ir.VoidType()
TASK_TYPE = ir.FunctionType(VOID, [PTR, I64])
"""A task: void task(ptr args, i64 chunk)."""
MAX_WORKERS = 63
MEET_CYCLES = 1 << 21
"""How long a calibration chunk waits for its partner (about 0.7 ms at 3 GHz)."""
WORK_KINDS = ("elements", "flops")
"""What `work` counts for gf_pool_ways: elements of a loop kernel, or a product's flops."""
POLICIES = ("model", "split", "serial")

_SYS_FUTEX = {"x86_64": 202, "aarch64": 98}
FUTEX_WAIT_PRIVATE, FUTEX_WAKE_PRIVATE = 128, 129
LIBRARY_NAME = "gf_pool"


def symbol(name):
    return f"{LIBRARY_NAME}_{name}"


def declare_run(module):
    return _declare(module, "run", ir.FunctionType(VOID, [ir.PointerType(TASK_TYPE), PTR, I64]))


def _declare(module, name, fnty):
    name = symbol(name)
    if name in module.globals:
        return module.globals[name]
    return ir.Function(module, fnty, name=name)


def c64(v):
    return ir.Constant(I64, v)


def c32(v):
    return ir.Constant(I32, v)


def store_atomic(b, value, ptr, ordering, align):
    """llvmlite 0.50's IRBuilder.store_atomic reads the pointee type, which an opaque pointer
    does not have: build the instruction directly."""
    from llvmlite.ir import instructions
    st = instructions.StoreAtomicInstr(b.block, value, ptr, ordering, align)
    b._insert(st)
    return st


class _Pool:
    """The module and its shared words, each hot one on a cache line of its own."""

    def __init__(self):
        self.m = m = ir.Module(name=LIBRARY_NAME)
        self.counter = self.word("counter", I64)    # epoch << 32 | next chunk
        self.done = self.word("done", I32)          # chunks finished (the caller's futex word)
        self.wake = self.word("wake", I32)          # epoch (the workers' futex word)
        self.sleepers = self.word("sleepers", I32)  # workers parked or about to park
        self.waiting = self.word("waiting", I32)    # the caller parked or about to park
        self.busy = self.word("busy", I32)          # the dispatcher's try-lock
        self.stop = self.word("stopping", I32)
        self.task_fn = self.word("task_fn", PTR, align=8)
        self.task_args = self.word("task_args", PTR, align=8)
        self.task_n = self.word("task_n", I64, align=8)
        self.epoch = self.word("epoch", I64, align=8)
        self.workers = self.word("workers", I64, align=8)
        self.dispatches = self.word("dispatches", I64, align=8)    # tasks run by the pool
        self.spin_cycles = self.word("spin_cycles", I64, 1 << 20, align=8)
        self.wait_cycles = self.word("wait_cycles", I64, 1 << 22, align=8)
        self.ps_per_work = self.word("ps_per_work", ir.ArrayType(I64, len(WORK_KINDS)),
                                     align=8)
        self.fixed_ps = self.word("fixed_ps", I64, align=8)
        self.line_ps = self.word("line_ps", I64, align=8)
        self.cache_bytes = self.word("cache_bytes", I64, align=8)
        self.policy = self.word("policy", I64, align=8)
        self.calibrated = self.word("calibrated", I64, align=8)   # the model's figures are in
        self.tids = self.word("tids", ir.ArrayType(I64, MAX_WORKERS), align=8)
        self.syscall = ir.Function(m, ir.FunctionType(I64, [I64], var_arg=True), name="syscall")
        self.clock = m.declare_intrinsic("llvm.readcyclecounter", (), ir.FunctionType(I64, []))
        arch = platform.machine()
        self.sys_futex = _SYS_FUTEX.get(arch)
        if arch == "x86_64":
            self.pause_fn, self.pause_args = ir.Function(
                m, ir.FunctionType(VOID, []), name="llvm.x86.sse2.pause"), []
        elif arch == "aarch64":
            self.pause_fn, self.pause_args = ir.Function(
                m, ir.FunctionType(VOID, [I32]), name="llvm.aarch64.hint"), [c32(1)]
        else:
            raise NotImplementedError(f"graphflux's thread pool has no futex number for {arch}")

    def word(self, name, ty, init=0, align=64):
        g = ir.GlobalVariable(self.m, ty, name=symbol(name))
        g.initializer = ir.Constant(ty, None if isinstance(ty, ir.ArrayType) or
                                    isinstance(ty, ir.PointerType) else init)
        g.align = align
        return g

    def function(self, name, ret, args, internal=False):
        f = ir.Function(self.m, ir.FunctionType(ret, args), name=symbol(name))
        f.attributes.add("nounwind")
        if internal:
            f.linkage = "internal"
        return f, ir.IRBuilder(f.append_basic_block("entry"))

    def pause(self, b):
        b.call(self.pause_fn, self.pause_args)

    def futex(self, b, word, op, value):
        null = ir.Constant(PTR, None)
        return b.call(self.syscall, [c64(self.sys_futex), word, c64(op), b.zext(value, I64),
                                     null, null, c64(0)])

    def spin_until(self, b, fn, ready, budget, name):
        """Spin (with pause) until `ready(b)` is true or `budget` cycles pass; leaves `b` in
        a block where the returned i1 says whether it became ready."""
        start = b.call(self.clock, [])
        loop, wait, out = (fn.append_basic_block(f"{name}.{x}") for x in ("test", "wait", "out"))
        b.branch(loop)
        b.position_at_end(loop)
        ok = ready(b)
        b.cbranch(ok, out, wait)
        b.position_at_end(wait)
        self.pause(b)
        elapsed = b.sub(b.call(self.clock, []), start)
        b.cbranch(b.icmp_unsigned("<", elapsed, budget), loop, out)
        b.position_at_end(out)
        result = b.phi(ir.IntType(1))
        result.add_incoming(ir.Constant(ir.IntType(1), 1), loop)
        result.add_incoming(ir.Constant(ir.IntType(1), 0), wait)
        return result


def _work(p):
    """Claim and run chunks of the current task until none is left."""
    fn, b = p.function("work", VOID, [], internal=True)
    claim, claimed, out = (fn.append_basic_block(n) for n in ("claim", "claimed", "out"))
    b.branch(claim)
    b.position_at_end(claim)
    c = b.load_atomic(p.counter, "acquire", 8, typ=I64)
    index = b.and_(c, c64(0xFFFFFFFF))
    n = b.load_atomic(p.task_n, "acquire", 8, typ=I64)
    try_bb = fn.append_basic_block("try")
    b.cbranch(b.icmp_unsigned(">=", index, n), out, try_bb)
    b.position_at_end(try_bb)
    pair = b.cmpxchg(p.counter, c, b.add(c, c64(1)), "acq_rel", "acquire")
    b.cbranch(b.extract_value(pair, 1), claimed, claim)
    b.position_at_end(claimed)
    # the task cannot finish before this chunk does, so fn and args are still this epoch's
    task = b.load_atomic(p.task_fn, "monotonic", 8, typ=ir.PointerType(TASK_TYPE))
    args = b.load_atomic(p.task_args, "monotonic", 8, typ=PTR)
    b.call(task, [args, index])
    old = b.atomic_rmw("add", p.done, c32(1), "seq_cst")
    last = b.icmp_unsigned("==", b.zext(b.add(old, c32(1)), I64), n)
    wake_bb, do_wake = fn.append_basic_block("last"), fn.append_basic_block("wake_caller")
    b.cbranch(last, wake_bb, claim)
    b.position_at_end(wake_bb)
    parked = b.load_atomic(p.waiting, "seq_cst", 4, typ=I32)
    b.cbranch(b.icmp_unsigned("!=", parked, c32(0)), do_wake, claim)
    b.position_at_end(do_wake)
    p.futex(b, p.done, FUTEX_WAKE_PRIVATE, c32(1))
    b.branch(claim)
    b.position_at_end(out)
    b.ret_void()
    return fn


def _worker(p, work):
    """A worker: spin for a new epoch, park on the futex when the budget runs out, run work()."""
    fn, b = p.function("worker", PTR, [PTR], internal=True)
    seen = b.alloca(I32, name="seen")
    b.store(c32(0), seen)
    outer, live, got, park, exit_bb = (fn.append_basic_block(x) for x in
                                       ("outer", "live", "got", "park", "exit"))
    b.branch(outer)
    b.position_at_end(outer)
    stopped = b.load_atomic(p.stop, "acquire", 4, typ=I32)
    b.cbranch(b.icmp_unsigned("!=", stopped, c32(0)), exit_bb, live)
    b.position_at_end(live)
    budget = b.load(p.spin_cycles, typ=I64)
    woke = p.spin_until(b, fn, lambda b: b.icmp_unsigned(
        "!=", b.load_atomic(p.wake, "acquire", 4, typ=I32), b.load(seen, typ=I32)),
        budget, "spin")
    b.cbranch(woke, got, park)
    b.position_at_end(park)
    b.atomic_rmw("add", p.sleepers, c32(1), "seq_cst")
    current = b.load_atomic(p.wake, "seq_cst", 4, typ=I32)
    stopped = b.load_atomic(p.stop, "seq_cst", 4, typ=I32)
    sleep, unpark = fn.append_basic_block("sleep"), fn.append_basic_block("unpark")
    b.cbranch(b.and_(b.icmp_unsigned("==", current, b.load(seen, typ=I32)),
                     b.icmp_unsigned("==", stopped, c32(0))), sleep, unpark)
    b.position_at_end(sleep)
    p.futex(b, p.wake, FUTEX_WAIT_PRIVATE, current)   # returns at once if `wake` moved
    b.branch(unpark)
    b.position_at_end(unpark)
    b.atomic_rmw("sub", p.sleepers, c32(1), "seq_cst")
    b.branch(outer)
    b.position_at_end(got)
    b.store(b.load_atomic(p.wake, "acquire", 4, typ=I32), seen)
    b.call(work, [])
    b.branch(outer)
    b.position_at_end(exit_bb)
    b.ret(ir.Constant(PTR, None))
    return fn


def _run(p, work):
    fn, b = p.function("run", VOID, [ir.PointerType(TASK_TYPE), PTR, I64])
    task, args, n = fn.args
    serial, pooled, finish = (fn.append_basic_block(x) for x in ("serial", "pooled", "finish"))
    lock = b.cmpxchg(p.busy, c32(0), c32(1), "acquire", "monotonic")
    have_lock = b.extract_value(lock, 1)
    use_pool = b.and_(have_lock, b.icmp_signed(">", b.load(p.workers, typ=I64), c64(0)))
    b.cbranch(b.and_(use_pool, b.icmp_signed(">", n, c64(1))), pooled, serial)

    # no workers, one chunk, or another dispatch under way: run every chunk here
    b.position_at_end(serial)
    for_range(b, 0, n, lambda j: b.call(task, [args, j]), name="chunk")
    unlock, ret = fn.append_basic_block("unlock"), fn.append_basic_block("ret")
    b.cbranch(have_lock, unlock, ret)
    b.position_at_end(unlock)
    store_atomic(b, c32(0), p.busy, "release", 4)
    b.branch(ret)
    b.position_at_end(ret)
    b.ret_void()

    b.position_at_end(pooled)
    b.store(b.add(b.load(p.dispatches, typ=I64), c64(1)), p.dispatches)   # under the lock
    epoch = b.and_(b.add(b.load(p.epoch, typ=I64), c64(1)), c64(0xFFFFFFFF))
    epoch = b.select(b.icmp_unsigned("==", epoch, c64(0)), c64(1), epoch)  # workers start at 0
    b.store(epoch, p.epoch)
    store_atomic(b, b.or_(b.shl(epoch, c64(32)), c64(0xFFFFFFFF)), p.counter, "seq_cst", 8)
    store_atomic(b, task, p.task_fn, "monotonic", 8)
    store_atomic(b, args, p.task_args, "monotonic", 8)
    store_atomic(b, n, p.task_n, "release", 8)
    store_atomic(b, c32(0), p.done, "monotonic", 4)
    store_atomic(b, b.shl(epoch, c64(32)), p.counter, "release", 8)   # opens the task
    store_atomic(b, b.trunc(epoch, I32), p.wake, "seq_cst", 4)
    sleeping = b.load_atomic(p.sleepers, "seq_cst", 4, typ=I32)
    wake_bb, help_bb = fn.append_basic_block("wake_workers"), fn.append_basic_block("help")
    b.cbranch(b.icmp_unsigned("!=", sleeping, c32(0)), wake_bb, help_bb)
    b.position_at_end(wake_bb)
    p.futex(b, p.wake, FUTEX_WAKE_PRIVATE, c32(0x7FFFFFFF))
    b.branch(help_bb)
    b.position_at_end(help_bb)
    b.call(work, [])

    n32 = b.trunc(n, I32)
    finished = p.spin_until(b, fn, lambda b: b.icmp_unsigned(
        "==", b.load_atomic(p.done, "acquire", 4, typ=I32), n32),
        b.load(p.wait_cycles, typ=I64), "wait")
    park, parked, settle = (fn.append_basic_block(x) for x in ("park", "parked", "settle"))
    b.cbranch(finished, finish, park)
    b.position_at_end(park)
    store_atomic(b, c32(1), p.waiting, "seq_cst", 4)
    done = b.load_atomic(p.done, "seq_cst", 4, typ=I32)
    b.cbranch(b.icmp_unsigned("==", done, n32), settle, parked)
    b.position_at_end(parked)
    p.futex(b, p.done, FUTEX_WAIT_PRIVATE, done)
    b.branch(park)
    b.position_at_end(settle)
    store_atomic(b, c32(0), p.waiting, "seq_cst", 4)
    b.branch(finish)
    b.position_at_end(finish)
    store_atomic(b, c32(0), p.busy, "release", 4)
    b.ret_void()
    return fn


def _ways(p):
    """workers + 1 if splitting `work` (with `bytes` of data) saves 1.5 times what it costs,
    else 1. The margin covers the model's blind spots (measured on small products: splits
    the model called even lost up to 20%)."""
    fn, b = p.function("ways", I64, [I64, I64, I64])
    work, nbytes, kind = fn.args
    workers = b.load(p.workers, typ=I64)
    ways = b.add(workers, c64(1))
    serial = b.mul(work, b.load(b.gep(p.ps_per_work, [c64(0), kind], inbounds=True), typ=I64))
    saving = b.sub(serial, b.udiv(serial, ways))
    share = b.udiv(b.mul(nbytes, workers), ways)
    cache = b.load(p.cache_bytes, typ=I64)
    share = b.select(b.icmp_unsigned("<", share, cache), share, cache)
    cost = b.add(b.load(p.fixed_ps, typ=I64),
                 b.mul(b.udiv(share, c64(64)), b.load(p.line_ps, typ=I64)))
    policy = b.load(p.policy, typ=I64)
    modelled = b.and_(b.icmp_unsigned(">", b.mul(saving, c64(2)), b.mul(cost, c64(3))),
                      b.icmp_unsigned("!=", b.load(p.calibrated, typ=I64), c64(0)))
    split = b.select(b.icmp_unsigned("==", policy, c64(POLICIES.index("model"))), modelled,
                     b.icmp_unsigned("==", policy, c64(POLICIES.index("split"))))
    split = b.and_(split, b.icmp_signed(">", workers, c64(0)))
    b.ret(b.select(split, ways, c64(1)))


def declare_ways(module):
    return _declare(module, "ways", ir.FunctionType(I64, [I64, I64, I64]))


def _start(p, worker):
    fn, b = p.function("start", I64, [I64])
    create = ir.Function(p.m, ir.FunctionType(I32, [PTR, PTR, PTR, PTR]), name="pthread_create")
    want = b.sub(fn.args[0], c64(1))
    want = b.select(b.icmp_signed(">", want, c64(MAX_WORKERS)), c64(MAX_WORKERS), want)
    have = b.load(p.workers, typ=I64)
    spawn, done = fn.append_basic_block("spawn"), fn.append_basic_block("done")
    b.cbranch(b.and_(b.icmp_signed(">", want, c64(0)), b.icmp_signed("==", have, c64(0))),
              spawn, done)
    pre = b.block
    b.position_at_end(spawn)
    t = b.phi(I64)
    t.add_incoming(c64(0), pre)
    b.call(create, [b.gep(p.tids, [c64(0), t], inbounds=True), ir.Constant(PTR, None), worker,
                    ir.Constant(PTR, None)])
    nxt = b.add(t, c64(1))
    t.add_incoming(nxt, spawn)
    b.store(nxt, p.workers)
    b.cbranch(b.icmp_signed("<", nxt, want), spawn, done)
    b.position_at_end(done)
    b.ret(b.load(p.workers, typ=I64))


def _stop(p):
    fn, b = p.function("stop", VOID, [])
    join = ir.Function(p.m, ir.FunctionType(I32, [I64, PTR]), name="pthread_join")
    have = b.load(p.workers, typ=I64)
    b.store(c64(0), p.workers)          # from here on every dispatch runs serially
    store_atomic(b, c32(1), p.stop, "seq_cst", 4)
    b.atomic_rmw("add", p.wake, c32(1), "seq_cst")
    p.futex(b, p.wake, FUTEX_WAKE_PRIVATE, c32(0x7FFFFFFF))
    for_range(b, 0, have, lambda t: b.call(join, [
        b.load(b.gep(p.tids, [c64(0), t], inbounds=True), typ=I64), ir.Constant(PTR, None)]),
        name="join")
    store_atomic(b, c32(0), p.stop, "seq_cst", 4)
    b.ret_void()


def _calibration(p, run):
    """gf_pool_time_handoffs(ptr out, i64 reps): the cycles of `reps` two-chunk tasks whose
    chunks wait for each other, so each one measures a real hand-off to a worker (an empty
    task would often be finished by the caller alone)."""
    meet, b = p.function("meet", VOID, [PTR, I64], internal=True)
    arrived = meet.args[0]
    old = b.atomic_rmw("add", arrived, c64(1), "seq_cst")
    target = b.mul(b.add(b.udiv(old, c64(2)), c64(1)), c64(2))
    # bounded: run serially (another dispatch held the pool) the partner never comes; the
    # runtime then sees fewer dispatches than rounds and measures again
    p.spin_until(b, meet, lambda b: b.icmp_unsigned(
        ">=", b.load_atomic(arrived, "acquire", 8, typ=I64), target), c64(MEET_CYCLES), "meet")
    b.ret_void()

    fn, b = p.function("time_handoffs", VOID, [PTR, I64])
    out, reps = fn.args
    counter = b.alloca(I64)
    b.store(c64(0), counter)

    def once(i):
        start = b.call(p.clock, [])
        b.call(run, [meet, counter, c64(2)])
        b.store(b.sub(b.call(p.clock, []), start), b.gep(out, [i], inbounds=True,
                                                         source_etype=I64))
    for_range(b, 0, reps, once, name="rep")
    b.ret_void()
    _transfer_probe(p, run, meet)


def _transfer_probe(p, run, meet):
    """gf_pool_time_transfer(ptr buf, i64 bytes, i64 caller_writes, ptr out, i64 reps): the
    cycles of `reps` rounds of "one thread writes `bytes` of `buf`, then the caller reads them
    all"; the writer is the caller itself (caller_writes = 1) or the worker (0). The difference
    is what moving those cache lines between the cores costs, the price of splitting a kernel
    whose data the other core has just touched."""
    self_id = ir.Function(p.m, ir.FunctionType(I64, []), name="pthread_self")
    touch, b = p.function("touch", VOID, [PTR, I64], internal=True)
    words, chunk = touch.args
    field = [b.gep(words, [c64(k)], inbounds=True, source_etype=I64) for k in range(5)]
    b.call(meet, [field[0], chunk])
    is_caller = b.zext(b.icmp_unsigned("==", b.call(self_id, []), b.load(field[4], typ=I64)),
                       I64)
    write, out = touch.append_basic_block("write"), touch.append_basic_block("out")
    b.cbranch(b.icmp_unsigned("==", is_caller, b.load(field[3], typ=I64)), write, out)
    b.position_at_end(write)
    buf = b.inttoptr(b.load(field[1], typ=I64), PTR)
    for_range(b, 0, b.udiv(b.load(field[2], typ=I64), c64(8)), lambda i: b.store(
        i, b.gep(buf, [i], inbounds=True, source_etype=I64)), name="w")
    b.branch(out)
    b.position_at_end(out)
    b.ret_void()

    fn, b = p.function("time_transfer", VOID, [PTR, I64, I64, PTR, I64])
    buf, nbytes, caller_writes, out, reps = fn.args
    words = b.alloca(I64, size=5)
    for k, v in enumerate([c64(0), b.ptrtoint(buf, I64), nbytes, caller_writes,
                           b.call(self_id, [])]):
        b.store(v, b.gep(words, [c64(k)], inbounds=True, source_etype=I64))
    total = b.alloca(I64)
    b.store(c64(0), total)

    def once(i):
        start = b.call(p.clock, [])
        b.call(run, [touch, words, c64(2)])
        for_range(b, 0, b.udiv(nbytes, c64(8)), lambda j: b.store(b.add(b.load(total, typ=I64), b.load_atomic(
            b.gep(buf, [j], inbounds=True, source_etype=I64), "monotonic", 8, typ=I64)), total),
            name="r")
        b.store(b.sub(b.call(p.clock, []), start), b.gep(out, [i], inbounds=True,
                                                         source_etype=I64))
    for_range(b, 0, reps, once, name="rep")
    b.store(b.load(total, typ=I64), b.gep(out, [reps], inbounds=True, source_etype=I64))
    b.ret_void()


def pool_library():
    """The pool's module: compiled once per process and loaded by the runtime
    (graphflux.runtime.pool), which every step's engine resolves `gf_pool_*` against."""
    p = _Pool()
    work = _work(p)
    _calibration(p, _run(p, work))
    _ways(p)
    _start(p, _worker(p, work))
    _stop(p)
    return p.m
