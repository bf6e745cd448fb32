"""The on-disk artifact cache: a second process loads instead of compiling; damaged, foreign
or unsafe entries and folders are never used; GRAPHFLUX_CACHE=0 turns it off; concurrent
writers do not corrupt an entry."""
import hashlib
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import graphflux as gf
from graphflux.compiled import _ARTIFACTS
from graphflux.runtime.cache import LibraryStore

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


BOGUS = b"not object code" * 64
W0 = np.arange(6, dtype=np.float64).reshape(3, 2) / 7 - 0.3
X = np.linspace(-1.5, 1.0, 12).reshape(4, 3)
LR = 0.1


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
    """Entries and library objects in a 0777 folder are neither loaded nor written: a planted
    entry is compiled anew, and a planted (bogus, correctly checksummed) GEMM object is not
    linked -- it would crash the step if it were. One warning names the folder and the fix."""
    first, _ = run(tmp_path / "c")
    folder = tmp_path / "shared"
    shutil.copytree(tmp_path / "c", folder)
    libs = [n for n in os.listdir(folder) if n.startswith("lib-") and n.endswith(".o")]
    assert libs
    for name in libs:
        (folder / name).write_bytes(BOGUS)
        (folder / (name + ".sha256")).write_text(hashlib.sha256(BOGUS).hexdigest())
    os.chmod(folder, 0o777)
    before = sorted(os.listdir(folder))
    result, log = run(folder)
    assert result["cache_hit"] is False
    assert "compiled step" in log and "loaded step" not in log
    assert log.count("is writable by others") == 1 and f"chmod 700 {folder}" in log
    assert result["losses"] == first["losses"]
    assert sorted(os.listdir(folder)) == before


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


def one_step(w0=W0, x=X):
    """A fresh step (nothing in this process's memory) on fresh parameters, run once:
    (artifact, loss, parameters after the update)."""
    _ARTIFACTS.clear()
    w = w0.copy()
    step = gf.compile(lambda x: gf.sum(gf.tanh(x @ w)), gf.params(w), gf.Descent(LR))
    art = step.lower(x)
    return art, step(x), w


def reference(w0=W0, x=X):
    """The loss and updated parameters of `one_step`, by numpy."""
    t = np.tanh(x @ w0)
    return t.sum(), w0 - LR * (x.T @ (1 - t * t))


def assert_right(loss, w, expected):
    """`loss` and `w` are bitwise those of `expected` (a fresh compile's) and match numpy."""
    assert loss == expected[1] and np.array_equal(w, expected[2])
    ref_loss, ref_w = reference()
    assert np.isclose(loss, ref_loss, rtol=1e-12) and np.allclose(w, ref_w, rtol=1e-12)


def entry_of(monkeypatch, tmp_path):
    """A private cache folder holding one stored step: (the fresh compile's one_step result,
    the entry's folder)."""
    monkeypatch.setenv("GRAPHFLUX_CACHE_DIR", str(tmp_path / "c"))
    compiled = one_step()
    assert compiled[0].stats["cache_hit"] is False
    return compiled, tmp_path / "c" / compiled[0].stats["key"]


def test_loaded_artifact_is_the_stored_one(tmp_path, monkeypatch):
    """The same object code, IR, assembly and stages, and the same loss and update bitwise."""
    compiled, folder = entry_of(monkeypatch, tmp_path)
    asm = compiled[0].asm                      # computed now, and stored beside the entry
    assert (folder / "asm.s").read_text() == asm
    art, loss, w = one_step()
    assert art.stats["cache_hit"] is True and art is not compiled[0]
    assert art.binary.objects == compiled[0].binary.objects
    assert art.asm == asm and art.llvm_ir_optimized == compiled[0].llvm_ir_optimized
    assert str(art.grad_graph) == str(compiled[0].grad_graph)
    assert "[kernel" in str(art.optimized_graph)
    assert_right(loss, w, compiled)


def test_files_are_written_private_whatever_the_umask(tmp_path, monkeypatch):
    """Under umask 0 every file of an entry is still 0600: otherwise the loader would refuse
    the cache's own entries."""
    old = os.umask(0)
    try:
        compiled, folder = entry_of(monkeypatch, tmp_path)
        assert compiled[0].asm                 # stores asm.s too
    finally:
        os.umask(old)
    modes = {n: stat.S_IMODE(os.stat(folder / n).st_mode) for n in os.listdir(folder)}
    assert "asm.s" in modes and set(modes.values()) == {0o600}
    assert one_step()[0].stats["cache_hit"] is True


def _chown(path):
    """Give `path` to another user (tests run as root, who owns all it creates)."""
    os.chown(path, 12345, -1)


UNSAFE = {"entry folder group-writable": ("", lambda p: os.chmod(p, 0o770), "chmod 700"),
          "object world-writable": ("object0.o", lambda p: os.chmod(p, 0o666), "chmod 600"),
          "meta group-writable": ("meta.json", lambda p: os.chmod(p, 0o620), "chmod 600"),
          "manifest world-writable": ("manifest.json", lambda p: os.chmod(p, 0o602),
                                      "chmod 600"),
          "asm world-writable": ("asm.s", lambda p: os.chmod(p, 0o666), "chmod 600"),
          "entry folder foreign": ("", _chown, "another user"),
          "object foreign": ("object0.o", _chown, "another user")}


@pytest.mark.parametrize("case", UNSAFE)
def test_an_entry_others_could_write_is_not_loaded(tmp_path, monkeypatch, caplog, case):
    """Not loaded, compiled instead (right result), warned about naming the path and fix;
    the store then replaces the entry with a private one, which later loads."""
    if "foreign" in case and os.geteuid() != 0:
        pytest.skip("changing a file's owner needs root")
    caplog.set_level(logging.INFO, logger="graphflux")
    compiled, folder = entry_of(monkeypatch, tmp_path)
    assert compiled[0].asm                     # stores asm.s too
    name, damage, fix = UNSAFE[case]
    path = os.path.join(folder, name) if name else str(folder)
    damage(path)
    art, loss, w = one_step()
    assert art.stats["cache_hit"] is False
    assert_right(loss, w, compiled)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and path in warnings[0] and fix in warnings[0]
    assert one_step()[0].stats["cache_hit"] is True


def test_unsafe_folder_is_warned_about_once_per_folder(tmp_path, monkeypatch, caplog):
    """Two entries and a library object refused in each of two 0777 folders: one warning
    per folder, naming it and the fix."""
    caplog.set_level(logging.INFO, logger="graphflux")
    entry_of(monkeypatch, tmp_path)
    one_step(W0[:2], X[:, :2])                 # a second entry, under another key
    shared = []
    for name in ("a", "b"):
        shared.append(tmp_path / name)
        shutil.copytree(tmp_path / "c", shared[-1])
        os.chmod(shared[-1], 0o777)
    for folder in shared:
        monkeypatch.setenv("GRAPHFLUX_CACHE_DIR", str(folder))
        assert one_step()[0].stats["cache_hit"] is False
        assert one_step(W0[:2], X[:, :2])[0].stats["cache_hit"] is False
        assert LibraryStore().get("k") is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert all(f"{f} is writable by others" in m and f"chmod 700 {f}" in m
               for f, m in zip(shared, warnings))


def plant_library(folder, key, data, digest=None):
    """A library object as LibraryStore.put leaves one (checksummed unless `digest`)."""
    (folder / f"lib-{key}.o").write_bytes(data)
    (folder / f"lib-{key}.o.sha256").write_text(digest or hashlib.sha256(data).hexdigest())


def test_library_objects_load_only_from_private_files(tmp_path, monkeypatch):
    """A planted object is returned while folder and files are private (so the refusals
    below are the permission checks), and None once any is writable by group or others."""
    folder = tmp_path / "c"
    folder.mkdir(mode=0o700)
    monkeypatch.setenv("GRAPHFLUX_CACHE_DIR", str(folder))
    plant_library(folder, "k", BOGUS)
    store = LibraryStore()
    assert store.get("k") == BOGUS             # private: used
    for path, mode in ((folder / "lib-k.o", 0o666), (folder / "lib-k.o.sha256", 0o620),
                       (folder, 0o777), (folder, 0o770)):
        before = stat.S_IMODE(os.stat(path).st_mode)
        os.chmod(path, mode)
        assert store.get("k") is None, (path, oct(mode))
        os.chmod(path, before)
        assert store.get("k") == BOGUS
    plant_library(folder, "k", BOGUS, digest="0" * 64)
    assert store.get("k") is None


def _rewrite(folder, name, change):
    """Apply `change` to the decoded JSON file `name` and write it back."""
    path = folder / name
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


def _with(d, **kw):
    """A copy of `d` with `kw` changed: damage without touching the original map."""
    return dict(d, **kw)


def _without(d, *keys):
    """A copy of `d` without `keys`."""
    return {k: v for k, v in d.items() if k not in keys}


def _meta(change):
    """Change meta.json and re-sign it in the manifest: an entry that is consistent by its
    checksums but whose meta does not describe it."""
    def damage(folder):
        _rewrite(folder, "meta.json", change)
        digest = hashlib.sha256((folder / "meta.json").read_bytes()).hexdigest()
        _rewrite(folder, "manifest.json",
                 lambda m: _with(m, files=_with(m["files"], **{"meta.json": digest})))
    return damage


def _manifest(change):
    """Change manifest.json (leaving every other file intact)."""
    return lambda folder: _rewrite(folder, "manifest.json", change)


def _outside(folder):
    """List a file outside the entry, present and with the right checksum."""
    (folder.parent / "planted").write_bytes(b"x")
    digest = hashlib.sha256(b"x").hexdigest()
    _rewrite(folder, "manifest.json",
             lambda m: _with(m, files=_with(m["files"], **{"../planted": digest})))


DAMAGED = {
    "files empty": _manifest(lambda m: _with(m, files={})),
    "files only meta": _manifest(
        lambda m: _with(m, files={"meta.json": m["files"]["meta.json"]})),
    "object unlisted": _manifest(lambda m: _with(m, files=_without(m["files"], "object0.o"))),
    "ir unlisted": _manifest(lambda m: _with(m, files=_without(m["files"], "llvm_ir.ll"))),
    "files missing": _manifest(lambda m: _without(m, "files")),
    "key missing": _manifest(lambda m: _without(m, "key")),
    "files a list": _manifest(lambda m: _with(m, files=list(m["files"].items()))),
    "digest a number": _manifest(
        lambda m: _with(m, files=_with(m["files"], **{"meta.json": 1}))),
    "digest wrong": _manifest(
        lambda m: _with(m, files=_with(m["files"], **{"object0.o": "0" * 64}))),
    "listed file absent": _manifest(
        lambda m: _with(m, files=_with(m["files"], **{"gone.o": "0" * 64}))),
    "not a dict": _manifest(lambda m: list(m)),
    "not json": lambda folder: (folder / "manifest.json").write_bytes(b"{not json"),
    "empty": lambda folder: (folder / "manifest.json").write_bytes(b""),
    "file outside the entry": _outside,
    "meta not a dict": _meta(lambda meta: [meta]),
    "meta field missing": _meta(lambda meta: _without(meta, "symbol")),
    "meta field wrong type": _meta(lambda meta: _with(meta, slots="x")),
    "meta more objects": _meta(lambda meta: _with(meta, objects=meta["objects"] + 1)),
    "meta no objects": _meta(lambda meta: _with(meta, objects=0)),
    "meta constant outside": _meta(
        lambda meta: _with(meta, constants=meta["constants"] + [["<f8", [10 ** 6], 0]])),
    "meta constant malformed": _meta(lambda meta: _with(meta, constants=[["<f8"]])),
    "meta outputs malformed": _meta(lambda meta: _with(meta, outputs=[1])),
}


@pytest.mark.parametrize("case", DAMAGED)
def test_damaged_manifest_or_meta_is_recompiled(tmp_path, monkeypatch, caplog, case):
    """Never loaded and never a crash: compiled anew with the right result, logged, and the
    store replaces the entry so the next process loads it."""
    caplog.set_level(logging.INFO, logger="graphflux")
    compiled, folder = entry_of(monkeypatch, tmp_path)
    DAMAGED[case](folder)
    art, loss, w = one_step()
    assert art.stats["cache_hit"] is False
    assert_right(loss, w, compiled)
    assert any("recompiling" in r.getMessage() for r in caplog.records)
    assert not any(r.levelno >= logging.WARNING for r in caplog.records)
    assert one_step()[0].stats["cache_hit"] is True
