"""What the thread pool buys: each workload's compiled step with the pool deciding (both
cores where a kernel is worth splitting) against the same artifact with nothing split (one
core), beside hand-written numpy and eager mode, in one process.

The runners are timed in blocks, round after round in rotating order, with a pause before
each block: numpy's
OpenBLAS threads spin for about 0.1 s after a product (OPENBLAS_THREAD_TIMEOUT's default), and
graphflux's workers for 0.25 ms after a kernel, so a block timed right after another runner
would share a core with the other's spinning threads and pay for it.

Usage: python benchmarks/threads.py [rounds] [workload ...]  (rounds: a multiple of 4)"""
import json
import sys
import time

import numpy as np

import graphflux as gf
from graphflux import hand_numpy
from graphflux.bench import _times, build, machine, workloads
from graphflux.runtime.pool import pool


SETTLE_S = 0.5


def blocks(runners, rounds, steps):
    """Median us per call of each runner; the order rotates every round, since the block
    right after numpy's is measurably slower (0.5 s pause or not)."""
    samples = {k: [] for k in runners}
    order = list(runners.items())
    for r in range(rounds):
        for name, (f, policy) in order[r % len(order):] + order[:r % len(order)]:
            time.sleep(SETTLE_S)
            with pool().policy(policy):
                f()
                samples[name].extend(_times(f, steps))
    return {k: float(np.median(v)) for k, v in samples.items()}


def main(rounds=5, names=None):
    print(json.dumps({"machine": machine(), "pool": pool().settings()}))
    for name, spec in workloads().items():
        if names and name not in names:
            continue
        model, ps, loss, opt, x, y = build(spec)
        hand = hand_numpy.for_workload(name, model)
        step = gf.compile(loss, ps, opt)
        _, ps_e, loss_e, opt_e, _, _ = build(spec)
        eager = gf.compile(loss_e, ps_e, opt_e, mode="eager")
        runners = {"numpy_us": (lambda: hand.step(x, y), "model"),
                   "eager_us": (lambda: eager(x, y), "model"),
                   "compiled_us": (lambda: step(x, y), "model"),
                   "one_core_us": (lambda: step(x, y), "serial")}
        steps = 20 if name == "mlp-wide" else 200
        row = {"workload": name, **blocks(runners, rounds, steps)}
        row["compiled/numpy"] = row["compiled_us"] / row["numpy_us"]
        row["eager/numpy"] = row["eager_us"] / row["numpy_us"]
        row["one_core/compiled"] = row["one_core_us"] / row["compiled_us"]
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 8, sys.argv[2:])
