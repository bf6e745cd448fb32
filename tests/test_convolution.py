"""Convolutions and pooling: the numpy implementations against direct loops written from the
definitions (tests/window_reference.py), gradients against central finite differences in
float64, the native kernels against the numpy interpreter (eager), float32 against float64,
and the flip convention against a hand-computed example."""
import numpy as np
import pytest

import graphflux as gf
import window_reference as ref
from graphflux.compiler.errors import ShapeError

# (spatial, window, stride, pad, dilation, groups, flipped, channels in, out)
CONVS = [
    ((7, 6), (3, 2), (2, 1), (1, 0, 2, 1), (1, 2), 1, False, 4, 6),    # asymmetric padding
    ((9,), (3,), (1,), (2,), (2,), 2, True, 4, 6),                      # 1-D, groups, dilation
    ((4, 5, 3), (2, 3, 1), (1, 2, 1), (0, 1, 1), (1, 1, 1), 1, False, 2, 3),   # 3-D
    ((5, 5), (5, 5), (1, 1), (0, 0), (1, 1), 1, True, 1, 2),            # window = input
    ((8, 7), (3, 3), (3, 2), (1, 1), (1, 1), 3, False, 3, 6),           # depthwise-like
    ((6, 6), (2, 2), (1, 1), gf.SamePad(), (2, 2), 1, False, 2, 2),     # SamePad, dilated
    # unit width stride, no width padding: the weight gradient in registers, a line of 8+8+1
    ((7, 21), (3, 3), (2, 1), (1, 1, 0, 0), (1, 2), 2, False, 4, 6),
    ((3, 6, 10), (2, 3, 3), (1, 1, 1), (1, 0, 0, 1, 0, 0), (1, 1, 1), 1, True, 2, 3),
    ((5, 14), (3, 11), (1, 1), (0, 0), (1, 1), 1, False, 2, 2),         # two passes of rows
    ((6,), (2,), (1,), (3,), (1,), 1, False, 1, 2),         # padding wider than the window
]
POOLS = [  # (spatial, window, stride, pad)
    ((6, 6), (2, 2), (2, 2), (0, 0)),
    ((7, 6), (3, 2), (2, 2), (1, 0, 0, 1)),
    ((9,), (3,), (2,), (1,)),
    ((4, 5, 4), (2, 2, 3), (1, 2, 1), (0, 0, 1, 0, 0, 1)),
    ((5, 5), (5, 5), (1, 1), (0, 0)),                                   # global
    ((4, 40), (2, 2), (2, 2), (0, 0)),           # tiling windows in vectors: a line of 8+8+4
    ((4, 12), (1, 4), (1, 4), (0, 0)),
    ((6, 5), (3, 1), (3, 1), (0, 0)),
    ((4, 4, 6), (2, 2, 2), (2, 2, 2), (0, 0, 0)),
    ((8,), (2,), (2,), (0,)),
]


def _conv_args(case, batch=2, dtype=np.float64, seed=0):
    sp, k, s, p, d, g, fl, cin, cout = case
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, cin) + sp).astype(dtype)
    w = rng.normal(size=(cout, cin // g) + k).astype(dtype)
    return x, w, dict(stride=s, pad=p, dilation=d, groups=g, flipped=fl)


def _ref_pad(p, k, d):
    if isinstance(p, gf.SamePad):
        total = [(kk - 1) * dd for kk, dd in zip(k, d)]
        return tuple(v for t in total for v in ((t + 1) // 2, t // 2))
    return p


def _reference(x, w, kw):
    return ref.conv(x, w, kw["stride"], _ref_pad(kw["pad"], w.shape[2:], kw["dilation"]),
                    kw["dilation"], kw["groups"], kw["flipped"])


def _numeric_grad(f, a, eps=1e-6):
    g = np.zeros_like(a)
    for i in np.ndindex(a.shape):
        old = a[i]
        a[i] = old + eps
        up = f()
        a[i] = old - eps
        down = f()
        a[i] = old
        g[i] = (up - down) / (2 * eps)
    return g


@pytest.mark.parametrize("case", CONVS, ids=range(len(CONVS)))
def test_conv_numpy_matches_direct_loops(case):
    x, w, kw = _conv_args(case)
    np.testing.assert_allclose(gf.conv(x, w, **kw), _reference(x, w, kw), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", CONVS, ids=range(len(CONVS)))
def test_conv_native_forward_and_gradients(case):
    """Compiled: the forward against the direct loops, both gradients against central
    differences (float64: truncation ~1e-10 at eps 1e-6), and against eager's numpy ones."""
    x, w, kw = _conv_args(case)
    y = _reference(x, w, kw)
    dy = np.random.default_rng(1).normal(size=y.shape)
    forward = gf.jit(lambda a, b: gf.conv(a, b, **kw))
    np.testing.assert_allclose(forward(x, w), y, rtol=1e-12, atol=1e-12)

    def loss(a, b):
        return gf.sum(gf.conv(a, b, **kw) * dy)
    gx, gw = gf.gradient(loss, x, w)
    ex, ew = gf.gradient(loss, x, w, mode="eager")
    fx = _numeric_grad(lambda: float(np.sum(gf.conv(x, w, **kw) * dy)), x)
    fw = _numeric_grad(lambda: float(np.sum(gf.conv(x, w, **kw) * dy)), w)
    np.testing.assert_allclose(gx, fx, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(gw, fw, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(gx, ex, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(gw, ew, rtol=1e-11, atol=1e-12)


def test_conv_float32_native_against_float64_reference():
    """float32 sums of up to 27 products of O(1) numbers: within 1e-5 relative of the norm."""
    x, w, kw = _conv_args(CONVS[0], batch=3)
    y = gf.jit(lambda a, b: gf.conv(a, b, **kw))(x.astype(np.float32), w.astype(np.float32))
    assert y.dtype == np.float32
    expected = _reference(x, w, kw)
    assert np.max(np.abs(y - expected)) <= 1e-5 * np.max(np.abs(expected))


@pytest.mark.parametrize("shape", [(9, 1, 28, 28, 6), (5, 6, 12, 12, 16)])
def test_weight_gradient_float32_against_float64(shape):
    """LeNet's two weight gradients in float32 (vectors of 16, summed in registers): each
    element within 1e-5 of the sum of its terms' magnitudes -- n u for the longest chain of
    additions (samples per chunk x lines x pieces, the lane tree, the chunks: under 160)."""
    n, c, h, w_, o = shape
    rng = np.random.default_rng(7)
    x, w = rng.normal(size=(n, c, h, w_)), rng.normal(size=(o, c, 5, 5))
    dy = rng.normal(size=(n, o, h - 4, w_ - 4))
    x32, dy32 = x.astype(np.float32), dy.astype(np.float32)
    gw32, = gf.gradient(lambda b: gf.sum(gf.conv(x32, b) * dy32), w.astype(np.float32))
    assert gw32.dtype == np.float32
    gw, = gf.gradient(lambda b: gf.sum(gf.conv(x, b) * dy), w, mode="eager")
    scale, = gf.gradient(lambda b: gf.sum(gf.conv(np.abs(x), b) * np.abs(dy)), w, mode="eager")
    assert np.all(np.abs(gw32 - gw) <= 1e-5 * scale)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("height,pad", [(10, 0), (8, 0), (9, 1), (7, 0)])
def test_direct_forward_on_short_lines(dtype, height, pad):
    """Output lines of 4, shorter than a vector in either precision, with and without height
    padding (the padded copy), on even and odd numbers of lines."""
    rng = np.random.default_rng(height)
    x = rng.normal(size=(3, 2, height, 6))
    w = rng.normal(size=(3, 2, 3, 3))
    kw = dict(stride=(1, 1), pad=(pad, pad, 0, 0), dilation=(1, 1), groups=1, flipped=False)
    y = gf.jit(lambda a, b: gf.conv(a, b, pad=(pad, pad, 0, 0)))(x.astype(dtype),
                                                                 w.astype(dtype))
    expected = _reference(x, w, kw)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    assert np.max(np.abs(y - expected)) <= tol * np.max(np.abs(expected))


def test_batch_of_one_and_a_large_image_split_into_blocks():
    """64 x 64 with 8 channels and a 3 x 3 window: patch blocks of a few lines each, so the
    block loop and its last partial block run; a batch of one runs one task."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1, 8, 40, 41))
    w = rng.normal(size=(5, 8, 3, 3))
    y = gf.jit(lambda a, b: gf.conv(a, b, pad=1))(x, w)
    np.testing.assert_allclose(y, gf.conv(x, w, pad=1), rtol=1e-11, atol=1e-11)
    dy = rng.normal(size=y.shape)
    gx, gw = gf.gradient(lambda a, b: gf.sum(gf.conv(a, b, pad=1) * dy), x, w)
    ex, ew = gf.gradient(lambda a, b: gf.sum(gf.conv(a, b, pad=1) * dy), x, w, mode="eager")
    np.testing.assert_allclose(gx, ex, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(gw, ew, rtol=1e-10, atol=1e-10)


def test_the_flip_convention_by_hand():
    """x = [1 2 3 4], w = [1 10]: a true convolution (Flux's Conv, NNlib's default) gives
    y[i] = x[i] * 10 + x[i + 1] * 1 = [12, 23, 34]; cross-correlation (CrossCor, PyTorch's
    conv1d) gives x[i] * 1 + x[i + 1] * 10 = [21, 32, 43]."""
    x = np.array([[[1.0, 2.0, 3.0, 4.0]]])
    w = np.array([[[1.0, 10.0]]])
    for run in (lambda f: f(x, w), lambda f: gf.jit(f)(x, w)):
        np.testing.assert_array_equal(run(lambda a, b: gf.conv(a, b)).ravel(), [12, 23, 34])
        np.testing.assert_array_equal(run(lambda a, b: gf.conv(a, b, flipped=True)).ravel(),
                                      [21, 32, 43])


def test_conv_transpose_is_the_input_gradient():
    x, w, kw = _conv_args(CONVS[1])
    y = gf.conv(x, w, **kw)
    dy = np.random.default_rng(2).normal(size=y.shape)
    gx, = gf.gradient(lambda a: gf.sum(gf.conv(a, w, **kw) * dy), x, mode="eager")
    t = gf.conv_transpose(dy, w, **kw)
    assert t.shape[:2] == x.shape[:2]
    # at stride 1 no input is left over, so the shapes agree exactly
    np.testing.assert_allclose(t, gx, rtol=1e-12)
    np.testing.assert_allclose(gf.jit(lambda a, b: gf.conv_transpose(a, b, **kw))(dy, w), t,
                               rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("case", POOLS, ids=range(len(POOLS)))
@pytest.mark.parametrize("kind", ["max", "mean"])
def test_pooling_numpy_and_native_against_direct_loops(case, kind):
    sp, k, s, p = case
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 3) + sp)
    x[1, 2].flat[3] = np.nan                       # NaN in, NaN out
    fn = gf.maxpool if kind == "max" else gf.meanpool
    expected = ref.pool(x, k, s, p, kind)
    got = fn(x, k, stride=s, pad=p)
    native = gf.jit(lambda a: fn(a, k, stride=s, pad=p))(x)
    for y in (got, native):
        np.testing.assert_array_equal(np.isnan(y), np.isnan(expected))
        np.testing.assert_allclose(np.nan_to_num(y), np.nan_to_num(expected), rtol=1e-12)


@pytest.mark.parametrize("case", POOLS, ids=range(len(POOLS)))
def test_pooling_gradients(case):
    """Max: each window's cotangent to its first maximum (ties included: x has many equal
    values), against the direct loops; mean: against central differences."""
    sp, k, s, p = case
    rng = np.random.default_rng(5)
    x = np.round(rng.normal(size=(2, 3) + sp), 0)            # ties
    y = ref.pool(x, k, s, p, "max")
    dy = rng.normal(size=y.shape)
    want = ref.maxpool_grad(x, dy, k, s, p)
    for mode in ("compiled", "eager"):
        g, = gf.gradient(lambda a: gf.sum(gf.maxpool(a, k, stride=s, pad=p) * dy), x, mode=mode)
        np.testing.assert_allclose(g, want, rtol=1e-12)
    x = rng.normal(size=x.shape)

    def mean_loss():
        return float(np.sum(gf.meanpool(x, k, stride=s, pad=p) ** 2))
    numeric = _numeric_grad(mean_loss, x)
    for mode in ("compiled", "eager"):
        g, = gf.gradient(lambda a: gf.sum(gf.meanpool(a, k, stride=s, pad=p) ** 2), x,
                         mode=mode)
        np.testing.assert_allclose(g, numeric, rtol=1e-6, atol=1e-8)


def test_a_window_that_does_not_fit_is_a_shape_error_naming_the_line():
    x = np.ones((1, 1, 3, 3))
    with pytest.raises(ShapeError, match="does not fit.*test_convolution.py"):
        gf.jit(lambda a: gf.conv(a, np.ones((1, 1, 5, 5))))(x)
    with pytest.raises(ShapeError, match="channels"):
        gf.conv(x, np.ones((2, 3, 2, 2)))


@pytest.mark.parametrize("bits", [256, 128])
def test_the_kernels_at_narrower_vectors(bits, monkeypatch):
    """AVX2's and SSE's lane counts (other machines this runs on): fewer accumulators, other
    line pieces and pooling chunks, the same numbers. The vector widths are forced, and the
    artifact cache is off so nothing compiled at this host's widths is reused."""
    from graphflux.compiler import llvm_backend
    monkeypatch.setenv("GRAPHFLUX_CACHE", "0")
    monkeypatch.setattr(llvm_backend, "vector_widths", lambda: {
        np.dtype(np.float32): bits // 32, np.dtype(np.float64): bits // 64})
    for case in (CONVS[0], CONVS[6], CONVS[8], CONVS[9]):
        x, w, kw = _conv_args(case)
        dy = np.random.default_rng(1).normal(size=_reference(x, w, kw).shape)

        def loss(a, b):
            return gf.sum(gf.conv(a, b, **kw) * dy)
        np.testing.assert_allclose(gf.jit(lambda a, b: gf.conv(a, b, **kw))(x, w),
                                   _reference(x, w, kw), rtol=1e-12, atol=1e-12)
        for got, want in zip(gf.gradient(loss, x, w), gf.gradient(loss, x, w, mode="eager")):
            np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-12)
    x, w, _ = _conv_args(CONVS[8])
    step = gf.compile(lambda a: gf.sum(gf.conv(a, w)), gf.params(w), gf.Descent(0.1))
    widths = {r["vector_width"] for r in step.lower(x).stats["kernel_table"]
              if r["kind"] == "conv"}
    assert widths == {bits // 64}, widths             # float64 lanes: the forced widths held
    x = np.round(np.random.default_rng(2).normal(size=(2, 3, 4, 40)), 0)
    dy = np.random.default_rng(3).normal(size=(2, 3, 2, 20))
    g, = gf.gradient(lambda a: gf.sum(gf.maxpool(a, (2, 2)) * dy), x)
    np.testing.assert_allclose(g, ref.maxpool_grad(x, dy, (2, 2), (2, 2), (0, 0)), rtol=1e-12)
