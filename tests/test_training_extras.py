"""train's progress bar and skip, Grads arithmetic, custom trainable fields, user-defined
elementwise functions, onehot errors."""
import io
import sys

import numpy as np
import pytest

import graphflux as gf


def test_progress_bar_shows_running_loss_when_asked(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    w = {"w": np.ones(2, np.float32)}
    x = np.ones((3, 2), np.float32)
    gf.train(lambda x: gf.sum(x * w["w"]), gf.params(w), [(x,)] * 4, gf.Descent(0.1),
             progress=True)
    text = err.getvalue()
    assert "[####################] 4/4" in text and "loss" in text
    err.truncate(0)
    gf.train(lambda x: gf.sum(x * w["w"]), gf.params(w), [(x,)] * 4, gf.Descent(0.1))
    assert err.getvalue().strip("\x00") == ""     # not a terminal: silent unless asked


def test_skip_skips_an_item_in_eager_mode_and_is_refused_while_tracing():
    w = {"w": np.ones(2)}
    seen = []

    def loss(x):
        seen.append(float(x[0, 0]))
        if float(x[0, 0]) < 0:
            gf.skip()
        return gf.sum(x * w["w"])
    data = [(np.ones((1, 2)),), (-np.ones((1, 2)),), (np.ones((1, 2)),)]
    gf.train(loss, gf.params(w), data, gf.Descent(0.5), mode="eager")
    np.testing.assert_allclose(w["w"], 1 - 2 * 0.5)     # two updates, the negative one skipped
    with pytest.raises(gf.GraphfluxError, match="skip"):
        gf.train(lambda x: (gf.skip(), gf.sum(x))[1], gf.params(w), data, gf.Descent(0.5))


@pytest.mark.parametrize("mode", ["compiled", "eager"])
def test_grads_none_warning_and_arithmetic(mode):
    a, b, unused = np.array([1.0, 2.0]), np.array([3.0]), np.array([5.0])
    ps = gf.params(a, b, unused)
    with pytest.warns(UserWarning, match="p2"):
        gs = gf.gradient(lambda: gf.sum(gf.exp(a)) * gf.sum(b), ps, mode=mode)
    assert gs[unused] is None and unused in gs and np.array([1.0, 2.0]) not in gs
    with pytest.raises(KeyError):
        gs[np.array([1.0, 2.0])]
    np.testing.assert_allclose(gs[a], np.exp(a) * 3)
    total = gs + gs * 2
    np.testing.assert_allclose(total[b], 3 * np.exp(a).sum())
    assert total[unused] is None and list(total.keys())[0] is a
    gs[a][0] = 99.0          # fresh arrays the caller owns
    assert gf.gradient(lambda: gf.sum(gf.exp(a)) * gf.sum(b), gf.params(a, b),
                       mode=mode)[a][0] != 99.0


class Affine:
    def __init__(self):
        self.W = np.eye(2)
        self.b = np.zeros(2)

    def trainable(self):
        return {"W": self.W}

    def __call__(self, x):
        return x @ self.W + self.b


@pytest.mark.parametrize("mode", ["compiled", "eager"])
def test_custom_trainable_freezes_the_rest(mode):
    m = Affine()
    ps = gf.params(m)
    assert len(ps) == 1 and ps[0] is m.W and gf.trainable(m) == {"W": m.W}
    x = np.array([[1.0, 2.0]])
    gf.train(lambda x: gf.sum(m(x)), ps, [(x,)], gf.Descent(1.0), mode=mode)
    np.testing.assert_allclose(m.W, np.eye(2) - np.array([[1.0, 1.0], [2.0, 2.0]]))
    np.testing.assert_array_equal(m.b, 0)


@pytest.mark.parametrize("mode", ["compiled", "eager"])
def test_user_elementwise_function_differentiates_fuses_and_compiles(mode):
    import sympy
    cube_tanh = gf.elementwise("cube_tanh", lambda x: sympy.tanh(x) ** 3)
    x = np.linspace(-2, 2, 7)
    np.testing.assert_allclose(cube_tanh(x), np.tanh(x) ** 3, rtol=1e-12)
    g, = gf.gradient(lambda x: gf.sum(cube_tanh(x) * 2.0), x, mode=mode)
    np.testing.assert_allclose(g, 6 * np.tanh(x) ** 2 * (1 - np.tanh(x) ** 2), rtol=1e-9)
    if mode == "compiled":
        w = {"w": np.ones(7)}
        art = gf.compile(lambda x: gf.sum(cube_tanh(x * w["w"]) + 1.0), gf.params(w),
                         gf.Descent(0.1)).lower(x.reshape(1, 7))
        text = str(art.optimized_graph)
        assert "fn=cube_tanh" in text and "fn=v0_cube_tanh" in text
        line = [ln for ln in text.splitlines() if "fn=cube_tanh" in ln][0]
        assert "[kernel" in line


def test_onehot_labels_outside_classes_are_refused():
    np.testing.assert_array_equal(gf.onehotbatch(["b", "a"], ["a", "b"]), [[0, 1], [1, 0]])
    with pytest.raises(gf.GraphfluxError, match="'z'"):
        gf.onehotbatch(["a", "z"], ["a", "b"])
    assert list(gf.onecold(np.array([[0.1, 0.9], [0.8, 0.2]]), ["a", "b"])) == ["b", "a"]


def test_float32_dense_converts_float64_input_with_one_warning():
    d = gf.Dense(3, 2)
    x = np.ones((4, 3))
    with pytest.warns(UserWarning, match="converting the input"):
        y = d(x)
    assert y.dtype == np.float32
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d(x)                                   # only once per layer
