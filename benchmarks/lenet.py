"""LeNet-5 training steps (batch 64 of 1 x 28 x 28, Adam, softmax cross-entropy) side by side
in one process: graphflux compiled (the pool deciding what to split), the same artifact on one
core, graphflux eager, and PyTorch eager on the machine's threads (when installed) -- each from
the same initial weights, timed in blocks in rotating order with a pause before each block
(graphflux.bench.timed_blocks). The issue's target is compiled <= 0.35 x PyTorch eager.

Usage: python benchmarks/lenet.py [rounds] [steps per block]"""
import json
import sys

import graphflux as gf
from graphflux.bench import build, machine, timed_blocks, workloads
from graphflux.bench_others import torch_step
from graphflux.runtime.pool import pool


def main(rounds=6, steps=50):
    spec = workloads()["lenet"]
    model, ps, loss, opt, x, y = build(spec)
    _, ps_e, loss_e, opt_e, _, _ = build(spec)
    step = gf.compile(loss, ps, opt)
    eager = gf.compile(loss_e, ps_e, opt_e, mode="eager")
    runners = {"compiled_us": lambda: step(x, y), "one_core_us": lambda: step(x, y),
               "eager_us": lambda: eager(x, y)}
    torch = torch_step(spec, build(spec)[0])
    if torch is not None:
        runners["pytorch_us"] = lambda: torch(x, y)
    row = {"machine": machine(), "pool": pool().settings(),
           "flops": int(step.lower(x, y).stats["flops"]), **timed_blocks(
               runners, rounds, steps, {"one_core_us": lambda: pool().policy("serial")})}
    row["eager/compiled"] = row["eager_us"] / row["compiled_us"]
    row["one_core/compiled"] = row["one_core_us"] / row["compiled_us"]
    row["gflops"] = row["flops"] / row["compiled_us"] / 1e3
    if torch is not None:
        row["compiled/pytorch"] = row["compiled_us"] / row["pytorch_us"]
    print(json.dumps(row, indent=1))


if __name__ == "__main__":
    main(*[int(a) for a in sys.argv[1:3]])
