"""Gradients of every primitive and of whole models against central finite differences in
float64, through both the compiled step and the reference interpreter."""
import numpy as np
import pytest

import graphflux as gf
from graphflux.compiler import ops
from graphflux.runtime import evaluate
from helpers import bindings, run_both, trace_outputs


def _inputs(rng):
    f = lambda *s: rng.standard_normal(s)  # noqa: E731
    return {"a": f(4, 3), "b": f(4, 3), "row": f(3), "pos": np.abs(f(2, 3)) + 0.5,
            "c": f(2, 3, 5), "m1": f(5, 7), "m2": f(7, 3), "m3": f(3, 7), "s": f(1)}


def _loss(a, b, row, pos, c, m1, m2, m3, s):
    """A sum of weighted terms, one per primitive (and each elementwise function)."""
    rng = np.random.default_rng(7)
    terms = []

    def add(t):
        w = rng.standard_normal(t.shape)
        terms.append(ops.sum(ops.mul(t, w)))
    for name in ["neg", "exp", "tanh", "sigmoid", "square", "identity", "softplus", "selu",
                 "gelu", "swish", "softsign", "mish"]:
        add(ops.elementwise(name, a))
    for name in ["leakyrelu", "elu", "celu"]:
        add(ops.elementwise(name, ops.add(a, 0.05), 0.7))
    add(ops.elementwise("xlogx", pos))
    add(ops.elementwise("hardsigmoid", ops.mul(a, 2.0)))
    add(ops.elementwise("relu6", ops.mul(ops.add(a, 0.05), 4.0)))
    add(ops.elementwise("relu", ops.add(a, 0.3)))      # away from the kink
    add(ops.elementwise("abs", ops.add(b, 0.05)))
    add(ops.log(pos))
    add(ops.sqrt(pos))
    for name in ["add", "sub", "mul", "maximum", "minimum"]:
        add(ops.elementwise(name, a, b))
    add(ops.div(a, pos[:1]))
    add(ops.elementwise("pow", pos, ops.tanh(a[:2])))
    add(ops.elementwise("xlogy", pos, ops.add(pos, 1.0)))
    add(ops.where(ops.elementwise("greater", b, 0.0), a, ops.mul(a, 2.0)))
    add(ops.add(a, row))                                  # broadcasting
    add(ops.mul(a, s))
    add(ops.cast(a, np.float64))
    add(ops.sum(c, (0, 2)))
    add(ops.max(c, 1))
    add(ops.mean(c, (1,), keepdims=True))
    add(ops.matmul(m1, m2))
    add(ops.matmul(m2, m1, ta=True, tb=True))
    add(ops.matmul(m1, m3, tb=True))
    add(ops.reshape(c, (6, 5)))
    add(ops.transpose(c, (2, 0, 1)))
    add(ops.broadcast_to(row, (4, 3)))
    add(ops.getitem(c, (slice(None), slice(0, 3, 2))))
    total = terms[0]
    for t in terms[1:]:
        total = ops.add(total, t)
    return {"loss": total}


def _finite_differences(graph, nodes, captured, inputs, eps=1e-6):
    grads = {}
    for k, x in inputs.items():
        g = np.zeros_like(x)
        for i in np.ndindex(x.shape):
            vals = []
            for d in (eps, -eps):
                shifted = dict(inputs)
                shifted[k] = x.copy()
                shifted[k][i] += d
                out, _ = evaluate(graph, bindings(graph, nodes, shifted, captured))
                vals.append(out["loss"])
            g[i] = (vals[0] - vals[1]) / (2 * eps)
        grads[k] = g
    return grads


@pytest.fixture(scope="module")
def gradients():
    inputs = _inputs(np.random.default_rng(3))
    graph, nodes, captured = trace_outputs(_loss, inputs, grads_of="loss")
    native, reference, _ = run_both(graph, nodes, inputs, captured)
    forward, fnodes, fcaptured = trace_outputs(_loss, inputs)
    return native, reference, _finite_differences(forward, fnodes, fcaptured, inputs)


def test_symbolic_gradients_match_finite_differences(gradients):
    native, reference, fd = gradients
    for k, g in fd.items():
        np.testing.assert_allclose(reference[f"grad:{k}"], g, rtol=1e-6, atol=1e-7, err_msg=k)


def test_native_gradients_match_the_interpreter(gradients):
    native, reference, _ = gradients
    for k in reference:
        np.testing.assert_allclose(native[k], reference[k], rtol=1e-11, atol=1e-12, err_msg=k)


@pytest.mark.parametrize("mode", ["compiled", "eager"])
def test_stop_gradient_blocks_the_gradient(mode):
    a = np.array([1.0, -2.0, 3.0])
    g, = gf.gradient(lambda a: gf.sum(a * ops.stop_gradient(a)), a, mode=mode)
    np.testing.assert_allclose(g, a)


def test_relu_derivative_at_zero_is_zero():
    x = np.array([-1.0, 0.0, 2.0])
    g, = gf.gradient(lambda x: gf.sum(gf.relu(x)), x)
    np.testing.assert_array_equal(g, [0.0, 0.0, 1.0])
    g, = gf.gradient(lambda x: gf.sum(gf.relu(x)), x, mode="eager")
    np.testing.assert_array_equal(g, [0.0, 0.0, 1.0])


def test_output_form_derivatives_equal_sympy_derivatives():
    """sigmoid/tanh/exp state their derivative in terms of the output; it must be the
    derivative sympy computes."""
    import sympy as sp
    from graphflux.compiler import elementwise as ew
    for name in ("sigmoid", "tanh", "exp"):
        fn = ew.get(name)
        x = fn.symbols[0]
        d = fn.derivative(0)
        y = fn.expr
        stated = d.expr.xreplace({d.symbols[0]: x, d.symbols[1]: y})
        assert sp.simplify(stated - sp.diff(y, x)) == 0, name


def test_sigmoid_gradient_is_finite_far_from_zero():
    x = np.array([-100.0, 100.0], dtype=np.float32)
    for mode in ("compiled", "eager"):
        g, = gf.gradient(lambda x: gf.sum(gf.sigmoid(x)), x, mode=mode)
        assert np.all(np.isfinite(g)), mode


@pytest.mark.parametrize("mode", ["compiled", "eager"])
def test_whole_model_gradient(mode):
    rng = np.random.default_rng(5)
    init = lambda *d: gf.glorot_uniform(*d, rng=rng, dtype=np.float64)  # noqa: E731
    m = gf.Chain(gf.Dense(6, 5, gf.tanh, init=init), gf.Dense(5, 4, gf.relu, init=init),
                 gf.Dense(4, 3, init=init))
    m[1].bias[:] = 0.1
    x = rng.standard_normal((8, 6))
    y = gf.onehotbatch(rng.integers(0, 3, 8), range(3)).astype(np.float64)
    ps = gf.params(m)
    loss = lambda: gf.losses.logitcrossentropy(m(x), y)  # noqa: E731
    gs = gf.gradient(loss, ps, mode=mode)
    eps = 1e-6
    for p in ps:
        fd = np.zeros_like(p)
        for i in np.ndindex(p.shape):
            old = p[i]
            p[i] = old + eps
            up = float(loss())
            p[i] = old - eps
            down = float(loss())
            p[i] = old
            fd[i] = (up - down) / (2 * eps)
        np.testing.assert_allclose(gs[p], fd, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("mode", ["compiled", "eager"])
def test_explicit_gradient_sees_python_operators_on_its_arguments(mode):
    a = np.array([1.0, -2.0, 3.0])
    b = np.array([0.5, 0.25, 2.0])
    ga, gb, none = gf.gradient(lambda a, b, k: gf.sum(a * a * b) * k, a, b, 3.0, mode=mode)
    np.testing.assert_allclose(ga, 2 * a * b * 3.0)
    np.testing.assert_allclose(gb, a * a * 3.0)
    assert none is None
