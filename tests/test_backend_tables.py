"""The back end as tables: every primitive has a planner rule and every kernel kind an emitter;
structurally identical kernels are compiled once; the IR says which nodes and user lines each
kernel call computes; fused expressions stay bounded however deep a chain of selects is."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import graphflux as gf
from graphflux.compiler import ops
from graphflux.compiler.kernels import KINDS
from graphflux.compiler.lower import EMITTERS
from graphflux.compiler.plan import PLANNER_RULES


def test_every_primitive_has_a_planner_rule_and_every_kernel_kind_an_emitter():
    assert set(ops.PRIMITIVES) <= set(PLANNER_RULES)
    assert {k.kind for k in KINDS} == set(EMITTERS)


def _mlp(depth, width=6):
    rng = np.random.default_rng(depth)
    layers = [gf.Dense(width, width, gf.relu) for _ in range(depth)] + [gf.Dense(width, 2)]
    for layer in layers:
        layer.weight = rng.normal(size=layer.weight.shape)
        layer.bias = rng.normal(size=layer.bias.shape) * 0.1
    return gf.Chain(*layers)


def _numpy_loss(m, x, y):
    h = x
    for layer in m.layers:
        h = h @ layer.weight.T + layer.bias
        if layer.σ is gf.relu:
            h = np.maximum(h, 0)
    return np.mean((h - y) ** 2)


def _kernel_functions(ir_text):
    """Names of the kernel functions defined in a module (not the step or its segments)."""
    names = re.findall(r'^define [^@]*@"?([\w.]+)"?\(', ir_text, re.M)
    return {n for n in names if not n.startswith("gf_step_")}


def test_identical_layers_share_their_kernels_and_compute_the_right_numbers():
    x = np.random.default_rng(0).normal(size=(5, 6))
    y = np.random.default_rng(1).normal(size=(5, 2))
    counts = {}
    for depth in (2, 12):
        m = _mlp(depth)
        step = gf.compile(lambda a, b: gf.losses.mse(m(a), b), gf.params(m), gf.Adam())
        art = step.lower(x, y)
        counts[depth] = len(_kernel_functions(art.llvm_ir))
        expected = _numpy_loss(m, x, y)
        assert np.isclose(step(x, y), expected, rtol=1e-12)
    assert counts[12] == counts[2]          # 10 more layers, no new kernel code


def test_each_kernel_call_names_its_nodes_and_the_users_line():
    m = _mlp(2)
    x = np.ones((3, 6))
    step = gf.compile(lambda a: gf.mean(m(a) ** 2), gf.params(m), gf.Descent(0.1))
    ir_text = step.lower(x).llvm_ir
    calls = [line for line in ir_text.splitlines() if re.match(r'\s+call void @"?\w', line)]
    comments = [line for line in ir_text.splitlines() if line.strip().startswith(";") and
                ": " in line and " of %" in line]
    assert len(comments) >= len([c for c in calls if "gf_gemm" not in c]) > 0
    assert any("test_backend_tables.py:" in c for c in comments)
    assert any(re.search(r"k\d+_add_relu", c) for c in comments)     # names say what they compute


def test_kernels_stay_separate_functions_after_optimisation():
    m = _mlp(3)
    step = gf.compile(lambda a: gf.mean(m(a) ** 2), gf.params(m), gf.Descent(0.1))
    art = step.lower(np.ones((3, 6)))
    assert len(_kernel_functions(art.llvm_ir_optimized)) > 3


CHAIN = """
import numpy as np, graphflux as gf
from graphflux.compiler import ops
w = np.linspace(-1, 1, 20).reshape(4, 5)
def f(h, kind, n):
    for i in range(n):
        if kind == "where":
            h = ops.where(ops.elementwise("greater", h, 0.05 * i), h, -h)
        elif kind == "abs":
            h = ops.abs(h - 0.05 * i)
        elif kind == "max":
            h = ops.maximum(h, ops.minimum(h * 0.5, 0.05 * i))
        else:
            h = ops.where(ops.elementwise("less_equal", h, 0.0), h * 0.5, h - 0.01)
    return h
x = np.linspace(0.5, 1.5, 20).reshape(4, 5)
for kind in ("where", "abs", "max", "compare"):
    step = gf.compile(lambda a: gf.sum(f(a * w, kind, 30)), gf.params(w), None)
    loss, _ = step(x)
    assert np.isclose(loss, np.sum(f(x * w, kind, 30)), rtol=1e-12), kind
print("ok")
"""


def test_deep_chains_of_selects_compile_without_blowing_up(tmp_path):
    """30 chained where/abs/max/comparisons fused into one kernel: each used to copy its
    input's expression two or three times, so sympy's work grew as 3^n (nine took minutes).
    A hang guard, not a speed test: the subprocess gets two minutes."""
    out = subprocess.run([sys.executable, "-c", CHAIN], capture_output=True, text=True,
                         timeout=120, env={"GRAPHFLUX_CACHE": "0", "PATH": ""})
    assert out.stdout.strip().endswith("ok"), out.stderr[-2000:]


KEY_SCRIPT = """
import json, numpy as np, graphflux as gf
w = np.ones((3, 2))
step = gf.compile(lambda x: gf.sum((x @ w) ** 2), gf.params(w), gf.Descent(0.1))
art = step.lower(np.ones((4, 3)))
print(json.dumps({"hit": art.stats["cache_hit"], "file": gf.compiler.__file__}))
"""


def _installed_copy(folder):
    """graphflux's package laid out as `pip install .` lays it out, in `folder`."""
    import shutil
    import graphflux
    from graphflux import compiler, runtime
    target = folder / "graphflux"
    shutil.copytree(os.path.dirname(graphflux.__file__), target,
                    ignore=shutil.ignore_patterns("__pycache__"))
    for sub in (compiler, runtime):
        name = sub.__name__.split(".")[-1]
        if not (target / name).exists():
            shutil.copytree(os.path.dirname(sub.__file__), target / name,
                            ignore=shutil.ignore_patterns("__pycache__"))
    return target


def test_editing_a_compiler_file_invalidates_the_disk_cache(tmp_path):
    package = _installed_copy(tmp_path / "site")
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "site"),
               GRAPHFLUX_CACHE_DIR=str(tmp_path / "cache"))

    def run():
        out = subprocess.run([sys.executable, "-c", KEY_SCRIPT], capture_output=True,
                             text=True, env=env, timeout=300, cwd=tmp_path)
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    first = run()
    assert first["file"].startswith(str(tmp_path))          # the copy, not the checkout
    assert not first["hit"] and run()["hit"]                 # the cache works ...
    autodiff = package / "compiler" / "autodiff.py"
    autodiff.write_text(autodiff.read_text() + "\n# an edit\n")
    assert not run()["hit"]                                  # ... and an edit misses it


NO_SYMPY = """
import json, sys, numpy as np, graphflux as gf
width = int(sys.argv[1])
rng = np.random.default_rng(width)
m = gf.Chain(gf.Dense(5, width, gf.tanh), gf.Dense(width, 3, gf.relu))
x, y = rng.normal(size=(4, 5)), rng.normal(size=(4, 3))
W1, b1, W2, b2 = (np.asarray(p, np.float64) for p in gf.params(m))
expected = np.mean((np.maximum(np.tanh(x @ W1.T + b1) @ W2.T + b2, 0) - y) ** 2)
step = gf.compile(lambda a, b: gf.losses.mse(m(a), b), gf.params(m), gf.Adam())
hit = step.lower(x, y).stats["cache_hit"]
print(json.dumps({"sympy": "sympy" in sys.modules, "loss": step(x, y), "expected": expected,
                  "hit": hit}))
"""


def test_a_process_that_finds_the_scalar_functions_stored_compiles_without_sympy(tmp_path):
    """The first process prints each function's body from sympy and stores it; a second one
    compiling a different graph (other widths: no step in the cache) needs no sympy."""
    env = dict(os.environ, GRAPHFLUX_CACHE_DIR=str(tmp_path / "cache"))
    results = []
    for width in (7, 9):
        out = subprocess.run([sys.executable, "-c", NO_SYMPY, str(width)], capture_output=True,
                             text=True, env=env, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    assert results[0]["sympy"] and not results[1]["hit"] and not results[1]["sympy"]
    for r in results:            # float32 step against a float64 numpy formula
        assert r["loss"] == pytest.approx(r["expected"], rel=1e-5)
