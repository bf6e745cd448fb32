"""The `graphflux` command end to end: demo reaches 95% on the digits; bench reports."""
import io
import json
import re
import subprocess
import sys

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
    assert report["machine"]["cores"] >= 1


def test_bench_loss_check_reports_a_mismatch():
    from graphflux.bench import loss_check
    assert loss_check([1.0, 0.5], [1.0, 0.5])["losses_agree"] is True
    assert loss_check([1.0, 0.5], [1.0, 0.51])["losses_agree"] is False
    assert loss_check([1.0, float("nan")], [1.0, 0.5])["losses_agree"] is False


def test_inspect_prints_every_stage_of_every_workload():
    from graphflux.bench import workloads
    from graphflux.cli import STAGES, inspect
    for name in workloads():
        for stage in STAGES:
            out = io.StringIO()
            inspect(name, stage=stage, out=out)
            text = out.getvalue()
            assert len(text) > 50, (name, stage)
            if stage in ("graph", "grad", "optimized"):
                assert "f32[" in text and "graph" in text
            if stage == "asm":
                assert "gf_step_" in text


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


def test_demo_plot_writes_a_png(tmp_path):
    path = tmp_path / "curves.png"
    demo(epochs=3, out=io.StringIO(), plot=str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_plot_without_matplotlib_says_what_to_install(tmp_path, monkeypatch):
    import pytest
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(SystemExit, match="pip install"):
        demo(epochs=1, out=io.StringIO(), plot=str(tmp_path / "x.png"))
