"""gf.train and gf.DataLoader: batching, splatting, compilation per signature, errors that leave
everything untouched, and compiled vs eager trajectories (Flux semantics, batch-first)."""
import logging

import numpy as np
import pytest

import graphflux as gf


def snapshot(ps):
    return [p.copy() for p in ps]


def assert_unchanged(ps, saved):
    for p, s in zip(ps, saved):
        assert np.array_equal(p, s)


def compile_records(caplog):
    return [r for r in caplog.records
            if r.name == "graphflux" and "compiled step" in r.getMessage()]


# ---- DataLoader -------------------------------------------------------------------------------

def test_dataloader_flux_example():
    X = np.arange(1, 11).reshape(5, 2)
    Y = np.arange(1, 6)
    d = gf.DataLoader((X, Y), batchsize=2)
    assert len(d) == 3
    batches = list(d)
    expected = [([[1, 2], [3, 4]], [1, 2]), ([[5, 6], [7, 8]], [3, 4]), ([[9, 10]], [5])]
    assert len(batches) == 3
    for (bx, by), (ex, ey) in zip(batches, expected):
        assert isinstance(bx, np.ndarray) and isinstance(by, np.ndarray)
        np.testing.assert_array_equal(bx, np.array(ex))
        np.testing.assert_array_equal(by, np.array(ey))
        assert bx.ndim == 2 and by.ndim == 1
        # DataLoader never casts
        assert bx.dtype == X.dtype and by.dtype == Y.dtype
    # iterating again gives the same batches (no shuffle)
    for (bx, by), (cx, cy) in zip(batches, d):
        np.testing.assert_array_equal(bx, cx)
        np.testing.assert_array_equal(by, cy)


def test_dataloader_single_array_and_batchsize_one_keeps_batch_axis():
    X = np.arange(12.0).reshape(6, 2)
    d = gf.DataLoader(X)
    assert len(d) == 6
    batches = list(d)
    assert all(isinstance(b, np.ndarray) and b.shape == (1, 2) for b in batches)
    np.testing.assert_array_equal(np.concatenate(batches), X)


def test_dataloader_len_and_partial_false_drops_last():
    X = np.arange(1, 11).reshape(5, 2)
    Y = np.arange(1, 6)
    d = gf.DataLoader((X, Y), batchsize=2, partial=False)
    assert len(d) == 2
    batches = list(d)
    assert len(batches) == 2
    assert [b[0].shape for b in batches] == [(2, 2), (2, 2)]
    np.testing.assert_array_equal(batches[1][1], [3, 4])
    assert len(gf.DataLoader((X, Y), batchsize=3)) == 2
    assert len(gf.DataLoader((X, Y), batchsize=3, partial=False)) == 1
    assert len(gf.DataLoader((X, Y), batchsize=5)) == 1


def test_dataloader_shuffle_reshuffles_every_iteration():
    n = 20
    X = np.arange(2 * n).reshape(n, 2)
    Y = np.arange(n) * 10
    d = gf.DataLoader((X, Y), batchsize=3, shuffle=True, rng=42)
    orders = []
    for _ in range(2):
        batches = list(d)
        assert len(batches) == len(d) == 7
        assert [len(b[1]) for b in batches] == [3] * 6 + [2]
        xs = np.concatenate([b[0] for b in batches])
        ys = np.concatenate([b[1] for b in batches])
        order = xs[:, 0] // 2
        # a permutation covering every row once, x and y rows kept together
        assert sorted(order.tolist()) == list(range(n))
        np.testing.assert_array_equal(xs, X[order])
        np.testing.assert_array_equal(ys, Y[order])
        orders.append(order)
    assert not np.array_equal(orders[0], orders[1])
    assert not np.array_equal(orders[0], np.arange(n))
    # the same int seed gives the same sequence of shuffles
    again = gf.DataLoader((X, Y), batchsize=3, shuffle=True, rng=42)
    first = np.concatenate([b[0] for b in again])[:, 0] // 2
    np.testing.assert_array_equal(first, orders[0])
    # a Generator is accepted too
    g = gf.DataLoader((X, Y), batchsize=3, shuffle=True, rng=np.random.default_rng(42))
    np.testing.assert_array_equal(np.concatenate([b[0] for b in g])[:, 0] // 2, orders[0])


def test_dataloader_dict_yields_dicts():
    X = np.arange(1, 11).reshape(5, 2)
    Y = np.arange(1, 6)
    d = gf.DataLoader({"x": X, "y": Y}, batchsize=2)
    batches = list(d)
    assert len(batches) == 3
    assert all(isinstance(b, dict) and set(b) == {"x", "y"} for b in batches)
    np.testing.assert_array_equal(batches[0]["x"], [[1, 2], [3, 4]])
    np.testing.assert_array_equal(batches[0]["y"], [1, 2])
    np.testing.assert_array_equal(batches[2]["x"], [[9, 10]])
    np.testing.assert_array_equal(batches[2]["y"], [5])


def test_dataloader_different_lengths_raise_at_construction():
    X = np.zeros((5, 2))
    Y = np.zeros(4)
    with pytest.raises(gf.GraphfluxError) as e:
        gf.DataLoader((X, Y), batchsize=2)
    assert "(5, 2)" in str(e.value) and "(4,)" in str(e.value)
    with pytest.raises(gf.GraphfluxError):
        gf.DataLoader({"x": X, "y": Y})


# ---- what train passes to the loss ------------------------------------------------------------

def small_model(seed, n_in, n_hidden, n_out, dtype=np.float32):
    rng = np.random.default_rng(seed)

    def init(*dims):
        return gf.glorot_uniform(*dims, rng=rng, dtype=dtype)
    return gf.Chain(gf.Dense(n_in, n_hidden, gf.tanh, init=init), gf.Dense(n_hidden, n_out,
                                                                          init=init))


def np_small_forward(params, x):
    W1, b1, W2, b2 = [np.asarray(p, np.float64) for p in params]
    return np.tanh(np.asarray(x, np.float64) @ W1.T + b1) @ W2.T + b2


@pytest.mark.parametrize("mode", ["compiled", "eager"])
def test_tuple_items_are_splatted(mode):
    m = small_model(0, 3, 4, 2)
    ps = gf.params(m)
    rng = np.random.default_rng(1)
    data = [(rng.random((5, 3), dtype=np.float32), rng.random((5, 2), dtype=np.float32))
            for _ in range(2)]
    received = []

    def loss(x, y):
        received.append((tuple(x.shape), tuple(y.shape)))
        return gf.losses.mse(m(x), y)
    before = snapshot(ps)
    infos = []
    gf.train(loss, ps, data, gf.Descent(0.1), mode=mode, cb=lambda i: infos.append(i))
    # compiled, the first compile also traces the loss at batch length n + 1: whether one
    # artifact serves every batch length (compiler.batch_axis)
    assert received[0] == ((5, 3), (5, 2))
    assert set(received) <= {((5, 3), (5, 2)), ((6, 3), (6, 2))}
    x, y = data[0]
    np.testing.assert_allclose(infos[0].loss, np.mean((np_small_forward(before, x) - y) ** 2),
                               rtol=1e-5)


@pytest.mark.parametrize("mode", ["compiled", "eager"])
def test_single_array_items_are_passed_as_one_argument(mode):
    m = small_model(2, 3, 4, 2)
    ps = gf.params(m)
    X = np.random.default_rng(3).random((6, 3), dtype=np.float32)
    received = []

    def loss(x):
        received.append(tuple(x.shape))
        return gf.mean(m(x) * m(x))
    before = snapshot(ps)
    infos = []
    gf.train(loss, ps, gf.DataLoader(X, batchsize=3), gf.Descent(0.1), mode=mode,
             cb=lambda i: infos.append(i))
    assert received[0] == (3, 3) and set(received) <= {(3, 3), (4, 3)}
    assert len(infos) == 2
    np.testing.assert_allclose(infos[0].loss, np.mean(np_small_forward(before, X[:3]) ** 2),
                               rtol=1e-5)


def test_last_partial_batch_runs_on_the_first_batch_compile(caplog):
    m = small_model(4, 7, 3, 2)          # shapes used by no other test: nothing cached yet
    ps = gf.params(m)
    rng = np.random.default_rng(5)
    X = rng.random((10, 7), dtype=np.float32)
    Y = rng.random((10, 2), dtype=np.float32)
    loader = gf.DataLoader((X, Y), batchsize=4)
    assert [len(b[0]) for b in loader] == [4, 4, 2]

    def loss(x, y):
        return gf.losses.mse(m(x), y)
    opt = gf.Descent(0.05)
    steps = []
    with caplog.at_level(logging.INFO, logger="graphflux"):
        for _ in gf.epochs(3):
            gf.train(loss, ps, loader, opt, cb=lambda i: steps.append(i.step))
    assert steps == [1, 2, 3] * 3
    assert len(compile_records(caplog)) == 1


# ---- errors leave everything untouched ----------------------------------------------------------

def test_shape_mismatch_in_traced_loss_names_op_shapes_and_line():
    W = np.ones((3, 2), dtype=np.float32)
    ps = gf.params(W)
    saved = snapshot(ps)
    x = np.ones((4, 5), dtype=np.float32)

    def loss(x):
        return gf.mean(x @ W)       # (4, 5) @ (3, 2): inner dimensions differ
    line = loss.__code__.co_firstlineno + 1
    with pytest.raises(gf.GraphfluxError) as e:
        gf.train(loss, ps, [x], gf.Descent(0.1))
    msg = str(e.value)
    assert "matmul" in msg
    assert "(4, 5)" in msg and "(3, 2)" in msg
    assert f"test_training_api.py:{line}" in msg
    assert isinstance(e.value, ValueError)
    assert_unchanged(ps, saved)


def test_python_if_on_traced_value_mentions_control_flow():
    layer = gf.Dense(3, 2)
    ps = gf.params(layer)
    saved = snapshot(ps)
    x = np.ones((4, 3), dtype=np.float32)

    def loss(x):
        s = gf.sum(layer(x))
        if s > 0:
            return s
        return -s
    with pytest.raises(gf.GraphfluxError) as e:
        gf.train(loss, ps, [x], gf.Descent(0.1))
    assert "control flow" in str(e.value)
    assert "test_training_api.py:" in str(e.value)
    assert_unchanged(ps, saved)


def test_integer_parameter_refused_before_compilation(caplog):
    W = np.array([[1, 2, 3]])
    ps = gf.params(W)
    x = np.ones((2, 3), dtype=np.float32)

    def loss(x):
        return gf.mean(x * W)
    with caplog.at_level(logging.INFO, logger="graphflux"):
        with pytest.raises(gf.GraphfluxError) as e:
            gf.train(loss, ps, [x], gf.Descent(0.1))
    msg = str(e.value)
    assert "int64" in msg and "float" in msg
    assert compile_records(caplog) == []
    np.testing.assert_array_equal(W, [[1, 2, 3]])
    assert W.dtype == np.int64


def test_batch_with_different_x_and_y_lengths_refused(caplog):
    m = small_model(6, 5, 4, 3)
    ps = gf.params(m)
    saved = snapshot(ps)
    x = np.ones((8, 5), dtype=np.float32)
    y = np.ones((7, 3), dtype=np.float32)

    def loss(x, y):
        return gf.losses.mse(m(x), y)
    with caplog.at_level(logging.INFO, logger="graphflux"):
        with pytest.raises(gf.GraphfluxError) as e:
            gf.train(loss, ps, [(x, y)], gf.Descent(0.1))
    msg = str(e.value)
    assert "8" in msg and "7" in msg
    assert compile_records(caplog) == []
    assert_unchanged(ps, saved)


def opt_state_snapshot(opt):
    return {k: (entry.x, {n: a.copy() for n, a in entry.arrays.items()}, entry.host)
            for k, entry in opt._state.items()}


def assert_opt_state_equal(opt, saved):
    assert set(opt._state) == set(saved)
    for k, (x, arrays, host) in saved.items():
        entry = opt._state[k]
        x2, arrays2, host2 = entry.x, entry.arrays, entry.host
        assert x2 is x
        assert set(arrays2) == set(arrays)
        for n in arrays:
            assert np.array_equal(arrays2[n], arrays[n])
        assert host2 == host


@pytest.mark.parametrize("mode", ["compiled", "eager"])
def test_nonfinite_loss_raises_and_leaves_params_and_adam_state_untouched(mode):
    m = small_model(7, 5, 4, 3)
    ps = gf.params(m)
    rng = np.random.default_rng(8)
    x = rng.random((6, 5), dtype=np.float32)
    y = rng.random((6, 3), dtype=np.float32)
    x_nan = x.copy()
    x_nan[2, 1] = np.nan

    def loss(x, y):
        return gf.losses.mse(m(x), y)
    opt = gf.Adam(1e-3)
    initial = snapshot(ps)
    saved = {}

    def cb(info):
        saved["params"] = snapshot(ps)
        saved["opt"] = opt_state_snapshot(opt)
    with pytest.raises(gf.NonFiniteLoss) as e:
        gf.train(loss, ps, [(x, y), (x_nan, y)], opt, cb=cb, mode=mode)
    assert isinstance(e.value, gf.GraphfluxError)
    assert "data item 1" in str(e.value)
    # the first item was applied ...
    assert not np.array_equal(ps[0], initial[0])
    assert len(opt._state) == 4
    # ... the second one changed nothing at all
    assert_unchanged(ps, saved["params"])
    assert_opt_state_equal(opt, saved["opt"])
    # and training goes on from there as if the bad item had never been seen
    twin = small_model(7, 5, 4, 3)
    twin_opt = gf.Adam(1e-3)
    twin_ps = gf.params(twin)
    gf.train(lambda a, b: gf.losses.mse(twin(a), b), twin_ps, [(x, y), (x, y)], twin_opt,
             mode=mode)
    gf.train(loss, ps, [(x, y)], opt, mode=mode)
    for p, q in zip(ps, twin_ps):
        np.testing.assert_allclose(p, q, rtol=1e-6, atol=1e-7)


# ---- compiled and eager agree -------------------------------------------------------------------

def lce_setup(dtype):
    rng = np.random.default_rng(123)
    batches = []
    for _ in range(20):
        x = rng.standard_normal((8, 5)).astype(dtype)
        labels = rng.integers(0, 3, size=8)
        batches.append((x, gf.onehotbatch(labels, range(3)).astype(dtype)))
    return batches


def run_trajectory(opt, dtype, mode):
    m = small_model(99, 5, 4, 3, dtype=dtype)
    ps = gf.params(m)

    def loss(x, y):
        return gf.losses.logitcrossentropy(m(x), y)
    losses, params = [], []

    def cb(info):
        losses.append(info.loss)
        params.append(snapshot(ps))
    gf.train(loss, ps, lce_setup(dtype), opt, cb=cb, mode=mode)
    return np.array(losses), params


OPTIMISERS = [lambda: gf.Descent(0.1), lambda: gf.Momentum(0.01, 0.9), lambda: gf.Adam(1e-3)]
OPT_IDS = ["Descent", "Momentum", "Adam"]


def np_trajectory(kind, dtype):
    """The same 20 steps written out in float64 numpy: the forward pass of small_model, the
    gradient of the mean logitcrossentropy by hand, and Flux 0.13's update rules
    (Momentum: v = rho v - eta g, x += v; Adam: eps 1e-8 outside the root, bias-corrected
    with beta^t). Returns (losses before each step, parameters after each step)."""
    params = [p.astype(np.float64) for p in gf.params(small_model(99, 5, 4, 3, dtype=dtype))]
    state = [dict(v=np.zeros_like(p), m=np.zeros_like(p), s=np.zeros_like(p)) for p in params]
    losses, trajectory = [], []
    for t, (x, y) in enumerate(lce_setup(dtype), start=1):
        x, y = x.astype(np.float64), y.astype(np.float64)
        W1, b1, W2, b2 = params
        h = np.tanh(x @ W1.T + b1)
        z = h @ W2.T + b2
        logp = z - z.max(-1, keepdims=True)
        logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
        losses.append(np.mean(-np.sum(y * logp, axis=-1)))
        dz = (np.exp(logp) * y.sum(-1, keepdims=True) - y) / len(x)
        dz1 = (dz @ W2) * (1 - h ** 2)
        grads = [dz1.T @ x, dz1.sum(0), dz.T @ h, dz.sum(0)]
        for p, g, st in zip(params, grads, state):
            if kind == "Descent":
                p -= 0.1 * g
            elif kind == "Momentum":
                st["v"] = 0.9 * st["v"] - 0.01 * g
                p += st["v"]
            else:
                st["m"] = 0.9 * st["m"] + 0.1 * g
                st["s"] = 0.999 * st["s"] + 0.001 * g * g
                p -= 1e-3 * (st["m"] / (1 - 0.9 ** t)) / (np.sqrt(st["s"] / (1 - 0.999 ** t))
                                                           + 1e-8)
        trajectory.append([p.copy() for p in params])
    return np.array(losses), trajectory


@pytest.mark.parametrize("kind", OPT_IDS)
def test_compiled_and_eager_trajectories_agree_f64(kind):
    make_opt = OPTIMISERS[OPT_IDS.index(kind)]
    lc, pc = run_trajectory(make_opt(), np.float64, "compiled")
    le, pe = run_trajectory(make_opt(), np.float64, "eager")
    ln, pn = np_trajectory(kind, np.float64)
    assert len(lc) == len(le) == len(pc) == len(pe) == 20
    np.testing.assert_allclose(lc, le, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(lc, ln, rtol=1e-9, atol=1e-12)
    for i, (step_c, step_e, step_n) in enumerate(zip(pc, pe, pn)):
        for a, b, want in zip(step_c, step_e, step_n):
            assert a.dtype == b.dtype == np.float64
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12, err_msg=f"step {i + 1}")
            np.testing.assert_allclose(a, want, rtol=1e-9, atol=1e-12, err_msg=f"step {i + 1}")
    # the parameters moved, each step
    assert all(not np.array_equal(a[0], b[0]) for a, b in zip(pc, pc[1:]))


@pytest.mark.parametrize("kind", OPT_IDS)
def test_compiled_and_eager_trajectories_agree_f32(kind):
    make_opt = OPTIMISERS[OPT_IDS.index(kind)]
    lc, pc = run_trajectory(make_opt(), np.float32, "compiled")
    le, pe = run_trajectory(make_opt(), np.float32, "eager")
    assert len(lc) == len(le) == 20
    np.testing.assert_allclose(lc, le, rtol=1e-4)
    assert pc[-1][0].dtype == np.float32
    # and both follow the float64 numpy reference started from the same float32 values
    ln, _ = np_trajectory(kind, np.float32)
    np.testing.assert_allclose(lc, ln, rtol=1e-4)
    np.testing.assert_allclose(le, ln, rtol=1e-4)


def test_first_step_loss_matches_numpy_logitcrossentropy():
    """An independent check that both trajectories start from the right loss."""
    batches = lce_setup(np.float64)
    m = small_model(99, 5, 4, 3, dtype=np.float64)
    before = snapshot(gf.params(m))
    lc, _ = run_trajectory(gf.Descent(0.1), np.float64, "compiled")
    x, y = batches[0]
    z = np_small_forward(before, x)
    logp = z - z.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    expected = np.mean(-np.sum(y * logp, axis=-1))
    np.testing.assert_allclose(lc[0], expected, rtol=1e-12)



def test_captured_arrays_are_read_every_call_and_strided_ones_work():
    w = np.ones((3, 2), dtype=np.float32)
    scale = np.array([1.0, 2.0], dtype=np.float32)
    strided = np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2]
    step = gf.compile(lambda x: gf.sum(x @ w * scale + strided), gf.params(w))
    x = np.ones((3, 3), dtype=np.float32)
    loss, _ = step(x)
    assert loss == pytest.approx(float(np.sum(x @ w * scale + strided)))
    scale[:] = 10.0
    loss, _ = step(x)
    assert loss == pytest.approx(float(np.sum(x @ w * scale + strided)))


@pytest.mark.parametrize("mode", ["compiled", "eager"])
@pytest.mark.parametrize("copy", [lambda w: w.copy(), lambda w: np.array(w),
                                  lambda w: w.astype(np.float64)])
def test_a_numpy_copy_of_a_parameter_is_refused(copy, mode):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 2)).astype(np.float32)
    holder = {"w": w}
    ps = gf.params(holder)
    frozen = copy(w)          # made outside the slot gf.params tracks
    x = np.ones((4, 3), np.float32)
    saved = w.copy()
    with pytest.raises(gf.GraphfluxError, match="copy"):
        gf.gradient(lambda: gf.sum(gf.matmul(x, frozen)), ps, mode=mode)
    np.testing.assert_array_equal(w, saved)


@pytest.mark.parametrize("mode", ["compiled", "eager"])
@pytest.mark.parametrize("own_memory", [True, False])
def test_a_numpy_view_of_a_parameter_is_refused_in_both_modes(mode, own_memory):
    """W.T made by numpy outside the slot, whether W owns its memory or is itself a view
    (a reshape of a flat buffer, whose transpose's base is that buffer, not W)."""
    flat = np.arange(6, dtype=np.float32)
    w = flat.reshape(3, 2).copy() if own_memory else flat.reshape(3, 2)
    ps = gf.params({"w": w})
    view = w.T
    x = np.ones((4, 2), np.float32)
    with pytest.raises(gf.GraphfluxError, match="view or copy"):
        gf.gradient(lambda: gf.sum(gf.matmul(x, view)), ps, mode=mode)
    np.testing.assert_array_equal(w, np.arange(6, dtype=np.float32).reshape(3, 2))
