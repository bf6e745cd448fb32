"""Shared test helpers: compile a dict of traced outputs natively and run the same graph in the
reference interpreter, so one compile checks many ops."""
import numpy as np
import pytest

from graphflux.compiler.autodiff import differentiate
from graphflux.compiler.graph import Graph
from graphflux.compiler.pipeline import compile_graph
from graphflux.compiler.tracer import TraceContext
from graphflux.runtime import evaluate
from graphflux.runtime.executable import Executable


def trace_outputs(fn, inputs, grads_of=None):
    """Trace fn(**tracers) -> {name: tracer}; with grads_of=name, add d(output)/d(input) for
    every input. Returns (graph, {input name: node}, {node id: array the function captured})."""
    ctx = TraceContext()
    tracers = {k: ctx.new_input(v.shape, v.dtype, k, "data") for k, v in inputs.items()}
    with ctx:
        outs = fn(**tracers)
        outputs = [(k, t.node) for k, t in outs.items()]
        if grads_of is not None:
            loss = dict(outputs)[grads_of]
            g = differentiate(loss, [t.node for t in tracers.values()], ctx)
            outputs += [(f"grad:{k}", g[t.node.id]) for k, t in tracers.items()
                        if g[t.node.id] is not None]
    nodes = {k: t.node for k, t in tracers.items()}
    captured = {node.attrs["ref"]: arr for arr, node in ctx.captured.values()}
    return Graph(list(ctx.inputs), outputs), nodes, captured


def bindings(graph, nodes, inputs, captured):
    """{input node id: array} for the interpreter."""
    by_ref = {**{n.attrs["ref"]: inputs[k] for k, n in nodes.items()}, **captured}
    return {n.id: by_ref[n.attrs["ref"]] for n in graph.inputs}


def run_both(graph, nodes, inputs, captured):
    """(native outputs, reference outputs, artifact) of `graph` on `inputs`."""
    art = compile_graph(graph, graph, {})
    ex = Executable(art.binary)
    by_ref = {**{n.attrs["ref"]: inputs[k] for k, n in nodes.items()}, **captured}
    for ref in ex.input_slot:
        ex.bind(ref, by_ref[ref])
    status, native = ex.run()
    assert status == 0
    reference, _ = evaluate(graph, bindings(graph, nodes, inputs, captured))
    return native, reference, art


def tolerance(dtype):
    return dict(rtol=2e-5, atol=2e-6) if np.dtype(dtype) == np.float32 else \
        dict(rtol=1e-12, atol=1e-13)


def host_vector_bits():
    """The widest SIMD registers this CPU has, read from /proc/cpuinfo -- independently of
    graphflux and LLVM, so a test of vectorised code cannot agree with itself by mistake."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f
                          if line.startswith("flags")), [])
    except OSError:
        flags = []
    if not flags:
        pytest.skip("no CPU flags in /proc/cpuinfo to read the vector width from")
    return 512 if "avx512f" in flags else 256 if "avx" in flags else 128


def run_together(work, n=2, timeout=120):
    """Call work(k) for k in range(n), each on its own thread, all starting at once; fails if a
    thread hangs or raises."""
    import threading
    start = threading.Barrier(n)
    errors = []

    def run(k):
        try:
            start.wait()
            work(k)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
    threads = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout)
    assert not any(t.is_alive() for t in threads), "a thread hangs"
    assert not errors, errors


def loop_vector_bits():
    """Widths LLVM's loop vectoriser may choose here: the widest registers, or on AVX-512 CPUs
    it tunes for 256-bit vectors (icelake-server, sapphirerapids: "prefer-256-bit", against
    zmm code's clock drop) 256 bits -- the GEMM's micro-kernel uses zmm explicitly."""
    widest = host_vector_bits()
    return (512, 256) if widest == 512 else (widest,)
