"""Side-by-side timing of the standard workloads, in one process on one machine:
hand-written numpy, graphflux eager, graphflux compiled (median us per step), and the cold
compile time of each compiled step in a fresh process.
Usage: python benchmarks/run.py [steps] [workload ...]"""
import json
import os
import subprocess
import sys
import time

from graphflux.bench import machine, side_by_side, timed_blocks, workloads


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
        hand, compiled, eager, x, y = side_by_side(name, spec)
        runners = {"numpy_us": lambda: hand.step(x, y), "eager_us": lambda: eager(x, y),
                   "compiled_us": lambda: compiled(x, y)}
        # interleaved blocks, so drift on a shared VM hits all three alike
        samples = timed_blocks(runners, 9, max(steps // (30 if name == "mlp-wide" else 10), 2))
        cold, warm = cold_compile(name)
        row = {"workload": name, **samples,
               "cold_compile_s": cold, "second_process_first_step_s": warm}
        row["eager/numpy"] = row["eager_us"] / row["numpy_us"]
        row["eager/compiled"] = row["eager_us"] / row["compiled_us"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(json.dumps({"machine": machine(), "date": time.strftime("%Y-%m-%d")}))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 300, sys.argv[2:])
