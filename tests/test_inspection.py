"""step.lower(...) exposes every stage; stats carry the documented keys; listings show shapes,
dtypes, fusion groups and the user's source lines."""
import os
import re
import time

import numpy as np
import pytest

import graphflux as gf
from helpers import loop_vector_bits

PHASES = ("trace", "ad", "passes", "codegen", "llvm_opt", "machine_code")


def np_logitcrossentropy(params, x, y):
    """The fixture's loss in float64 numpy: Dense(6, 5, tanh) -> Dense(5, 3) -> mean LCE."""
    W1, b1, W2, b2 = [np.asarray(p, np.float64) for p in params]
    z = np.tanh(x.astype(np.float64) @ W1.T + b1) @ W2.T + b2
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return float(np.mean(-np.sum(y * logp, axis=-1)))


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    rng = np.random.default_rng(0)
    m = gf.Chain(gf.Dense(6, 5, gf.tanh, init=lambda *d: gf.glorot_uniform(*d, rng=rng)),
                 gf.Dense(5, 3, init=lambda *d: gf.glorot_uniform(*d, rng=rng)))

    def loss(x, y):
        return gf.losses.logitcrossentropy(m(x), y)  # the loss line
    step = gf.compile(loss, gf.params(m), gf.Adam())
    x = rng.standard_normal((4, 6)).astype(np.float32)
    y = gf.onehotbatch([0, 1, 2, 1], range(3))
    before_lower = [p.copy() for p in gf.params(m)]     # taken BEFORE lower
    import graphflux.compiled
    with pytest.MonkeyPatch.context() as mp:          # a real compile, whatever ran before
        mp.setenv("GRAPHFLUX_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        mp.setattr(graphflux.compiled, "_ARTIFACTS", {})
        t = time.perf_counter()
        art = step.lower(x, y)
        wall = time.perf_counter() - t
    return art, step, m, x, y, before_lower, wall


def test_lower_compiles_without_running(artifact):
    art, step, m, x, y, before_lower, _ = artifact
    # lower neither updated the parameters ...
    for p, q in zip(gf.params(m), before_lower):
        np.testing.assert_array_equal(p, q)
    # ... nor ran a step: the first real call computes the loss at the pre-lower parameters
    # and moves every parameter by one Adam step, |delta| <= eta (two steps could reach 2 eta)
    loss = step(x, y)
    np.testing.assert_allclose(loss, np_logitcrossentropy(before_lower, x, y), rtol=1e-5)
    moved = [np.abs(p.astype(np.float64) - q) for p, q in zip(gf.params(m), before_lower)]
    assert all(d.max() > 0.5e-3 for d in moved)
    assert all(d.max() <= 1.001e-3 for d in moved), [d.max() for d in moved]


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
    bits = next(b for b in loop_vector_bits() if f"<{b // 32} x float>" in art.llvm_ir_optimized)
    assert re.search(rf"^_?{re.escape(art.symbol)}:", art.asm, re.M)      # the function label
    register = {512: "zmm", 256: "ymm", 128: "xmm"}[bits]
    # packed single-precision arithmetic on full-width registers (scalar code has only the
    # ...ss forms): vmulps, vaddps, vfmadd213ps, ...
    packed = re.findall(rf"^\s+v?(?:add|sub|mul|div|max|min|f[n]?m(?:add|sub)\d{{3}})ps\s+"
                        rf"[^\n]*%{register}\d+", art.asm, re.M)
    assert len(packed) >= 5, packed


def test_stats_keys(artifact):
    art, wall = artifact[0], artifact[-1]
    stats = art.stats
    assert stats["nodes"] == {"graph": len(art.graph), "grad_graph": len(art.grad_graph),
                              "optimized_graph": len(art.optimized_graph)}
    assert stats["nodes"]["graph"] < stats["nodes"]["grad_graph"]
    assert [n for n, _ in stats["pass_nodes"]][-1] == "fuse_elementwise"
    assert stats["pass_nodes"][-1][1] == len(art.optimized_graph)
    # every phase ran in this compile, so each took some time, and together no more than the
    # wall time of the lower() call around them
    assert set(PHASES) <= set(stats["seconds"])
    for phase in PHASES:
        assert stats["seconds"][phase] > 0, phase
    assert sum(stats["seconds"][p] for p in PHASES) <= wall
    # forward + two backward products per layer: 2*M*N*K each, plus elementwise work
    mm = 2 * 4 * 6 * 5 * 2 + 2 * 4 * 5 * 3 * 3
    assert stats["flops"] >= mm
    assert stats["arena_bytes"] > 0
    assert stats["cache_hit"] is False


def test_compile_seconds_and_a_disk_cache_hit_in_a_fresh_step(tmp_path, monkeypatch, caplog):
    """A compile fills the disk cache; a fresh step in a fresh process (here: the in-process
    artifact table emptied) loads it with cache_hit True, spending no compile phase."""
    import graphflux.compiled
    monkeypatch.setenv("GRAPHFLUX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(graphflux.compiled, "_ARTIFACTS", {})
    x = np.random.default_rng(1).standard_normal((3, 7)).astype(np.float32)

    def make():
        m = gf.Dense(7, 2, gf.tanh, init=lambda *d: np.full(d, 0.25, np.float32))
        m.bias[:] = np.float32(0.5)
        return gf.compile(lambda x: gf.sum(m(x) * m(x)), gf.params(m), gf.Descent(0.1)), m

    step, m = make()
    t = time.perf_counter()
    art = step.lower(x)
    wall = time.perf_counter() - t
    assert art.stats["cache_hit"] is False
    for phase in PHASES:
        assert art.stats["seconds"][phase] > 0, phase
    assert sum(art.stats["seconds"][p] for p in PHASES) <= wall
    assert art.stats["key"] in os.listdir(tmp_path / "cache")

    monkeypatch.setattr(graphflux.compiled, "_ARTIFACTS", {})
    step2, m2 = make()
    with caplog.at_level("INFO", logger="graphflux"):
        t = time.perf_counter()
        art2 = step2.lower(x)
        wall2 = time.perf_counter() - t
    assert art2.stats["cache_hit"] is True
    assert art2.stats["key"] == art.stats["key"]
    assert any(r.getMessage().startswith("loaded step from the disk cache")
               for r in caplog.records)
    for phase in ("ad", "passes", "codegen", "llvm_opt", "machine_code"):
        assert art2.stats["seconds"][phase] == 0, phase
    assert 0 < sum(art2.stats["seconds"].values()) <= wall2
    # the loaded step computes what the compiled one does, and what numpy says
    want = float(np.sum(np.tanh(x.astype(np.float64) @ np.full((7, 2), 0.25) + 0.5) ** 2))
    np.testing.assert_allclose(step(x), want, rtol=1e-5)
    np.testing.assert_allclose(step2(x), want, rtol=1e-5)
    np.testing.assert_array_equal(m2.weight, m.weight)
    assert not np.array_equal(m.weight, np.full((2, 7), 0.25, np.float32))


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
