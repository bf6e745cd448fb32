"""The `graphflux` command end to end: demo reaches 95% on the digits; bench reports."""
import io
import json
import math
import re
import subprocess
import sys

import pytest

import graphflux as gf
from graphflux.cli import demo


def test_demo_reaches_95_percent_and_reports_timings():
    out = io.StringIO()
    accuracy = demo(out=out)
    text = out.getvalue()
    assert accuracy >= 0.95
    assert re.search(r"compiled the training step in \d+\.\d+ s", text)
    assert re.search(r"epoch\s+30\s+loss \d\.\d+\s+test accuracy 0\.9\d\d", text)
    m = re.search(r"compiled ([\d.]+) us, eager ([\d.]+) us", text)
    assert m and float(m.group(1)) > 0 and float(m.group(2)) > 0


def test_bench_json_runs_a_workload_and_checks_losses():
    out = subprocess.run([sys.executable, "-m", "graphflux.cli", "bench", "--workloads", "tiny",
                          "--steps", "20", "--json"], capture_output=True, text=True, check=True)
    report = json.loads(out.stdout)
    (row,) = report["results"]
    assert row["workload"] == "tiny" and row["losses_agree"] is True
    assert row["compiled_median_us"] > 0 and row["eager_median_us"] > 0
    assert row["speedup"] == pytest.approx(row["eager_median_us"] / row["compiled_median_us"])
    # the losses themselves: finite, equal to float32 rounding, and a 10-class cross-entropy
    # near its starting value ln(10) after 21 small Adam steps
    lc, le = row["loss_compiled"], row["loss_eager"]
    assert abs(lc - le) <= 1e-4 * abs(le)
    assert 0.5 * math.log(10) < le < 2 * math.log(10)
    assert row["compile_s"] > 0
    assert report["machine"]["cores"] >= 1
    # distance to the limit: the step's flops (2*M*N*K per product: forward, weight gradient,
    # and input gradient but for the first layer, whose input is data; plus the elementwise
    # work) over its time, against numpy's sgemm rate of the same run
    sizes, batch = (64, 32, 10), 32
    products = sum((2 if k == 0 else 3) * 2 * batch * a * b
                   for k, (a, b) in enumerate(zip(sizes, sizes[1:])))
    assert products <= row["flops"] <= 1.5 * products
    assert row["gflops"] == pytest.approx(row["flops"] / row["compiled_median_us"] / 1e3)
    assert 1 < report["sgemm_gflops"] < 10000
    assert row["percent_of_sgemm"] == pytest.approx(100 * row["gflops"] / report["sgemm_gflops"])


def test_bench_loss_check_reports_a_mismatch():
    from graphflux.bench import loss_check
    assert loss_check([1.0, 0.5], [1.0, 0.5])["losses_agree"] is True
    assert loss_check([1.0, 0.5], [1.0, 0.51])["losses_agree"] is False
    assert loss_check([1.0, float("nan")], [1.0, 0.5])["losses_agree"] is False


def _listed_nodes(text):
    """Nodes of a graph listing: the inputs in its header plus one `%i: type = ...` line each."""
    header = text.splitlines()[0]
    return len(re.findall(r"%\d+:[^,()]+:\w+\[", header)) + \
        len(re.findall(r"(?m)^  %\d+: ", text))


def test_inspect_prints_every_stage_of_every_workload():
    """Each stage shows what that stage is, for the workload's own shapes, layers and
    optimiser; expectations come from the workload's spec, not from the printed text."""
    from graphflux.bench import workloads
    from graphflux.cli import STAGES, inspect
    for name, spec in workloads().items():
        if "sizes" not in spec:           # LeNet: below
            continue
        sizes, batch = spec["sizes"], spec["batch"]
        layers = len(sizes) - 1
        adam = type(spec["opt"]()).__name__ == "Adam"
        acts = {a.__name__ for a in spec["acts"]} - {"identity"}
        texts = {}
        for stage in STAGES:
            out = io.StringIO()
            inspect(name, stage=stage, out=out)
            texts[stage] = out.getvalue()
        where = lambda stage: (name, stage, texts[stage][:300])  # noqa: E731

        for stage in ("graph", "grad", "optimized"):
            text = texts[stage]
            assert re.match(r"graph \w+\(", text) and text.rstrip().endswith("}"), where(stage)
            assert f"x0:f32[{batch},{sizes[0]}]" in text, where(stage)
            for i in range(layers):
                w = f"layers.{i}.weight:f32[{sizes[i + 1]},{sizes[i]}]"
                assert w in text and f"layers.{i}.bias:f32[{sizes[i + 1]}]" in text, where(stage)
            assert "output loss = %" in text, where(stage)
        graph = texts["graph"]
        assert graph.count("matmul(") == layers, where("graph")
        for act in acts:                                  # sigmoid / tanh / relu, once a layer
            fn = {"σ": "sigmoid"}.get(act, act)
            assert f"fn={fn})" in graph, (act, where("graph"))
        assert {"mse": "fn=square)", "logitcrossentropy": "fn=log)"}[spec["loss"]] in graph
        assert "update " not in graph and "[kernel" not in graph
        for stage in ("grad", "optimized"):
            text = texts[stage]
            # forward products plus the two backward ones a layer (the first layer's input
            # gradient is not needed): the simplifier may merge none of them
            assert text.count("matmul(") >= 3 * layers - 1, where(stage)
            for i in range(layers):
                for p in ("weight", "bias"):
                    assert f"update layers.{i}.{p} <- %" in text, where(stage)
                    assert (f"update layers.{i}.{p}.m <- %" in text) == adam, where(stage)
        assert "(vjp)" in texts["grad"] and "[kernel" not in texts["grad"]
        assert re.search(r"\[kernel \d+\]", texts["optimized"]), where("optimized")


        llvm = texts["llvm"]
        symbol = re.search(r'define i32 @"(gf_step_\w+)"', llvm)
        assert symbol, where("llvm")
        symbol = symbol.group(1)
        assert symbol in texts["llvm-opt"] and re.search(r"<\d+ x float>", texts["llvm-opt"])
        assert texts["llvm-opt"] != llvm
        assert re.search(rf"(?m)^_?{symbol}:", texts["asm"]), where("asm")
        assert re.search(r"(?m)^\s+v?(?:mul|add|fmadd\d{3})ps\s", texts["asm"]), where("asm")

        stats = json.loads(texts["stats"])
        assert stats["nodes"]["graph"] == _listed_nodes(graph)
        assert stats["nodes"]["grad_graph"] == _listed_nodes(texts["grad"])
        assert stats["nodes"]["optimized_graph"] == _listed_nodes(texts["optimized"])
        # 2*M*N*K for every product: forward, weight gradient, input gradient (none for x)
        products = sum(2 * batch * sizes[i] * sizes[i + 1] for i in range(layers))
        products += products + sum(2 * batch * sizes[i] * sizes[i + 1] for i in range(1, layers))
        assert products <= stats["flops"] <= 1.5 * products, (name, stats["flops"], products)
        assert stats["key"][:20] in symbol



def test_inspect_shows_lenets_convolutions_and_their_gradients():
    from graphflux.cli import inspect
    texts = {}
    for stage in ("graph", "grad"):
        out = io.StringIO()
        inspect("lenet", stage=stage, out=out)
        texts[stage] = out.getvalue()
    assert "x0:f32[64,1,28,28]" in texts["graph"]
    assert texts["graph"].count("conv(") == 2 and texts["graph"].count("maxpool(") == 2
    assert texts["grad"].count("conv_filter_grad(") == 2          # both weights
    assert texts["grad"].count("conv_transpose(") == 1            # not the image's gradient
    assert texts["grad"].count("maxpool_grad(") == 2


def test_bench_text_table_has_every_workload_and_numbers_that_parse(capsys):
    from graphflux.bench import run
    results = run(["tiny"], steps=20, as_json=False)
    lines = capsys.readouterr().out.strip().splitlines()
    assert re.match(r"machine: .+, \d+ cores, python \d+\.\d+\.\d+, numpy \d", lines[0])
    assert lines[1].split()[:2] == ["workload", "compiled"] and "losses agree" in lines[1]
    (row,) = [line.split() for line in lines[2:]]
    assert row[0] == "tiny" and len(row) >= 7
    # compiled us, +-iqr, eager us, ratio, hand numpy us, compiled / numpy, compile s: all
    # numbers (the compile may have been a cache hit in this process, so it can print 0.00)
    compiled, iqr, eager, ratio, numpy_us, per_numpy, compile_s = map(float, row[1:8])
    assert row[8] == "True"
    assert compiled > 0 and eager > 0 and numpy_us > 0
    # the printed ratio is eager / compiled (each printed to one decimal)
    assert abs(ratio - eager / compiled) <= 0.05 + 0.05 * (eager + compiled) / compiled ** 2
    assert abs(per_numpy - compiled / numpy_us) <= 0.005 + 0.05 * (compiled + numpy_us) / \
        numpy_us ** 2
    (r,) = results
    assert abs(r["compiled_median_us"] - compiled) <= 0.05
    assert abs(r["eager_median_us"] - eager) <= 0.05
    assert abs(r["numpy_median_us"] - numpy_us) <= 0.05
    assert abs(r["compiled_iqr_us"] - iqr) <= 0.05 and abs(r["compile_s"] - compile_s) <= 0.005


def test_inspect_a_user_script_and_write_dot(tmp_path):
    script = tmp_path / "model.py"
    script.write_text(
        "import numpy as np, graphflux as gf\n"
        "m = gf.Dense(4, 2, gf.relu)\n"
        "def loss(x, y):\n"
        "    return gf.losses.mse(m(x), y)\n"
        "ps = gf.params(m)\n"
        "opt = gf.Momentum()\n"
        "batch = (np.ones((3, 4), np.float32), np.zeros((3, 2), np.float32))\n")
    dot = tmp_path / "g.dot"
    out = subprocess.run([sys.executable, "-m", "graphflux.cli", "inspect", "--script",
                          str(script), "--stage", "optimized", "--dot", str(dot)],
                         capture_output=True, text=True, check=True).stdout
    assert "model.py:4" in out and "update weight" in out
    assert dot.read_text().startswith("digraph") and "cluster_" in dot.read_text()


def test_inspect_script_missing_names_is_a_clear_error(tmp_path):
    script = tmp_path / "bad.py"
    script.write_text("x = 1\n")
    out = subprocess.run([sys.executable, "-m", "graphflux.cli", "inspect", "--script",
                          str(script)], capture_output=True, text=True)
    assert out.returncode != 0 and "must define loss, ps, batch" in out.stderr


def test_cnn_demo_reaches_97_percent_from_the_command_line():
    """`graphflux demo --cnn`, as a user runs it: the digits as (N, 1, 8, 8) images."""
    out = subprocess.run([sys.executable, "-m", "graphflux.cli", "demo", "--cnn"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    accuracy = float(re.search(r"final test accuracy (\d\.\d+)", out.stdout).group(1))
    assert accuracy >= 0.97, out.stdout
    assert re.search(r"compiled \d+ us, eager \d+ us", out.stdout)


def test_demo_plot_writes_a_png(tmp_path):
    path = tmp_path / "curves.png"
    demo(epochs=3, out=io.StringIO(), plot=str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_plot_without_matplotlib_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(SystemExit, match="pip install"):
        demo(epochs=1, out=io.StringIO(), plot=str(tmp_path / "x.png"))


@pytest.mark.parametrize("name", ["seed-mlp", "tiny"])
def test_the_hand_written_numpy_yardstick_trains_like_the_compiled_step(name):
    """`graphflux bench`'s numpy column is the same work: same losses step after step."""
    from graphflux.bench import build, workloads
    from graphflux.hand_numpy import for_workload
    model, ps, loss, opt, x, y = build(workloads()[name])
    hand = for_workload(name, model)
    step = gf.compile(loss, ps, opt)
    for _ in range(3):
        assert hand.step(x, y) == pytest.approx(step(x, y), rel=1e-4)
