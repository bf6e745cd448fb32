"""The compiler's end product: a differentiated graph in, an Artifact out -- object code, the
buffer plan the runtime binds, and the text of every stage for inspection."""
import hashlib
import time
from dataclasses import dataclass

import numpy as np
from llvmlite import ir

from . import llvm_backend, scalar_library
from .batch_axis import mark_kernels
from .fingerprint import source_fingerprint
from .kernel_table import KernelTable, kernel_rows
from .lower import CpuBackend, lower
from .matmul import gemm_library, gemm_name, threads_symbol
from .passes import optimize
from .plan import Planner

VERSION = "0.1.0"


def graph_key(graph, extra=""):
    """sha256 of the graph's canonical listing (constant arrays by value) plus everything the
    object code depends on: versions, graphflux's own source, CPU and its features, the vector
    widths the kernels are planned for (the host's, unless a test forces others), thread
    count, `extra`."""
    h = hashlib.sha256()
    widths = sorted((dt.str, n) for dt, n in llvm_backend.vector_widths().items())
    for part in (str(graph), llvm_backend.host_description(), VERSION, source_fingerprint(),
                 f"widths={widths}", f"threads={llvm_backend.num_threads()}", extra):
        h.update(part.encode() + b"\0")
    for n in graph.nodes:
        if n.op == "const" and n.size > 1:
            h.update(n.value.tobytes())
    return h.hexdigest()


@dataclass
class Binary:
    """What the runtime needs to load and bind a step, and nothing else; it is what the disk
    cache stores. `slots[i]` says what pointer-table slot i+1 holds: ("input", ref),
    ("const", index into `constants`) or ("output", name); `scalar_refs` the host scalars in
    order; `outputs` (name, shape, dtype str)."""
    symbol: str
    objects: list
    slots: list
    scalar_refs: list
    outputs: list
    constants: list
    arena_bytes: int
    thread_settings: dict
    batch_capacity: int = 0      # > 0: axis 0 of the batch is a run-time length up to this


class Artifact:
    """Everything one compiled step is made of. `graph`, `grad_graph` and `optimized_graph` are
    the stages as Graphs (the last two recomputed on first access when the artifact came from
    the disk cache); `llvm_ir`, `llvm_ir_optimized` and `asm` are text; `stats` a dict."""

    def __init__(self, binary, graph, llvm_ir, llvm_ir_optimized, stats, stages=None,
                 asm=None):
        self.binary = binary
        self.symbol = binary.symbol
        self.graph = graph
        self.llvm_ir = llvm_ir
        self.llvm_ir_optimized = llvm_ir_optimized
        self.stats = stats
        self._stages = stages        # (grad_graph, optimized_graph) or a function giving them
        self._asm = asm
        self.on_asm = None           # called with the assembly text once computed (disk cache)

    def _stage(self, i):
        if callable(self._stages):
            grad_graph = self._stages()
            self._stages = (grad_graph, optimize(grad_graph)[0])
        return self._stages[i]

    grad_graph = property(lambda self: self._stage(0))
    optimized_graph = property(lambda self: self._stage(1))

    @property
    def kernels(self):
        """The kernels as a table (compiler.kernel_table): print it."""
        return KernelTable(self.stats.get("kernel_table", []))

    @property
    def asm(self):
        if self._asm is None:
            self._asm = llvm_backend.assembly(self.llvm_ir_optimized)
            if self.on_asm is not None:
                self.on_asm(self._asm)
        return self._asm


def compile_graph(graph, grad_graph, seconds, key=None, stages=None, profile=False, batch=None):
    """Optimise, plan, lower and compile `grad_graph` (the step); `graph` is the traced forward
    graph kept for inspection; `seconds` carries the trace/AD timings measured by the caller.
    `stages`, when given, is filled with each stage as it is made, so a failing compile can
    be dumped (GRAPHFLUX_DEBUG). `profile` builds the timed variant (compiler.lower).
    `batch` = (the same step generalised at another batch length, its length there, the length
    of `grad_graph`'s batch) makes the artifact serve every batch length up to this one
    (compiler.batch_axis); it raises NotSymbolic when the plans do not correspond."""
    stages = {} if stages is None else stages
    key = key or graph_key(grad_graph)
    symbol = f"gf_step_{key[:20]}"
    t = time.perf_counter()
    optimized, pass_stats = optimize(grad_graph)
    stages["optimized_graph"] = optimized
    seconds["passes"] = time.perf_counter() - t
    t = time.perf_counter()
    widths = llvm_backend.vector_widths()
    backend = CpuBackend(widths, llvm_backend.num_threads())
    plan = Planner(optimized, backend).run()
    if batch is not None:
        other, n_other, n = batch
        mark_kernels(plan, Planner(optimize(other)[0], backend).run(), n, n_other)
    module = lower(plan, symbol, widths, profile)
    ir_text = stages["llvm_ir"] = str(module)
    scalar_functions = scalar_library.definitions(module)
    seconds["codegen"] = time.perf_counter() - t
    llmod, t_parse, t_opt = llvm_backend.optimize(ir_text, link=scalar_functions)
    seconds["codegen"] += t_parse
    seconds["llvm_opt"] = t_opt
    try:
        opt_text = stages["llvm_ir_optimized"] = str(llmod)
        t = time.perf_counter()
        objects = [llvm_backend.emit_object(llmod)]
    finally:
        llvm_backend.dispose(llmod)
    objects += _libraries(ir_text, widths)
    seconds["machine_code"] = time.perf_counter() - t
    stats = {
        "kernel_table": kernel_rows(plan, opt_text, widths),
        "threads": llvm_backend.num_threads(),
        "nodes": {"graph": len(graph), "grad_graph": len(grad_graph),
                  "optimized_graph": len(optimized)},
        "pass_nodes": [(name, n) for name, n, _ in pass_stats],
        "pass_seconds": [(name, s) for name, _, s in pass_stats],
        "kernels": len(plan.kernels) + len(plan.update_kernels),
        "seconds": seconds,
        "flops": plan.flops,
        "arena_bytes": plan.arena_bytes,
        "cache_hit": False,
        "key": key,
    }
    out_nodes = dict(optimized.outputs)
    binary = Binary(symbol, objects, plan.ext_slots, plan.scalar_refs,
                    [(name, out_nodes[name].shape, out_nodes[name].dtype.str)
                     for kind, name in plan.ext_slots if kind == "output"],
                    plan.constants, plan.arena_bytes,
                    {threads_symbol(ty, w): stats["threads"] for ty, w in _library_types()},
                    plan.capacity)
    return Artifact(binary, graph, ir_text, opt_text, stats, (grad_graph, optimized))


_TYPES = ((np.dtype(np.float32), ir.FloatType()), (np.dtype(np.float64), ir.DoubleType()))


def prepare_libraries(dtype):
    """Start compiling (or loading) the GEMM library for `dtype` on a background thread: LLVM
    releases the GIL, so it overlaps the Python half of a first compile (importing sympy,
    AD, passes)."""
    import threading
    widths = llvm_backend.vector_widths()
    ty = dict(_TYPES)[np.dtype(dtype)]
    if not llvm_backend.library_ready(gemm_name(ty, widths[np.dtype(dtype)])):
        threading.Thread(target=gemm_object, args=(dtype,), name="graphflux-gemm",
                         daemon=True).start()


def gemm_object(dtype, widths=None):
    """Object code of the GEMM library for `dtype` on this CPU (once per process)."""
    widths = widths or llvm_backend.vector_widths()
    ty = dict(_TYPES)[np.dtype(dtype)]
    name = gemm_name(ty, widths[np.dtype(dtype)])
    return llvm_backend.library_object(
        name, lambda: str(gemm_library(ty, widths[np.dtype(dtype)])))


def _library_types():
    widths = llvm_backend.vector_widths()
    return [(ty, widths[dtype]) for dtype, ty in _TYPES]


def _libraries(ir_text, widths):
    """Object code of the library functions the step calls."""
    out = []
    for dtype, ty in _TYPES:
        name = gemm_name(ty, widths[dtype])
        if f'@"{name}' in ir_text or f"@{name}" in ir_text:     # the GEMM or its _serial
            out.append(gemm_object(dtype, widths))
    return out
