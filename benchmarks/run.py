"""Side-by-side timing of the standard workloads, in one process on one machine:
hand-written numpy, graphflux eager, graphflux compiled (median us per step), and the cold
compile time of each compiled step in a fresh process.
Usage: python benchmarks/run.py [steps] [workload ...]"""
import json
import os
import subprocess
import sys
import time

import numpy as np

import graphflux as gf
from graphflux import hand_numpy
from graphflux.bench import SETTLE_S, _times, build, machine, workloads


COLD = """
import time, numpy as np, graphflux as gf
from graphflux.bench import build, workloads
_, ps, loss, opt, x, y = build(workloads()[{name!r}])
step = gf.compile(loss, ps, opt)
t = time.perf_counter(); step(x, y); print(time.perf_counter() - t)
"""


def cold_compile(name):
    """(cold, warm): the first step call in a fresh process with an empty disk cache, then in
    a second fresh process that finds the artifact in that cache."""
    import tempfile
    with tempfile.TemporaryDirectory() as folder:
        env = dict(os.environ, GRAPHFLUX_CACHE_DIR=folder)
        times = [float(subprocess.run([sys.executable, "-c", COLD.format(name=name)],
                                      capture_output=True, text=True, check=True, env=env)
                       .stdout.strip().splitlines()[-1]) for _ in range(2)]
    return times


def main(steps=300, names=None):
    rows = []
    for name, spec in workloads().items():
        if names and name not in names:
            continue
        model, ps, loss, opt, x, y = build(spec)
        hand = hand_numpy.for_workload(name, model)
        compiled = gf.compile(loss, ps, opt)
        _, ps_e, loss_e, opt_e, _, _ = build(spec)
        eager = gf.compile(loss_e, ps_e, opt_e, mode="eager")
        runners = {"numpy_us": lambda: hand.step(x, y), "eager_us": lambda: eager(x, y),
                   "compiled_us": lambda: compiled(x, y)}
        for f in runners.values():
            f()
        # interleaved rounds in rotating order, so drift on a shared VM hits all three alike,
        # with a pause before each block: OpenBLAS's threads spin for about 0.1 s after a
        # product and would share a core with whatever runs next
        n = max(steps // (30 if name == "mlp-wide" else 10), 2)
        samples = {k: [] for k in runners}
        order = list(runners.items())
        for r in range(9):
            for k, f in order[r % 3:] + order[:r % 3]:
                time.sleep(SETTLE_S)
                samples[k].extend(_times(f, n))
        cold, warm = cold_compile(name)
        row = {"workload": name, **{k: float(np.median(v)) for k, v in samples.items()},
               "cold_compile_s": cold, "second_process_first_step_s": warm}
        row["eager/numpy"] = row["eager_us"] / row["numpy_us"]
        row["eager/compiled"] = row["eager_us"] / row["compiled_us"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(json.dumps({"machine": machine(), "date": time.strftime("%Y-%m-%d")}))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 300, sys.argv[2:])
