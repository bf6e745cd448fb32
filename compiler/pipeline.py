"""The compiler's end product: a differentiated graph in, an Artifact out -- object code, the
buffer plan the runtime binds, and the text of every stage for inspection."""
import hashlib
import time

import numpy as np
from llvmlite import ir

from . import llvm_backend
from .lower import lower
from .matmul import gemm_library, gemm_name, threads_symbol
from .passes import optimize
from .plan import Planner

VERSION = "0.1.0"


def graph_key(graph, extra=""):
    """sha256 of the graph's canonical listing plus everything the object code depends on."""
    text = "\n".join([str(graph), llvm_backend.host_description(), VERSION,
                      f"threads={llvm_backend.num_threads()}", extra])
    return hashlib.sha256(text.encode()).hexdigest()


class Artifact:
    """Everything one compiled step is made of. `graph`, `grad_graph` and `optimized_graph` are
    the stages as Graphs; `llvm_ir`, `llvm_ir_optimized` and `asm` are text; `stats` a dict."""

    def __init__(self, graph, grad_graph, optimized_graph, plan, symbol, llvm_ir,
                 llvm_ir_optimized, objects, stats):
        self.graph = graph
        self.grad_graph = grad_graph
        self.optimized_graph = optimized_graph
        self.plan = plan
        self.symbol = symbol
        self.llvm_ir = llvm_ir
        self.llvm_ir_optimized = llvm_ir_optimized
        self.objects = objects      # the step's object code, then the libraries it links
        self.thread_settings = {threads_symbol(ty, w): stats["threads"]
                                for ty, w in _library_types()}
        self.stats = stats
        self._asm = None

    @property
    def asm(self):
        if self._asm is None:
            import llvmlite.binding as llvm
            mod = llvm.parse_assembly(self.llvm_ir_optimized)
            self._asm = llvm_backend.emit_assembly(mod)
        return self._asm


def compile_graph(graph, grad_graph, seconds, key=None):
    """Optimise, plan, lower and compile `grad_graph` (the step); `graph` is the traced forward
    graph kept for inspection; `seconds` carries the trace/AD timings measured by the caller."""
    key = key or graph_key(grad_graph)
    symbol = f"gf_step_{key[:20]}"
    t = time.perf_counter()
    optimized, pass_stats = optimize(grad_graph)
    seconds["passes"] = time.perf_counter() - t
    t = time.perf_counter()
    widths = llvm_backend.vector_widths()
    plan = Planner(optimized, widths, llvm_backend.num_threads()).run()
    module = lower(plan, symbol, widths)
    ir_text = str(module)
    seconds["codegen"] = time.perf_counter() - t
    llmod, t_parse, t_opt = llvm_backend.optimize(ir_text)
    seconds["codegen"] += t_parse
    seconds["llvm_opt"] = t_opt
    opt_text = str(llmod)
    t = time.perf_counter()
    objects = [llvm_backend.emit_object(llmod)] + _libraries(ir_text, widths)
    seconds["machine_code"] = time.perf_counter() - t
    stats = {
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
    return Artifact(graph, grad_graph, optimized, plan, symbol, ir_text, opt_text, objects, stats)


_TYPES = ((np.dtype(np.float32), ir.FloatType()), (np.dtype(np.float64), ir.DoubleType()))


def gemm_object(dtype, widths=None):
    """Object code of the GEMM library for `dtype` on this CPU (once per process)."""
    widths = widths or llvm_backend.vector_widths()
    ty = dict(_TYPES)[np.dtype(dtype)]
    name = gemm_name(ty, widths[np.dtype(dtype)])
    return llvm_backend.library_object(name, str(gemm_library(ty, widths[np.dtype(dtype)])))


def _library_types():
    widths = llvm_backend.vector_widths()
    return [(ty, widths[dtype]) for dtype, ty in _TYPES]


def _libraries(ir_text, widths):
    """Object code of the library functions the step calls."""
    out = []
    for dtype, ty in _TYPES:
        name = gemm_name(ty, widths[dtype])
        if f'@"{name}"' in ir_text or f"@{name}(" in ir_text:
            out.append(gemm_object(dtype, widths))
    return out
