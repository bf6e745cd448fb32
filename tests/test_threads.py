"""The thread pool: kernels split across threads give the serial numbers on awkward shapes
(primes, sizes off the vector width and the register tile), a split non-finite check still
stops the update, concurrent dispatchers and a forked child neither hang nor mix tasks.

Kernels below the static floors (compiler.lower.MIN_SPLIT_ELEMENTS, matmul.MIN_SPLIT_FLOPS)
never split; above them the pool decides at run time. `pool().policy("split")` splits
everything above the floors, `policy("serial")` nothing, so each test runs the same compiled
code both ways in one process and counts the pool's dispatches to know the split happened."""
import os
import signal

import numpy as np
import pytest

import graphflux as gf
from graphflux.compiler.lower import MIN_SPLIT_ELEMENTS
from graphflux.runtime.pool import pool
from helpers import run_together

SPLIT, SERIAL = "split", "serial"


def run_counted(f, *args, policy):
    """(result, dispatches the pool shared while computing it)."""
    with pool().policy(policy):
        before = pool().dispatches()
        out = f(*args)
        return out, pool().dispatches() - before


def assert_split(shared):
    if pool().workers:
        assert shared >= 1, "nothing was split across the threads"
    else:                    # GRAPHFLUX_NUM_THREADS=1: no workers, everything runs here
        assert shared == 0


def test_the_pool_measured_what_a_split_costs_here():
    s = pool().settings()
    assert s["threads"] == pool().workers + 1 >= 1
    if pool().workers:
        assert 0 < s["handoff_us"] <= s["split_fixed_us"] < 10_000
        assert s["ns_per_line_moved"] >= 0 and s["private_cache_kib"] > 0


@pytest.mark.parametrize("shape", [(32771,), (257, 131), (3, 11003), (32771, 1)])
def test_split_elementwise_and_row_reductions_match_the_serial_run_bitwise(shape):
    """Elementwise maps, a broadcast bias, and a reduction along the last axis (rows are
    split, each row is summed by one thread)."""
    assert np.prod(shape) >= MIN_SPLIT_ELEMENTS
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(np.float32)
    bias = rng.standard_normal(shape[-1:]).astype(np.float32)

    @gf.jit
    def f(x, bias):
        h = gf.tanh(x * 1.5 + bias)
        return gf.exp(h) / gf.sum(gf.exp(h), axis=-1, keepdims=True)

    serial, shared = run_counted(f, x, bias, policy=SERIAL)
    assert shared == 0
    split, shared = run_counted(f, x, bias, policy=SPLIT)
    assert_split(shared)
    assert np.asarray(split).tobytes() == np.asarray(serial).tobytes()
    h = np.tanh(x.astype(np.float64) * 1.5 + bias)
    ref = np.exp(h) / np.exp(h).sum(axis=-1, keepdims=True)
    np.testing.assert_allclose(split, ref, rtol=2e-5, atol=1e-6)


def _model(seed):
    rng = np.random.default_rng(seed)
    init = lambda *d: gf.glorot_uniform(*d, rng=rng)  # noqa: E731
    return gf.Chain(gf.Dense(61, 97, gf.tanh, init=init), gf.Dense(97, 89, gf.relu, init=init),
                    gf.Dense(89, 7, init=init))


def _data(n=401, seed=2):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, 61)).astype(np.float32),
            gf.onehotbatch(rng.integers(0, 7, n), range(7)))


def test_a_training_step_split_everywhere_gives_the_serial_parameters_bitwise():
    """Products split by rows and by columns, elementwise and update kernels by ranges, the
    finite checks by ranges: three Adam steps, the same bits as with nothing split."""
    x, y = _data()
    results = []
    for policy in (SERIAL, SPLIT):
        m = _model(3)
        step = gf.compile(lambda x, y: gf.losses.logitcrossentropy(m(x), y), gf.params(m),
                          gf.Adam(1e-2))
        losses, shared = run_counted(lambda: [step(x, y) for _ in range(3)], policy=policy)
        results.append((losses, [p.copy() for p in gf.params(m)], shared))
    (l1, p1, s1), (l2, p2, s2) = results
    assert s1 == 0
    assert_split(s2)
    assert l1 == l2
    for a, b in zip(p1, p2):
        assert a.tobytes() == b.tobytes()


def test_a_split_finite_check_finds_a_nan_in_any_chunk_and_nothing_is_written():
    """The loss is finite, one gradient element is 0/0: whichever chunk of the split check
    sees it, the step refuses to update."""
    w = np.ones(32771, dtype=np.float32)
    step = gf.compile(lambda x: gf.sum(gf.sqrt(w * x)), gf.Params([w]), gf.Descent(0.1))
    x = np.full(32771, 2.0, dtype=np.float32)
    step(x)
    before = w.copy()
    for i in (0, 16500, 32770):                    # first, middle and last chunk
        bad = x.copy()
        bad[i] = 0.0
        with pool().policy(SPLIT), pytest.raises(gf.NonFiniteLoss) as err:
            step(bad)
        assert "gradient" in str(err.value)
        assert w.tobytes() == before.tobytes()


def test_two_python_threads_running_split_steps_at_once_get_the_serial_numbers():
    """Only one dispatch owns the workers at a time: the other runs its chunks itself, so
    both steps finish with their own numbers (no chunk runs twice or is lost)."""
    x, y = _data()
    expected = {}
    for k in range(2):
        m = _model(10 + k)
        step = gf.compile(lambda x, y, m=m: gf.losses.logitcrossentropy(m(x), y),
                          gf.params(m), gf.Descent(0.05))
        with pool().policy(SERIAL):
            expected[k] = [step(x, y) for _ in range(30)]
    steps = []
    for k in range(2):
        m = _model(10 + k)
        steps.append(gf.compile(lambda x, y, m=m: gf.losses.logitcrossentropy(m(x), y),
                                gf.params(m), gf.Descent(0.05)))
        steps[-1].lower(x, y)
    got = {}

    def work(k):
        got[k] = [steps[k](x, y) for _ in range(30)]
    with pool().policy(SPLIT):
        run_together(work)
    assert got == expected


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_runs_steps_serially_instead_of_waiting_for_missing_workers():
    x, y = _data()
    m = _model(5)
    step = gf.compile(lambda x, y: gf.losses.logitcrossentropy(m(x), y), gf.params(m),
                      gf.Descent(0.1))
    with pool().policy(SERIAL):
        expected = step(x, y)
    m2 = _model(5)
    step2 = gf.compile(lambda x, y: gf.losses.logitcrossentropy(m2(x), y), gf.params(m2),
                       gf.Descent(0.1))
    step2.lower(x, y)
    pid = os.fork()
    if pid == 0:                                  # the child: no workers exist here
        signal.alarm(60)
        try:
            with pool().policy(SPLIT):
                ok = step2(x, y) == expected and pool().workers == 0
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status


def test_a_shorter_batch_on_a_batch_symbolic_step_splits_over_its_own_rows():
    """Compiled at 401 rows, run at 350: the split ranges cover the run-time rows only."""
    x, y = _data()
    results = []
    for policy in (SERIAL, SPLIT):
        m = _model(7)
        step = gf.compile(lambda x, y: gf.losses.logitcrossentropy(m(x), y), gf.params(m),
                          gf.Descent(0.1))
        step(x, y)
        (loss, shared) = run_counted(step, x[:350], y[:350], policy=policy)
        results.append((loss, [p.copy() for p in gf.params(m)], shared))
    assert results[0][2] == 0
    assert_split(results[1][2])
    assert results[0][0] == results[1][0]
    for a, b in zip(results[0][1], results[1][1]):
        assert a.tobytes() == b.tobytes()
    m = _model(7)
    eager = gf.compile(lambda x, y: gf.losses.logitcrossentropy(m(x), y), gf.params(m),
                       gf.Descent(0.1), mode="eager")
    eager(x, y)
    assert eager(x[:350], y[:350]) == pytest.approx(results[0][0], rel=1e-5)


@pytest.mark.parametrize("shape", [(4099, 13), (32771,), (9, 4099)])
def test_reductions_over_the_split_loop_add_fixed_chunks_in_order(shape):
    """Column sums and maxima over the first axis (a bias gradient's shape) and a full sum:
    eight chunks fixed by the kernel, whoever runs them, so split and serial agree bitwise;
    a NaN anywhere comes out of the maximum."""
    assert np.prod(shape) >= 32768
    rng = np.random.default_rng(5)
    x = rng.standard_normal(shape).astype(np.float32)

    @gf.jit
    def f(x):
        return gf.sum(gf.tanh(x), axis=0), gf.max(x * 2.0, axis=0)

    serial, shared = run_counted(f, x, policy=SERIAL)
    assert shared == 0
    split, shared = run_counted(f, x, policy=SPLIT)
    assert_split(shared)
    for a, b in zip(serial, split):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    np.testing.assert_allclose(split[0], np.tanh(x.astype(np.float64)).sum(axis=0),
                               rtol=1e-4, atol=1e-5 * shape[0] ** 0.5)
    np.testing.assert_array_equal(split[1], (x * 2.0).max(axis=0))
    bad = x.copy()
    bad[shape[0] // 2] = np.nan
    with pool().policy(SPLIT):
        assert np.isnan(f(bad)[1]).all()


def test_a_shorter_batch_than_the_chunks_sums_only_its_rows():
    """Compiled at 401 rows (chunks of 51), run at 5: most chunks are empty and add zeros."""
    x, y = _data()
    m = _model(11)
    loss = lambda x, y: gf.losses.logitcrossentropy(m(x), y)  # noqa: E731
    grads = gf.compile(loss, gf.params(m))
    grads(x, y)
    with pool().policy(SPLIT):
        l_c, g_c = grads(x[:5], y[:5])
    l_e, g_e = gf.compile(loss, gf.params(m), mode="eager")(x[:5], y[:5])
    assert l_c == pytest.approx(l_e, rel=1e-5)
    for p in gf.params(m):
        np.testing.assert_allclose(g_c[p], g_e[p], rtol=1e-4, atol=1e-6)
