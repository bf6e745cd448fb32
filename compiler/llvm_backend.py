"""LLVM for the host: the target machine, the O3 pipeline, object code and assembly.

llvmlite >= 0.45 has no `llvm.initialize()` (it raises) and only the new pass manager."""
import functools
import hashlib
import threading
import time

import llvmlite
import llvmlite.binding as llvm


@functools.lru_cache(maxsize=None)
def target_machine():
    """The compiler's target machine (kept for the process)."""
    return new_target_machine()


def new_target_machine():
    """A fresh host target machine; an MCJIT engine takes ownership of the one it is given,
    so every engine needs its own."""
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    triple = llvm.get_process_triple()
    target = llvm.Target.from_triple(triple)
    return target.create_target_machine(cpu=llvm.get_host_cpu_name(), features=host_features(),
                                        opt=3, codemodel="jitdefault", jit=True)


@functools.lru_cache(maxsize=None)
def host_features():
    return llvm.get_host_cpu_features().flatten()


def host_description():
    """What the object code depends on: part of every cache key."""
    return (f"llvmlite={llvmlite.__version__} llvm={'.'.join(map(str, llvm.llvm_version_info))} "
            f"cpu={llvm.get_host_cpu_name()} features={host_features()}")


def num_threads():
    """Threads a large matrix product may use: GRAPHFLUX_NUM_THREADS, default the cores this
    process may run on (at most 16)."""
    import os
    env = os.environ.get("GRAPHFLUX_NUM_THREADS")
    n = int(env) if env else len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
        else (os.cpu_count() or 1)
    return max(1, min(n, 16))


def vector_widths():
    """SIMD lanes per dtype on this CPU (AVX-512: 16 floats, AVX2: 8, else 4)."""
    import numpy as np
    bits = 512 if "+avx512f" in host_features() else 256 if "+avx" in host_features() else 128
    return {np.dtype(np.float32): bits // 32, np.dtype(np.float64): bits // 64}


def optimize(ir_text, unroll=False):
    """Parse, verify and optimise at O3 with loop and SLP vectorisation. Step modules are built
    without loop unrolling (measured: it doubled their compile time for no gain); the shared
    GEMM library, compiled once per process, is unrolled (measured: 1.5x faster products).
    Returns (llvm module, seconds parsing, seconds optimising)."""
    tm = target_machine()
    t0 = time.perf_counter()
    mod = llvm.parse_assembly(ir_text)
    mod.verify()
    mod.triple = tm.triple
    mod.data_layout = str(tm.target_data)
    t1 = time.perf_counter()
    pto = llvm.create_pipeline_tuning_options(speed_level=3)
    pto.loop_vectorization = True
    pto.slp_vectorization = True
    pto.loop_unrolling = unroll
    pb = llvm.create_pass_builder(tm, pto)
    pb.getModulePassManager().run(mod, pb)
    return mod, t1 - t0, time.perf_counter() - t1


def emit_object(mod):
    return target_machine().emit_object(mod)


def emit_assembly(mod):
    return target_machine().emit_assembly(mod)


_libraries = {}
_library_lock = threading.Lock()
LIBRARY_STORE = []   # the runtime installs its disk store here: .get(key), .put(key, bytes)


def library_object(name, ir_text):
    """Object code of a library module (the GEMMs): from this process, from the runtime's
    store, or compiled now; a second caller waits instead of compiling twice."""
    with _library_lock:
        obj = _libraries.get(name)
        if obj is None:
            key = hashlib.sha256((ir_text + host_description()).encode()).hexdigest()
            obj = LIBRARY_STORE[0].get(key) if LIBRARY_STORE else None
            if obj is None:
                mod, _, _ = optimize(ir_text, unroll=True)
                obj = emit_object(mod)
                if LIBRARY_STORE:
                    LIBRARY_STORE[0].put(key, obj)
            _libraries[name] = obj
        return obj


def library_ready(name):
    return name in _libraries
