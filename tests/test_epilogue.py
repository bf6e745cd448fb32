"""GEMM epilogues (compiler.epilogue): a Dense layer's bias and activation run inside the
product's write-back, block by block, with the numbers of the separate pass -- on shapes off
the register tile and the blocking, with the product split across threads or not, and at a
batch length shorter than the step was compiled for."""
import numpy as np
import pytest

import graphflux as gf
from graphflux.compiler import ops
from graphflux.runtime.pool import pool
from helpers import run_both, trace_outputs


@pytest.mark.parametrize("m,k,n", [(1, 7, 5), (13, 300, 17), (301, 257, 83), (83, 64, 301)])
def test_bias_and_activation_fused_into_the_product_match_the_reference(m, k, n):
    rng = np.random.default_rng(m)
    inputs = {"x": rng.standard_normal((m, k)).astype(np.float32),
              "w": rng.standard_normal((n, k)).astype(np.float32),
              "b": rng.standard_normal(n).astype(np.float32)}
    graph, nodes, captured = trace_outputs(
        lambda x, w, b: {"y": ops.tanh(ops.add(ops.matmul(x, w, tb=True), b))}, inputs)
    results = {}
    for policy in ("serial", "split"):
        with pool().policy(policy):
            native, reference, art = run_both(graph, nodes, inputs, captured)
        results[policy] = native["y"]
        # a float32 dot product of k terms is off by up to about k * 6e-8 of its terms'
        # magnitude (~1 here), whatever the summation order: atol grows with k
        np.testing.assert_allclose(native["y"], reference["y"], rtol=2e-5, atol=1e-6 * k)
    assert results["serial"].tobytes() == results["split"].tobytes()
    names = [row["name"] for row in art.stats["kernel_table"]]
    assert any(name.startswith("gemm") and "_add_tanh" in name for name in names), names
    assert not any(name.startswith("k") and "_add_tanh" in name for name in names), names


def test_a_bias_gradient_sum_is_not_fused_into_the_backward_product():
    """Summing the blocks of a split product would make the result depend on the split."""
    rng = np.random.default_rng(0)
    inputs = {"x": rng.standard_normal((64, 40)).astype(np.float32),
              "w": rng.standard_normal((40, 30)).astype(np.float32)}
    graph, nodes, captured = trace_outputs(
        lambda x, w: {"s": ops.sum(ops.relu(ops.matmul(x, w)), axis=0)}, inputs)
    native, reference, art = run_both(graph, nodes, inputs, captured)
    np.testing.assert_allclose(native["s"], reference["s"], rtol=2e-5, atol=1e-4)
    assert all("+" not in row["name"] for row in art.stats["kernel_table"])


@pytest.mark.parametrize("stride", [1, 2])
def test_bias_and_activation_fused_into_a_convolution_match_the_reference(stride):
    """Stride 1 takes the direct kernel, a width stride of 2 the GEMM path; each calls the
    epilogue on every sample it finishes, on whichever thread ran it."""
    rng = np.random.default_rng(stride)
    inputs = {"x": rng.standard_normal((7, 3, 11, 13)).astype(np.float32),
              "w": rng.standard_normal((5, 3, 3, 3)).astype(np.float32),
              "b": rng.standard_normal((5, 1, 1)).astype(np.float32)}
    graph, nodes, captured = trace_outputs(
        lambda x, w, b: {"y": ops.tanh(ops.add(gf.conv(x, w, stride=stride, pad=1), b))},
        inputs)
    results = {}
    for policy in ("serial", "split"):
        with pool().policy(policy):
            native, reference, art = run_both(graph, nodes, inputs, captured)
        results[policy] = native["y"]
        # sums of 27 float32 products of O(1) terms
        np.testing.assert_allclose(native["y"], reference["y"], rtol=2e-5, atol=3e-5)
    assert results["serial"].tobytes() == results["split"].tobytes()
    names = [row["name"] for row in art.stats["kernel_table"]]
    assert any(name.startswith("conv_forward") and "_add_tanh" in name for name in names), names
    assert not any(name.startswith("k") and "_add_tanh" in name for name in names), names



def _dense(init):
    return gf.Chain(gf.Dense(37, 64, gf.relu, init=init), gf.Dense(64, 9, init=init))


def _cnn(init):
    return gf.Chain(gf.Conv((3, 3), 1, 4, gf.relu, init=init), gf.MaxPool((2, 2)),
                    gf.flatten, gf.Dense(36, 3, init=init))


@pytest.mark.parametrize("layers,seeds,sample,n,classes,short,fused", [
    (_dense, (3, 4), (37,), 100, 9, 61, lambda name: "+" in name and "relu" in name),
    (_cnn, (5, 6), (1, 8, 8), 20, 3, 13,
     lambda name: name.startswith("conv_forward") and "+" in name)], ids=["dense", "cnn"])
def test_a_training_step_with_epilogues_at_a_shorter_batch_matches_eager(
        layers, seeds, sample, n, classes, short, fused):
    def build():
        rng = np.random.default_rng(seeds[0])
        return layers(lambda *d: gf.glorot_uniform(*d, rng=rng))
    rng = np.random.default_rng(seeds[1])
    x = rng.standard_normal((n,) + sample).astype(np.float32)
    y = gf.onehotbatch(rng.integers(0, classes, n), range(classes))
    out = {}
    for mode in ("compiled", "eager"):
        m = build()
        step = gf.compile(lambda x, y: gf.losses.logitcrossentropy(m(x), y), gf.params(m),
                          gf.Descent(0.1), mode=mode)
        out[mode] = [step(x, y), step(x[:short], y[:short]), step(x[:1], y[:1])]
        if mode == "compiled":
            names = [r["name"] for r in step.lower(x, y).stats["kernel_table"]]
            assert any(fused(name) for name in names), names
    np.testing.assert_allclose(out["compiled"], out["eager"], rtol=1e-5)
