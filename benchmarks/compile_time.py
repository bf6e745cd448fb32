"""Compile time, per phase, each measured in a fresh process (so imports count, as for a user):
- deep MLPs (width 64, relu, mse, Adam) with 12, 48 and 96 hidden layers, disk cache off;
- the bench workloads' first-ever compile on a machine (libraries built too), and the cold
  compile with an empty step cache: with the per-machine GEMM library cached, and with the
  scalar-function library cached too (no sympy needed then).
Usage: python benchmarks/compile_time.py [repeats]"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

from graphflux.bench import machine

DEEP = """
import json, time
t0 = time.perf_counter()
import numpy as np, graphflux as gf
t_import = time.perf_counter() - t0
n = {n}
rng = np.random.default_rng(0)
m = gf.Chain(*[gf.Dense(64, 64, gf.relu) for _ in range(n)], gf.Dense(64, 10))
step = gf.compile(lambda x, y: gf.losses.mse(m(x), y), gf.params(m), gf.Adam())
x = rng.standard_normal((32, 64)).astype(np.float32)
y = rng.standard_normal((32, 10)).astype(np.float32)
t = time.perf_counter()
art = step.lower(x, y)
print(json.dumps({{"total": time.perf_counter() - t, "import": t_import,
                  "kernels": len(art.kernels), **art.stats["seconds"]}}))
"""

WORKLOAD = """
import json, time
t0 = time.perf_counter()
import graphflux as gf
from graphflux.bench import build, workloads
t_import = time.perf_counter() - t0
_, ps, loss, opt, x, y = build(workloads()[{name!r}])
step = gf.compile(loss, ps, opt)
t = time.perf_counter()
art = step.lower(x, y)
print(json.dumps({{"total": time.perf_counter() - t, "import": t_import, **art.stats["seconds"]}}))
"""


def run(code, env):
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def median_of(rows):
    return {k: float(np.median([r[k] for r in rows])) for k in rows[0]}


def show(label, row):
    phases = ", ".join(f"{k} {v:.3f}" for k, v in row.items() if k not in ("total", "import"))
    print(f"{label:<34} {row['total']:.3f} s  (import {row['import']:.2f} s; {phases})",
          flush=True)


def main(repeats=3):
    print(f"machine: {machine()}; medians of {repeats} fresh processes")
    env = dict(os.environ, GRAPHFLUX_CACHE="0")
    deep = {}
    for n in (12, 48, 96):
        deep[n] = median_of([run(DEEP.format(n=n), env) for _ in range(repeats)])
        show(f"mlp {n} hidden layers, cache off", deep[n])
    print(f"96 / 12 layers: {deep[96]['total'] / deep[12]['total']:.1f}x")
    for name in ("seed-mlp", "tiny", "mlp-wide"):
        first, gemm_only, cold = [], [], []
        for _ in range(repeats):
            folder = tempfile.mkdtemp()
            env = dict(os.environ, GRAPHFLUX_CACHE_DIR=folder)
            first.append(run(WORKLOAD.format(name=name), env))
            drop_steps(folder)
            cold.append(run(WORKLOAD.format(name=name), env))
            drop_steps(folder, scalar_functions=True)
            gemm_only.append(run(WORKLOAD.format(name=name), env))
            shutil.rmtree(folder)
        show(f"{name}: first ever", median_of(first))
        show(f"{name}: cold, only GEMM cached", median_of(gemm_only))
        show(f"{name}: cold, libraries cached", median_of(cold))


def drop_steps(folder, scalar_functions=False):
    """Empty the step cache, keeping the per-machine libraries (lib-*): the GEMM's object
    code and, unless `scalar_functions`, the scalar functions' IR text."""
    for entry in os.listdir(folder):
        path = os.path.join(folder, entry)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif scalar_functions and entry.startswith("lib-"):
            with open(path, "rb") as f:
                if f.read(10) == b"; ModuleID":
                    os.remove(path)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
