"""Eager mode's generated numpy code: graphs as one numpy function (the optimiser update), and
the backward of a tape generated per tape structure. Both must give the numbers of the op-by-op
path -- the reference interpreter, and the VJP rules applied one by one -- and the structure
they promise (in-place writes, one generated backward per structure)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import graphflux as gf
from graphflux.compiler import ops
from graphflux.compiler.graph import Graph
from graphflux.compiler.tracer import TraceContext
from graphflux.eager_update import update_eager
from graphflux.runtime import evaluate, tape_backward
from graphflux.runtime.numpy_codegen import numpy_function

from test_passes import _random_graph, instruction


@settings(max_examples=60, deadline=None)
@given(st.lists(instruction, min_size=1, max_size=14), st.integers(0, 2 ** 16))
def test_generated_function_matches_the_interpreter(program, seed):
    graph, binding = _random_graph(program, np.random.default_rng(seed))
    f = numpy_function(graph)
    with np.errstate(all="ignore"):
        expected, _ = evaluate(graph, binding)
        got = f(*[binding[n.id] for n in graph.inputs])
    for (name, _), value in zip(graph.outputs, got):
        np.testing.assert_array_equal(np.asarray(value), expected[name])


def _graph(fn, *shapes):
    ctx = TraceContext()
    xs = [ctx.new_input(s, np.float64, f"x{i}", "data") for i, s in enumerate(shapes)]
    with ctx:
        outs = fn(*xs)
    return Graph(list(ctx.inputs), [(f"o{i}", o.node) for i, o in enumerate(outs)])


@pytest.mark.parametrize("fn, shapes, materialised", [
    # the other operand spans (3, 4): numpy broadcasts the (3, 1) column itself
    (lambda x, c: [ops.mul(x, ops.broadcast_to(c, (3, 4)))], [(3, 4), (3, 1)], 0),
    # two broadcasts into one add: leaving both to numpy would make the sum (3, 1); each
    # counts the other at its unbroadcast shape, so both stay
    (lambda c, r: [ops.add(ops.broadcast_to(c, (3, 4)), ops.broadcast_to(r, (3, 4)))],
     [(3, 1), (3, 1)], 2),
    # an output keeps its full shape
    (lambda x, c: [ops.broadcast_to(c, (3, 4)), ops.add(x, ops.broadcast_to(c, (3, 4)))],
     [(3, 4), (3, 1)], 1),
    # relu's cotangent (a np.where select) is a generated function: its g stays materialised
    (lambda x, c: [ops.elementwise("v0_relu", x, ops.relu(x), ops.broadcast_to(c, (3, 4)))],
     [(3, 4), (3, 1)], 1),
])
def test_broadcasts_are_left_to_numpy_only_where_that_keeps_shapes(fn, shapes, materialised):
    graph = _graph(fn, *shapes)
    rng = np.random.default_rng(0)
    binding = {n.id: rng.standard_normal(s) for n, s in zip(graph.inputs, shapes)}
    expected, _ = evaluate(graph, binding)
    f = numpy_function(graph)
    for (name, _), value in zip(graph.outputs, f(*[binding[n.id] for n in graph.inputs])):
        assert value.shape == expected[name].shape
        np.testing.assert_array_equal(value, expected[name])
    # a materialised broadcast is the only call through an IMPLS wrapper (keyword attributes)
    assert f.source.count("**") == materialised, f.source


def test_structural_ops_are_printed_as_numpy_expressions():
    graph = _graph(lambda a, b: [ops.sum(ops.matmul(a, b, tb=True), 1, keepdims=True)],
                   (3, 4), (5, 4))
    source = numpy_function(graph).source
    assert "@ (i1).T" in source and "np.add.reduce(" in source and "**" not in source, source


def _update_graph():
    """m <- 0.9 m + g; x <- x - 0.1 m (reads the new m); v <- v + x (reads x before update)."""
    ctx = TraceContext()
    x, g, m, v = (ctx.new_input((3, 2), np.float64, k, "data") for k in "xgmv")
    with ctx:
        m_new = ops.add(ops.mul(m, 0.9), g)
        x_new = ops.sub(x, ops.mul(m_new, 0.1))
        v_new = ops.add(v, ops.square(x))
    return Graph(list(ctx.inputs), [], [(m.node, m_new.node), (x.node, x_new.node),
                                        (v.node, v_new.node)], "update")


def test_updates_are_written_in_place_after_their_last_read():
    graph = _update_graph()
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((3, 2)) for _ in range(4)]
    _, expected = evaluate(graph, {n.id: a.copy() for n, a in zip(graph.inputs, arrays)})
    f = numpy_function(graph)
    f(*arrays)
    for (target, _), a in zip(graph.updates, [arrays[2], arrays[0], arrays[3]]):
        np.testing.assert_array_equal(a, expected[target.id])
    # m and v are written straight from their ufunc; x is read by v's update, so x is
    # written only after it, by a copy
    assert "out=i2" in f.source and "out=i3" in f.source and "np.copyto(i0" in f.source


def test_adam_update_is_three_in_place_ufuncs():
    opt, x = gf.Adam(), np.ones((4, 3), np.float32)
    update_eager(opt, [(x, np.full_like(x, 0.5))])
    source = opt.slot(x).numpy_update.source
    assert source.count("out=") == 3 and "copyto" not in source, source


def _model(rng):
    init = lambda *d: gf.glorot_uniform(*d, rng=rng, dtype=np.float64)  # noqa: E731
    return gf.Chain(gf.Dense(5, 4, gf.tanh, init=init), gf.Dense(4, 3, init=init), gf.softmax)


def test_generated_backward_gives_the_op_by_op_numbers():
    rng = np.random.default_rng(1)
    model = _model(rng)
    ps = gf.params(model)
    x, y = rng.standard_normal((6, 5)), gf.onehotbatch(rng.integers(0, 3, 6), range(3))
    y = y.astype(np.float64)

    def loss():
        return gf.losses.crossentropy(model(x), y) + gf.sum(model[0].weight ** 2) * 0.01

    before = len([v for v in tape_backward._cache.values()
                  if isinstance(v, tape_backward.GeneratedBackward)])
    runs = [gf.gradient(loss, ps, mode="eager") for _ in range(3)]
    after = len([v for v in tape_backward._cache.values()
                 if isinstance(v, tape_backward.GeneratedBackward)])
    assert after == before + 1          # the second and third runs used the generated one
    for p in ps:
        np.testing.assert_array_equal(runs[1][p], runs[0][p])
        np.testing.assert_array_equal(runs[2][p], runs[0][p])
    compiled = gf.gradient(loss, ps)
    for p in ps:
        np.testing.assert_allclose(runs[2][p], compiled[p], rtol=1e-9, atol=1e-12)


def test_python_control_flow_gets_a_backward_per_branch():
    """Eager mode runs the user's Python every step: a branch on a value changes the tape, and
    each structure gets the gradient of the branch that ran."""
    w = np.array([0.5, -1.5, 2.0])
    model = {"w": w}

    def loss(scale):
        s = gf.sum(model["w"] * scale)
        return s * s if float(s) > 0 else gf.sum(gf.exp(model["w"]))

    for scale in [1.0, -1.0, 1.0, -1.0, 1.0, -1.0]:
        g = gf.gradient(lambda: loss(scale), gf.params(model), mode="eager")[w]
        s = np.sum(w * scale)
        expected = 2 * s * scale * np.ones(3) if s > 0 else np.exp(w)
        np.testing.assert_allclose(g, expected, rtol=1e-12)


@pytest.mark.parametrize("opt", [gf.Adam(), gf.Momentum(), gf.AdaBelief(),
                                 gf.Optimiser(gf.ClipNorm(1.0), gf.AdamW(decay=0.1))],
                         ids=["adam", "momentum", "adabelief", "clipnorm+adamw"])
def test_eager_update_matches_the_rule_op_by_op(opt):
    """The generated update against the rule run with op functions on numpy arrays."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 3))
    reference_x, reference_state = x.copy(), None
    for _ in range(4):
        g = rng.standard_normal((4, 3))
        st = opt.slot(x)
        if reference_state is None:
            reference_state = {k: v.copy() for k, v in st.arrays.items()}
        scalars = {k: np.float64(v) for k, v in opt.scalars(st.host).items()}
        delta, new = opt.rule(reference_x, g, reference_state, scalars)
        reference_x = reference_x - delta
        reference_state = {k: np.array(v) for k, v in new.items()}
        update_eager(opt, [(x, g)])
        np.testing.assert_array_equal(x, reference_x)
        for k, v in opt.slot(x).arrays.items():
            np.testing.assert_array_equal(v, reference_state[k])


def test_every_gradient_is_computed_before_any_parameter_is_updated():
    """d sum(a * b) / da depends on b and d/db on a: the eager step must apply both updates
    from the old values, as Flux's update! does (run 3 times: op by op, then the generated
    backward, whose gradients are passed to the optimiser without copying)."""
    w = [np.array([1.0, 2.0]), np.array([3.0, -1.0])]
    a, b = w
    step = gf.compile(lambda: gf.sum(w[0] * w[1]), gf.params(w), gf.Descent(0.1), mode="eager")
    ra, rb = a.copy(), b.copy()
    for _ in range(3):
        step()
        ra, rb = ra - 0.1 * rb, rb - 0.1 * ra
        np.testing.assert_array_equal(a, ra)
        np.testing.assert_array_equal(b, rb)


def test_parameters_are_swapped_into_every_kind_of_slot_and_back():
    """installed() puts each parameter's stand-in into attributes, list items and dict items
    that still hold it, leaves a slot that now holds another array alone, and restores
    everything when the body raises."""
    from graphflux.tracing import installed

    class Holder:
        pass
    w, v, u = np.ones(2), np.zeros(3), np.full(4, 2.0)
    holder, items, table = Holder(), [v], {"u": u}
    holder.w = w
    ps = gf.params(holder, items, table)
    stand_ins = [object() for _ in ps]
    moved = np.ones(2)
    with pytest.raises(RuntimeError):
        with installed(ps, stand_ins):
            assert holder.w is stand_ins[0] and items[0] is stand_ins[1]
            assert table["u"] is stand_ins[2]
            raise RuntimeError("inside the loss")
    assert holder.w is w and items[0] is v and table["u"] is u
    holder.w = moved              # the model no longer uses w there
    with installed(ps, stand_ins):
        assert holder.w is moved and items[0] is stand_ins[1]
    assert holder.w is moved and items[0] is v


def test_slot_list_sees_slots_added_after_it_was_built():
    a = np.ones(2)
    holder = [a]
    ps = gf.params(a)
    assert ps.slot_list() == []
    ps.add(a, (holder, 0))
    assert [(i, c is holder, k) for i, _, c, k, _ in ps.slot_list()] == [(0, True, 0)]
