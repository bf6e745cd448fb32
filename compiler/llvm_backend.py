"""LLVM for the host: the target machine, the O3 pipeline, object code and assembly.

llvmlite >= 0.45 has no `llvm.initialize()` (it raises) and only the new pass manager.

Memory and threads: a compile's LLVM objects are freed as soon as the compile is done, so a
process that compiles many distinct steps does not keep them -- the pass manager by hand, see
`_dispose_pass_manager`. Each module is parsed into an LLVM context of its own: the global
context keeps every constant, type and metadata node it ever saw (~7 KiB a small step), and
is not safe to share with the GEMM library compiling on a background thread."""
import functools
import hashlib
import threading
import time

import llvmlite
import llvmlite.binding as llvm
from llvmlite.binding import newpassmanagers

_machines = threading.local()


def target_machine():
    """The compiler's target machine: one per thread, kept for the thread's life. LLVM does
    not promise that a TargetMachine may be used by two threads at once, and the GEMM library
    compiles on a background thread while the step compiles on the caller's."""
    tm = getattr(_machines, "tm", None)
    if tm is None:
        tm = _machines.tm = new_target_machine()
    return tm


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


def optimize(ir_text, unroll=False, link=()):
    """Parse, verify and optimise at O3 with loop and SLP vectorisation. Step modules are built
    without loop unrolling (measured: it doubled their compile time for no gain); the shared
    GEMM library, compiled once per process, is unrolled (measured: 1.5x faster products).
    `link`: IR texts of modules linked in first (the scalar functions the step's loops call,
    so they inline). Returns (llvm module in a context of its own, seconds parsing, seconds
    optimising); the caller frees it with `dispose` once it has what it needs (text, object
    code)."""
    tm = target_machine()
    t0 = time.perf_counter()
    mod = parse(ir_text, link)
    t1 = time.perf_counter()
    pto = llvm.create_pipeline_tuning_options(speed_level=3)
    pto.loop_vectorization = True
    pto.slp_vectorization = True
    pto.loop_unrolling = unroll
    pb = llvm.create_pass_builder(tm, pto)
    pm = pb.getModulePassManager()
    try:
        pm.run(mod, pb)
    except BaseException:
        dispose(mod)
        raise
    finally:
        _dispose_pass_manager(pm)
        pb.close()
        pto.close()
    return mod, t1 - t0, time.perf_counter() - t1


def parse(ir_text, link=()):
    """`ir_text` parsed, with the modules of `link` linked in, and verified, in a fresh LLVM
    context, set up for the host target."""
    tm = target_machine()
    context = llvm.create_context()
    mod = llvm.parse_assembly(ir_text, context=context)
    try:
        for text in link:
            mod.link_in(llvm.parse_assembly(text, context=context))
        mod.verify()
    except BaseException:
        dispose(mod)
        raise
    mod.triple = tm.triple
    mod.data_layout = str(tm.target_data)
    return mod


def dispose(mod):
    """Free a module from `parse`/`optimize` and then its context, now rather than whenever
    the garbage collector gets to them (the module must go first: it lives in the context)."""
    context = mod._context
    mod.close()
    context.close()


def _dispose_pass_manager(pm):
    """Free a pass manager. llvmlite 0.50's `ModulePassManager.close()` frees nothing: its
    MRO puts `ObjectRef._dispose` (a no-op) before `NewPassManager._dispose`, so every O3
    pipeline built -- each pass and the tables it keeps sized for the last module it ran on
    -- stayed in the process: measured 50-150 KiB a compile, 0.13 MiB for a small step. Call
    the real disposer, then detach so a later llvmlite that fixes the MRO cannot free it
    twice."""
    newpassmanagers.NewPassManager._dispose(pm)
    pm.detach()


def emit_object(mod):
    return target_machine().emit_object(mod)


def emit_assembly(mod):
    return target_machine().emit_assembly(mod)


def assembly(ir_text):
    """The host assembly of optimised IR text (a module parsed, emitted and freed)."""
    mod = parse(ir_text)
    try:
        return emit_assembly(mod)
    finally:
        dispose(mod)


_libraries = {}
_library_lock = threading.Lock()
LIBRARY_STORE = []   # the runtime installs its disk store here: .get(key), .put(key, bytes)


def library_object(name, build_ir):
    """Object code of a library module (the GEMMs): from this process, from the runtime's
    store, or compiled now; a second caller waits instead of compiling twice. `build_ir()`
    gives the module's IR text; it runs only when this process has no object yet (building
    the GEMM IR costs ~25 ms of Python, and every compile asks for the library)."""
    with _library_lock:
        obj = _libraries.get(name)
        if obj is None:
            ir_text = build_ir()
            key = hashlib.sha256((ir_text + host_description()).encode()).hexdigest()
            obj = LIBRARY_STORE[0].get(key) if LIBRARY_STORE else None
            if obj is None:
                mod, _, _ = optimize(ir_text, unroll=True)
                try:
                    obj = emit_object(mod)
                finally:
                    dispose(mod)
                if LIBRARY_STORE:
                    LIBRARY_STORE[0].put(key, obj)
            _libraries[name] = obj
        return obj


def library_ready(name):
    return name in _libraries
