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
