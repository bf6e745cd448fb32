"""Loading object code with MCJIT and calling the step through ctypes.

A NativeStep owns its execution engine (the function pointer dies with it) and a prebuilt
pointer table, so a call is: write the batch's pointers, one ctypes call."""
import ctypes

import llvmlite.binding as llvm
import numpy as np

from graphflux.compiler.llvm_backend import new_target_machine

_STEP_TYPE = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p)


class NativeStep:
    def __init__(self, objects, symbol, n_slots, arena_bytes, n_scalars, thread_settings=None):
        tm = new_target_machine()
        empty = llvm.parse_assembly("")
        empty.name = symbol + ".loader"
        self.engine = llvm.create_mcjit_compiler(empty, tm)
        for obj in objects:
            self.engine.add_object_file(llvm.ObjectFileRef.from_data(obj))
        self.engine.finalize_object()
        for name, threads in (thread_settings or {}).items():
            slot = self.engine.get_global_value_address(name)
            if slot:
                ctypes.c_int64.from_address(slot).value = threads
        address = self.engine.get_function_address(symbol)
        if not address:
            raise RuntimeError(f"symbol {symbol} missing from the object code")
        self.function = _STEP_TYPE(address)
        raw = np.zeros(arena_bytes + 64, dtype=np.uint8)
        start = (-raw.ctypes.data) % 64
        self.arena = raw[start:start + arena_bytes]
        self._arena_raw = raw
        self.pointers = (ctypes.c_void_p * (n_slots + 1))()
        self.pointers[0] = self.arena.ctypes.data
        self.scalars = np.zeros(max(n_scalars, 1), dtype=np.float64)
        self.scalars_ptr = self.scalars.ctypes.data
        self.pointers_addr = ctypes.addressof(self.pointers)

    def __call__(self):
        return self.function(self.pointers_addr, self.scalars_ptr)
