"""gf.compare and `graphflux bench --script`: a user's own step timed compiled against eager,
the losses checked equal, each kernel timed, and the model left as it was."""
import json
import subprocess
import sys

import numpy as np

import graphflux as gf


def _model(rng):
    m = gf.Chain(gf.Dense(6, 300, gf.tanh), gf.Dense(300, 300, gf.relu), gf.Dense(300, 2))
    for layer in m.layers:
        layer.weight = rng.normal(size=layer.weight.shape) * 0.1
        layer.bias = rng.normal(size=layer.bias.shape) * 0.1
    return m


def test_compare_times_both_modes_per_kernel_and_restores_the_model():
    rng = np.random.default_rng(0)
    m = _model(rng)
    x, y = rng.normal(size=(64, 6)), rng.normal(size=(64, 2))
    opt = gf.Adam(0.01)
    loss = lambda a, b: gf.losses.mse(m(a), b)  # noqa: E731
    gf.train(loss, gf.params(m), [(x, y)], opt)            # existing optimiser state
    before = [p.copy() for p in gf.params(m)]
    state = [(st.host, [a.copy() for a in st.arrays.values()]) for st in opt.states()]
    r = gf.compare(loss, gf.params(m), (x, y), opt, steps=20)
    assert r.losses_agree and r.compiled_median_us > 0 and r.eager_median_us > 0
    # both modes took the same steps from the same start: the first loss is the numpy one
    W = [np.asarray(p) for p in before]
    h = np.maximum(np.tanh(x @ W[0].T + W[1]) @ W[2].T + W[3], 0)
    expected = np.mean((h @ W[4].T + W[5] - y) ** 2)
    assert np.isclose(r.losses["compiled"][0], expected, rtol=1e-12)
    assert np.isclose(r.losses["eager"][0], expected, rtol=1e-12)
    # nothing trained for good: parameters and optimiser state as before
    assert all(p.tobytes() == q.tobytes() for p, q in zip(gf.params(m), before))
    for (host, arrays), st in zip(state, opt.states()):
        assert st.host == host
        assert all(a.tobytes() == b.tobytes() for a, b in zip(arrays, st.arrays.values()))
    # per kernel: every kernel of the step, shares summing to one, every product timed (which
    # kernel is biggest is a timing, and this VM's noise once put a loop ahead of the products)
    names = [row["name"] for row in gf.compile(loss, gf.params(m), opt).lower(x, y).kernels]
    assert [k["name"] for k in r.kernels] == names
    assert abs(sum(k["share"] for k in r.kernels) - 1) < 1e-9
    products = [k for k in r.kernels if k["kind"] == "gemm"]
    assert products and all(k["us"] > 0 for k in products)
    assert all(k["us"] >= 0 for k in r.kernels)
    assert "where the compiled step's time goes" in str(r)


SCRIPT = """
import numpy as np, graphflux as gf
rng = np.random.default_rng(0)
m = gf.Chain(gf.Dense(20, 16, gf.relu), gf.Dense(16, 3))
loss = lambda x, y: gf.losses.logitcrossentropy(m(x), y)
ps = gf.params(m)
batch = (rng.random((8, 20), dtype=np.float32), gf.onehotbatch(rng.integers(0, 3, 8), range(3)))
opt = gf.Adam(0.01)
"""


def test_bench_script_reports_a_users_step(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text(SCRIPT)
    out = subprocess.run([sys.executable, "-m", "graphflux.cli", "bench", "--script", str(path),
                          "--steps", "20", "--json"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert report["losses_agree"] is True
    assert {k["kind"] for k in report["kernels"]} >= {"gemm", "loop", "finite_check"}
    assert any("mine.py:" in line for k in report["kernels"] for line in k["lines"])
