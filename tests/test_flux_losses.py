"""Flux.Losses 0.13.17, ported from Flux.jl's test/losses.jl (line numbers refer to that file at
v0.13.17), translated to graphflux conventions: `ŷ` first, batch-first arrays (a Julia k × N
matrix -- k classes, N observations -- is the numpy (N, k) array, its transpose), Flux's `dims=1`
is `axis=-1`, and label_smoothing's binary mode (`dims=0`) is `axis=None`.

Tolerances are Julia's `≈`: rtol = sqrt(eps) of the less precise operand -- 1.5e-8 for Float64,
3.45e-4 for Float32 -- and atol = 0, so `≈ 0` means exactly zero.

Beyond the Flux file: every loss's gradient against central finite differences, the compiled
gradient equal to the eager one, `agg` must be callable, and mismatched shapes are refused."""
import math

import numpy as np
import pytest

import graphflux as gf

L = gf.losses
F64 = 1.5e-8        # sqrt(eps(Float64))
F32 = 3.45e-4       # sqrt(eps(Float32))


def approx(actual, expected, rtol=F64):
    """Julia's ≈ with atol = 0 (elementwise, which is at least as strict as Julia's norm form)."""
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64),
                               np.asarray(expected, dtype=np.float64), rtol=rtol, atol=0)


def np_sigmoid(x):
    return 1 / (1 + np.exp(-x))


def np_logsoftmax(x, axis=-1):
    z = x - np.max(x, axis=axis, keepdims=True)
    return z - np.log(np.sum(np.exp(z), axis=axis, keepdims=True))


def np_softmax(x, axis=-1):
    return np.exp(np_logsoftmax(x, axis))


def onehot(labels, classes):
    """Flux's onehotbatch(labels, classes), batch-first: (len(labels), len(classes)) float64."""
    return np.array([[1.0 if l == c else 0.0 for c in classes] for l in labels])


# ---- testset "xlogx & xlogy" (lines 21-35) ------------------------------------------------------

def test_xlogx():
    assert float(L.xlogx(0)) == 0.0
    assert np.isnan(L.xlogx(np.nan))
    approx(L.xlogx(2), 2.0 * math.log(2.0))
    approx(L.xlogx(np.array([0.0, 2.0, 0.5])), [0.0, 2.0 * math.log(2.0), 0.5 * math.log(0.5)])


def test_xlogy():
    assert float(L.xlogy(0, 1)) == 0.0
    assert np.isnan(L.xlogy(np.nan, 1))
    assert np.isnan(L.xlogy(1, np.nan))
    assert np.isnan(L.xlogy(np.nan, np.nan))
    approx(L.xlogy(2, 3), 2.0 * math.log(3.0))
    # the point of xlogy: a zero label never gives 0 * log(0) = nan
    assert float(L.xlogy(np.float64(0.0), np.float64(0.0))) == 0.0


# ---- regression-style y's (lines 37-60) ---------------------------------------------------------
Y_REG = np.array([1.0, 1.0, 0.0, 0.0])
YHAT_REG = np.array([0.9, 0.1, 0.1, 0.9])


def test_mse():
    """testset "mse" line 42 (line 45, complex values, has no graphflux counterpart)."""
    approx(L.mse(YHAT_REG, Y_REG), (0.1 ** 2 + 0.9 ** 2) / 2)


def test_mae():
    """testset "mae" line 49."""
    approx(L.mae(YHAT_REG, Y_REG), 1 / 2)


def test_huber_loss():
    """testset "huber_loss" line 53."""
    approx(L.huber_loss(YHAT_REG, Y_REG), 0.20500000000000002)


def test_msle():
    """testset "msle" line 59."""
    y = np.array([123.0, 456.0, 789.0])
    ŷ = np.array([345.0, 332.0, 789.0])
    approx(L.msle(ŷ, y), 0.38813985859136585)


# ---- one-hot y's (lines 62-84), batch-first -----------------------------------------------------
Y = onehot([1, 1, 0, 0], [0, 1])                            # onehotbatch([1, 1, 0, 0], 0:1)'
YHAT = np.array([[.1, .9], [.9, .1], [.9, .1], [.1, .9]])   # Flux writes this literal, then '
V = math.log(.1 / .9)
LOGYHAT = np.array([[V, 0.0], [0.0, V], [0.0, V], [V, 0.0]])
LOSSVALUE = 1.203972804325936
LOSSVALUE_SMOOTHED = 1.2039728043259348
YL = onehot([1], [0, 1])                  # [[0, 1]]
SF = 0.1
YLS = np.array([[SF, 1 - SF]])            # effective y after label smoothing
YLP = np.array([[0.9, 0.1]])
LOGYLP = np.array([[0.0, V]])
YA = onehot([1, 1, 1, 0, 0], [0, 1])
Y_SAME = YA.astype(np.float32)
Y_SIM = (Y_SAME * (1 - 2 * SF) + SF).astype(np.float32)
Y_DIS = Y_SIM[:, ::-1].copy()             # Flux swaps rows 1 and 2 (the classes)


def test_crossentropy_values():
    """testset "crossentropy" lines 87, 88, 91, 93, 92 (ϵ= is deprecated; same check with eps=)."""
    approx(L.crossentropy(np.array([0.1, 0.0, 0.9]), np.array([0.1, 0.0, 0.9])),
           L.crossentropy(np.array([0.1, 0.9]), np.array([0.1, 0.9])))
    approx(L.crossentropy(YHAT, Y), LOSSVALUE)
    approx(L.crossentropy(YLP, YL), -np.sum(YL * np.log(YLP)))
    assert float(L.crossentropy(Y_SAME, YA.astype(np.float32), eps=0)) == 0.0
    assert float(L.crossentropy(YA, YA, eps=0)) == 0.0


def test_crossentropy_with_smoothed_labels():
    """testset "crossentropy" lines 89, 90, 94, 95 (label_smoothing along the class axis)."""
    y_smoothed = L.label_smoothing(Y, 0.1)
    approx(L.crossentropy(YHAT, y_smoothed), LOSSVALUE_SMOOTHED)
    approx(L.crossentropy(YLP, L.label_smoothing(YL, 2 * SF)), -np.sum(YLS * np.log(YLP)))
    ya_smoothed = np.asarray(L.label_smoothing(YA, 2 * SF)).astype(np.float32)
    ya = YA.astype(np.float32)
    assert L.crossentropy(Y_SIM, ya) < L.crossentropy(Y_SIM, ya_smoothed)
    assert L.crossentropy(Y_DIS, ya) > L.crossentropy(Y_DIS, ya_smoothed)


def test_logitcrossentropy_values():
    """testset "logitcrossentropy" lines 99-100."""
    approx(L.logitcrossentropy(LOGYHAT, Y), LOSSVALUE)
    approx(L.logitcrossentropy(LOGYLP, YL), -np.sum(YL * np_logsoftmax(LOGYLP)))


def test_logitcrossentropy_with_smoothed_labels():
    """testset "logitcrossentropy" line 101."""
    approx(L.logitcrossentropy(LOGYLP, L.label_smoothing(YL, 2 * SF)),
           -np.sum(YLS * np_logsoftmax(LOGYLP)))


# ---- binary (lines 104-117): logŷ, y = randn(3), rand(3) ----------------------------------------
_rng = np.random.default_rng(104)
LOGYHAT_B = _rng.standard_normal(3)
Y_B = _rng.random(3)
YLS_B = Y_B * (1 - 2 * SF) + SF


def test_binarycrossentropy_values():
    """testset "binarycrossentropy" lines 108 (with the binary smoothing done in numpy; the
    broadcast `.` becomes agg=identity), 109, 110, 111 (constant label y = 1)."""
    p = np_sigmoid(LOGYHAT_B)
    approx(L.binarycrossentropy(p, YLS_B, eps=0, agg=gf.identity),
           -YLS_B * np.log(p) - (1 - YLS_B) * np.log(1 - p))
    approx(L.binarycrossentropy(p, Y_B, eps=0),
           np.mean(-Y_B * np.log(p) - (1 - Y_B) * np.log(1 - p)))
    e = np.finfo(np.float64).eps
    approx(L.binarycrossentropy(p, Y_B),
           np.mean(-Y_B * np.log(p + e) - (1 - Y_B) * np.log(1 - p + e)))
    approx(L.binarycrossentropy(np.array([0.1, 0.2, 0.9]), 1), -np.mean(np.log([0.1, 0.2, 0.9])))


def test_binarycrossentropy_with_binary_label_smoothing():
    """line 108 as Flux writes it: label_smoothing(y, 2sf; dims=0) -- graphflux axis=None."""
    p = np_sigmoid(LOGYHAT_B)
    ls = L.label_smoothing(Y_B, 2 * SF, axis=None)
    approx(ls, YLS_B)
    approx(L.binarycrossentropy(p, ls, eps=0, agg=gf.identity),
           -YLS_B * np.log(p) - (1 - YLS_B) * np.log(1 - p))


def test_logitbinarycrossentropy_values():
    """testset "logitbinarycrossentropy" lines 115 (label_smoothing(y, 0.2) with the default
    class axis: on a length-3 vector that is y 0.8 + 0.2/3) and 116."""
    p = np_sigmoid(LOGYHAT_B)
    ys = Y_B * 0.8 + 0.2 / 3
    approx(L.logitbinarycrossentropy(LOGYHAT_B, ys, agg=gf.identity),
           L.binarycrossentropy(p, ys, eps=0, agg=gf.identity))
    approx(L.logitbinarycrossentropy(LOGYHAT_B, Y_B), L.binarycrossentropy(p, Y_B, eps=0))
    approx(L.logitbinarycrossentropy(LOGYHAT_B, Y_B),
           np.mean(-Y_B * np.log(p) - (1 - Y_B) * np.log(1 - p)))


def test_logitbinarycrossentropy_with_label_smoothing():
    """line 115 as Flux writes it, label_smoothing(y, 0.2) on the vector."""
    ls = L.label_smoothing(Y_B, 0.2)
    approx(ls, Y_B * 0.8 + 0.2 / 3)
    approx(L.logitbinarycrossentropy(LOGYHAT_B, ls, agg=gf.identity),
           L.binarycrossentropy(np_sigmoid(LOGYHAT_B), ls, eps=0, agg=gf.identity))


# ---- testset "label_smoothing" (lines 119-126) --------------------------------------------------

def test_label_smoothing():
    y = onehot([1], [0, 1])
    assert np.array_equal(np.asarray(L.label_smoothing(y, 0.2)), np.array([[0.1, 0.9]]))
    # dims=0 (binary): the array call equals the elementwise call
    whole = np.asarray(L.label_smoothing(y, 0.2, axis=None))
    each = np.array([[float(L.label_smoothing(np.float64(v), 0.2, axis=None)) for v in row]
                     for row in y])
    assert np.array_equal(whole, each)
    assert np.array_equal(whole, np.array([[0.1, 0.9]]))


@pytest.mark.parametrize("alpha", [1.2, 0.0])
def test_label_smoothing_alpha_outside_0_1_is_refused(alpha):
    """lines 124-125: ArgumentError -> a GraphfluxError (a ValueError)."""
    with pytest.raises(gf.GraphfluxError):
        L.label_smoothing(np.array([0.0, 0.0, 1.0, 0.0]), alpha)
    with pytest.raises(ValueError):
        L.label_smoothing(np.array([0.0, 0.0, 1.0, 0.0]), alpha)


# ---- testset "kldivergence" (lines 128-135): y = [1 2 3], ŷ = [4.0 5.0 6.0] are 1 × 3 ----------
# (one class, three observations) -> (3, 1) batch-first; on length-3 vectors the value would
# be 3x larger.

def test_kldivergence():
    y = np.array([[1.0], [2.0], [3.0]])
    ŷ = np.array([[4.0], [5.0], [6.0]])
    approx(L.kldivergence(np.array([0.1, 0.0, 0.9]), np.array([0.1, 0.0, 0.9])),
           L.kldivergence(np.array([0.1, 0.9]), np.array([0.1, 0.9])))
    approx(L.kldivergence(ŷ, y), -1.7661057888493457)
    # `≈ 0` is exact in Julia; it holds because 2 + eps(Float64) rounds to 2.0 (notes, Gotcha 2)
    assert float(L.kldivergence(y, y)) == 0.0


# ---- testsets "hinge_loss", "squared_hinge_loss" (lines 137-148): 1 × 4 -> (4, 1) --------------
Y_H = np.array([[1.0], [2.0], [3.0], [4.0]])
YHAT_H = np.array([[5.0], [6.0], [7.0], [8.0]])


def test_hinge_loss():
    assert float(L.hinge_loss(YHAT_H, Y_H)) == 0.0
    approx(L.hinge_loss(Y_H, 0.5 * Y_H), 0.125)


def test_squared_hinge_loss():
    assert float(L.squared_hinge_loss(YHAT_H, Y_H)) == 0.0
    approx(L.squared_hinge_loss(Y_H, 0.5 * Y_H), 0.0625)


def test_hinge_loss_is_the_mean_not_the_documented_sum_over_size_y_2():
    """Flux's docstring example: y = [1, -1, 1, 1], ŷ = [0.1, 0.3, 1, 1.5] -> 0.55 (the mean;
    the docstring's formula sum(...)/size(y, 2) would give 2.2 for a vector)."""
    approx(L.hinge_loss(np.array([0.1, 0.3, 1.0, 1.5]), np.array([1.0, -1.0, 1.0, 1.0])), 0.55)


# ---- testset "poisson_loss" (lines 150-156) -----------------------------------------------------

def test_poisson_loss():
    y = np.array([[0.1], [0.2], [0.3]])
    ŷ = np.array([[0.4], [0.5], [0.6]])
    approx(L.poisson_loss(ŷ, y), 0.6278353988097339)
    approx(L.poisson_loss(y, y), 0.5044459776946685)


# ---- testsets "dice_coeff_loss", "tversky_loss" (lines 158-170) ---------------------------------
Y_D = np.array([[1.0], [0.5], [0.3], [2.4]])
YHAT_D = np.array([[0.0], [1.4], [0.5], [1.2]])


def test_dice_coeff_loss():
    approx(L.dice_coeff_loss(YHAT_D, Y_D), 0.2799999999999999)
    assert float(L.dice_coeff_loss(Y_D, Y_D)) == 0.0     # `≈ 0.0`: exact


def test_tversky_loss():
    """The code's formula, which these values pin; the docstring swaps β and 1 − β."""
    approx(L.tversky_loss(YHAT_D, Y_D), -0.06772009029345383)
    approx(L.tversky_loss(YHAT_D, Y_D, beta=0.8), -0.09490740740740744)
    approx(L.tversky_loss(Y_D, Y_D), -0.5576923076923075)


# ---- testset "no spurious promotions" (lines 172-182) -------------------------------------------
ALL_LOSSES = ["mse", "mae", "msle", "crossentropy", "logitcrossentropy", "binarycrossentropy",
              "logitbinarycrossentropy", "kldivergence", "huber_loss", "tversky_loss",
              "dice_coeff_loss", "poisson_loss", "hinge_loss", "squared_hinge_loss",
              "binary_focal_loss", "focal_loss", "siamese_contrastive_loss"]
NO_AGG = {"dice_coeff_loss", "tversky_loss"}
CLASS_AXIS = {"crossentropy", "logitcrossentropy", "kldivergence", "focal_loss"}


@pytest.mark.parametrize("name", ALL_LOSSES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_no_spurious_promotions(name, dtype):
    """Flux.pullback(f, ŷ, y) on rand(T, 2): the value is a T and the gradient has eltype T."""
    rng = np.random.default_rng(172)
    y = rng.random(2).astype(dtype)
    ŷ = rng.random(2).astype(dtype)
    f = getattr(L, name)
    assert np.asarray(f(ŷ, y)).dtype == dtype
    (g,) = gf.gradient(lambda a: f(a, y), ŷ, mode="eager")
    assert g.dtype == dtype and g.shape == ŷ.shape


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_no_spurious_promotions_compiled_float32(name):
    rng = np.random.default_rng(173)
    y = rng.random(2).astype(np.float32)
    ŷ = rng.random(2).astype(np.float32)
    f = getattr(L, name)
    (g,) = gf.gradient(lambda a: f(a, y), ŷ, mode="compiled")
    assert g.dtype == np.float32 and g.shape == ŷ.shape


# ---- testset "binary_focal_loss" (lines 184-197): 2 × 3 and 2 × 2, transposed ------------------

def test_binary_focal_loss():
    y = np.array([[0, 1, 0], [1, 0, 1]], dtype=np.float64).T
    ŷ = np.array([[0.268941, 0.5, 0.268941], [0.731059, 0.5, 0.731059]]).T
    y1 = np.array([[1, 0], [0, 1]], dtype=np.float64).T
    ŷ1 = np.array([[0.6, 0.3], [0.4, 0.7]]).T
    approx(L.binary_focal_loss(ŷ, y), 0.0728675615927385)
    approx(L.binary_focal_loss(ŷ1, y1), 0.05691642237852222)
    approx(L.binary_focal_loss(ŷ, y, gamma=0.0), L.binarycrossentropy(ŷ, y))


# ---- testset "focal_loss" (lines 199-213) -------------------------------------------------------

def flux_softmax_reshape_m7_7(dtype):
    """softmax(reshape(-7:7, 3, 5) .* 1f0): column-major 3 × 5 -> batch-first rows of 3."""
    return np_softmax(np.arange(-7, 8, dtype=np.float64).reshape(5, 3), axis=-1).astype(dtype)


Y_F = np.array([[1, 0, 0, 0, 1], [0, 1, 0, 1, 0], [0, 0, 1, 0, 0]], dtype=np.float64).T


def test_focal_loss():
    """ŷ is Float32 in Flux, so ≈ has rtol 3.45e-4 there; the literal 1.1277571935622628 is
    ~1.4e-6 (relative) off a float64 recomputation (notes, Gotcha 9)."""
    ŷ = flux_softmax_reshape_m7_7(np.float32)
    y = Y_F.astype(np.float32)
    y1 = np.array([[1, 0], [0, 0], [0, 1]], dtype=np.float64).T
    ŷ1 = np.array([[0.4, 0.2], [0.5, 0.5], [0.1, 0.3]]).T
    approx(L.focal_loss(ŷ, y), 1.1277571935622628, rtol=F32)
    approx(L.focal_loss(ŷ1, y1), 0.45990566879720157)
    approx(L.focal_loss(ŷ, y, gamma=0), L.crossentropy(ŷ, y), rtol=F32)


def test_focal_loss_float64_recomputation():
    """The same ŷ in float64 against a direct numpy evaluation of Flux's formula."""
    ŷ = flux_softmax_reshape_m7_7(np.float64)
    e = np.finfo(np.float64).eps
    expected = np.mean(np.sum(-Y_F * (1 - (ŷ + e)) ** 2 * np.log(ŷ + e), axis=-1))
    approx(L.focal_loss(ŷ, Y_F), expected)
    approx(L.focal_loss(ŷ, Y_F), 1.1277571935622628, rtol=F32)


# ---- testset "siamese_contrastive_loss" (lines 215-251) -----------------------------------------

def test_siamese_contrastive_loss():
    y = np.array([[1, 0], [0, 0], [0, 1]], dtype=np.float64).T
    ŷ = np.array([[0.4, 0.2], [0.5, 0.5], [0.1, 0.3]]).T
    y1 = Y_F.astype(np.float32)
    ŷ1 = flux_softmax_reshape_m7_7(np.float32)
    y2 = np.array([1.0, 0.0, 0.0, 1.0, 1.0])
    ŷ2 = np.array([0.6, 0.4, 0.1, 0.2, 0.7])
    f = L.siamese_contrastive_loss
    approx(f(ŷ, y), 0.2333333333333333)
    approx(f(ŷ, y, margin=0.5), 0.10000000000000002)
    approx(f(ŷ, y, margin=1.5), 0.5333333333333333)
    approx(f(ŷ1, y1), 0.32554644, rtol=F32)
    approx(f(ŷ1, y1, margin=0.5), 0.16271012, rtol=F32)
    approx(f(ŷ1, y1, margin=1.5), 0.6532292, rtol=F32)
    approx(f(ŷ, y, margin=1), 0.2333333333333333)       # the default, explicitly
    assert float(f(y, y)) == 0.0
    assert float(f(y1, y1)) == 0.0
    approx(f(ŷ, y, margin=0), 0.09166666666666667)
    approx(f(ŷ1, y1, margin=0), 0.13161165, rtol=F32)
    approx(f(ŷ2, y2), 0.21200000000000005)
    approx(f(ŷ2, ŷ2), 0.18800000000000003)


@pytest.mark.parametrize("margin", [-0.5, -1])
def test_siamese_contrastive_loss_negative_margin_is_refused(margin):
    """lines 249-250: DomainError(margin, "Margin must be non-negative") -> GraphfluxError."""
    y = np.array([[1, 0], [0, 0], [0, 1]], dtype=np.float64).T
    ŷ = np.array([[0.4, 0.2], [0.5, 0.5], [0.1, 0.3]]).T
    with pytest.raises(gf.GraphfluxError, match="(?i)margin"):
        L.siamese_contrastive_loss(ŷ, y, margin=margin)


# ---- gradients: finite differences, and compiled == eager ---------------------------------------
# test/losses.jl differentiates every loss only in "no spurious promotions"; here each loss's
# gradient with respect to ŷ is checked against central differences (float64, away from kinks),
# and the compiled gradient against the eager one.

def _away_from(a, kink, gap=0.05):
    a = a.copy()
    close = np.abs(a - kink) < gap
    a[close] += 2 * gap
    return a


def gradient_inputs(name):
    """(ŷ, y, kwargs) of shape (4, 3) for each loss, smooth at ŷ."""
    rng = np.random.default_rng(ALL_LOSSES.index(name))
    shape = (4, 3)
    n = rng.standard_normal
    binary = rng.integers(0, 2, shape).astype(np.float64)
    if name in ("mse", "mae"):
        ŷ, y = n(shape), n(shape)
        return _away_from(ŷ - y, 0.0) + y, y, {}
    if name == "msle":
        return rng.uniform(0.5, 2, shape), rng.uniform(0.5, 2, shape), {}
    if name == "huber_loss":
        y = n(shape)
        e = _away_from(rng.uniform(0.1, 2.5, shape), 0.7) * rng.choice([-1.0, 1.0], shape)
        return y + e, y, {"delta": 0.7}
    if name in ("crossentropy", "kldivergence"):
        return np_softmax(n(shape)), np_softmax(n(shape)), {}
    if name == "logitcrossentropy":
        return n(shape), np_softmax(n(shape)), {}
    if name == "binarycrossentropy":
        return np_sigmoid(n(shape)), rng.random(shape), {}
    if name == "logitbinarycrossentropy":
        return n(shape), rng.random(shape), {}
    if name == "poisson_loss":
        return rng.uniform(0.5, 2, shape), rng.uniform(0, 3, shape), {}
    if name in ("hinge_loss", "squared_hinge_loss"):
        y = rng.choice([-1.0, 1.0], shape)
        ŷ = 1.5 * n(shape)
        margin = _away_from(1 - ŷ * y, 0.0)           # keep 1 - ŷy away from the kink at 0
        return (1 - margin) * y, y, {}
    if name == "dice_coeff_loss":
        return rng.random(shape), binary, {"smooth": 0.5}
    if name == "tversky_loss":
        return rng.random(shape), binary, {"beta": 0.6}
    if name == "focal_loss":
        return np_softmax(n(shape)), onehot(rng.integers(0, 3, 4), [0, 1, 2]), {"gamma": 1.5}
    if name == "binary_focal_loss":
        return rng.uniform(0.05, 0.95, shape), binary, {"gamma": 3}
    if name == "siamese_contrastive_loss":
        return _away_from(rng.uniform(0, 2, shape), 1.3), binary, {"margin": 1.3}
    raise KeyError(name)


def finite_difference(f, x, h=1e-6):
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        step = h * max(1.0, abs(x[i]))
        xp, xm = x.copy(), x.copy()
        xp[i] += step
        xm[i] -= step
        g[i] = (float(f(xp)) - float(f(xm))) / (2 * step)
    return g


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_gradient_matches_finite_differences(name):
    ŷ, y, kw = gradient_inputs(name)
    f = getattr(L, name)
    (g,) = gf.gradient(lambda a: f(a, y, **kw), ŷ, mode="eager")
    np.testing.assert_allclose(g, finite_difference(lambda a: f(a, y, **kw), ŷ),
                               rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_compiled_gradient_equals_eager(name):
    """The losses are graphflux ops, so they trace: compiled and eager agree to rtol 1e-9."""
    ŷ, y, kw = gradient_inputs(name)
    f = getattr(L, name)
    (ge,) = gf.gradient(lambda a: f(a, y, **kw), ŷ, mode="eager")
    (gc,) = gf.gradient(lambda a: f(a, y, **kw), ŷ, mode="compiled")
    assert gc.dtype == np.float64 and gc.shape == ŷ.shape
    np.testing.assert_allclose(gc, ge, rtol=1e-9, atol=1e-15)


def test_compiled_gradient_with_custom_agg_and_class_axis_losses():
    """A weighted agg (notes c: `x -> mean(w .* x)`) inside a compiled gradient."""
    rng = np.random.default_rng(11)
    ŷ, y = rng.standard_normal((5, 4)), np_softmax(rng.standard_normal((5, 4)))
    wts = rng.random(5)

    def f(a):
        return L.logitcrossentropy(a, y, agg=lambda l: gf.mean(wts * l))

    approx(f(ŷ), np.mean(wts * -np.sum(y * np_logsoftmax(ŷ), axis=-1)))
    (ge,) = gf.gradient(f, ŷ, mode="eager")
    (gc,) = gf.gradient(f, ŷ, mode="compiled")
    np.testing.assert_allclose(gc, ge, rtol=1e-9, atol=1e-15)
    expected = wts[:, None] / 5 * (np_softmax(ŷ) * y.sum(-1, keepdims=True) - y)
    np.testing.assert_allclose(ge, expected, rtol=1e-9, atol=1e-15)


# ---- agg: callable only; gf.sum vs gf.mean ------------------------------------------------------
AGG_LOSSES = [n for n in ALL_LOSSES if n not in NO_AGG]


@pytest.mark.parametrize("name", AGG_LOSSES)
def test_agg_string_is_a_type_error_naming_agg(name):
    ŷ, y, kw = gradient_inputs(name)
    with pytest.raises(TypeError, match="agg"):
        getattr(L, name)(ŷ, y, agg="mean", **kw)


def test_agg_string_error_is_a_graphflux_error():
    """API.md: every error a user can cause is a gf.GraphfluxError (also a TypeError here)."""
    ŷ, y, _ = gradient_inputs("mse")
    with pytest.raises(gf.GraphfluxError):
        L.mse(ŷ, y, agg="mean")


def np_xlogy(x, y):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(x == 0, 0.0, x * np.log(y))


def np_terms(name, ŷ, y, kw):
    """What Flux 0.13.17 hands to `agg`, written in numpy from Flux's source: the elementwise
    losses, or the per-observation sums for the losses with a class axis. A list: kldivergence
    applies agg to its entropy and its cross-entropy term separately and adds them."""
    e = np.finfo(ŷ.dtype).eps
    if name == "mse":
        return [(ŷ - y) ** 2]
    if name == "mae":
        return [np.abs(ŷ - y)]
    if name == "msle":
        return [np.log((ŷ + e) / (y + e)) ** 2]
    if name == "huber_loss":
        d = kw.get("delta", 1.0)
        a = np.abs(ŷ - y)
        small = a < d
        return [a ** 2 * small * 0.5 + d * (a - 0.5 * d) * (1 - small)]
    if name == "crossentropy":
        return [-np.sum(np_xlogy(y, ŷ + e), axis=-1)]
    if name == "logitcrossentropy":
        return [-np.sum(y * np_logsoftmax(ŷ), axis=-1)]
    if name == "binarycrossentropy":
        return [-np_xlogy(y, ŷ + e) - np_xlogy(1 - y, 1 - ŷ + e)]
    if name == "logitbinarycrossentropy":
        return [(1 - y) * ŷ - np.log(np_sigmoid(ŷ))]
    if name == "kldivergence":
        return [np.sum(np_xlogy(y, y), axis=-1), -np.sum(np_xlogy(y, ŷ + e), axis=-1)]
    if name == "poisson_loss":
        return [ŷ - np_xlogy(y, ŷ)]
    if name == "hinge_loss":
        return [np.maximum(0, 1 - ŷ * y)]
    if name == "squared_hinge_loss":
        return [np.maximum(0, 1 - ŷ * y) ** 2]
    if name == "binary_focal_loss":
        g, p = kw.get("gamma", 2), ŷ + e
        p_t = y * p + (1 - y) * (1 - p)
        return [(1 - p_t) ** g * -np.log(p_t)]
    if name == "focal_loss":
        g, p = kw.get("gamma", 2), ŷ + e
        return [np.sum(-y * (1 - p) ** g * np.log(p), axis=-1)]
    if name == "siamese_contrastive_loss":
        m = kw.get("margin", 1.0)
        return [(1 - y) * ŷ ** 2 + y * np.maximum(0, m - ŷ) ** 2]
    raise KeyError(name)


@pytest.mark.parametrize("name", AGG_LOSSES)
def test_agg_is_applied_as_flux_does(name):
    """Default (mean), agg=gf.sum, agg=gf.mean and a nonlinear agg against numpy recomputations
    of Flux's formulas (with each loss's non-default keyword from gradient_inputs)."""
    ŷ, y, kw = gradient_inputs(name)
    f = getattr(L, name)
    terms = np_terms(name, ŷ, y, kw)
    expected_shape = ŷ.shape[:-1] if name in CLASS_AXIS else ŷ.shape
    assert all(t.shape == expected_shape for t in terms)
    approx(f(ŷ, y, **kw), sum(np.mean(t) for t in terms), rtol=1e-12)
    approx(f(ŷ, y, agg=gf.mean, **kw), sum(np.mean(t) for t in terms), rtol=1e-12)
    approx(f(ŷ, y, agg=gf.sum, **kw), sum(np.sum(t) for t in terms), rtol=1e-12)
    approx(f(ŷ, y, agg=lambda l: 0.5 * gf.sum(l * l), **kw),
           sum(0.5 * np.sum(t * t) for t in terms), rtol=1e-12)
    if len(terms) == 1:
        approx(f(ŷ, y, agg=gf.identity, **kw), terms[0], rtol=1e-12)


def test_agg_sum_and_a_non_default_margin_by_hand():
    """siamese_contrastive_loss with margin=2 on Flux's test arrays: y = 1 gives (2 - ŷ)^2,
    y = 0 gives ŷ^2: 2.56 + 0.25 + 0.01 + 0.04 + 0.25 + 2.89 = 6.0 over 6 elements."""
    y = np.array([[1, 0], [0, 0], [0, 1]], dtype=np.float64).T
    ŷ = np.array([[0.4, 0.2], [0.5, 0.5], [0.1, 0.3]]).T
    f = L.siamese_contrastive_loss
    approx(f(ŷ, y, margin=2, agg=gf.sum), 6.0)
    approx(f(ŷ, y, margin=2), 1.0)
    approx(f(ŷ, y, margin=2, agg=gf.identity), [[2.56, 0.25, 0.01], [0.04, 0.25, 2.89]])
    # mse with agg=sum: 0.1^2 + 0.9^2 + 0.1^2 + 0.9^2
    approx(L.mse(YHAT_REG, Y_REG, agg=gf.sum), 1.64)


# ---- mismatched shapes (Flux's _check_sizes -> DimensionMismatch) -------------------------------

@pytest.mark.parametrize("name", ALL_LOSSES)
def test_mismatched_shapes_are_refused(name):
    rng = np.random.default_rng(12)
    f = getattr(L, name)
    with pytest.raises(gf.GraphfluxError):
        f(rng.random((4, 3)), rng.random((3, 4)))
    with pytest.raises(gf.GraphfluxError):
        f(rng.random((4, 3)), rng.random((4, 2)))
    with pytest.raises(gf.GraphfluxError):
        f(rng.random(3), rng.random(4))


@pytest.mark.parametrize("mode", ["compiled", "eager"])
def test_binarycrossentropy_with_a_constant_label_broadcasts_as_flux(mode):
    """Flux allows `binarycrossentropy(ŷ, 1)`: the label broadcasts over ŷ."""
    rng = np.random.default_rng(2)
    w = rng.standard_normal((1, 3)).astype(np.float64)
    x = rng.standard_normal((5, 3))
    step = gf.compile(lambda x: gf.losses.binarycrossentropy(gf.σ(x @ gf.transpose(w)), 1),
                      gf.Params([w]), mode=mode)
    loss, grads = step(x)
    p = 1 / (1 + np.exp(-(x @ w.T)))
    eps = np.finfo(np.float64).eps
    assert loss == pytest.approx(float(np.mean(-np.log(p + eps))), rel=1e-9)
    np.testing.assert_allclose(grads[w], (-(1 - p) * p / (p + eps) * x).sum(0, keepdims=True)
                               / 5, rtol=1e-7)
