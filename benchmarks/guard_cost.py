"""What the non-finite gradient guard costs: the same training step compiled twice -- with its
per-gradient finiteness checks (what graphflux ships) and with them stripped -- and the two
native functions timed interleaved in one process. Python around the call is the same for both,
so the native call alone is timed.
Usage: python benchmarks/guard_cost.py [workload ...]   (default: mlp-wide seed-mlp tiny)"""
import sys
import time

import numpy as np

from graphflux.bench import build, machine, workloads
from graphflux.compiler.graph import Graph
from graphflux.compiler.pipeline import compile_graph
from graphflux.runtime.executable import Executable
from graphflux.tracing import input_array, step_graph, trace_loss


def native_step(ps, opt, traced, checks):
    full = step_graph(traced, ps, opt)
    if not checks:
        full = Graph(full.inputs, full.outputs, full.updates, full.name)
    art = compile_graph(traced.graph, full, dict(traced.seconds))
    ex = Executable(art.binary)
    for ref in ex.input_slot:
        ex.bind(ref, input_array(ref, ps, opt, traced.batch, traced.captured))
    outputs = [np.empty(shape, dtype) for _, _, shape, dtype in ex.outputs]
    for (_, slot, _, _), arr in zip(ex.outputs, outputs):
        ex.native.pointers[slot] = arr.ctypes.data
    values = [opt.scalars(opt.slot(ps[i]).host)[n] for _, i, n in art.binary.scalar_refs]
    ex.native.scalars[:len(values)] = values
    return ex, outputs


def main(names):
    print(f"machine: {machine()}")
    for name in names:
        _, ps, loss, opt, x, y = build(workloads()[name])
        traced = trace_loss(loss, ps, [x, y])
        traced.batch = [x, y]
        built = {"checked": native_step(ps, opt, traced, True),
                 "unchecked": native_step(ps, opt, traced, False)}
        runs = {k: ex.native for k, (ex, _) in built.items()}
        reps = 20 if name == "mlp-wide" else 400
        samples = {k: [] for k in runs}
        for _ in range(15):                     # interleaved rounds against drift
            for k, f in runs.items():
                t = time.perf_counter()
                for _ in range(reps):
                    f()
                samples[k].append((time.perf_counter() - t) / reps * 1e6)
        med = {k: float(np.median(v)) for k, v in samples.items()}
        print(f"{name}: checked {med['checked']:.1f} us, unchecked {med['unchecked']:.1f} us "
              f"per native step; the guard costs {100 * (med['checked'] / med['unchecked'] - 1):+.2f}%")


if __name__ == "__main__":
    main(sys.argv[1:] or ["mlp-wide", "seed-mlp", "tiny"])
