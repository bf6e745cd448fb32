"""Loading object code with MCJIT and calling the step through ctypes.

A NativeStep owns its execution engine (the function pointer dies with it) and a prebuilt
pointer table, so a call is: write the batch's pointers, one ctypes call."""
import ctypes

import llvmlite.binding as llvm
import numpy as np

from graphflux.compiler.llvm_backend import new_target_machine

_STEP_TYPE = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p)


_CLOCK_IR = """
declare i64 @llvm.readcyclecounter()
define i64 @gf_cycles() {
  %t = call i64 @llvm.readcyclecounter()
  ret i64 %t
}
"""


def cycle_counter_hz(seconds=0.05):
    """Ticks per second of LLVM's cycle counter (the TSC on x86), against the wall clock:
    converts a timed step's per-kernel counts into time."""
    import time
    module = llvm.parse_assembly(_CLOCK_IR)
    engine = llvm.create_mcjit_compiler(module, new_target_machine())
    try:
        engine.finalize_object()
        clock = ctypes.CFUNCTYPE(ctypes.c_int64)(engine.get_function_address("gf_cycles"))
        t0, c0 = time.perf_counter(), clock()
        time.sleep(seconds)
        t1, c1 = time.perf_counter(), clock()
    finally:
        engine.close()
    return (c1 - c0) / (t1 - t0)


def load_objects(objects, name):
    """A finalised MCJIT engine holding `objects` (object code). Its loader module is empty,
    in the global context: an empty module interns nothing."""
    empty = llvm.parse_assembly("")
    empty.name = name
    engine = llvm.create_mcjit_compiler(empty, new_target_machine())
    try:
        for obj in objects:
            ref = llvm.ObjectFileRef.from_data(obj)
            engine.add_object_file(ref)
            ref.close()                      # the engine took the object's buffer
        engine.finalize_object()
    except BaseException:
        engine.close()
        raise
    return engine


class NativeStep:
    """The engine holding a step's machine code, and the ctypes function calling into it.

    The function pointer is only valid while the engine lives, so both stay private to this
    object and callers hold the NativeStep itself: when it is collected, the engine (its code,
    target machine and loader module) is disposed by llvmlite's finaliser, and nothing is left
    that could call into the freed code (measured: 200 steps dropped, 200 engines freed)."""

    def __init__(self, objects, symbol, n_slots, arena_bytes, n_scalars, thread_settings=None):
        from .pool import pool
        pool()                               # its symbols resolve the step's calls into it
        self._engine = engine = load_objects(objects, symbol + ".loader")
        try:
            for name, threads in (thread_settings or {}).items():
                slot = engine.get_global_value_address(name)
                if slot:
                    ctypes.c_int64.from_address(slot).value = threads
            address = engine.get_function_address(symbol)
            if not address:
                raise RuntimeError(f"symbol {symbol} missing from the object code")
        except BaseException:
            engine.close()
            raise
        self._function = _STEP_TYPE(address)
        raw = np.zeros(arena_bytes + 64, dtype=np.uint8)
        start = (-raw.ctypes.data) % 64
        self.arena = raw[start:start + arena_bytes]
        self._arena_raw = raw
        self.pointers = (ctypes.c_void_p * (n_slots + 1))()
        self.pointers[0] = self.arena.ctypes.data
        self.scalars = np.zeros(max(n_scalars, 1), dtype=np.float64)
        self.scalars_ptr = self.scalars.ctypes.data
        self.pointers_addr = ctypes.addressof(self.pointers)

    def global_address(self, name):
        """Where a global of the loaded code lives (0 if it has none of that name)."""
        return self._engine.get_global_value_address(name)

    def __call__(self):
        return self._function(self.pointers_addr, self.scalars_ptr)
