"""Soak: the demo model's compiled training step run for N steps in one process, printing the
resident set along the way, to show that a long run holds its memory flat -- a per-step leak
of even one small object would add megabytes over a million steps.

The step is Dense(64, 32, tanh) -> Dense(32, 10), logitcrossentropy, Adam, on batches of 32 of
the bundled digits, cycled. RSS is read after a garbage collection at 10k and 100k steps, every
further 100k and at the end, as read and after malloc_trim(0); the verdict compares the end
with the 10k reading (everything allocated once -- compile, first-call buffers, optimiser
state -- exists by then).

Usage: python benchmarks/soak.py [N]   (default 1,000,000)"""
import os
import sys
import time

import numpy as np

import graphflux as gf

MIB = 1 << 20
FLAT_MIB = 2.0     # end minus the 10k reading, trimmed; tests/test_soak.py explains the bound

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from memory_readings import collect, resident_bytes  # noqa: E402


def rss():
    """(RSS as read, RSS after glibc's malloc_trim(0)) in bytes, after a collection (cycles
    are garbage, not growth). The trimmed reading is the one that shows leaks: as read, RSS
    can step up once by a freed block glibc keeps. Seen here: numpy's `__array_interface__`
    (read on every call for the batch pointers) makes CPython resize its interned-string
    table every few ten thousand calls (heaptrack: array_interface_get -> PyDict_SetItemString
    -> PyUnicode_InternInPlace -> dictresize); the ~1-2 MiB old table freed stays with glibc,
    whose adaptive thresholds do not hand it back."""
    collect(trim=False)
    raw = resident_bytes()
    collect(trim=True)
    return raw, resident_bytes()


def build(batch=32, seed=0):
    """(step, batches): the compiled demo step and the digits as full batches of `batch`
    (contiguous copies, so every call has the same signature and nothing is cast per call)."""
    X, labels = gf.datasets.digits()
    Y = gf.onehotbatch(labels, range(10))
    rng = np.random.default_rng(seed)
    init = lambda *d: gf.glorot_uniform(*d, rng=rng)  # noqa: E731
    model = gf.Chain(gf.Dense(64, 32, gf.tanh, init=init), gf.Dense(32, 10, init=init))
    step = gf.compile(lambda x, y: gf.losses.logitcrossentropy(model(x), y), gf.params(model),
                      gf.Adam(1e-3))
    batches = [(np.ascontiguousarray(X[i:i + batch]), np.ascontiguousarray(Y[i:i + batch]))
               for i in range(0, len(X) - batch + 1, batch)]
    return step, batches


def run(step, batches, start, stop):
    """Steps start..stop-1 over the cycled batches; returns the last loss."""
    loss = float("nan")
    n = len(batches)
    for i in range(start, stop):
        x, y = batches[i % n]
        loss = step(x, y)
    return loss


def checkpoints(n):
    marks = [m for m in (10_000, *range(100_000, n, 100_000)) if m < n]
    return marks + [n]


def main(n):
    step, batches = build()
    t0 = time.perf_counter()
    done, readings = 0, []
    for mark in checkpoints(n):
        loss = run(step, batches, done, mark)
        done = mark
        readings.append((mark, *rss()))
        print(f"{mark:>10,} steps  RSS {readings[-1][1] / MIB:8.2f} MiB as read, "
              f"{readings[-1][2] / MIB:8.2f} MiB trimmed  {time.perf_counter() - t0:7.1f} s  "
              f"loss {loss:.3g}", flush=True)
    (first, raw0, trim0), (last, raw1, trim1) = readings[0], readings[-1]
    if last == first:
        print(f"verdict: only one reading ({last:,} steps); run more than 10,000 steps")
        return
    growth, raw_growth = (trim1 - trim0) / MIB, (raw1 - raw0) / MIB
    per_100k = growth / (last - first) * 100_000
    print(f"verdict: {'FLAT' if growth < FLAT_MIB else 'GROWING'} -- RSS after malloc_trim "
          f"{growth:+.2f} MiB from {first:,} to {last:,} steps ({per_100k:+.3f} MiB per 100k "
          f"steps; bound {FLAT_MIB} MiB); as read {raw_growth:+.2f} MiB")


if __name__ == "__main__":
    main(int(sys.argv[1].replace("_", "").replace(",", "")) if len(sys.argv) > 1 else 1_000_000)
