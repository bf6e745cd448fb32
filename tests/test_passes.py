"""Each optimisation pass: the reference interpreter gives the same numbers before and after on
random graphs (hypothesis), and the pass produces the structure it promises."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from graphflux.compiler import ops
from graphflux.compiler.graph import Graph, Node, toposort
from graphflux.compiler.passes import (PIPELINE, eliminate_common_subexpressions,
                                       eliminate_dead_code, fold_constants, optimize,
                                       simplify_algebra)
from graphflux.compiler.fusion import fuse_elementwise
from graphflux.compiler.tracer import TraceContext
from graphflux.runtime import evaluate

UNARY = ["neg", "exp", "tanh", "sigmoid", "relu", "square", "abs"]
BINARY = ["add", "sub", "mul", "maximum", "minimum"]


def _random_graph(program, rng):
    """Interpret a drawn program: a list of instructions over a growing pool of values."""
    ctx = TraceContext()
    x = ctx.new_input((3, 4), np.float64, "x", "data")
    y = ctx.new_input((4,), np.float64, "y", "data")
    inputs = {"x": (x.node, rng.standard_normal((3, 4))), "y": (y.node, rng.standard_normal(4))}
    pool = [x, y]
    with ctx:
        for kind, i, j, k in program:
            a, b = pool[i % len(pool)], pool[j % len(pool)]
            if kind == "unary":
                v = ops.elementwise(UNARY[k % len(UNARY)], a)
            elif kind == "binary":
                try:
                    v = ops.elementwise(BINARY[k % len(BINARY)], a, b)
                except ValueError:
                    continue
            elif kind == "const":
                v = ops.mul(ops.add(a, float(k)), 1.0)
            elif kind == "reduce":
                v = (ops.sum if k % 2 else ops.max)(a, -1 if a.ndim else None)
            elif kind == "transpose":
                v = ops.transpose(ops.transpose(a)) if a.ndim == 2 else ops.neg(a)
            elif kind == "broadcast":
                if a.ndim == 2 and k % 2:
                    a = ops.sum(a, 1, keepdims=True)
                try:
                    full = np.broadcast_shapes(a.shape, (3, 4)) == (3, 4)
                except ValueError:
                    full = False
                v = ops.broadcast_to(a, (3, 4) if full else (2,) + tuple(a.shape))
                if full and k >= 4:     # straight into an elementwise op with x, (3, 4)
                    v = ops.elementwise(BINARY[k % len(BINARY)], v, x)
            else:
                if a.ndim == 2 and b.ndim == 2 and a.shape[1] == b.shape[0]:
                    v = ops.matmul(a, b)
                elif a.ndim == 2:
                    v = ops.matmul(ops.transpose(a), a)
                else:
                    continue
            pool.append(v)
            pool.append(ops.add(v, 0.0) if k % 3 == 0 else v)
    outs = [("out0", pool[-1].node), ("out1", pool[len(pool) // 2].node)]
    return Graph(list(ctx.inputs), outs), {n.id: v for n, v in inputs.values()}


instruction = st.tuples(st.sampled_from(["unary", "binary", "const", "reduce", "transpose",
                                         "matmul", "broadcast"]),
                        st.integers(0, 20), st.integers(0, 20), st.integers(0, 9))


def _same(g1, g2, binding):
    with np.errstate(all="ignore"):
        o1, _ = evaluate(g1, binding)
        o2, _ = evaluate(g2, binding)
    for k in o1:
        np.testing.assert_allclose(o2[k], o1[k], rtol=1e-12, atol=1e-12, equal_nan=True)


@settings(max_examples=60, deadline=None)
@given(st.lists(instruction, min_size=1, max_size=14), st.integers(0, 2 ** 16))
def test_every_pass_preserves_values(program, seed):
    graph, binding = _random_graph(program, np.random.default_rng(seed))
    current = graph
    for p in PIPELINE:
        after = p(current)
        _same(current, after, binding)
        current = after
    _same(graph, current, binding)


def _trace(fn, *shapes):
    ctx = TraceContext()
    xs = [ctx.new_input(s, np.float64, f"x{i}", "data") for i, s in enumerate(shapes)]
    with ctx:
        out = fn(*xs)
    return Graph(list(ctx.inputs), [("out", out.node)])


def _random_binding(graph, seed=0):
    rng = np.random.default_rng(seed)
    return {n.id: rng.standard_normal(n.shape) for n in graph.inputs}


def test_cse_merges_identical_nodes():
    g = _trace(lambda x: ops.add(ops.exp(x), ops.exp(x)), (3,))
    assert sum(n.op == "elementwise" for n in g.nodes) == 3
    after = eliminate_common_subexpressions(g)
    assert sum(n.op == "elementwise" for n in after.nodes) == 2
    binding = _random_binding(g)
    _same(g, after, binding)
    out, _ = evaluate(after, binding)
    np.testing.assert_allclose(out["out"], 2 * np.exp(binding[g.inputs[0].id]), rtol=1e-15)


def test_constant_folding_evaluates_constant_subgraphs():
    x = Node("input", (), {"name": "x", "role": "data"}, (3,), np.float64)
    two = Node("const", (), {}, (), np.float64, value=np.array(2.0))
    e = Node("elementwise", (two,), {"fn": "exp"}, (), np.float64)
    out = Node("elementwise", (x, e), {"fn": "add"}, (3,), np.float64)
    after = fold_constants(Graph([x], [("out", out)]))
    assert not any(n.op == "elementwise" and n.attrs["fn"] == "exp" for n in after.nodes)
    assert any(n.op == "const" and np.isclose(n.value, np.exp(2.0)) for n in after.nodes)
    xv = np.array([0.5, -1.0, 3.0])
    out, _ = evaluate(after, {x.id: xv})
    np.testing.assert_allclose(out["out"], xv + np.exp(2.0), rtol=1e-15)


def test_dead_code_is_dropped():
    """Values traced but not needed by the outputs any more -- here an output dropped after
    fusion had grouped it, as a rewrite leaves them -- are gone after the pass, fusion
    annotations included; the inputs, the live outputs and their numbers stay."""
    ctx = TraceContext()
    x = ctx.new_input((3, 4), np.float64, "x", "data")
    w = ctx.new_input((4, 5), np.float64, "w", "data")    # read by dead code only
    with ctx:
        live = ops.sum(ops.exp(ops.neg(x)), 1)
        dead_mm = ops.matmul(x, w)
        dead = ops.sum(ops.tanh(ops.mul(dead_mm, 2.0)), 0)
    both = fuse_elementwise(Graph(list(ctx.inputs), [("out", live.node), ("aux", dead.node)]))
    dead_ids = {n.id for n in both.nodes} - {n.id for n in toposort([live.node])} \
        - {n.id for n in both.inputs}
    assert dead_mm.node.id in dead_ids and dead.node.id in dead_ids
    assert dead_ids & set(both.groups)          # the dead nodes carry fusion annotations
    g = Graph(both.inputs, [("out", live.node)], groups=both.groups)

    after = eliminate_dead_code(g)
    ids = {n.id for n in after.nodes}
    assert not ids & dead_ids
    assert not set(after.groups) & dead_ids
    assert set(after.groups) == {k for k in both.groups if k in ids}
    # x, w, neg, exp, sum: the input w stays (the caller binds every input) though unused
    assert len(after) == 5 and [n.id for n in after.inputs] == [n.id for n in g.inputs]
    assert "tanh" not in str(after) and "matmul" not in str(after)
    rng = np.random.default_rng(0)
    xv, wv = rng.standard_normal((3, 4)), rng.standard_normal((4, 5))
    binding = {x.node.id: xv, w.node.id: wv}
    out, _ = evaluate(after, binding)
    assert set(out) == {"out"}
    np.testing.assert_allclose(out["out"], np.exp(-xv).sum(1), rtol=1e-14)
    _same(g, after, binding)


def test_simplify_folds_transposes_into_matmul_and_drops_identities():
    g = _trace(lambda a, b: ops.mul(ops.matmul(a, ops.transpose(b)), 1.0), (3, 4), (5, 4))
    after = simplify_algebra(g)
    ops_left = [n.op for n in after.nodes]
    assert "transpose" not in ops_left
    mm = next(n for n in after.nodes if n.op == "matmul")
    assert mm.attrs == {"ta": False, "tb": True}
    assert not any(n.op == "elementwise" for n in after.nodes)
    binding = _random_binding(g)
    out, _ = evaluate(after, binding)
    a, b = (binding[n.id] for n in g.inputs)
    np.testing.assert_allclose(out["out"], a @ b.T, rtol=1e-14)


def test_fusion_groups_a_chain_and_its_reduction():
    g = _trace(lambda x: ops.sum(ops.exp(ops.tanh(ops.neg(x))), 1), (3, 5))
    fused = fuse_elementwise(g)
    kernels = {fused.groups[n.id] for n in fused.nodes if n.op != "input"}
    assert len(kernels) == 1
    assert "[kernel 0]" in str(fused)


def test_fusion_does_not_read_a_reduction_inside_its_own_loop():
    g = _trace(lambda x: ops.sub(x, ops.reshape(ops.max(x, 1), (3, 1))), (3, 5))
    fused = fuse_elementwise(g)
    red = next(n for n in fused.nodes if n.op == "reduce_max")
    sub = next(n for n in fused.nodes if n.op == "elementwise")
    assert fused.groups[red.id] != fused.groups[sub.id]


def test_pipeline_reports_nodes_per_pass():
    g = _trace(lambda x: ops.add(ops.exp(x), ops.exp(x)), (3,))
    final, stats = optimize(g)
    assert [name for name, _, _ in stats] == [p.__name__ for p in PIPELINE]
    # each count is the size of the graph that pass returned, applying the passes by hand
    current, counts = g, []
    for p in PIPELINE:
        current = p(current)
        counts.append(len(current))
    assert [n for _, n, _ in stats] == counts
    assert counts[-1] == len(final) < len(g)          # CSE merged the second exp


def test_fusion_never_makes_two_kernels_wait_for_each_other():
    """Group A reads a value of group B that is computed from a reduction of A's inputs, the
    other way round too: found on a BatchNorm + logitcrossentropy gradient."""
    import graphflux as gf
    from graphflux.tracing import step_graph, trace_loss
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 3)).astype(np.float32)
    y = gf.onehotbatch(rng.integers(0, 2, 6), range(2))
    m = gf.Chain(gf.Dense(3, 4, gf.tanh), gf.Dense(4, 2), gf.BatchNorm(2))
    ps = gf.params(m)
    traced = trace_loss(lambda: gf.losses.logitcrossentropy(m(x.astype(np.float64)), y), ps, ())
    fused, _ = optimize(step_graph(traced, ps, None, warn=False))
    groups = fused.groups
    deps = {}
    for n in fused.nodes:
        for i in n.inputs:
            a, b = groups.get(n.id), groups.get(i.id)
            if a is not None and b is not None and a != b:
                deps.setdefault(a, set()).add(b)
    for a, bs in deps.items():
        for b in bs:
            assert a not in deps.get(b, set()), (a, b)
