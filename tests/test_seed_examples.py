"""The examples of the Flux training docs (notes/seed-flux-training-docs.txt), translated to
graphflux's batch-first API and checked against independent numpy computations.

Flux's `Dense(784 => 32, σ)` is `gf.Dense(784, 32, gf.σ)`; observations run along axis 0. A
single observation may stay a vector, as in the docs: `x = rand(784); y = rand(10)`."""
import inspect
import logging
import time

import numpy as np
import pytest

import graphflux as gf


# ---- an independent numpy implementation of the seed's model --------------------------------
# m = Chain(Dense(784 => 32, σ), Dense(32 => 10), softmax); loss(x, y) = mse(m(x), y)

def np_sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def np_softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np_forward(params, x):
    W1, b1, W2, b2 = params
    h = np_sigmoid(x @ W1.T + b1)
    p = np_softmax(h @ W2.T + b2)
    return h, p


def np_loss(params, x, y):
    _, p = np_forward(params, x)
    return float(np.mean((p - y) ** 2))


def np_loss_and_grads(params, x, y):
    """mse(softmax(σ(x W1ᵀ + b1) W2ᵀ + b2), y) and its gradient by hand-written backprop."""
    W1, b1, W2, b2 = params
    h, p = np_forward(params, x)
    loss = float(np.mean((p - y) ** 2))
    dp = 2.0 * (p - y) / p.size                                   # d mean((p-y)^2) / dp
    dz = p * (dp - np.sum(dp * p, axis=-1, keepdims=True))        # softmax VJP
    dW2 = dz.T @ h
    db2 = dz.sum(axis=0)
    dh = dz @ W2
    da = dh * h * (1.0 - h)                                        # σ' = σ(1 - σ)
    dW1 = da.T @ x
    db1 = da.sum(axis=0)
    return loss, [dW1, db1, dW2, db2]


def np_sgd(params, x, y, eta, steps):
    """`steps` steps of plain gradient descent in float64; returns (losses before each step,
    final params)."""
    ps = [np.asarray(p, dtype=np.float64).copy() for p in params]
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    losses = []
    for _ in range(steps):
        loss, gs = np_loss_and_grads(ps, x, y)
        losses.append(loss)
        ps = [p - eta * g for p, g in zip(ps, gs)]
    return losses, ps


def seed_model(seed=0, n_in=784, n_hidden=32, n_out=10, dtype=np.float32):
    rng = np.random.default_rng(seed)

    def init(*dims):
        return gf.glorot_uniform(*dims, rng=rng, dtype=dtype)
    return gf.Chain(gf.Dense(n_in, n_hidden, gf.σ, init=init),
                    gf.Dense(n_hidden, n_out, init=init), gf.softmax)


def seed_loss(m):
    def loss(x, y):
        return gf.losses.mse(m(x), y)
    return loss


def seed_data(seed=1, n=1, n_in=784, n_out=10, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return rng.random((n, n_in)).astype(dtype), rng.random((n, n_out)).astype(dtype)


def snapshot(ps):
    return [p.copy() for p in ps]


# ---- the seed's objective, trained with train() ----------------------------------------------

def test_seed_model_train_three_steps_matches_numpy_sgd():
    m = seed_model()
    loss = seed_loss(m)
    ps = gf.params(m)
    x, y = seed_data()
    assert x.shape == (1, 784) and x.dtype == np.float32
    initial = snapshot(ps)
    ref_losses, ref_params = np_sgd(initial, x, y, eta=0.1, steps=3)

    seen = []
    gf.train(loss, ps, [(x, y)] * 3, gf.Descent(0.1), cb=lambda info: seen.append(info.loss))

    # the loss reported at each step is the loss before that step's update
    assert len(seen) == 3
    np.testing.assert_allclose(seen, ref_losses, rtol=1e-4)
    # and it decreases, step after step, and after the last update too
    final = float(loss(x, y))
    np.testing.assert_allclose(final, np_loss(ref_params, x, y), rtol=1e-4)
    assert seen[0] > seen[1] > seen[2] > final
    # parameters follow numpy's SGD
    for p, r, p0 in zip(ps, ref_params, initial):
        assert p.dtype == np.float32
        np.testing.assert_allclose(p, r, rtol=0, atol=1e-5)
        assert not np.array_equal(p, p0)


@pytest.mark.parametrize("mode", ["compiled", "eager"])
def test_the_docs_vector_example_trains_as_numpy_sgd_does(mode):
    """`x = rand(784); y = rand(10); data = [(x, y)]` and the docs' `zip(xs, ys)`: a single
    observation is a vector (Dense maps it to a vector), the arguments differ in length."""
    m = seed_model(seed=3)
    loss = seed_loss(m)
    ps = gf.params(m)
    rng = np.random.default_rng(4)
    x, y = rng.random(784, dtype=np.float32), rng.random(10, dtype=np.float32)
    assert m(x).shape == (10,)
    _, ref_params = np_sgd(snapshot(ps), x[None], y[None], eta=0.1, steps=2)
    gf.train(loss, ps, [(x, y)] * 2, gf.Descent(0.1), mode=mode)
    for p, r in zip(ps, ref_params):
        np.testing.assert_allclose(p, r, rtol=0, atol=1e-5)
    xs = [rng.random(784, dtype=np.float32) for _ in range(4)]
    ys = [rng.random(10, dtype=np.float32) for _ in range(4)]
    ref_params, ref_losses = snapshot(ps), []
    for xi, yi in zip(xs, ys):                 # one numpy SGD step per observation
        (loss_i,), ref_params = np_sgd(ref_params, xi[None], yi[None], eta=0.1, steps=1)
        ref_losses.append(loss_i)
    seen = []
    gf.train(loss, ps, zip(xs, ys), gf.Descent(0.1), mode=mode,
             cb=lambda info: seen.append(info.loss))
    np.testing.assert_allclose(seen, ref_losses, rtol=1e-4)
    for p, r in zip(ps, ref_params):
        np.testing.assert_allclose(p, r, rtol=0, atol=1e-5)


def test_a_vector_observation_of_the_wrong_length_names_the_op_and_line():
    m = seed_model(seed=5)
    ps = gf.params(m)
    before = snapshot(ps)

    def loss(x, y):
        return gf.losses.mse(m(x), y)          # (10,) against (9,)
    line = loss.__code__.co_firstlineno + 1
    with pytest.raises(gf.GraphfluxError) as err:
        gf.train(loss, ps, [(np.ones(784, np.float32), np.ones(9, np.float32))],
                 gf.Descent(0.1))
    message = str(err.value)
    assert "(10,)" in message and "(9,)" in message
    assert f"test_seed_examples.py:{line}" in message
    for p, q in zip(ps, before):
        assert p.tobytes() == q.tobytes()


def test_params_hold_references_not_copies():
    m = seed_model(seed=3)
    loss = seed_loss(m)
    ps = gf.params(m)
    # Params of Chain(Dense, Dense, softmax): [W1, b1, W2, b2], the layers' own arrays
    assert len(ps) == 4
    assert ps[0] is m[0].weight and ps[1] is m[0].bias
    assert ps[2] is m[1].weight and ps[3] is m[1].bias
    assert [p.shape for p in ps] == [(32, 784), (32,), (10, 32), (10,)]
    x, y = seed_data(seed=4)
    before = np.asarray(m(x)).copy()
    gf.train(loss, ps, [(x, y)] * 3, gf.Descent(0.1))
    # still the very same arrays, now holding new values ...
    assert ps[0] is m[0].weight and ps[3] is m[1].bias
    after = np.asarray(m(x))
    assert not np.allclose(after, before)
    # ... which the model uses: m(x) equals the numpy forward with the updated arrays
    _, expected = np_forward([np.asarray(p, np.float64) for p in ps], x.astype(np.float64))
    np.testing.assert_allclose(after, expected, rtol=1e-5, atol=1e-6)


# ---- the seed's params examples ------------------------------------------------------------

def test_params_of_chain_with_softmax():
    m = gf.Chain(gf.Dense(3, 2), gf.softmax)
    ps = gf.params(m)
    assert len(ps) == 2
    assert [p.shape for p in ps] == [(2, 3), (2,)]
    assert ps[0] is m[0].weight and ps[1] is m[0].bias
    assert ps[0].dtype == np.float32
    np.testing.assert_array_equal(ps[1], np.zeros(2, np.float32))
    # glorot_uniform: U(±sqrt(6 / (in + out)))
    assert np.all(np.abs(ps[0]) <= np.sqrt(6 / 5))


def test_params_of_arrays():
    a, b = np.array([1, 2, 3]), np.array([4])
    ps = gf.params(a, b)
    assert len(ps) == 2
    assert ps[0] is a and ps[1] is b
    assert [list(p) for p in ps] == [[1, 2, 3], [4]]


def test_params_unpacks_list_of_arrays():
    a, b = np.array([1, 2, 3]), np.array([4])
    ps = gf.params([a, b])
    assert len(ps) == 2
    assert ps[0] is a and ps[1] is b


def test_params_ignores_scalars_and_functions_and_unpacks_dicts():
    c = np.array([[2, 2]])
    d = np.array([3, 3, 3])
    ps = gf.params(1, c, {"alpha": d, "beta": 4, "gamma": np.sin})
    assert len(ps) == 2
    assert ps[0] is c and ps[1] is d


def test_params_dedup_by_identity():
    a = np.zeros(3)
    ps = gf.params(a, a, [a], {"again": a})
    assert len(ps) == 1 and ps[0] is a
    # tied layers: the same Dense twice contributes its arrays once
    d = gf.Dense(4, 4)
    ps = gf.params(gf.Chain(d, d))
    assert len(ps) == 2
    # equal values in different arrays are different parameters
    b = a.copy()
    assert len(gf.params(a, b)) == 2


def test_params_membership_is_by_identity():
    a = np.array([1.0, 2.0, 3.0])
    ps = gf.params(a)
    assert a in ps
    assert a.copy() not in ps
    assert np.array([1.0, 2.0, 3.0]) not in ps
    other = np.zeros(2)
    ps.add(other)
    assert other in ps and len(ps) == 2
    ps.add(other)
    assert len(ps) == 2


def test_params_of_chain_slice_shares_layers():
    m = seed_model(seed=5)
    head = gf.params(m[:1])     # Flux: params(m[1:end-2]) trains only those layers
    assert len(head) == 2
    assert head[0] is m[0].weight and head[1] is m[0].bias
    assert m[1].weight not in head


# ---- callbacks ------------------------------------------------------------------------------

def test_callback_called_once_per_data_item():
    m = seed_model(seed=6)
    loss = seed_loss(m)
    x, y = seed_data(seed=7)
    count = [0]

    def cb():
        count[0] += 1
    gf.train(loss, gf.params(m), [(x, y)] * 4, gf.Descent(0.1), cb=cb)
    assert count[0] == 4


def test_callback_list_called_in_order():
    m = seed_model(seed=8)
    loss = seed_loss(m)
    x, y = seed_data(seed=9)
    calls = []
    cbs = [lambda: calls.append("a"), lambda info: calls.append(("b", info.step)),
           lambda: calls.append("c")]
    gf.train(loss, gf.params(m), [(x, y)] * 3, gf.Descent(0.1), cb=cbs)
    assert calls == ["a", ("b", 1), "c", "a", ("b", 2), "c", "a", ("b", 3), "c"]


def test_callback_with_one_argument_gets_stepinfo():
    m = seed_model(seed=10)
    loss = seed_loss(m)
    ps = gf.params(m)
    rng = np.random.default_rng(11)
    data = [(rng.random((1, 784)).astype(np.float32), rng.random((1, 10)).astype(np.float32))
            for _ in range(3)]
    before = [snapshot(ps)]     # parameters before each step
    infos = []

    def cb(info):
        infos.append(info)
        before.append(snapshot(ps))
    gf.train(loss, ps, data, gf.Descent(0.1), cb=cb)
    assert len(infos) == 3
    for k, info in enumerate(infos):
        assert isinstance(info, gf.StepInfo)
        assert info.step == k + 1
        assert info.index == k
        assert isinstance(info.loss, float)
        x, y = data[k]
        expected = np_loss([p.astype(np.float64) for p in before[k]], x.astype(np.float64), y)
        np.testing.assert_allclose(info.loss, expected, rtol=1e-4)
        # the update happened before the callback: the parameters differ from before the step
        assert not np.array_equal(before[k + 1][0], before[k][0])


# ---- throttle ---------------------------------------------------------------------------------

def test_throttle_runs_once_for_quick_calls_then_again_after_timeout():
    count = [0]

    def g():
        count[0] += 1
        return count[0]
    f = gf.throttle(g, 1.0)
    results = [f(), f(), f()]
    assert count[0] == 1                  # leading: the first call ran at once, the rest dropped
    assert results == [1, 1, 1]           # each call returns the latest stored result
    time.sleep(1.05)
    assert count[0] == 1                  # trailing=False: nothing ran at the end of the window
    assert f() == 2
    assert count[0] == 2


def test_throttle_trailing_only_defers_the_first_call():
    count = [0]

    def g():
        count[0] += 1
    f = gf.throttle(g, 0.25, leading=False, trailing=True)
    f()
    f()
    assert count[0] == 0
    time.sleep(0.6)
    assert count[0] == 1


def test_throttle_leading_and_trailing_last_arguments_win():
    seen = []
    f = gf.throttle(lambda v: seen.append(v), 0.25, leading=True, trailing=True)
    f(1)
    f(2)
    f(3)
    assert seen == [1]
    time.sleep(0.6)
    assert seen == [1, 3]


def test_throttle_keeps_signature_so_train_passes_stepinfo():
    got = []

    def g(info):
        got.append(info)
    f = gf.throttle(g, 100.0)
    assert list(inspect.signature(f).parameters) == ["info"]
    m = seed_model(seed=12)
    x, y = seed_data(seed=13)
    gf.train(seed_loss(m), gf.params(m), [(x, y)] * 3, gf.Descent(0.1), cb=f)
    assert len(got) == 1 and isinstance(got[0], gf.StepInfo) and got[0].step == 1


# ---- stop -------------------------------------------------------------------------------------

def test_stop_from_callback_ends_training_after_current_step():
    m = seed_model(seed=14)
    ps = gf.params(m)
    x, y = seed_data(seed=15)
    steps = []
    at_stop = []

    def counter(info):
        steps.append(info.step)

    def stopper(info):
        if info.step == 2:
            at_stop.extend(snapshot(ps))
            gf.stop()
    initial = snapshot(ps)
    gf.train(seed_loss(m), ps, [(x, y)] * 6, gf.Descent(0.1), cb=[counter, stopper])
    assert steps == [1, 2]
    # the current (second) step's update was applied, and nothing after it
    _, ref = np_sgd(initial, x, y, eta=0.1, steps=2)
    for p, s, r in zip(ps, at_stop, ref):
        np.testing.assert_array_equal(p, s)
        np.testing.assert_allclose(p, r, rtol=0, atol=1e-5)


# ---- epochs -----------------------------------------------------------------------------------

def test_epochs_logs_each_epoch_at_info(caplog):
    with caplog.at_level(logging.INFO, logger="graphflux"):
        seen = list(gf.epochs(2))
    assert seen == [1, 2]
    epoch_records = [r for r in caplog.records
                     if r.name == "graphflux" and r.getMessage().startswith("Epoch")]
    assert [r.getMessage() for r in epoch_records] == ["Epoch 1", "Epoch 2"]
    assert all(r.levelno == logging.INFO for r in epoch_records)


def test_epochs_around_train_runs_the_data_each_epoch(caplog):
    m = seed_model(seed=16)
    ps = gf.params(m)
    loss = seed_loss(m)
    x, y = seed_data(seed=17)
    opt = gf.Descent(0.1)
    steps = []
    initial = snapshot(ps)
    with caplog.at_level(logging.INFO, logger="graphflux"):
        for _ in gf.epochs(2):
            gf.train(loss, ps, [(x, y)], opt, cb=lambda info: steps.append(info.step))
    messages = [r.getMessage() for r in caplog.records if r.name == "graphflux"]
    assert [s for s in messages if s.startswith("Epoch")] == ["Epoch 1", "Epoch 2"]
    assert messages.index("Epoch 1") < messages.index("Epoch 2")
    assert steps == [1, 1]
    _, ref = np_sgd(initial, x, y, eta=0.1, steps=2)
    for p, r in zip(ps, ref):
        np.testing.assert_allclose(p, r, rtol=0, atol=1e-5)


# ---- custom training loops: gradient / pullback + update, checked by finite differences ------

def f64_model(seed):
    rng = np.random.default_rng(seed)

    def init(*dims):
        return gf.glorot_uniform(*dims, rng=rng, dtype=np.float64)
    return gf.Chain(gf.Dense(6, 5, gf.σ, init=init), gf.Dense(5, 4, init=init), gf.softmax)


def f64_data(seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((3, 6)), rng.random((3, 4))


def finite_differences(params, x, y, h=1e-6):
    params = [p.copy() for p in params]
    grads = []
    for p in params:
        g = np.zeros_like(p)
        for i in np.ndindex(p.shape):
            old = p[i]
            p[i] = old + h
            up = np_loss(params, x, y)
            p[i] = old - h
            down = np_loss(params, x, y)
            p[i] = old
            g[i] = (up - down) / (2 * h)
        grads.append(g)
    return grads


def test_f64_model_has_f64_bias():
    m = f64_model(0)
    assert [p.dtype for p in gf.params(m)] == [np.float64] * 4


@pytest.mark.parametrize("mode", ["compiled", "eager"])
def test_custom_loop_with_gradient_and_update(mode):
    m = f64_model(20)
    loss = seed_loss(m)
    ps = gf.params(m)
    x, y = f64_data(21)
    opt = gf.Descent(0.1)
    initial = current = snapshot(ps)
    for _ in range(3):
        fd = finite_differences(current, x, y)
        _, manual = np_loss_and_grads(current, x, y)
        gs = gf.gradient(lambda: loss(x, y), ps, mode=mode)
        assert isinstance(gs, gf.Grads)
        assert len(gs.keys()) == len(ps) and all(a is b for a, b in zip(gs.keys(), ps))
        for p, g_fd, g_man in zip(ps, fd, manual):
            g = gs[p]
            assert g is not None and g.shape == p.shape and g.dtype == np.float64
            np.testing.assert_allclose(g, g_fd, rtol=1e-5, atol=1e-9)
            np.testing.assert_allclose(g, g_man, rtol=1e-9, atol=1e-12)
        gf.update(opt, ps, gs)
        # Descent: x -= η g, in place
        for p, c in zip(ps, current):
            np.testing.assert_allclose(p, c - 0.1 * gs[p], rtol=1e-12, atol=1e-15)
        assert ps[0] is m[0].weight
        current = snapshot(ps)
    _, ref = np_sgd(initial, x, y, eta=0.1, steps=3)
    for p, r in zip(ps, ref):
        np.testing.assert_allclose(p, r, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", ["compiled", "eager"])
def test_custom_loop_with_pullback(mode):
    m = f64_model(30)
    loss = seed_loss(m)
    ps = gf.params(m)
    x, y = f64_data(31)
    opt = gf.Descent(0.1)
    losses = []
    for _ in range(2):
        current = snapshot(ps)
        fd = finite_differences(current, x, y)
        val, back = gf.pullback(lambda: loss(x, y), ps, mode=mode)
        losses.append(val)
        np.testing.assert_allclose(val, np_loss(current, x, y), rtol=1e-12)
        gs = back(1.0)
        gs2 = back(2.0)
        for p, g_fd in zip(ps, fd):
            np.testing.assert_allclose(gs[p], g_fd, rtol=1e-5, atol=1e-9)
            np.testing.assert_allclose(gs2[p], 2 * gs[p], rtol=1e-14, atol=0)
        gf.update(opt, ps, gs)
        for p, c, g_fd in zip(ps, current, fd):
            np.testing.assert_allclose(p, c - 0.1 * g_fd, rtol=1e-7, atol=1e-10)
    assert losses[1] < losses[0]
