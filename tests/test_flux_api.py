"""The rest of the Flux training API: model state and files, explicit style, jit, layers with
modes, data helpers. Expected values come from numpy recomputations."""
import gzip
import os
import re
import struct

import numpy as np
import pytest

import graphflux as gf


def mlp(seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    init = lambda *d: gf.glorot_uniform(*d, rng=rng, dtype=dtype)  # noqa: E731
    return gf.Chain(gf.Dense(3, 4, gf.tanh, init=init), gf.Dense(4, 2, init=init))


def data(seed=1, n=6):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3)).astype(np.float32)
    return x, gf.onehotbatch(rng.integers(0, 2, n), range(2))


def test_state_and_loadmodel_round_trip_and_refuse_mismatch():
    a, b = mlp(0), mlp(1)
    st = gf.state(a)
    assert set(st["layers"]) == {"0", "1"} and set(st["layers"]["0"]) == {"weight", "bias"}
    assert st["layers"]["0"]["weight"] is a[0].weight
    gf.loadmodel(b, st)
    assert all(np.array_equal(p, q) for p, q in zip(gf.params(a), gf.params(b)))
    other = gf.Chain(gf.Dense(3, 5), gf.Dense(5, 2))
    before = [p.copy() for p in gf.params(other)]
    with pytest.raises(gf.GraphfluxError, match="shape"):
        gf.loadmodel(other, st)
    assert all(np.array_equal(p, q) for p, q in zip(before, gf.params(other)))


def test_f32_and_f64_copy_and_convert():
    m = mlp()
    m64 = gf.f64(m)
    assert m64[0].weight.dtype == np.float64 and m[0].weight.dtype == np.float32
    assert m64[0].σ is gf.tanh and m64[0].weight is not m[0].weight
    np.testing.assert_array_equal(m64[0].weight, m[0].weight.astype(np.float64))
    assert gf.f32(m64)[1].bias.dtype == np.float32


@pytest.mark.parametrize("mode", ["compiled", "eager"])
def test_save_and_load_model_and_optimiser_continue_the_same_trajectory(tmp_path, mode):
    x, y = data()
    loss_of = lambda m: (lambda x, y: gf.losses.logitcrossentropy(m(x), y))  # noqa: E731
    a, opt_a = mlp(), gf.Adam(0.05)
    gf.train(loss_of(a), gf.params(a), [(x, y)] * 3, opt_a, mode=mode)
    path = tmp_path / "ckpt.npz"
    gf.save(path, a, opt_a)
    b, opt_b = mlp(9), gf.Adam(0.05)
    gf.load(path, b, opt_b)
    gf.train(loss_of(a), gf.params(a), [(x, y)] * 2, opt_a, mode=mode)
    gf.train(loss_of(b), gf.params(b), [(x, y)] * 2, opt_b, mode=mode)
    for p, q in zip(gf.params(a), gf.params(b)):
        np.testing.assert_allclose(q, p, rtol=1e-6, atol=1e-7)


def test_load_checks_everything_first_and_save_is_atomic(tmp_path, monkeypatch):
    x, y = data()
    a = mlp()
    path = tmp_path / "m.npz"
    gf.save(path, a)
    saved_bytes = path.read_bytes()
    wrong = gf.Chain(gf.Dense(3, 4), gf.Dense(4, 3))
    before = [p.copy() for p in gf.params(wrong)]
    with pytest.raises(gf.GraphfluxError, match="layers/1/weight"):
        gf.load(path, wrong)
    assert all(np.array_equal(p, q) for p, q in zip(before, gf.params(wrong)))
    with pytest.raises(gf.GraphfluxError, match="no optimiser state"):
        gf.load(path, mlp(2), gf.Adam())

    def crash_midway(f, **arrays):      # a disk-full or kill during the write
        f.write(b"partial")
        raise OSError("disk full")
    import graphflux.modelstate
    monkeypatch.setattr(graphflux.modelstate.np, "savez", crash_midway)
    with pytest.raises(OSError):
        gf.save(path, mlp(5))
    assert path.read_bytes() == saved_bytes
    assert [n for n in os.listdir(tmp_path) if n.startswith(".")] == []


def test_restored_optimiser_refuses_parameters_it_has_no_state_for(tmp_path):
    x, y = data()
    m, opt = mlp(), gf.Descent(0.1)
    gf.train(lambda x, y: gf.losses.mse(m[0](x), m[0](x) * 0), gf.params(m[0]), [(x, y)], opt)
    gf.save(tmp_path / "m.npz", m, opt)
    m2, opt2 = mlp(), gf.Descent(0.1)
    gf.load(tmp_path / "m.npz", m2, opt2)
    saved = [p.copy() for p in gf.params(m2)]
    with pytest.raises(gf.GraphfluxError, match="layers.1.weight"):
        gf.train(lambda x, y: gf.losses.logitcrossentropy(m2(x), y), gf.params(m2),
                 [(x, y)], opt2)
    assert all(np.array_equal(p, q) for p, q in zip(saved, gf.params(m2)))
    opt2.allow_fresh_state()
    gf.train(lambda x, y: gf.losses.logitcrossentropy(m2(x), y), gf.params(m2), [(x, y)], opt2)


@pytest.mark.parametrize("mode", ["compiled", "eager"])
def test_explicit_style_setup_and_train_equal_implicit_style(mode):
    x, y = data()
    a, b = mlp(), mlp()
    loss = lambda m, x, y: gf.losses.logitcrossentropy(m(x), y)  # noqa: E731
    gf.train(loss, a, [(x, y)] * 4, gf.setup(gf.Adam(0.02), a), mode=mode)
    gf.train(lambda x, y: loss(b, x, y), gf.params(b), [(x, y)] * 4, gf.Adam(0.02), mode=mode)
    for p, q in zip(gf.params(a), gf.params(b)):
        np.testing.assert_allclose(p, q, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("mode", ["compiled", "eager"])
def test_explicit_gradient_of_a_model_mirrors_state(mode):
    x, y = data()
    m = mlp(dtype=np.float64)
    m.layers.append(gf.BatchNorm(2))
    m[2].beta, m[2].gamma = m[2].beta.astype(np.float64), m[2].gamma.astype(np.float64)
    m[2].mean, m[2].var = m[2].mean.astype(np.float64), m[2].var.astype(np.float64)
    g, = gf.gradient(lambda m: gf.losses.logitcrossentropy(m(x.astype(np.float64)), y), m,
                     mode=mode)
    implicit = gf.gradient(lambda: gf.losses.logitcrossentropy(m(x.astype(np.float64)), y),
                           gf.params(m), mode=mode)
    np.testing.assert_allclose(g["layers"]["0"]["weight"], implicit[m[0].weight], rtol=1e-10)
    assert g["layers"]["2"]["mean"] is None and g["layers"]["2"]["var"] is None
    # every trainable field, BatchNorm's gamma and beta included, against central differences
    # of a numpy forward pass (training mode: batch statistics, biased variance, eps 1e-5)
    x64 = x.astype(np.float64)
    fields = [("0", "weight"), ("0", "bias"), ("1", "weight"), ("1", "bias"), ("2", "gamma"),
              ("2", "beta")]
    values = {f: getattr(m[int(f[0])], f[1]).copy() for f in fields}

    def np_loss(vals):
        h = np.tanh(x64 @ vals["0", "weight"].T + vals["0", "bias"])
        z = h @ vals["1", "weight"].T + vals["1", "bias"]
        z = (z - z.mean(0)) / np.sqrt(z.var(0) + 1e-5) * vals["2", "gamma"] + vals["2", "beta"]
        z = z - z.max(-1, keepdims=True)
        return np.mean(-np.sum(y * (z - np.log(np.exp(z).sum(-1, keepdims=True))), axis=-1))

    for f in fields:
        fd = np.zeros_like(values[f])
        for i in np.ndindex(fd.shape):
            plus, minus = dict(values), dict(values)
            plus[f], minus[f] = values[f].copy(), values[f].copy()
            plus[f][i] += 1e-6
            minus[f][i] -= 1e-6
            fd[i] = (np_loss(plus) - np_loss(minus)) / 2e-6
        if f != ("1", "bias"):          # BatchNorm subtracts the batch mean: exactly 0 there
            assert np.abs(fd).max() > 1e-4, f             # a gradient that is really there
        got = g["layers"][f[0]][f[1]]
        assert got.dtype == np.float64 and got.shape == fd.shape, f
        np.testing.assert_allclose(got, fd, rtol=1e-6, atol=1e-9, err_msg=str(f))


def test_jit_matches_plain_calls_and_sees_later_training():
    m = gf.Chain(gf.Dense(3, 4, gf.relu), gf.Dense(4, 2), gf.softmax)
    predict = gf.jit(m)
    x = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)

    def np_predict():
        h = np.maximum(x.astype(np.float64) @ m[0].weight.T + m[0].bias, 0)
        z = h @ m[1].weight.T + m[1].bias
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)
    np.testing.assert_allclose(predict(x), np_predict(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(predict(x), m(x), rtol=1e-6, atol=1e-7)
    before = predict(x).copy()
    m[0].weight += 0.5
    after = predict(x)
    assert np.abs(after - before).max() > 1e-3         # the change is visible ...
    np.testing.assert_allclose(after, np_predict(), rtol=1e-5, atol=1e-6)   # ... and right
    both = gf.jit(lambda a: (gf.exp(a), a.sum(1)))(x)
    np.testing.assert_allclose(both[0], np.exp(x), rtol=1e-6)
    np.testing.assert_allclose(both[1], x.sum(1), rtol=1e-6)
    assert "[kernel" in str(predict.lower(x).optimized_graph)


def _batchnorm_reference(x, gamma, beta, mean, var, steps, m=0.1, eps=1e-5):
    k = x.shape[0]
    mu, v = x.mean(0), x.var(0)
    for _ in range(steps):
        mean, var = (1 - m) * mean + m * mu, (1 - m) * var + m * v * k / (k - 1)
    return (x - mu) / np.sqrt(v + eps) * gamma + beta, mean, var


@pytest.mark.parametrize("mode", ["compiled", "eager"])
def test_batchnorm_running_statistics_and_modes(mode):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((16, 4)) * 2 + 1).astype(np.float32)
    bn = gf.BatchNorm(4)
    assert [a.shape for a in gf.params(bn)] == [(4,), (4,)]      # beta, gamma only
    loss = lambda x: gf.sum(bn(x) * 0.0)                          # noqa: E731  zero grads
    gf.train(loss, gf.params(bn), [(x,)] * 3, gf.Descent(0.1), mode=mode)
    y, mean, var = _batchnorm_reference(x.astype(np.float64), 1.0, 0.0, np.zeros(4),
                                        np.ones(4), 3)
    np.testing.assert_allclose(bn.mean, mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.var, var, rtol=1e-5, atol=1e-6)
    # a plain call is test mode: running statistics, and nothing written
    out = bn(x)
    np.testing.assert_allclose(out, (x - bn.mean) / np.sqrt(bn.var + 1e-5), rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(bn.mean, mean, rtol=1e-5, atol=1e-6)
    gf.trainmode(bn)
    np.testing.assert_allclose(bn(x), y, rtol=1e-4, atol=1e-4)
    gf.testmode(bn, None)
    assert bn.active is None


def test_batchnorm_statistics_are_untouched_by_a_nonfinite_step():
    bn = gf.BatchNorm(2)
    x = np.ones((4, 2), np.float32)
    x[0, 0] = 3
    step = gf.compile(lambda x, y: gf.sum(gf.log(bn(x) + y)), gf.params(bn), gf.Descent(0.1))
    with pytest.raises(gf.NonFiniteLoss):
        step(x, -10 * np.ones((4, 2), np.float32))
    np.testing.assert_array_equal(bn.mean, 0)
    np.testing.assert_array_equal(bn.var, 1)


def test_testmode_forces_a_retrace_of_a_compiled_step(caplog):
    bn = gf.BatchNorm(2)
    x = np.random.default_rng(0).standard_normal((8, 2)).astype(np.float32)
    step = gf.compile(lambda x: gf.sum(bn(x) ** 2), gf.params(bn), gf.Descent(0.0))
    train_loss = step(x)
    gf.testmode(bn)
    with caplog.at_level("INFO", logger="graphflux"):
        test_loss = step(x)
    messages = [r.getMessage() for r in caplog.records if r.name == "graphflux"]
    assert len(messages) == 1, messages
    # "<compiled step | traced step (artifact reused)> in 0.123 s: <reason>", the reason
    # naming the forced mode (not a signature change: the argument is the same)
    m = re.fullmatch(r"(compiled step|traced step \(artifact reused\)) in \d+\.\d+ s: (.*)",
                     messages[0])
    assert m, messages
    assert re.search(r"\bmode\b", m.group(2)), messages
    assert "argument" not in m.group(2), messages
    np.testing.assert_allclose(test_loss, float(np.sum(((x - bn.mean) /
                                                       np.sqrt(bn.var + 1e-5)) ** 2)),
                               rtol=1e-5)
    assert train_loss != test_loss


def test_layernorm_matches_flux_normalise():
    x = np.random.default_rng(2).standard_normal((5, 6)).astype(np.float64)
    ln = gf.LayerNorm(6)
    ln.scale, ln.bias = np.full(6, 2.0), np.full(6, 0.5)
    want = (x - x.mean(1, keepdims=True)) / (x.std(1, keepdims=True) + 1e-5) * 2 + 0.5
    np.testing.assert_allclose(ln(x), want, rtol=1e-10)
    g, = gf.gradient(lambda x: gf.sum(ln(x) ** 3), x)
    e, = gf.gradient(lambda x: gf.sum(ln(x) ** 3), x, mode="eager")
    np.testing.assert_allclose(g, e, rtol=1e-9)


def _idx(path, array, gz):
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(">" + "I" * array.ndim,
                                                                     *array.shape)
    opener = gzip.open if gz else open
    with opener(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_mnist_reads_idx_files_gzipped_or_not(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (5, 28, 28))
    labels = rng.integers(0, 10, 5)
    _idx(tmp_path / "train-images-idx3-ubyte.gz", imgs, True)
    _idx(tmp_path / "train-labels-idx1-ubyte", labels, False)
    _idx(tmp_path / "t10k-images-idx3-ubyte", imgs[:2], False)
    with pytest.raises(gf.GraphfluxError, match="t10k-labels-idx1-ubyte"):
        gf.datasets.mnist(tmp_path)
    _idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels[:2], True)
    (X, y), (Xt, yt) = gf.datasets.mnist(tmp_path)
    assert X.dtype == np.float32 and X.shape == (5, 28, 28)
    np.testing.assert_allclose(X, imgs / 255, rtol=1e-6)
    np.testing.assert_array_equal(y, labels)
    assert Xt.shape == (2, 28, 28) and list(yt) == list(labels[:2])


def test_ncycle_patience_early_stopping_plateau():
    assert list(gf.ncycle([1, 2], 3)) == [1, 2, 1, 2, 1, 2]
    trigger = gf.patience(lambda v: v > 2, 2)
    assert [trigger(v) for v in [3, 1, 3, 3, 3]] == [False, False, False, True, True]
    scores = iter([3.0, 2.0, 2.5, 2.4, 2.6])     # lower is better; best 2.0 at the second call
    stop = gf.early_stopping(lambda: next(scores), 3, init_score=10.0)
    assert [stop() for _ in range(5)] == [False, False, False, False, True]
    values = iter([1.0, 1.0 + 1e-8, 1.0, 5.0, 5.0])
    flat = gf.plateau(lambda: next(values), 2, init_score=0.0)
    assert [flat() for _ in range(5)] == [False, False, True, False, False]


def _dropout_run(mode, p, seed, steps=3):
    """(losses, masks, layer): the step's gradient with respect to `w` is the scaled mask
    itself (d sum(dropout(x * w)) / dw = keep / (1 - p) for x = w = 1), element by element."""
    d = gf.Dropout(p, seed=seed)
    holder = {"w": np.ones((64, 50), np.float32)}
    x = np.ones((64, 50), np.float32)
    step = gf.compile(lambda x: gf.sum(d(x * holder["w"])), gf.params(holder), mode=mode)
    losses, masks = [], []
    for _ in range(steps):
        loss, gs = step(x)
        losses.append(float(loss))
        masks.append(gs[holder["w"]])
    return losses, masks, d


@pytest.mark.parametrize("p", [0.3, 1.0])
def test_dropout_masks_match_between_modes_and_the_generator(p):
    from graphflux.runtime.numpy_impls import random
    compiled, cmasks, d = _dropout_run("compiled", p, 11)
    eager, emasks, de = _dropout_run("eager", p, 11)
    scale = 0.0 if p == 1 else 1 / (1 - p)
    for counter in range(3):
        kept = random(np.array(float(counter)), (64, 50), 11, np.float32) >= p
        # the same key and counter draw the same mask in both modes, element by element
        np.testing.assert_array_equal(cmasks[counter] != 0, kept & (scale != 0))
        np.testing.assert_array_equal(emasks[counter] != 0, kept & (scale != 0))
        np.testing.assert_allclose(cmasks[counter], kept * scale, rtol=1e-6)
        np.testing.assert_allclose(emasks[counter], kept * scale, rtol=1e-6)
        np.testing.assert_allclose(compiled[counter], kept.sum() * scale, rtol=1e-5)
        np.testing.assert_allclose(eager[counter], kept.sum() * scale, rtol=1e-5)
    assert float(d.counter) == 3 and float(de.counter) == 3
    if p == 1:
        assert compiled == [0.0, 0.0, 0.0]
    else:
        for a in range(3):                        # a new mask every step, not a permutation
            for b in range(a):                    # that keeps the count
                assert not np.array_equal(cmasks[a], cmasks[b])
        kept_share = np.mean([np.mean(mk != 0) for mk in cmasks])
        assert abs(kept_share - 0.7) < 0.03       # ~5 sigma for 9600 Bernoulli(0.7) draws


def test_dropout_is_reproducible_from_its_seed_and_off_in_plain_calls():
    _, first, _ = _dropout_run("compiled", 0.5, 3)
    _, again, _ = _dropout_run("compiled", 0.5, 3)
    _, other, _ = _dropout_run("compiled", 0.5, 4)
    for a, b, c in zip(first, again, other):
        np.testing.assert_array_equal(a, b)
        assert np.mean((a != 0) != (c != 0)) > 0.3     # independent masks differ in ~half
    d = gf.Dropout(0.5, seed=1)
    x = np.ones((4, 3), np.float32)
    np.testing.assert_array_equal(d(x), x)
    assert float(d.counter) == 0
    gf.trainmode(d)
    out = d(x)
    assert float(d.counter) == 1
    from graphflux.runtime.numpy_impls import random
    kept = random(np.array(0.0), (4, 3), 1, np.float32) >= 0.5
    np.testing.assert_array_equal(out, np.where(kept, 2.0, 0.0).astype(np.float32))
    assert 0 < np.count_nonzero(out) < x.size
    gf.testmode(d, None)
    assert gf.params(gf.Chain(gf.Dense(3, 2), d)).__len__() == 2


def test_random_bits_are_uniform():
    from graphflux.runtime.numpy_impls import random
    u = random(np.array(5.0), (100000,), 123, np.float64)
    assert 0 <= u.min() and u.max() < 1
    counts, _ = np.histogram(u, bins=10, range=(0, 1))
    assert np.all(np.abs(counts - 10000) < 500)       # ~5 sigma for a binomial(1e5, 0.1)


def test_jit_of_a_model_in_forced_train_mode_updates_running_statistics():
    bn = gf.BatchNorm(3)
    x = np.random.default_rng(0).standard_normal((10, 3)).astype(np.float32) + 2
    gf.trainmode(bn)
    gf.jit(bn)(x)
    np.testing.assert_allclose(bn.mean, 0.1 * x.mean(0), rtol=1e-5)
    gf.testmode(bn, None)
