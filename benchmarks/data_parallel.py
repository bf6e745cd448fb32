"""Data-parallel throughput on mlp-wide (784-512-512-10, Adam, logit cross-entropy), in one
run, as samples per second:

  one process, 1 thread, batch 256     GRAPHFLUX_NUM_THREADS=1
  one process, 2 threads, batch 256    GRAPHFLUX_NUM_THREADS=2
  2 ranks x 1 thread, 128 each         mpiexec -n 2, gf.compile(..., comm=comm)
  2 ranks x 1 thread, no exchange      the same two processes, each a plain step of 128 at
                                       the same time: the ceiling data parallelism could reach

Each configuration runs in its own processes (a process's thread count is fixed when its pool
starts), round after round in rotating order; the figures are medians over rounds of each
block's median step. The ranks also time the exchange alone, after a barrier: the step's own
(through shared memory, both ranks on one machine) and `Comm.sum_` of the same buffer (MPI's
Allreduce, what ranks on different machines would run, here over loopback); from the
gradient's size the script prints a ring all-reduce model of time per step against ranks on
10 and 100 Gb/s links.

Usage: python benchmarks/data_parallel.py [rounds] [steps per block]"""
import json
import os
import subprocess
import sys
import sysconfig
import time

import numpy as np

BATCH = 256
LINKS = {"10 Gb/s": (10e9 / 8, 20e-6), "100 Gb/s": (100e9 / 8, 5e-6)}
"""Link bandwidth in bytes/s and an assumed per-message latency (TCP over 10 GbE, RDMA over
100 Gb/s InfiniBand or RoCE)."""


def _timed(f, steps, barrier=None):
    for _ in range(5):
        f()
    if barrier:
        barrier()
    out = []
    for _ in range(steps):
        t = time.perf_counter()
        f()
        out.append(time.perf_counter() - t)
    return float(np.median(out) * 1e6)


def _workload(batch, seed=0):
    from graphflux.bench import build, workloads
    spec = dict(workloads()["mlp-wide"], batch=batch)
    return build(spec, seed=seed)


def worker_single(steps):
    import graphflux as gf
    _, ps, loss, opt, x, y = _workload(BATCH)
    step = gf.compile(loss, ps, opt)
    return {"step_us": _timed(lambda: step(x, y), steps)}


def worker_ranks(steps):
    import graphflux as gf
    comm = gf.distributed.world()
    _, ps, loss, opt, x, y = _workload(BATCH // comm.size, seed=comm.rank)
    step = gf.compile(loss, ps, opt, comm=comm)
    row = {"step_us": _timed(lambda: step(x, y), steps, comm.barrier)}
    row["exchange_us"] = _timed(step.exchanger.total, steps, comm.barrier)
    buf = step.buffer.copy()
    row["mpi_sum_us"] = _timed(lambda: comm.sum_(buf), steps, comm.barrier)
    row["buffer_bytes"] = int(step.buffer.nbytes)
    _, ps2, loss2, opt2, _, _ = _workload(BATCH // comm.size, seed=comm.rank)
    alone = gf.compile(loss2, ps2, opt2)
    row["no_exchange_us"] = _timed(lambda: alone(x, y), steps, comm.barrier)
    row["threads"] = os.environ.get("GRAPHFLUX_NUM_THREADS")
    rows = comm.allgather(row)
    return rows[0] if comm.rank == 0 else None


def _run(command, env_threads=None):
    env = dict(os.environ)
    if env_threads:
        env["GRAPHFLUX_NUM_THREADS"] = str(env_threads)
    else:
        env.pop("GRAPHFLUX_NUM_THREADS", None)
    out = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    if out.returncode:
        raise RuntimeError(f"{command} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def ring_model(grad_bytes, compute_s, ranks=(1, 2, 4, 8, 16, 32, 64)):
    """Time per step of per-rank batch 128 on p ranks: one rank's compute plus a ring
    all-reduce, 2 (p-1) messages of bytes/p each way (Patarasuk and Yuan's bandwidth-optimal
    ring), without overlap."""
    table = {}
    for link, (bandwidth, latency) in LINKS.items():
        rows = []
        for p in ranks:
            comm = 0.0 if p == 1 else 2 * (p - 1) * (latency + grad_bytes / p / bandwidth)
            step = compute_s + comm
            rows.append({"ranks": p, "step_ms": round(step * 1e3, 2),
                         "allreduce_ms": round(comm * 1e3, 2),
                         "samples_per_s": round(p * BATCH / 2 / step)})
        table[link] = rows
    return table


def main(rounds=5, steps=40):
    from graphflux.bench import machine
    me = os.path.abspath(__file__)
    mpiexec = os.path.join(sysconfig.get_path("scripts"), "mpiexec")
    configs = {
        "1x1": lambda: _run([sys.executable, me, "--worker", "single", str(steps)], 1),
        "1x2": lambda: _run([sys.executable, me, "--worker", "single", str(steps)], 2),
        "2x1": lambda: _run([mpiexec, "-n", "2", sys.executable, me, "--worker", "ranks",
                             str(steps)]),
    }
    got = {k: [] for k in configs}
    names = list(configs)
    for r in range(rounds):
        for k in names[r % len(names):] + names[:r % len(names)]:
            got[k].append(configs[k]())
    med = lambda k, f="step_us": float(np.median([g[f] for g in got[k]]))  # noqa: E731
    rate = lambda us: BATCH / (us * 1e-6)  # noqa: E731
    row = {"machine": machine(), "rounds": rounds, "steps": steps,
           "samples_per_s": {"1 process x 1 thread": rate(med("1x1")),
                             "1 process x 2 threads": rate(med("1x2")),
                             "2 ranks x 1 thread": rate(med("2x1")),
                             "2 ranks x 1 thread, no exchange": rate(med("2x1", "no_exchange_us"))},
           "exchange_us": med("2x1", "exchange_us"),
           "mpi_sum_us": med("2x1", "mpi_sum_us"),
           "buffer_bytes": got["2x1"][0]["buffer_bytes"],
           "rank_threads": got["2x1"][0]["threads"]}
    s = row["samples_per_s"]
    row["2 ranks / 1x1"] = s["2 ranks x 1 thread"] / s["1 process x 1 thread"]
    row["2 ranks / 1x2"] = s["2 ranks x 1 thread"] / s["1 process x 2 threads"]
    row["no exchange / 1x1 (ceiling)"] = s["2 ranks x 1 thread, no exchange"] / \
        s["1 process x 1 thread"]
    compute = med("2x1", "no_exchange_us") * 1e-6
    row["ring model, per-rank batch 128"] = ring_model(row["buffer_bytes"], compute)
    print(json.dumps(row, indent=1))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        kind, steps = sys.argv[2], int(sys.argv[3])
        result = worker_single(steps) if kind == "single" else worker_ranks(steps)
        if result is not None:
            print(json.dumps(result))
    else:
        main(*[int(a) for a in sys.argv[1:3]])
