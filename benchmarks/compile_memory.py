"""Native memory a process keeps per distinct compile, once every Python reference to the
compiled steps is gone -- and the floor llvmlite's own O3 pipeline sets.

Compiles N distinct small training steps (the demo model with distinct hidden widths, so every
graph key differs; GRAPHFLUX_CACHE=0 so the disk cache plays no part), runs each once, drops
the steps, clears graphflux's in-memory artifact caches, collects, and prints the resident-set
growth per compile. It does this twice, in two processes: one reads RSS as it is, the other
after glibc's malloc_trim(0), which hands free heap pages back to the kernel (without it, heap
freed below a live block stays resident, ready for reuse). Each process runs two rounds of N
compiles: in the untrimmed one, the second round reuses the heap the first freed, so its growth
is what a compile keeps rather than the high-water mark of N live steps. The floor runs
llvmlite's O3 pipeline N times on a trivial module in a fresh process that never imports
graphflux, closed the way llvmlite documents and with the pass manager freed by hand
(llvm_backend explains why).

Usage: python benchmarks/compile_memory.py [N] [--floor | --graphflux [--trim]]"""
import os
import subprocess
import sys
import weakref

os.environ["GRAPHFLUX_CACHE"] = "0"
WARMUP = 3   # compiles before the baseline: imports, the GEMM library, first-use allocations
MIB = 1 << 20

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from memory_readings import collect, resident_bytes  # noqa: E402


def settle(trim):
    """RSS once the garbage is collected, after malloc_trim(0) when `trim` (and glibc)."""
    collect(trim)
    return resident_bytes()


def clear_graphflux_caches():
    """The process-wide maps that keep artifacts or executables alive after their steps are
    gone: compiled._ARTIFACTS (key -> Artifact), gradients._EXECUTABLES (symbol -> Executable)
    and eager_update._FUNCTIONS (generated numpy updates). The GEMM library objects
    (llvm_backend._libraries) stay: one per dtype per process, not per compile."""
    from graphflux import compiled, eager_update, gradients
    compiled._ARTIFACTS.clear()
    gradients._EXECUTABLES.clear()
    eager_update._FUNCTIONS.clear()


def compile_one(width):
    """Compile and run once a distinct step: the demo model with a hidden layer `width` wide
    (Dense(64, width, tanh), Dense(width, 10)), logitcrossentropy, Adam."""
    import numpy as np

    import graphflux as gf
    rng = np.random.default_rng(width)
    init = lambda *d: gf.glorot_uniform(*d, rng=rng)  # noqa: E731
    model = gf.Chain(gf.Dense(64, width, gf.tanh, init=init), gf.Dense(width, 10, init=init))
    x = rng.random((32, 64), dtype=np.float32)
    y = gf.onehotbatch(rng.integers(0, 10, 32), range(10))
    step = gf.compile(lambda x, y: gf.losses.logitcrossentropy(model(x), y), gf.params(model),
                      gf.Adam(1e-3))
    step(x, y)
    return step


def native_steps(step):
    """Weak references to a compiled step's native code, to check it is really freed."""
    return [weakref.ref(entry.ex.native) for entry in step._entries.values()]


def measure_graphflux(n, trim):
    how = "after malloc_trim(0)" if trim else "as read"
    for w in range(WARMUP):
        compile_one(4 + w)
    clear_graphflux_caches()
    base = settle(trim)
    for round_ in (1, 2):
        before = settle(trim)
        widths = range(4 + WARMUP + (round_ - 1) * n, 4 + WARMUP + round_ * n)
        steps = [compile_one(w) for w in widths]
        live = settle(trim)
        natives = [ref for step in steps for ref in native_steps(step)]
        del steps
        clear_graphflux_caches()
        gone = settle(trim)
        alive = sum(ref() is not None for ref in natives)
        report(f"RSS {how}, round {round_}: steps alive", n, before, live)
        report(f"RSS {how}, round {round_}: steps dropped, caches cleared ({alive} of "
               f"{len(natives)} native steps still alive)", n, before, gone)
    report(f"RSS {how}, both rounds from the first baseline", 2 * n, base, gone)


def measure_floor(n):
    """N runs of the O3 module pipeline on a one-function module with one reused target
    machine, each with its own tuning options, pass builder and pass manager, all closed after
    use: first closed the way llvmlite documents (`close()`), then with the pass manager freed
    by hand as graphflux does (llvmlite 0.50's `close()` does not free it)."""
    import llvmlite.binding as llvm
    from llvmlite.binding import newpassmanagers
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    tm = llvm.Target.from_triple(llvm.get_process_triple()).create_target_machine(
        cpu=llvm.get_host_cpu_name(), features=llvm.get_host_cpu_features().flatten(), opt=3,
        codemodel="jitdefault", jit=True)
    text = "define i32 @f(i32 %x) {\n  %y = add i32 %x, 1\n  ret i32 %y\n}\n"

    def run(free_by_hand):
        mod = llvm.parse_assembly(text)
        pto = llvm.create_pipeline_tuning_options(speed_level=3)
        pb = llvm.create_pass_builder(tm, pto)
        pm = pb.getModulePassManager()
        pm.run(mod, pb)
        if free_by_hand:
            newpassmanagers.NewPassManager._dispose(pm)
            pm.detach()
        pm.close()
        pb.close()
        pto.close()
        mod.close()
    for free_by_hand in (False, True):
        for _ in range(WARMUP):
            run(free_by_hand)
        base = settle(True)
        for _ in range(n):
            run(free_by_hand)
        how = "pass manager freed by hand" if free_by_hand else "pass manager close()d"
        report(f"floor, RSS after malloc_trim(0): llvmlite O3 pipeline on a trivial module, {how}",
               n, base, settle(True))


def report(label, n, before, after):
    print(f"{label} ({n} runs): {(after - before) / n / MIB:+.3f} MiB/run; RSS now "
          f"{after / MIB:.1f} MiB", flush=True)


def main(argv):
    n = next((int(a) for a in argv if a.isdigit()), 200)
    if "--floor" in argv:
        measure_floor(n)
    elif "--graphflux" in argv:
        measure_graphflux(n, "--trim" in argv)
    else:
        for flags in (["--graphflux"], ["--graphflux", "--trim"], ["--floor"]):
            subprocess.run([sys.executable, __file__, str(n), *flags], check=True)


if __name__ == "__main__":
    main(sys.argv[1:])
