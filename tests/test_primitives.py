"""Every primitive, native vs the numpy reference, on awkward shapes (size 1, odd lengths,
broadcasting) in float32 and float64. One compile per dtype holds all the checks."""
import re

import numpy as np
import pytest

from graphflux.compiler import elementwise as ew
from graphflux.compiler import ops
from graphflux.compiler.autodiff import VJP_RULES
from graphflux.compiler.matmul import MIN_SPLIT_FLOPS
from graphflux.compiler.plan import VIEW_OPS
from graphflux.runtime.numpy_impls import IMPLS
from helpers import loop_vector_bits, run_both, tolerance, trace_outputs

UNARY = ["neg", "exp", "log", "tanh", "sigmoid", "relu", "sqrt", "square", "abs", "identity",
         "xlogx", "softplus", "selu", "gelu", "swish", "hardsigmoid", "relu6", "softsign", "mish",
         "hardtanh", "hardswish"]
WITH_PARAMETER = ["leakyrelu", "elu", "celu", "softshrink", "trelu"]  # f(x, a), a positive
BINARY = ["add", "sub", "mul", "div", "pow", "maximum", "minimum", "greater", "greater_equal",
          "less", "less_equal", "equal", "xlogy"]


def _inputs(dtype, rng):
    f = lambda *s: rng.standard_normal(s).astype(dtype)  # noqa: E731
    return {
        "a": f(7, 5), "b": f(7, 5), "row": f(5), "col": f(7, 1), "one": f(1, 1),
        "pos": (np.abs(f(3, 1, 9)) + 0.1).astype(dtype), "c": f(3, 4, 9), "s": f(1),
        "m1": f(13, 17), "m2": f(17, 11), "m3": f(11, 17), "v": f(17),
    }


def _program(a, b, row, col, one, pos, c, s, m1, m2, m3, v):
    out = {}
    for name in UNARY:
        x = pos if name in ("log", "sqrt") else ops.mul(c, 3.0)
        out[f"u_{name}"] = ops.elementwise(name, x)
    for name in WITH_PARAMETER:
        out[f"p_{name}"] = ops.elementwise(name, ops.mul(c, 3.0), 0.7)
    for name in BINARY:
        if name == "pow":
            out["b_pow"] = ops.elementwise("pow", pos, ops.elementwise("abs", c))
        elif name == "xlogy":
            out["b_xlogy"] = ops.elementwise("xlogy", ops.relu(c), pos)
        else:
            out[f"b_{name}"] = ops.elementwise(name, a, b)
            out[f"bc_{name}"] = ops.elementwise(name, col, row)
    out["where"] = ops.where(ops.elementwise("greater", a, 0.0), a, row)
    out["scalar_bcast"] = ops.mul(ops.add(a, one), s)
    out["cast"] = ops.cast(a, np.float64 if a.dtype == np.float32 else np.float32)
    for axes in [(0,), (1,), (2,), (0, 2), (0, 1, 2)]:
        out[f"sum{axes}"] = ops.sum(c, axes)
        out[f"max{axes}"] = ops.max(c, axes)
    out["mean"] = ops.mean(a)
    out["mm"] = ops.matmul(m1, m2)
    out["mm_ta"] = ops.matmul(m2, m1, ta=True, tb=True)
    out["mm_tb"] = ops.matmul(m1, m3, tb=True)
    out["mm_ta_only"] = ops.matmul(m2, m2, ta=True)
    out["mv"] = ops.matmul(m1, v)
    out["reshape"] = ops.reshape(ops.exp(c), (9, 12))
    out["reshape_of_transpose"] = ops.reshape(ops.transpose(c, (2, 0, 1)), (27, 4))
    out["transpose"] = ops.add(ops.transpose(c, (1, 2, 0)), 1.0)
    out["broadcast"] = ops.broadcast_to(col, (7, 5))
    out["slice"] = ops.getitem(c, (slice(1, 3), slice(None, None, 2), 4))
    out["index"] = ops.mul(ops.getitem(a, -1), 2.0)
    out["unslice"] = ops.bind("unslice", (ops.mul(a, 3.0),),
                              {"shape": (9, 5), "starts": (1, 0), "stops": (8, 5),
                               "steps": (1, 1)})
    out["stop_gradient"] = ops.stop_gradient(ops.exp(a))
    return out


@pytest.fixture(scope="module", params=[np.float32, np.float64], ids=["f32", "f64"])
def compiled(request):
    rng = np.random.default_rng(0)
    inputs = _inputs(request.param, rng)
    graph, nodes, captured = trace_outputs(_program, inputs)
    native, reference, art = run_both(graph, nodes, inputs, captured)
    return request.param, native, reference, art


def test_every_output_matches_numpy(compiled):
    dtype, native, reference, _ = compiled
    assert set(native) == set(reference)
    for name in reference:
        assert native[name].shape == reference[name].shape, name
        np.testing.assert_allclose(native[name], reference[name], err_msg=name,
                                   **tolerance(dtype))


def test_the_numpy_reference_is_numpy(compiled):
    """The reference itself against plain numpy, so the native check is anchored."""
    dtype, _, reference, _ = compiled
    rng = np.random.default_rng(0)
    i = _inputs(dtype, rng)
    tol = tolerance(dtype)
    c3 = i["c"] * 3
    np.testing.assert_allclose(reference["u_tanh"], np.tanh(c3), **tol)
    np.testing.assert_allclose(reference["u_sigmoid"], 1 / (1 + np.exp(-c3)), **tol)
    np.testing.assert_allclose(reference["u_softplus"], np.log1p(np.exp(c3)), **tol)
    np.testing.assert_allclose(reference["u_relu6"], np.clip(c3, 0, 6), **tol)
    np.testing.assert_allclose(reference["p_elu"], np.where(c3 > 0, c3, 0.7 * np.expm1(c3)),
                               **tol)
    np.testing.assert_allclose(reference["bc_sub"], i["col"] - i["row"], **tol)
    np.testing.assert_allclose(reference["sum(0, 2)"], i["c"].sum(axis=(0, 2)), **tol)
    np.testing.assert_allclose(reference["mm_ta"], i["m2"].T @ i["m1"].T, **tol)
    np.testing.assert_allclose(reference["slice"], i["c"][1:3, ::2, 4], **tol)
    np.testing.assert_array_equal(reference["u_relu"], np.maximum(c3, 0))


PACKED_ARITHMETIC = r"v?(?:add|sub|mul|div|max|min|f[n]?m(?:add|sub)\d{3})"


def packed_instructions(asm, suffix, register):
    """Arithmetic on whole vectors: `vmulps %ymm..`, `vfmadd213pd (..), %zmm..`, `mulps %xmm..`.
    Scalar forms (`vmulss`, `vfmadd231sd`) use xmm registers too but end in ss/sd."""
    pattern = rf"^\s+{PACKED_ARITHMETIC}{suffix}\s+[^\n]*%{register}\d+"
    return re.findall(pattern, asm, re.M)


def test_loops_vectorise(compiled):
    dtype, _, _, art = compiled
    width = "float" if dtype == np.float32 else "double"
    suffix = "ps" if dtype == np.float32 else "pd"
    found = {}
    for bits in loop_vector_bits():
        lanes = bits // (32 if dtype == np.float32 else 64)
        register = {512: "zmm", 256: "ymm", 128: "xmm"}[bits]
        if f"<{lanes} x {width}>" in art.llvm_ir_optimized:
            found[bits] = packed_instructions(art.asm, suffix, register)
    assert any(len(f) >= 20 for f in found.values()), (suffix, {b: f[:5] for b, f in
                                                               found.items()})


def test_the_packed_instruction_check_rejects_scalar_code():
    """The check above on a scalar loop body (what an unvectorised loop compiles to)."""
    scalar = "\tvmovss\t(%rdi,%rax,4), %xmm0\n\tvmulss\t%xmm1, %xmm0, %xmm0\n" \
             "\tvfmadd231ss\t%xmm2, %xmm1, %xmm0\n\tvaddsd\t%xmm0, %xmm3, %xmm3\n"
    for register in ("xmm", "ymm", "zmm"):
        assert packed_instructions(scalar, "ps", register) == []
        assert packed_instructions(scalar, "pd", register) == []
    packed = "\tvfmadd213ps\t(%rsi), %ymm1, %ymm0\n\tmulpd\t%xmm1, %xmm0\n"
    assert len(packed_instructions(packed, "ps", "ymm")) == 1
    assert len(packed_instructions(packed, "pd", "xmm")) == 1


def test_every_primitive_has_every_rule():
    for op in ops.PRIMITIVES:
        assert op in VJP_RULES, op
        assert op in IMPLS, op
    lowered = {"elementwise", "cast", "reduce_sum", "reduce_max", "matmul", "unslice", "random"}
    windows = {"conv", "conv_transpose", "conv_filter_grad", "maxpool", "meanpool",
               "maxpool_grad", "meanpool_grad"}       # run natively in tests/test_convolution.py
    assert set(ops.PRIMITIVES) == lowered | windows | set(VIEW_OPS)


def test_every_builtin_elementwise_fn_lowers_and_is_checked():
    checked = set(UNARY) | set(BINARY) | set(WITH_PARAMETER) | {"where"}
    derived = {n for n in ew.names() if n[0] in "dv" and n[1:2].isdigit()}
    assert set(ew.names()) - derived <= checked


@pytest.mark.parametrize("m,k,n", [(301, 512, 777), (777, 512, 301), (7, 13, 29), (29, 3, 7),
                                   (1, 64, 100), (100, 64, 1)])
def test_products_split_across_threads_give_bitwise_the_serial_numbers(monkeypatch, m, k, n):
    """Column blocks (N >= M) and row blocks (M > N), odd sizes with edge tiles in every
    block; small ones forced through the pool. A split never changes the order each element
    is summed in, so one and two threads agree to the bit, and both match numpy."""
    from graphflux.runtime.pool import pool
    rng = np.random.default_rng(4)
    inputs = {"a": rng.standard_normal((m, k)).astype(np.float32),
              "b": rng.standard_normal((n, k)).astype(np.float32)}
    results = {}
    for threads in ("1", "2"):
        monkeypatch.setenv("GRAPHFLUX_NUM_THREADS", threads)
        graph, nodes, captured = trace_outputs(
            lambda a, b: {"c": ops.matmul(a, b, tb=True)}, inputs)
        with pool().policy("split"):
            before = pool().dispatches()
            native, reference, art = run_both(graph, nodes, inputs, captured)
            shared = pool().dispatches() - before
        assert art.stats["threads"] == int(threads)
        if threads == "2" and pool().workers and 2 * m * n * k >= MIN_SPLIT_FLOPS:
            assert shared >= 1, "the product was not split"
        np.testing.assert_allclose(native["c"], reference["c"], rtol=1e-4, atol=1e-3)
        results[threads] = native["c"]
    assert results["1"].tobytes() == results["2"].tobytes()
