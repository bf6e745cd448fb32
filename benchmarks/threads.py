"""What the thread pool buys: each workload's compiled step with the pool deciding (both
cores where a kernel is worth splitting) against the same artifact with nothing split (one
core), beside hand-written numpy and eager mode, in one process.

The runners are timed in blocks, round after round in rotating order, with a pause before
each block (graphflux.bench.timed_blocks): numpy's OpenBLAS threads spin for about 0.1 s after a
product (OPENBLAS_THREAD_TIMEOUT's default), and graphflux's workers for 0.25 ms after a kernel,
so a block timed right after another runner would share a core with their spinning threads.

Usage: python benchmarks/threads.py [rounds] [workload ...]  (rounds: a multiple of 4)"""
import json
import sys

from graphflux.bench import machine, side_by_side, timed_blocks, workloads
from graphflux.runtime.pool import pool


def main(rounds=5, names=None):
    print(json.dumps({"machine": machine(), "pool": pool().settings()}))
    for name, spec in workloads().items():
        if (names and name not in names) or "model" in spec:     # LeNet: benchmarks/lenet.py
            continue
        hand, step, eager, x, y = side_by_side(name, spec)
        runners = {"numpy_us": lambda: hand.step(x, y), "eager_us": lambda: eager(x, y),
                   "compiled_us": lambda: step(x, y), "one_core_us": lambda: step(x, y)}
        steps = 20 if name == "mlp-wide" else 200
        row = {"workload": name, **timed_blocks(
            runners, rounds, steps, {"one_core_us": lambda: pool().policy("serial")})}
        row["compiled/numpy"] = row["compiled_us"] / row["numpy_us"]
        row["eager/numpy"] = row["eager_us"] / row["numpy_us"]
        row["one_core/compiled"] = row["one_core_us"] / row["compiled_us"]
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 8, sys.argv[2:])
