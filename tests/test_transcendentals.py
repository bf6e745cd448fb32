"""The polynomial exp/log/tanh of the native code against numpy (correctly rounded to within
an ulp), in ulps over wide ranges, and at the special values."""
import numpy as np
import pytest

from graphflux.compiler import ops
from helpers import run_both, trace_outputs

MAX_ULPS = {"exp": 4, "log": 4, "tanh": 6, "sigmoid": 8}


def _ulps(got, want):
    want = np.asarray(want)
    spacing = np.spacing(np.abs(want).astype(want.dtype))
    tiny = np.finfo(want.dtype).tiny
    return np.abs(got.astype(np.float64) - want.astype(np.float64)) / np.maximum(spacing, tiny)


def _grid(dtype):
    rng = np.random.default_rng(0)
    hi = 85.0 if dtype == np.float32 else 700.0
    x = np.concatenate([np.linspace(-hi, hi, 20001), rng.uniform(-3, 3, 20000),
                        rng.standard_normal(5000) * 1e-3, [0.0, -0.0, 1e-30, -1e-30]])
    return x.astype(dtype)


def _program(x, pos):
    return {"exp": ops.exp(x), "log": ops.log(pos), "tanh": ops.tanh(x),
            "sigmoid": ops.sigmoid(x)}


@pytest.fixture(scope="module", params=[np.float32, np.float64], ids=["f32", "f64"])
def results(request):
    dtype = request.param
    x = _grid(dtype)
    tiny = np.finfo(dtype).tiny
    pos = np.abs(x) + np.asarray(tiny, dtype)
    pos = np.concatenate([pos[:-4], np.array([tiny / 8, 1.0, np.finfo(dtype).max, 7.5],
                                              dtype)]).astype(dtype)
    inputs = {"x": x, "pos": pos}
    graph, nodes, captured = trace_outputs(_program, inputs)
    native, _, _ = run_both(graph, nodes, inputs, captured)
    with np.errstate(over="ignore"):
        wide = x.astype(np.longdouble)
        want = {"exp": np.exp(wide), "log": np.log(pos.astype(np.longdouble)),
                "tanh": np.tanh(wide), "sigmoid": 1 / (1 + np.exp(-wide))}
    return dtype, native, {k: v.astype(dtype) for k, v in want.items()}


@pytest.mark.parametrize("name", sorted(MAX_ULPS))
def test_within_ulps(results, name):
    dtype, native, want = results
    got, ref = native[name], want[name]
    finite = np.isfinite(ref) & (np.abs(ref) > np.finfo(dtype).tiny)
    assert np.array_equal(np.isinf(got), np.isinf(ref))
    assert _ulps(got[finite], ref[finite]).max() <= MAX_ULPS[name]


def _special(dtype):
    x = np.array([np.inf, -np.inf, np.nan, 0.0, 1000.0, -1000.0], dtype)
    pos = np.array([0.0, np.inf, np.nan, -1.0, 1.0, 1e-45 if dtype == np.float32 else 5e-324],
                   dtype)
    graph, nodes, captured = trace_outputs(_program, {"x": x, "pos": pos})
    native, _, _ = run_both(graph, nodes, {"x": x, "pos": pos}, captured)
    return native


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_special_values(dtype):
    out = _special(dtype)
    nan = np.nan
    np.testing.assert_array_equal(out["exp"], np.array([np.inf, 0, nan, 1, np.inf, 0], dtype))
    np.testing.assert_array_equal(out["tanh"], np.array([1, -1, nan, 0, 1, -1], dtype))
    np.testing.assert_array_equal(out["sigmoid"], np.array([1, 0, nan, 0.5, 1, 0], dtype))
    log = out["log"]
    assert log[0] == -np.inf and log[1] == np.inf and np.isnan(log[2]) and np.isnan(log[3])
    assert log[4] == 0
    smallest = np.array(1e-45 if dtype == np.float32 else 5e-324, dtype)
    np.testing.assert_allclose(log[5], np.log(smallest), rtol=1e-6)
