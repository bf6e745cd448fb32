"""The process's thread pool (graphflux.compiler.thread_pool): loaded once, before the first
step's engine, and kept until the interpreter exits.

Every step engine resolves `gf_pool_run` and `gf_pool_ways` against this one copy (registered
with `llvm.add_symbol`), so all steps share one set of workers. At start the pool times a
hand-off to a worker on this machine and sets the split thresholds from it: a kernel is split
when its serial time, estimated from its size at a deliberately fast rate, is several
hand-offs long (`SPLIT_MARGIN`), so a split is only made where it surely pays."""
import atexit
import contextlib
import ctypes
import os
import threading

import llvmlite.binding as llvm
import numpy as np

from graphflux.compiler import llvm_backend, thread_pool

SPIN_SECONDS = 250e-6
"""A worker spins this long after its last chunk before it parks: longer than the gap between
two kernels of a step and than a training loop's Python between two steps."""
WAIT_SECONDS = 2e-3
"""The dispatcher spins this long for the workers' chunks before it sleeps on the futex."""
FAST_RATES = {"elements": 4.0, "flops": 60.0}
"""Work per nanosecond on one core, at the fast end of what kernels reach here (AVX2
elementwise kernels, and the GEMM's micro-kernel): estimating a kernel's time at these rates
under-estimates it, so the split decision errs towards running serially."""
SPLIT_MARGIN = {"elements": 8, "flops": 16}
"""A kernel splits when its estimated serial time is at least this many hand-offs. The GEMM's
margin is larger: each block packs its own copy of the shared operand."""

_lock = threading.Lock()
_pool = None


class ThreadPool:
    def __init__(self, threads):
        obj = llvm_backend.library_object(thread_pool.LIBRARY_NAME,
                                          lambda: str(thread_pool.pool_library()))
        empty = llvm.parse_assembly("")
        empty.name = "gf_pool.loader"
        self._engine = llvm.create_mcjit_compiler(empty, llvm_backend.new_target_machine())
        ref = llvm.ObjectFileRef.from_data(obj)
        self._engine.add_object_file(ref)
        ref.close()
        self._engine.finalize_object()
        for name in ("run", "ways"):
            llvm.add_symbol(thread_pool.symbol(name), self._function(name))
        self._start = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_int64)(self._function("start"))
        self._stop = ctypes.CFUNCTYPE(None)(self._function("stop"))
        self._time = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64)(
            self._function("time_handoffs"))
        from .native import cycle_counter_hz
        self.hz = cycle_counter_hz(0.01)   # 1% is plenty for spin budgets and thresholds
        self._word("spin_cycles").value = int(SPIN_SECONDS * self.hz)
        self._word("wait_cycles").value = int(WAIT_SECONDS * self.hz)
        self.threads = threads
        self.workers = self._start(threads)
        self.handoff_ns = self._calibrate() if self.workers else float("inf")
        self.min_work = {}
        for kind in thread_pool.WORK_KINDS:
            self._set_min_work(kind, min(self.handoff_ns * SPLIT_MARGIN[kind] * FAST_RATES[kind],
                                         2 ** 62))
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

    def _calibrate(self, reps=400):
        """Median cycles of a hand-off to a spinning worker, in nanoseconds."""
        out = np.zeros(reps, dtype=np.int64)
        self._time(out.ctypes.data, reps)
        return float(np.median(out[reps // 4:])) / self.hz * 1e9

    def stop(self):
        """Join the workers (at exit: their code must not be unmapped under them)."""
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
    def thresholds(self, **min_work):
        """Split work of at least these sizes (`elements=`, `flops=`) for the duration: tests
        force small, awkward kernels through the threaded path with `elements=0, flops=0`."""
        old = dict(self.min_work)
        try:
            for kind, value in min_work.items():
                self._set_min_work(kind, value)
            yield self
        finally:
            for kind, value in old.items():
                self._set_min_work(kind, value)

    def _set_min_work(self, kind, value):
        self.min_work[kind] = int(value)
        self._word("min_work", thread_pool.WORK_KINDS.index(kind)).value = int(value)

    def settings(self):
        """What the pool decided on this machine: for `graphflux bench` and the README."""
        return {"threads": self.workers + 1, "handoff_us": self.handoff_ns / 1e3,
                "min_elements": self.min_work["elements"],
                "min_gemm_flops": self.min_work["flops"]}


def pool():
    """The process's pool, started on first use with `GRAPHFLUX_NUM_THREADS` threads (default
    the cores this process may run on)."""
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPool(llvm_backend.num_threads())
        return _pool
