"""Paths that used to give a silently wrong answer: stale bindings after gf.load or a replaced
weight, odd arrays (byte order, memmaps, strided captures), non-finite gradients, bad
hyperparameters, and a step cache that grew with every fresh lambda. Each test compares with an
independent computation (a fresh model loaded from the same file, numpy, or the same data in
native form)."""
import numpy as np
import pytest

import graphflux as gf
from helpers import run_together


def _model(seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    m = gf.Chain(gf.Dense(3, 4, gf.tanh), gf.Dense(4, 2))
    for layer in m.layers:
        layer.weight = rng.normal(size=layer.weight.shape).astype(dtype)
        layer.bias = rng.normal(size=layer.bias.shape).astype(dtype)
    return m


def _data(n=6, seed=1, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 3)).astype(dtype), rng.normal(size=(n, 2)).astype(dtype)


def _snapshot(m, opt=None):
    arrays = [a.copy() for a in gf.params(m)]
    if opt is not None:
        for st in opt.states():
            arrays += [a.copy() for a in st.arrays.values()]
            arrays.append(np.array(st.host, dtype=object))
    return arrays


def _same(a, b):
    return len(a) == len(b) and all(x.dtype == y.dtype and x.tobytes() == y.tobytes()
                                    for x, y in zip(a, b))


@pytest.mark.parametrize("mode", ["compiled", "eager"])
def test_training_after_load_continues_from_the_loaded_optimiser_state(tmp_path, mode):
    x, y = _data()
    m, opt = _model(), gf.Adam(0.05)
    loss = lambda a, b: gf.losses.mse(m(a), b)  # noqa: E731
    gf.train(loss, gf.params(m), [(x, y)] * 3, opt, mode=mode)
    path = str(tmp_path / "ckpt.npz")
    gf.save(path, m, opt)
    gf.train(loss, gf.params(m), [(x, y)] * 4, opt, mode=mode)
    gf.load(path, m, opt)
    gf.train(loss, gf.params(m), [(x, y)] * 5, opt, mode=mode)

    fresh, fresh_opt = _model(seed=7), gf.Adam(0.05)       # an independent run from the file
    gf.load(path, fresh, fresh_opt)
    gf.train(lambda a, b: gf.losses.mse(fresh(a), b), gf.params(fresh), [(x, y)] * 5,
             fresh_opt, mode="eager")
    for p, q in zip(gf.params(m), gf.params(fresh)):
        np.testing.assert_allclose(p, q, rtol=1e-12, atol=1e-14)


def test_jit_sees_a_replaced_weight():
    m = _model()
    x, _ = _data()
    predict = gf.jit(m)
    predict(x)
    new = np.full_like(m[1].weight, 0.5)
    m[1].weight = new
    h = np.tanh(x @ m[0].weight.T + m[0].bias)
    np.testing.assert_allclose(predict(x), h @ new.T + m[1].bias, rtol=1e-12)


def test_jit_of_a_users_own_class_sees_a_replaced_array():
    class Affine:                       # not a graphflux layer: found through its slots
        def __init__(self):
            self.w = np.eye(3)

        def __call__(self, x):
            return x @ self.w

    f = Affine()
    predict = gf.jit(f)
    x, _ = _data()
    np.testing.assert_allclose(predict(x), x)
    f.w = 2 * np.eye(3)
    np.testing.assert_allclose(predict(x), 2 * x)


def test_compiled_step_sees_a_replaced_running_statistic():
    bn = gf.BatchNorm(3)
    gf.testmode(bn)
    step = gf.compile(lambda a: gf.sum(bn(a)), gf.params(bn), None)
    x, _ = _data(dtype=np.float32)
    step(x)
    bn.mean = np.full(3, 2.0, np.float32)
    loss, _ = step(x)
    expected = np.sum((x - 2.0) / np.sqrt(1.0 + bn.eps))
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


@pytest.mark.parametrize("odd", ["big-endian", "memmap-strided", "memmap-after-dense-memmap",
                                 "strided", "unaligned"])
def test_odd_data_arrays_are_read_through_a_native_copy(tmp_path, odd):
    x, y = _data(n=8)
    m_ref, m = _model(), _model()
    ref = gf.compile(lambda a, b: gf.losses.mse(m_ref(a), b), gf.params(m_ref), gf.Descent(0.1))
    step = gf.compile(lambda a, b: gf.losses.mse(m(a), b), gf.params(m), gf.Descent(0.1))
    x2 = x[::-1].copy()
    step(x2, y)                          # a native-order call first: the fast path is warm
    ref(x2, y)
    if odd == "big-endian":
        xs = x.astype(">f8")
    elif odd == "memmap-strided":
        mm = np.memmap(tmp_path / "x.bin", dtype=np.float64, mode="w+", shape=(16, 3))
        mm[::2] = x
        xs = mm[::2]
    elif odd == "memmap-after-dense-memmap":
        # a dense memmap with the same values first: its fast-path entry says "no copy"
        dense = np.memmap(tmp_path / "d.bin", dtype=np.float64, mode="w+", shape=(8, 3))
        dense[...] = x
        step(dense, y)
        ref(x, y)
        mm = np.memmap(tmp_path / "x.bin", dtype=np.float64, mode="w+", shape=(16, 3))
        mm[::2] = x
        xs = mm[::2]
    elif odd == "strided":
        wide = np.zeros((8, 6))
        wide[:, ::2] = x
        xs = wide[:, ::2]
    else:
        raw = np.zeros(8 * 3 * 8 + 1, np.uint8)
        xs = np.frombuffer(raw.data, dtype=np.float64, count=24, offset=1).reshape(8, 3)
        xs[...] = x
        assert not xs.flags.aligned
    assert step(xs, y) == ref(x, y)
    assert _same(list(gf.params(m)), list(gf.params(m_ref)))


def test_big_endian_input_to_jit_is_swapped():
    m = _model()
    x, _ = _data()
    predict = gf.jit(m)
    native = predict(x)
    np.testing.assert_array_equal(predict(x.astype(">f8")), native)


def test_big_endian_parameter_is_refused_by_name():
    m = _model()
    m[0].weight = m[0].weight.astype(">f8")
    x, y = _data()
    with pytest.raises(gf.GraphfluxError, match="layers.0.weight|weight") as e:
        gf.train(lambda a, b: gf.losses.mse(m(a), b), gf.params(m), [(x, y)], gf.Descent())
    assert "byte order" in str(e.value)


def _inf_model():
    """relu(x @ w.T) with a negative weight: an infinite input gives relu(-inf) = 0, a finite
    loss, and a weight gradient of 0 * inf = NaN."""
    d = gf.Dense(2, 1, gf.relu)
    d.weight = np.array([[-1.0, 0.5]])
    d.bias = np.zeros(1)
    drop = gf.Dropout(0.25, seed=3)
    bn = gf.BatchNorm(1)
    return d, drop, bn


@pytest.mark.parametrize("mode", ["compiled", "eager"])
def test_a_nonfinite_gradient_with_a_finite_loss_writes_nothing(mode):
    d, drop, bn = _inf_model()
    ps = gf.params(d, bn)
    opt = gf.Adam(0.01)
    loss = lambda a, b: gf.mean(drop(d(a))) + gf.mean(bn(b)) ** 2  # noqa: E731
    x = np.array([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5]])
    z = np.array([[1.0], [2.0], [4.0]])
    gf.train(loss, ps, [(x, z)], opt, mode=mode)
    before = _snapshot(d, opt) + [bn.mean.copy(), bn.var.copy(), drop.counter.copy()]
    bad = x.copy()
    bad[1, 0] = np.inf
    with pytest.raises(gf.NonFiniteLoss) as e:
        gf.train(loss, ps, [(x, z), (bad, z)], opt, mode=mode)
    after_first = _snapshot(d, opt) + [bn.mean.copy(), bn.var.copy(), drop.counter.copy()]
    assert e.value.what == "gradient of p0" or "weight" in e.value.what
    assert "gradient" in str(e.value) and "data item 1" in str(e.value)
    assert "test_nothing_silently_wrong.py:" in str(e.value)     # the first bad node's line
    assert not _same(before, after_first)                       # item 0 did train
    with pytest.raises(gf.NonFiniteLoss):
        gf.train(loss, ps, [(bad, z)], opt, mode=mode)
    assert _same(after_first, _snapshot(d, opt) + [bn.mean.copy(), bn.var.copy(),
                                                   drop.counter.copy()])


@pytest.mark.parametrize("mode", ["compiled", "eager"])
@pytest.mark.parametrize("value", [None, float("nan"), "0.1", float("inf")])
def test_a_bad_learning_rate_is_refused_before_anything_is_written(mode, value):
    m, opt = _model(), gf.Adam(0.01)
    x, y = _data()
    loss = lambda a, b: gf.losses.mse(m(a), b)  # noqa: E731
    gf.train(loss, gf.params(m), [(x, y)], opt, mode=mode)
    before = _snapshot(m, opt)
    opt.eta = value
    with pytest.raises(gf.GraphfluxError, match=r"Adam \(opt\.eta\)"):
        gf.train(loss, gf.params(m), [(x, y)], opt, mode=mode)
    assert _same(before, _snapshot(m, opt))
    opt.eta = 0.01
    gf.train(loss, gf.params(m), [(x, y)], opt, mode=mode)
    assert not _same(before, _snapshot(m, opt))


def test_a_beta_of_one_is_outside_adams_range_and_a_composed_rule_is_checked_too():
    m = _model()
    opt = gf.Optimiser(gf.ClipValue(1.0), gf.Adam())
    x, y = _data()
    loss = lambda a, b: gf.losses.mse(m(a), b)  # noqa: E731
    gf.train(loss, gf.params(m), [(x, y)], opt)
    opt[1].beta = (1.0, 0.999)
    with pytest.raises(gf.GraphfluxError, match=r"opt\[1\]\.beta"):
        gf.train(loss, gf.params(m), [(x, y)], opt)


@pytest.mark.parametrize("how", ["step", "jit", "gradient"])
def test_a_strided_captured_array_is_read_afresh_every_call(how):
    base = np.arange(12.0).reshape(3, 4)
    c = base[:, ::2]                       # not contiguous
    w = np.ones(2)
    x = np.ones((3, 2))
    if how == "step":
        step = gf.compile(lambda a: gf.sum(a * c * w), gf.params(w))
        run = lambda: step(x)[0]  # noqa: E731
    elif how == "jit":
        f = gf.jit(lambda a: gf.sum(a * c))
        run = lambda: float(f(x))  # noqa: E731
    else:
        holder = [w]                        # a slot, so tracing sees w and then captures c
        ps = gf.params(holder)
        run = lambda: gf.withgradient(lambda: gf.sum(holder[0] * c * x), ps)[0]  # noqa: E731
    assert run() == np.sum(c)
    base *= 10                              # in place: the loss must see it
    assert run() == np.sum(c)


def test_a_fresh_lambda_per_epoch_reuses_one_step_and_distinct_losses_stay_bounded():
    m, opt = _model(), gf.Descent(0.01)
    x, y = _data()
    for _ in range(20):
        gf.train(lambda a, b: gf.losses.mse(m(a), b), gf.params(m), [(x, y)], opt)
    assert gf.training.cached_steps(opt) == 1
    for k in range(20):
        target = y + k                      # a different captured array per loss
        gf.train(lambda a: gf.losses.mse(m(a), target), gf.params(m), [x], opt)
    assert gf.training.cached_steps(opt) <= 8


def test_redefining_an_elementwise_function_under_one_name_is_never_stale():
    """The name graphs carry includes the definition, so the second `f` never reuses the
    first's compiled step, cached artifact or scalar function."""
    x = np.linspace(-2, 2, 12).reshape(3, 4)
    f1 = gf.elementwise("user_f", lambda a: a * a)
    f2 = gf.elementwise("user_f", lambda a: a * a * a)
    for f, want, slope in ((f1, x * x, 2 * x), (f2, x ** 3, 3 * x * x)):
        np.testing.assert_allclose(gf.jit(lambda a: f(a))(x), want, rtol=1e-12)
        g, = gf.gradient(lambda a: gf.sum(f(a)), x)
        np.testing.assert_allclose(g, slope, rtol=1e-12)
    from graphflux.compiler import elementwise as ew
    for name in [n for n in ew.names() if "user_f" in n]:
        del ew._REGISTRY[name]


def test_a_jit_function_and_gradient_called_from_two_threads_give_each_caller_its_answer():
    """Each call binds its own input and reads its own outputs; without the per-function lock
    the two threads' pointers and outputs interleave."""
    m = _model()
    predict = gf.jit(m)
    W = [np.asarray(p) for p in gf.params(m)]
    rng = np.random.default_rng(5)
    inputs = [rng.normal(size=(20000, 3)) for _ in range(2)]   # one signature, long calls
    wanted = [np.tanh(x @ W[0].T + W[1]) @ W[2].T + W[3] for x in inputs]
    w = np.ones(3)
    grad_wanted = [x.sum(axis=0) for x in inputs]
    errors = []

    def worker(k):
        for _ in range(60):
            if not np.allclose(predict(inputs[k]), wanted[k], rtol=1e-12):
                errors.append(("jit", k))
            g, = gf.gradient(lambda a: gf.sum(a @ w), inputs[k])
            g_w, = gf.gradient(lambda v: gf.sum(inputs[k] @ v), w)
            if not np.allclose(g_w, grad_wanted[k], rtol=1e-12):
                errors.append(("gradient", k))
    run_together(worker)
    assert errors == []
