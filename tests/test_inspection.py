"""step.lower(...) exposes every stage; stats carry the documented keys; listings show shapes,
dtypes, fusion groups and the user's source lines."""
import re

import numpy as np
import pytest

import graphflux as gf


@pytest.fixture(scope="module")
def artifact():
    rng = np.random.default_rng(0)
    m = gf.Chain(gf.Dense(6, 5, gf.tanh, init=lambda *d: gf.glorot_uniform(*d, rng=rng)),
                 gf.Dense(5, 3, init=lambda *d: gf.glorot_uniform(*d, rng=rng)))

    def loss(x, y):
        return gf.losses.logitcrossentropy(m(x), y)  # the loss line
    step = gf.compile(loss, gf.params(m), gf.Adam())
    x = rng.standard_normal((4, 6)).astype(np.float32)
    y = gf.onehotbatch([0, 1, 2, 1], range(3))
    art = step.lower(x, y)
    return art, step, m, x, y


def test_lower_compiles_without_running(artifact):
    art, step, m, x, y = artifact
    before = [p.copy() for p in gf.params(m)]
    assert all(np.array_equal(a, b) for a, b in zip(before, gf.params(m)))
    loss = step(x, y)
    assert np.isfinite(loss)
    assert not all(np.array_equal(a, b) for a, b in zip(before, gf.params(m)))


def test_stages_are_graphs_with_readable_listings(artifact):
    art = artifact[0]
    for g in (art.graph, art.grad_graph, art.optimized_graph):
        text = str(g)
        assert "f32[4,6]" in text and "test_inspection.py:" in text
        assert g.to_dot().startswith("digraph")
    assert "matmul" in str(art.graph)
    assert "update layers.0.weight" in str(art.grad_graph)
    assert "(vjp)" in str(art.grad_graph)
    assert re.search(r"\[kernel \d+\]", str(art.optimized_graph))
    assert "subgraph cluster_" in art.optimized_graph.to_dot()


def test_llvm_text_and_assembly(artifact):
    art = artifact[0]
    assert "define" in art.llvm_ir and art.symbol in art.llvm_ir
    assert "<8 x float>" in art.llvm_ir_optimized or "<16 x float>" in art.llvm_ir_optimized
    assert art.symbol in art.asm and ("vfmadd" in art.asm or "vmulps" in art.asm)


def test_stats_keys(artifact):
    stats = artifact[0].stats
    assert set(stats["nodes"]) == {"graph", "grad_graph", "optimized_graph"}
    assert stats["nodes"]["graph"] < stats["nodes"]["grad_graph"]
    assert [n for n, _ in stats["pass_nodes"]][-1] == "fuse_elementwise"
    for phase in ("trace", "ad", "passes", "codegen", "llvm_opt", "machine_code"):
        assert stats["seconds"][phase] >= 0, phase
    # forward + two backward products per layer: 2*M*N*K each, plus elementwise work
    mm = 2 * 4 * 6 * 5 * 2 + 2 * 4 * 5 * 3 * 3
    assert stats["flops"] >= mm
    assert stats["arena_bytes"] > 0
    assert stats["cache_hit"] is False


def test_every_compile_is_logged_with_its_reason(caplog):
    m = gf.Dense(3, 2)
    step = gf.compile(lambda x: gf.sum(m(x)), gf.params(m), gf.Descent(0.0))
    with caplog.at_level("INFO", logger="graphflux"):
        step(np.ones((4, 3), np.float32))
        step(np.ones((4, 3), np.float32))
        step(np.ones((5, 3), np.float32))
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert "first call" in messages[0]
    assert "new shape for argument 0: (4, 3) -> (5, 3)" in messages[1]


def test_a_new_array_in_a_parameter_slot_retraces(caplog):
    m = gf.Dense(3, 2)
    ps = gf.params(m)
    step = gf.compile(lambda x: gf.sum(m(x)), ps, gf.Descent(0.0))
    x = np.ones((4, 3), np.float32)
    step(x)
    m.weight = np.zeros((2, 3), np.float32)
    with caplog.at_level("INFO", logger="graphflux"):
        with pytest.warns(UserWarning, match="does not depend on parameter"):
            step(x)
        step(x)
    retraces = [r for r in caplog.records if "holds a different array" in r.getMessage()]
    assert len(retraces) == 1


def test_digits_dataset():
    X, y = gf.datasets.digits()
    assert X.shape == (1797, 64) and X.dtype == np.float32
    assert y.shape == (1797,) and y.dtype == np.int64
    assert X.min() == 0 and X.max() == 1
    assert set(np.unique(y)) == set(range(10))
    assert np.bincount(y).min() > 170


def test_nonfinite_loss_names_the_first_bad_node_and_its_line():
    w = np.ones((3, 2), np.float32)
    step = gf.compile(lambda x: gf.sum(gf.log(x @ w)), gf.params(w), gf.Descent(0.1))
    step(np.ones((4, 3), np.float32))
    saved = w.copy()
    with pytest.raises(gf.NonFiniteLoss) as e:
        step(-np.ones((4, 3), np.float32))
    assert "log at test_inspection.py:" in str(e.value)
    np.testing.assert_array_equal(w, saved)


def test_graphflux_debug_dumps_the_stages_of_a_failing_compile(monkeypatch):
    monkeypatch.setenv("GRAPHFLUX_DEBUG", "1")
    x = np.ones((4, 3), np.float32)
    w = np.ones((3, 2), np.float32)
    labels = np.ones((4, 2), np.int8)      # int arithmetic the native code does not do
    with pytest.raises(gf.GraphfluxError) as e:
        gf.gradient(lambda: gf.sum(gf.matmul(x, w)) + gf.sum(gf.compiler.ops.bind(
            "reduce_sum", (labels,), {"axes": (0, 1), "keepdims": False})), gf.params(w))
    note = "\n".join(getattr(e.value, "__notes__", []))
    folder = note.split(" is in ")[-1].strip()
    import os
    assert os.path.isdir(folder)
    assert {"graph.txt", "grad_graph.txt", "error.txt"} <= set(os.listdir(folder))
    assert "test_inspection.py:" in open(os.path.join(folder, "graph.txt")).read()


def test_optimiser_updates_write_in_place_after_the_loss_check():
    """The Adam update loop of each parameter writes the parameter and its moments directly
    (no arena copy kernels), and runs after the loss check."""
    w = {"w": np.ones((3, 4), np.float32), "b": np.zeros(4, np.float32)}
    step = gf.compile(lambda x: gf.sum(gf.tanh(gf.matmul(x, w["w"]) + w["b"])), gf.params(w),
                      gf.Adam())
    art = step.lower(np.ones((2, 3), np.float32))
    ir = art.llvm_ir
    assert "update_" not in ir                         # no copy kernels
    check = ir.index("nonfinite")
    assert ir.index('call void @"k', check) > check    # update loops come after the check
