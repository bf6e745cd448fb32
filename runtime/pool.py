"""The process's thread pool (graphflux.compiler.thread_pool): loaded once, before the first
step's engine, and kept until the interpreter exits.

Every step engine resolves `gf_pool_run` and `gf_pool_ways` against this one copy (registered
with `llvm.add_symbol`), so all steps share one set of workers. At start the pool measures,
on this machine, what a split costs -- a hand-off to a worker, and moving cache lines that
one core wrote to the other -- and gives those figures to the split decision (gf_pool_ways).
The measuring (about 40 ms) runs on a thread of its own; until it is done the pool splits
nothing on its own account."""
import atexit
import contextlib
import ctypes
import os
import threading

import llvmlite.binding as llvm
import numpy as np

from graphflux.compiler import llvm_backend, thread_pool

from .native import cycle_counter_hz, load_objects

SPIN_SECONDS = 250e-6
"""A worker spins this long after its last chunk before it parks: longer than the gap between
two kernels of a step and than a training loop's Python between two steps."""
WAIT_SECONDS = 2e-3
"""The dispatcher spins this long for the workers' chunks before it sleeps on the futex."""
FAST_RATES = {"elements": 4.0, "flops": 60.0}
"""Work per nanosecond on one core, at the fast end of what kernels reach here (AVX2
elementwise kernels, and the GEMM's micro-kernel): estimating a kernel's serial time at these
rates under-estimates it, so the split decision errs towards running serially."""
ASSUMED_HZ = 3e9
"""The cycle counter's rate the spin budgets assume until the pool has measured it."""
DISTURBED_NS = 50_000
"""A median hand-off this slow means the worker was not running (both cores busy with other
work): measure again later."""
PROBE_BYTES = (16 << 10, 128 << 10)
"""The two amounts of data whose move between the cores is timed: the cost of a split is
fitted as fixed + per line from them (measured on a 2-core EPYC VM: 4-5 us + 13 ns a line)."""

_lock = threading.Lock()
_pool = None


class ThreadPool:
    def __init__(self, threads):
        obj = llvm_backend.library_object(thread_pool.LIBRARY_NAME,
                                          lambda: str(thread_pool.pool_library()))
        self._engine = load_objects([obj], "gf_pool.loader")
        for name in ("run", "ways"):
            llvm.add_symbol(thread_pool.symbol(name), self._function(name))
        self._start = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_int64)(self._function("start"))
        self._stop = ctypes.CFUNCTYPE(None)(self._function("stop"))
        self._time = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64)(
            self._function("time_handoffs"))
        self._transfer = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                                          ctypes.c_void_p, ctypes.c_int64)(
            self._function("time_transfer"))
        self.hz = ASSUMED_HZ
        self._set_budgets()
        self.workers = self._start(threads)
        self.cache_bytes = _private_cache_bytes()
        self.handoff_ns = self.fixed_ns = self.line_ns = 0.0
        self._calibration = threading.Thread(target=self._calibrate, name="graphflux-pool",
                                             daemon=True)
        if self.workers:
            self._calibration.start()
        atexit.register(self.stop)
        os.register_at_fork(after_in_child=self._forget_workers)

    def _function(self, name):
        address = self._engine.get_function_address(thread_pool.symbol(name))
        if not address:
            raise RuntimeError(f"{thread_pool.symbol(name)} missing from the pool's object code")
        return address

    def _word(self, name, index=0):
        base = self._engine.get_global_value_address(thread_pool.symbol(name))
        return ctypes.c_int64.from_address(base + 8 * index)

    def _set_budgets(self):
        self._word("spin_cycles").value = int(SPIN_SECONDS * self.hz)
        self._word("wait_cycles").value = int(WAIT_SECONDS * self.hz)

    def _calibrate(self):
        """Measure, on a thread of its own so no compile waits for it, what a split costs
        here, and hand the figures to the split decision; until then nothing is split by the
        model. A measurement that another dispatch ran serially, or during which the worker
        hardly ran (a compile keeping both cores busy), is taken again, up to 2 s later."""
        self.hz = cycle_counter_hz(0.01)
        self._set_budgets()
        for attempt in range(40):
            before = self.dispatches()
            figures = self._measure()
            if self.dispatches() - before == self._rounds and figures[0] < DISTURBED_NS:
                break
            threading.Event().wait(0.05)
        self.handoff_ns, self.fixed_ns, self.line_ns = figures
        for k, kind in enumerate(thread_pool.WORK_KINDS):
            self._word("ps_per_work", k).value = int(round(1000 / FAST_RATES[kind]))
        self._word("fixed_ps").value = int(self.fixed_ns * 1000)
        self._word("line_ps").value = int(self.line_ns * 1000)
        self._word("cache_bytes").value = self.cache_bytes
        self._word("calibrated").value = 1

    _REPS = 200
    _rounds = _REPS * (1 + 2 * len(PROBE_BYTES))

    def _measure(self, reps=_REPS):
        """(hand-off, fixed cost of a split, cost per cache line moved), in ns: the median of
        `reps` two-chunk tasks whose chunks wait for each other (so the worker really takes
        part), and a fit of moving PROBE_BYTES from the worker to the caller, less the same
        writes and reads made by the caller alone."""
        out = np.zeros(reps + 1, dtype=np.int64)
        self._time(out.ctypes.data, reps)
        handoff = self._ns(out[reps // 4:reps])
        moved = []
        for nbytes in PROBE_BYTES:
            buf = np.zeros(nbytes // 8, dtype=np.int64)
            cost = {}
            for caller_writes in (1, 0):
                self._transfer(buf.ctypes.data, nbytes, caller_writes, out.ctypes.data, reps)
                cost[caller_writes] = self._ns(out[reps // 4:reps])
            moved.append(max(cost[0] - cost[1], 0.0))
        lines = [n / 64 for n in PROBE_BYTES]
        per_line = max((moved[1] - moved[0]) / (lines[1] - lines[0]), 0.0)
        fixed = max(moved[0] - per_line * lines[0], handoff)
        return handoff, fixed, per_line

    def _ns(self, cycles):
        return float(np.median(cycles)) / self.hz * 1e9

    def stop(self):
        """Join the workers (at exit: their code must not be unmapped under them)."""
        if self._calibration.is_alive():
            self._calibration.join()
        if self.workers:
            self._stop()
            self.workers = 0

    def _forget_workers(self):
        """In a forked child the workers do not exist: dispatch serially from now on."""
        for name in ("workers", "busy", "sleepers", "waiting"):
            base = self._engine.get_global_value_address(thread_pool.symbol(name))
            size = 8 if name == "workers" else 4
            ctypes.memset(base, 0, size)
        self.workers = 0

    def dispatches(self):
        """Tasks the workers have shared so far (a dispatch that ran serially is not one)."""
        return self._word("dispatches").value

    @contextlib.contextmanager
    def policy(self, name):
        """Override the split decision for the duration: "split" splits every kernel the step
        offers to split, "serial" none, "model" is the default. Tests run the same compiled
        code both ways with it; benchmarks time one core against the pool's choice."""
        word = self._word("policy")
        old = word.value
        word.value = thread_pool.POLICIES.index(name)
        try:
            yield self
        finally:
            word.value = old

    def settings(self):
        """What the pool measured on this machine (waiting for it): for `graphflux bench`
        and the README."""
        if self._calibration.is_alive():
            self._calibration.join()
        return {"threads": self.workers + 1, "handoff_us": round(self.handoff_ns / 1e3, 3),
                "split_fixed_us": round(self.fixed_ns / 1e3, 3),
                "ns_per_line_moved": round(self.line_ns, 1), "private_cache_kib":
                self.cache_bytes >> 10}


def _private_cache_bytes(default=512 << 10):
    """The size of one core's own largest cache (L2), from sysfs: a kernel's data beyond it
    streams from the shared cache whichever core reads it."""
    try:
        with open("/sys/devices/system/cpu/cpu0/cache/index2/size") as f:
            text = f.read().strip().upper()
        scale = {"K": 1 << 10, "M": 1 << 20}.get(text[-1], 1)
        return int(text.rstrip("KM")) * scale
    except (OSError, ValueError):
        return default


def pool():
    """The process's pool, started on first use with `GRAPHFLUX_NUM_THREADS` threads (default
    the cores this process may run on)."""
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPool(llvm_backend.num_threads())
        return _pool


def started_threads():
    """The running pool's thread count, or None before the first step starts it."""
    return None if _pool is None else _pool.workers + 1
