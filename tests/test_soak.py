"""The ten-second soak: the demo model's compiled step (benchmarks/soak.py) keeps its memory
flat over 200k steps once warm.

Bound: 2 MiB of resident-set growth (after a collection and glibc's malloc_trim, so a block
the allocator keeps free is not counted; soak.rss explains the one seen) over 200,000 steps,
i.e. 10.5 bytes a step. Anything a step could leak is bigger -- the smallest CPython object
block is 16 bytes, the smallest glibc chunk 32, a float 24 -- so one leaked object per step
shows as at least 3 MiB; the one-off allocations (compile, buffers, optimiser state, numpy
and CPython caches) happen during the 20k warm-up steps."""
import importlib.util
import os

import pytest

WARMUP = 20_000
STEPS = 200_000          # about 9 s here
BOUND_MIB = 2.0


def _soak():
    path = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "soak.py")
    spec = importlib.util.spec_from_file_location("graphflux_soak", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads /proc/self/statm")
def test_compiled_training_holds_memory_flat():
    soak = _soak()
    step, batches = soak.build()
    soak.run(step, batches, 0, WARMUP)
    _, before = soak.rss()
    soak.run(step, batches, WARMUP, WARMUP + STEPS)
    _, after = soak.rss()
    growth = (after - before) / soak.MIB
    assert growth < BOUND_MIB, (f"RSS grew {growth:.2f} MiB over {STEPS:,} steps "
                                f"({(after - before) / STEPS:.1f} bytes a step)")
