"""The image layers: Flux's weight layouts and initial scale, SamePad's low-side extra,
adaptive pools' window rule, ConvTranspose as the input gradient, BatchNorm per channel, state
and files, and a small CNN's compiled trajectory against eager's."""
import numpy as np
import pytest

import graphflux as gf
import window_reference as ref


def test_weight_layouts_and_glorot_counting_the_window():
    c = gf.Conv((5, 3), 4, 6)
    t = gf.ConvTranspose((3, 3), 4, 6, groups=2)
    assert c.weight.shape == (6, 4, 5, 3) and c.bias.shape == (6,)
    assert t.weight.shape == (4, 3, 3, 3) and t.bias.shape == (6,)
    big = gf.Conv((3, 3), 64, 128)
    bound = np.sqrt(6 / (64 * 9 + 128 * 9))          # Flux's nfan: the window in both fans
    w = np.abs(big.weight)
    assert w.max() <= bound and w.max() > 0.99 * bound


def test_conv_and_crosscor_against_direct_loops_with_bias_and_activation():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 6, 5)).astype(np.float32)
    for layer, flipped in ((gf.Conv((3, 2), 3, 4, gf.relu, stride=(1, 2), pad=1), False),
                           (gf.CrossCor((3, 2), 3, 4, gf.relu, stride=(1, 2), pad=1), True)):
        layer.bias = rng.normal(size=4).astype(np.float32)
        want = np.maximum(ref.conv(x.astype(np.float64), layer.weight.astype(np.float64),
                                   (1, 2), (1, 1), (1, 1), 1, flipped)
                          + layer.bias[:, None, None], 0)
        for y in (layer(x), gf.jit(layer)(x)):
            np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)


def test_samepad_keeps_the_size_and_puts_the_odd_extra_low():
    x = np.random.default_rng(1).normal(size=(1, 2, 7, 6))
    layer = gf.Conv((4, 3), 2, 3, pad=gf.SamePad(), dilation=(1, 2))
    layer.weight = layer.weight.astype(np.float64)
    y = layer(x)
    assert y.shape == (1, 3, 7, 6)
    # total padding (k - 1) * d = 3 and 4: (2, 1) and (2, 2), low side first
    np.testing.assert_allclose(y, gf.conv(x, layer.weight, pad=(2, 1, 2, 2), dilation=(1, 2)),
                               rtol=1e-12)


def test_conv_transpose_is_the_gradient_of_the_conv_it_inverts():
    rng = np.random.default_rng(2)
    t = gf.ConvTranspose((3, 3), 4, 2, stride=2, bias=False)
    t.weight = t.weight.astype(np.float64)
    x = rng.normal(size=(2, 4, 5, 5))
    y = t(x)
    assert y.shape == (2, 2, 11, 11)                       # (in - 1) * stride + k
    # <conv(z, w), x> = <z, conv_transpose(x, w)> for every z: the adjoint, checked on one z
    z = rng.normal(size=y.shape)
    lhs = np.sum(gf.conv(z, t.weight, stride=2) * x)
    assert np.isclose(lhs, np.sum(z * y), rtol=1e-12)
    np.testing.assert_allclose(gf.jit(t)(x), y, rtol=1e-11, atol=1e-12)


def test_adaptive_and_global_pools_use_fluxs_windows():
    x = np.random.default_rng(3).normal(size=(2, 3, 7, 8))
    y = gf.AdaptiveMaxPool((2, 3))(x)
    # axis of 7 into 2: stride 3, window 4 -> rows [0, 4) and [3, 7); 8 into 3: stride 2, k 4
    want = np.stack([np.stack([x[:, :, r:r + 4, c:c + 4].max(axis=(2, 3)) for c in (0, 2, 4)],
                              -1) for r in (0, 3)], -2)
    np.testing.assert_allclose(y, want, rtol=1e-12)
    np.testing.assert_allclose(gf.AdaptiveMeanPool(1)(x), x.mean(axis=(2, 3), keepdims=True),
                               rtol=1e-12)
    np.testing.assert_allclose(gf.GlobalMeanPool()(x), x.mean(axis=(2, 3), keepdims=True),
                               rtol=1e-12)
    np.testing.assert_allclose(gf.jit(gf.GlobalMaxPool())(x), x.max(axis=(2, 3), keepdims=True))


def test_batchnorm_normalises_each_channel_of_nchw():
    rng = np.random.default_rng(4)
    x = rng.normal(2.0, 3.0, size=(4, 3, 5, 5))
    bn = gf.f64(gf.BatchNorm(3))
    bn.gamma[:] = [1.0, 2.0, 0.5]

    def loss(a):
        return gf.mean(bn(a) ** 2)
    step = gf.compile(loss, gf.params(bn), gf.Descent(0.0))
    mean_before = bn.mean.copy()
    value = step(x)
    mu = x.mean(axis=(0, 2, 3))
    var = x.var(axis=(0, 2, 3))
    normed = (x - mu[:, None, None]) / np.sqrt(var[:, None, None] + 1e-5)
    y = normed * bn.gamma[:, None, None]
    assert np.isclose(value, np.mean(y ** 2), rtol=1e-10)
    n = 4 * 25
    np.testing.assert_allclose(bn.mean, 0.9 * mean_before + 0.1 * mu, rtol=1e-10)
    np.testing.assert_allclose(bn.var, 0.9 + 0.1 * var * n / (n - 1), rtol=1e-10)


def _cnn(seed):
    rng = np.random.default_rng(seed)
    m = gf.Chain(gf.Conv((3, 3), 1, 4, gf.relu, pad=1), gf.MaxPool((2, 2)),
                 gf.CrossCor((2, 2), 4, 5, gf.tanh), gf.MeanPool((2, 1)), gf.flatten,
                 gf.Dense(5, 3))
    m = gf.f64(m)
    for p in gf.params(m):
        p[...] = rng.normal(size=p.shape) * 0.5
    return m


def test_a_small_cnn_trains_the_same_compiled_and_eager():
    """Adam on a conv-pool-conv-pool-dense net, float64: compiled and eager trajectories agree
    to 1e-9 (the same arithmetic; summation order differs in the GEMMs)."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(6, 1, 6, 4))
    y = gf.onehotbatch(rng.integers(0, 3, 6), range(3)).astype(np.float64)
    losses = {}
    models = {}
    for mode in ("compiled", "eager"):
        m = models[mode] = _cnn(7)
        seen = []
        gf.train(lambda a, b: gf.losses.logitcrossentropy(m(a), b), gf.params(m), [(x, y)] * 5,
                 gf.Adam(0.01), mode=mode, cb=lambda info=None: seen.append(None))
        assert len(seen) == 5
        losses[mode] = gf.losses.logitcrossentropy(m(x), y)
    assert np.isclose(losses["compiled"], losses["eager"], rtol=1e-9)
    for a, b in zip(gf.params(models["compiled"]), gf.params(models["eager"])):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    assert losses["compiled"] < float(gf.losses.logitcrossentropy(_cnn(7)(x), y))


def test_state_save_load_and_f32_of_a_cnn(tmp_path):
    m = gf.Chain(gf.Conv((3, 3), 2, 3), gf.BatchNorm(3), gf.ConvTranspose((2, 2), 3, 2))
    st = gf.state(m)
    assert st["layers"]["0"]["weight"].shape == (3, 2, 3, 3)
    assert set(st["layers"]["1"]) >= {"mean", "var", "gamma", "beta"}
    gf.save(tmp_path / "cnn.npz", m)
    m2 = gf.Chain(gf.Conv((3, 3), 2, 3), gf.BatchNorm(3), gf.ConvTranspose((2, 2), 3, 2))
    gf.load(tmp_path / "cnn.npz", m2)
    x = np.random.default_rng(6).normal(size=(2, 2, 5, 5)).astype(np.float32)
    gf.testmode(m)
    gf.testmode(m2)
    np.testing.assert_array_equal(m(x), m2(x))
    assert gf.f64(m)[0].weight.dtype == np.float64
    assert len(gf.params(m)) == 6


def test_an_int_kernel_is_one_spatial_axis_and_a_bad_one_is_refused():
    assert gf.Conv(3, 2, 4).weight.shape == (4, 2, 3)
    with pytest.raises(gf.GraphfluxError, match="kernel size"):
        gf.Conv((0, 3), 2, 4)
    with pytest.raises(gf.GraphfluxError, match="groups"):
        gf.Conv((3, 3), 3, 4, groups=2)


def test_shorter_batches_through_a_compiled_cnn():
    """A CNN's step and jitted forward compiled at batch 6 serve batches of 4 and 1 (the
    convolution and pooling kernels run to the run-time batch length) with eager's numbers."""
    rng = np.random.default_rng(8)
    m = _cnn(9)
    predict = gf.jit(m)
    x = rng.normal(size=(6, 1, 6, 4))
    np.testing.assert_allclose(predict(x), m(x), rtol=1e-11, atol=1e-12)
    for n in (4, 1):
        np.testing.assert_allclose(predict(x[:n]), m(x[:n]), rtol=1e-11, atol=1e-12)
    y = gf.onehotbatch(rng.integers(0, 3, 6), range(3)).astype(np.float64)
    ps = gf.params(m)
    step = gf.compile(lambda a, b: gf.losses.logitcrossentropy(m(a), b), ps, None)
    step(x, y)
    for n in (4, 1):
        loss, grads = step(x[:n], y[:n])
        want, expected = gf.withgradient(lambda: gf.losses.logitcrossentropy(m(x[:n]), y[:n]),
                                         ps, mode="eager")
        assert np.isclose(loss, want, rtol=1e-11)
        for p in ps:
            np.testing.assert_allclose(grads[p], expected[p], rtol=1e-9, atol=1e-12)
