"""The on-disk artifact cache: a second process loads instead of compiling; damaged, foreign
or unsafe entries and folders are never used; GRAPHFLUX_CACHE=0 turns it off; concurrent
writers do not corrupt an entry."""
import json
import os
import stat
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import graphflux as gf
from graphflux.compiled import _ARTIFACTS

SCRIPT = textwrap.dedent("""
    import json, logging, time
    import numpy as np, graphflux as gf
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rng = np.random.default_rng(1)
    m = gf.Chain(gf.Dense(8, 6, gf.tanh, init=lambda *d: gf.glorot_uniform(*d, rng=rng)),
                 gf.Dense(6, 3, init=lambda *d: gf.glorot_uniform(*d, rng=rng)))
    step = gf.compile(lambda x, y: gf.losses.logitcrossentropy(m(x), y), gf.params(m),
                      gf.Adam(0.01))
    x = rng.standard_normal((5, 8)).astype(np.float32)
    y = gf.onehotbatch([0, 1, 2, 0, 1], range(3))
    t = time.perf_counter()
    losses = [step(x, y) for _ in range(3)]
    art = list(step._entries.values())[0].art
    print(json.dumps({"losses": losses, "cache_hit": art.stats["cache_hit"],
                      "seconds": art.stats["seconds"], "key": art.stats["key"]}))
""")


def run(cache_dir, **env):
    environment = dict(os.environ, GRAPHFLUX_CACHE_DIR=str(cache_dir), **env)
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         env=environment, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


def entry_dir(cache_dir, key):
    return os.path.join(cache_dir, key)


def test_second_process_loads_instead_of_compiling(tmp_path):
    first, log1 = run(tmp_path / "c")
    second, log2 = run(tmp_path / "c")
    assert first["cache_hit"] is False and "compiled step" in log1
    assert second["cache_hit"] is True and "loaded step from the disk cache" in log2
    assert "compiled step" not in log2
    assert second["seconds"]["llvm_opt"] == 0 and second["seconds"]["ad"] == 0
    assert second["losses"] == first["losses"]
    assert stat.S_IMODE(os.stat(tmp_path / "c").st_mode) == 0o700
    files = set(os.listdir(entry_dir(tmp_path / "c", first["key"])))
    assert {"manifest.json", "meta.json", "object0.o", "llvm_ir.ll", "llvm_ir_optimized.ll",
            "stats.json"} <= files


@pytest.mark.parametrize("damage", ["truncate", "flip", "version"])
def test_damaged_or_foreign_entries_are_recompiled(tmp_path, damage):
    first, _ = run(tmp_path / "c")
    folder = entry_dir(tmp_path / "c", first["key"])
    if damage == "truncate":
        with open(os.path.join(folder, "object0.o"), "r+b") as f:
            f.truncate(100)
    elif damage == "flip":
        with open(os.path.join(folder, "object0.o"), "r+b") as f:
            f.seek(200)
            byte = f.read(1)
            f.seek(200)
            f.write(bytes([byte[0] ^ 0xFF]))
    else:
        path = os.path.join(folder, "manifest.json")
        manifest = json.load(open(path))
        manifest["graphflux"] = "0.0.0-other"
        json.dump(manifest, open(path, "w"))
    second, log = run(tmp_path / "c")
    assert second["cache_hit"] is False and "recompiling" in log
    assert second["losses"] == first["losses"]
    third, _ = run(tmp_path / "c")
    assert third["cache_hit"] is True


def test_cache_off_writes_nothing(tmp_path):
    run(tmp_path / "c", GRAPHFLUX_CACHE="0")
    assert not (tmp_path / "c").exists()


def test_a_folder_others_can_write_is_not_used(tmp_path):
    folder = tmp_path / "shared"
    folder.mkdir()
    os.chmod(folder, 0o777)
    result, log = run(folder)
    assert "writable by others" in log
    assert os.listdir(folder) == []
    assert result["cache_hit"] is False


def test_concurrent_writers_leave_a_valid_entry(tmp_path):
    env = dict(os.environ, GRAPHFLUX_CACHE_DIR=str(tmp_path / "c"))
    procs = [subprocess.Popen([sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(3)]
    outs = [p.communicate() for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    results = [json.loads(o[0].strip().splitlines()[-1]) for o in outs]
    assert len({json.dumps(r["losses"]) for r in results}) == 1
    after, _ = run(tmp_path / "c")
    assert after["cache_hit"] is True
    leftovers = [n for n in os.listdir(tmp_path / "c") if n.startswith(".")]
    assert leftovers == []


def test_in_process_disk_hit_rebuilds_stages_on_demand(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHFLUX_CACHE_DIR", str(tmp_path / "c"))
    w = np.arange(6, dtype=np.float64).reshape(3, 2) / 7
    x = np.ones((4, 3))
    loss = lambda x: gf.sum(gf.tanh(x @ w))  # noqa: E731
    compiled = gf.compile(loss, gf.params(w), gf.Descent(0.0)).lower(x)
    _ARTIFACTS.clear()
    loaded = gf.compile(loss, gf.params(w), gf.Descent(0.0)).lower(x)
    assert loaded.stats["cache_hit"] is True and loaded is not compiled
    assert str(loaded.grad_graph) == str(compiled.grad_graph)
    assert "[kernel" in str(loaded.optimized_graph)
    assert loaded.llvm_ir_optimized == compiled.llvm_ir_optimized
    assert "ret" in loaded.asm
