"""One artifact for every batch length (compiler.batch_axis): a step compiled on batches of n
runs any length up to n -- the last partial batch, a batch of one -- with the numbers eager
mode computes at that length; a loss that makes a Python number or a shape out of the batch
length compiles per length and says why; a longer batch compiles once more, at the new length.

Every reference is eager mode (numpy) at the same length, from the same starting point."""
import logging

import numpy as np
import pytest

import graphflux as gf


def compiles(caplog):
    return [r.getMessage() for r in caplog.records
            if r.name == "graphflux" and "compiled step" in r.getMessage()]


def model(seed, dropout=False):
    rng = np.random.default_rng(seed)
    init = lambda *d: gf.glorot_uniform(*d, rng=rng)  # noqa: E731
    layers = [gf.Dense(13, 29, gf.tanh, init=init)]
    if dropout:
        layers.append(gf.Dropout(0.25, seed=3))
    return gf.Chain(*layers, gf.Dense(29, 5, init=init))


def data(n, seed=1):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, 13)).astype(np.float32),
            gf.onehotbatch(rng.integers(0, 5, n), range(5)))


def run(mode, lengths, loss_of, opt, dropout=False, seed=2):
    """Losses and final parameters of steps on batches of the given lengths."""
    m = model(seed, dropout)
    step = gf.compile(loss_of(m), gf.params(m), opt(), mode=mode)
    x, y = data(max(lengths))
    losses = [step(x[:n], y[:n]) for n in lengths]
    return losses, [p.copy() for p in gf.params(m)]


LOSSES = {
    "mse": lambda m: lambda x, y: gf.losses.mse(m(x), y),
    "logitcrossentropy": lambda m: lambda x, y: gf.losses.logitcrossentropy(m(x), y),
    "sum_then_mean_over_batch": lambda m: lambda x, y: gf.mean(gf.sum((m(x) - y) ** 2, axis=1)),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("dropout", [False, True])
def test_shorter_batches_run_on_one_artifact_with_eager_modes_numbers(caplog, name, dropout):
    lengths = [32, 17, 1, 32, 5]
    with caplog.at_level(logging.INFO, logger="graphflux"):
        compiled = run("compiled", lengths, LOSSES[name], lambda: gf.Adam(1e-2), dropout)
    assert len(compiles(caplog)) == 1
    assert "serves batch lengths up to 32" in compiles(caplog)[0]
    eager = run("eager", lengths, LOSSES[name], lambda: gf.Adam(1e-2), dropout)
    # float32 steps against numpy's float32 steps: Adam divides by sqrt(v), which turns a
    # rounding difference of 1e-7 in a small gradient into 1e-5 of the step
    np.testing.assert_allclose(compiled[0], eager[0], rtol=2e-5, atol=1e-6)
    for p, q in zip(compiled[1], eager[1]):
        np.testing.assert_allclose(p, q, rtol=1e-4, atol=1e-5)


def test_a_partial_last_batch_in_train_compiles_once_and_the_mean_uses_its_length(caplog):
    x, y = data(23)
    loader = gf.DataLoader((x, y), batchsize=8)           # 8, 8, 7
    results = {}
    for mode in ("compiled", "eager"):
        m = model(4)
        losses = []
        with caplog.at_level(logging.INFO, logger="graphflux"):
            for _ in gf.epochs(2):
                gf.train(lambda x, y: gf.losses.mse(m(x), y), gf.params(m), loader,
                         gf.Descent(0.1), mode=mode, cb=lambda i: losses.append(i.loss))
        results[mode] = losses, [p.copy() for p in gf.params(m)]
    assert len(compiles(caplog)) == 1
    np.testing.assert_allclose(results["compiled"][0], results["eager"][0], rtol=1e-5)
    for p, q in zip(results["compiled"][1], results["eager"][1]):
        np.testing.assert_allclose(p, q, rtol=1e-5, atol=1e-6)


def test_gradients_without_an_optimiser_at_a_shorter_length():
    m = model(5)
    x, y = data(20)
    loss = LOSSES["logitcrossentropy"](m)
    step = gf.compile(loss, gf.params(m))
    step(x, y)
    l_c, g_c = step(x[:9], y[:9])
    l_e, g_e = gf.compile(loss, gf.params(m), mode="eager")(x[:9], y[:9])
    assert l_c == pytest.approx(l_e, rel=1e-5)
    for p in gf.params(m):
        np.testing.assert_allclose(g_c[p], g_e[p], rtol=1e-4, atol=1e-6)


def test_a_longer_batch_compiles_again_and_then_serves_the_shorter_ones(caplog):
    with caplog.at_level(logging.INFO, logger="graphflux"):
        compiled = run("compiled", [8, 5, 20, 8, 3], LOSSES["mse"], lambda: gf.Descent(0.1))
    messages = compiles(caplog)
    assert len(messages) == 2
    assert "up to 8" in messages[0] and "up to 20" in messages[1]
    eager = run("eager", [8, 5, 20, 8, 3], LOSSES["mse"], lambda: gf.Descent(0.1))
    np.testing.assert_allclose(compiled[0], eager[0], rtol=1e-5)


def test_a_python_number_made_from_the_batch_length_compiles_per_length_and_says_why(caplog):
    """n / (n - 1), as in an unbiased variance: neither k / n nor k * n, so a run-time
    length cannot stand in for it."""
    def loss_of(m):
        def loss(x, y):
            n = x.shape[0]
            return gf.sum((m(x) - y) ** 2) * (1.0 / (n - 1))
        return loss
    with caplog.at_level(logging.INFO, logger="graphflux"):
        compiled = run("compiled", [12, 7, 12], loss_of, lambda: gf.Descent(0.05))
    messages = compiles(caplog)
    assert len(messages) == 2
    assert "per batch length" in messages[0] and "neither k / n nor k * n" in messages[0]
    eager = run("eager", [12, 7, 12], loss_of, lambda: gf.Descent(0.05))
    np.testing.assert_allclose(compiled[0], eager[0], rtol=1e-5)


def test_a_reshape_that_folds_the_batch_axis_compiles_per_length(caplog):
    def loss_of(m):
        return lambda x, y: gf.mean(gf.reshape(m(x) - y, (-1,)) ** 2)
    with caplog.at_level(logging.INFO, logger="graphflux"):
        compiled = run("compiled", [6, 4], loss_of, lambda: gf.Descent(0.05))
    messages = compiles(caplog)
    assert len(messages) == 2 and "per batch length" in messages[0]
    eager = run("eager", [6, 4], loss_of, lambda: gf.Descent(0.05))
    np.testing.assert_allclose(compiled[0], eager[0], rtol=1e-5)


def test_a_nan_in_a_shorter_batch_names_its_item_and_writes_nothing():
    m = model(6)
    x, y = data(16)
    step = gf.compile(LOSSES["mse"](m), gf.params(m), gf.Adam(1e-3))
    step(x, y)
    before = [p.copy() for p in gf.params(m)]
    bad = x[:7].copy()
    bad[4, 2] = np.nan
    with pytest.raises(gf.NonFiniteLoss) as err:
        step(bad, y[:7])
    assert err.value.what == "loss"
    for p, q in zip(gf.params(m), before):
        assert p.tobytes() == q.tobytes()
    assert np.isfinite(step(x[:7], y[:7]))


def jit_compiles(caplog):
    return [r.getMessage() for r in caplog.records
            if r.name == "graphflux" and "jit function" in r.getMessage()
            and "compiled" in r.getMessage()]


def test_a_jitted_model_runs_any_shorter_batch_on_one_artifact(caplog):
    m = gf.Chain(model(8), gf.softmax)
    x, _ = data(40)
    f = gf.jit(m)
    col_mean = gf.jit(lambda x: gf.mean(m(x), axis=0))       # a mean over the batch: 1/n
    with caplog.at_level(logging.INFO, logger="graphflux"):
        for n in (40, 23, 1, 40):
            out = f(x[:n])
            assert out.shape == (n, 5)
            np.testing.assert_allclose(out, m(x[:n]), rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(col_mean(x[:n]), m(x[:n]).mean(axis=0), rtol=1e-5,
                                       atol=1e-7)
    assert len(jit_compiles(caplog)) == 2
    assert all("serves batch lengths up to 40" in msg for msg in jit_compiles(caplog))


def test_a_jitted_output_with_the_batch_length_in_another_axis_compiles_per_length(caplog):
    m = model(9)
    f = gf.jit(lambda x: gf.transpose(m(x)))
    x, _ = data(12)
    with caplog.at_level(logging.INFO, logger="graphflux"):
        for n in (12, 5):
            np.testing.assert_allclose(f(x[:n]), m(x[:n]).T, rtol=1e-5, atol=1e-7)
    messages = jit_compiles(caplog)
    assert len(messages) == 2 and "an axis other than its first" in messages[0]


def test_flatten_keeps_the_batch_axis_and_stays_batch_symbolic(caplog):
    """`gf.flatten` folds the axes after the first (C order), so a model on images serves
    every batch length from one artifact; numpy arrays flatten the same way."""
    rng = np.random.default_rng(7)
    w = rng.standard_normal((3, 2 * 4 * 5)).astype(np.float32)
    x = rng.standard_normal((9, 2, 4, 5)).astype(np.float32)
    assert gf.flatten(x).shape == (9, 40)
    np.testing.assert_array_equal(gf.flatten(x), x.reshape(9, -1))
    f = gf.jit(lambda x: gf.flatten(x) @ gf.transpose(w))
    with caplog.at_level(logging.INFO, logger="graphflux"):
        for n in (9, 4):
            np.testing.assert_allclose(f(x[:n]), x[:n].reshape(n, -1) @ w.T, rtol=1e-5,
                                       atol=1e-6)
    assert len(jit_compiles(caplog)) == 1


def test_python_that_branches_on_the_batch_length_is_run_at_every_new_length(caplog):
    """A loss that takes another path below some length, and one that refuses a batch of one:
    an artifact compiled at 16 is not reused where the graph differs, and the check runs."""
    def loss_of(m):
        def loss(x, y):
            z = m(x)
            if x.shape[0] < 4:                   # another graph for short batches
                z = z * 2.0
            return gf.losses.mse(z, y)
        return loss
    with caplog.at_level(logging.INFO, logger="graphflux"):
        compiled = run("compiled", [16, 9, 3, 16], loss_of, lambda: gf.Descent(0.05))
    messages = compiles(caplog)
    assert len(messages) == 2 and "at batch length 3" in messages[1]
    eager = run("eager", [16, 9, 3, 16], loss_of, lambda: gf.Descent(0.05))
    np.testing.assert_allclose(compiled[0], eager[0], rtol=1e-5)

    def refusing(m):
        def loss(x, y):
            if x.shape[0] < 2:
                raise ValueError("batches of one are not allowed here")
            return gf.losses.mse(m(x), y)
        return loss
    m = model(12)
    step = gf.compile(refusing(m), gf.params(m), gf.Descent(0.05))
    x, y = data(8)
    step(x, y)
    with pytest.raises(ValueError, match="batches of one"):
        step(x[:1], y[:1])


def test_a_jitted_function_that_branches_on_the_length_is_not_reused_where_it_differs():
    m = model(13)
    f = gf.jit(lambda x: m(x) * (2.0 if x.shape[0] < 4 else 1.0))
    x, _ = data(10)
    for n in (10, 6, 2):
        np.testing.assert_allclose(f(x[:n]), m(x[:n]) * (2.0 if n < 4 else 1.0), rtol=1e-5,
                                   atol=1e-7)
