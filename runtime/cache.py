"""The on-disk artifact cache: compile once, train many -- across processes.

An entry is a folder named by the artifact's key (sha256 of the traced graph, the optimiser's
description, versions, CPU name and features, thread count). It holds the object code, the
binding metadata, constants, and beside them the LLVM IR texts, stats and (once computed) the
assembly. `manifest.json` carries the sha256 of every file: an entry that is truncated,
corrupted or written by another version fails the check and is recompiled, never loaded.
Entries are written to a temporary folder and renamed into place, so concurrent processes
filling the same entry cannot leave a half-written one. The cache folder is created private to
the user (0700); one that others can write to is not used."""
import hashlib
import json
import logging
import os
import shutil
import stat
import tempfile
import time

import numpy as np

from graphflux.compiler.pipeline import VERSION, Artifact, Binary

log = logging.getLogger("graphflux")
FORMAT = 1


def cache_folder():
    return os.environ.get("GRAPHFLUX_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "graphflux")


def disk_cache():
    """The cache as the environment configures it now (GRAPHFLUX_CACHE=0 disables it)."""
    if os.environ.get("GRAPHFLUX_CACHE", "1") == "0":
        return NoCache()
    return DiskCache(cache_folder())


class NoCache:
    def load(self, key, graph, stages, graph_seconds=0.0):
        return None

    def store(self, key, art):
        pass


def _tuples(x):
    return tuple(_tuples(i) for i in x) if isinstance(x, list) else x


def _sha(data):
    return hashlib.sha256(data).hexdigest()


class DiskCache:
    def __init__(self, folder):
        self.folder = folder

    def _ready(self):
        """Create the folder private to the user; refuse one that others may write to."""
        try:
            os.makedirs(self.folder, mode=0o700, exist_ok=True)
            st = os.stat(self.folder)
        except OSError as e:
            log.warning("graphflux cache disabled: cannot create %s (%s)", self.folder, e)
            return False
        if hasattr(os, "getuid") and st.st_uid != os.getuid():
            log.warning("graphflux cache disabled: %s belongs to another user", self.folder)
            return False
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            log.warning("graphflux cache disabled: %s is writable by others (chmod 700 it)",
                        self.folder)
            return False
        return True

    def entry(self, key):
        return os.path.join(self.folder, key)

    def load(self, key, graph, stages, graph_seconds=0.0):
        """The Artifact stored under `key`, or None (missing, damaged or foreign)."""
        path = self.entry(key)
        if not os.path.isdir(path):
            return None
        t = time.perf_counter()
        try:
            files = self._verified_files(path, key)
        except (OSError, ValueError, KeyError) as e:
            log.warning("graphflux cache entry %s is damaged or from another version (%s): "
                        "recompiling", key[:12], e)
            return None
        meta = json.loads(files["meta.json"])
        objects = [files[f"object{i}.o"] for i in range(meta["objects"])]
        raw = files.get("constants.bin", b"")
        constants = [np.frombuffer(raw, dtype=d, count=int(np.prod(s, dtype=np.int64)),
                                   offset=o).reshape(s).copy()
                     for d, s, o in meta["constants"]]
        binary = Binary(meta["symbol"], objects, _tuples(meta["slots"]),
                        _tuples(meta["scalar_refs"]),
                        [(n, tuple(s), d) for n, s, d in meta["outputs"]], constants,
                        meta["arena_bytes"], meta["thread_settings"])
        stats = meta["stats"]
        stats["cache_hit"] = True
        stats["seconds"] = {"trace": graph_seconds, "ad": 0.0, "passes": 0.0, "codegen": 0.0,
                            "llvm_opt": 0.0, "machine_code": 0.0,
                            "load": time.perf_counter() - t}
        asm_path = os.path.join(path, "asm.s")
        asm = open(asm_path).read() if os.path.exists(asm_path) else None
        art = Artifact(binary, graph, files["llvm_ir.ll"].decode(),
                       files["llvm_ir_optimized.ll"].decode(), stats, stages, asm)
        art.on_asm = lambda text: self._write_text(path, "asm.s", text)
        return art

    def _verified_files(self, path, key):
        with open(os.path.join(path, "manifest.json"), "rb") as f:
            manifest = json.loads(f.read())
        if manifest.get("format") != FORMAT or manifest.get("graphflux") != VERSION \
                or manifest.get("key") != key:
            raise ValueError("written by another graphflux version or for another key")
        files = {}
        for name, digest in manifest["files"].items():
            with open(os.path.join(path, name), "rb") as f:
                data = f.read()
            if _sha(data) != digest:
                raise ValueError(f"{name} does not match its checksum")
            files[name] = data
        return files

    def store(self, key, art):
        """Write the entry atomically (temporary folder, then rename); never raises."""
        if not self._ready():
            return
        try:
            tmp = tempfile.mkdtemp(prefix=f".{key[:12]}-", dir=self.folder)
            self._write(tmp, key, art)
            target = self.entry(key)
            if os.path.exists(target):
                trash = tempfile.mkdtemp(prefix=".old-", dir=self.folder)
                os.rename(target, os.path.join(trash, "entry"))
                shutil.rmtree(trash, ignore_errors=True)
            try:
                os.rename(tmp, target)
            except OSError:                      # another process finished the same entry
                shutil.rmtree(tmp, ignore_errors=True)
            art.on_asm = lambda text: self._write_text(target, "asm.s", text)
        except OSError as e:
            log.warning("graphflux cache: could not write %s (%s)", key[:12], e)

    def _write(self, folder, key, art):
        b = art.binary
        stats = {k: v for k, v in art.stats.items() if k != "seconds"}
        stats["compile_seconds"] = art.stats.get("seconds", {})
        meta = {"symbol": b.symbol, "objects": len(b.objects), "slots": b.slots,
                "scalar_refs": b.scalar_refs, "outputs": [list(o) for o in b.outputs],
                "arena_bytes": b.arena_bytes, "thread_settings": b.thread_settings,
                "stats": stats, "constants": []}
        raw = bytearray()
        for c in b.constants:
            meta["constants"].append((np.dtype(c.dtype).str, list(c.shape), len(raw)))
            raw += np.ascontiguousarray(c).tobytes()
            raw += bytes(-len(raw) % 16)
        files = {"llvm_ir.ll": art.llvm_ir.encode(),
                 "llvm_ir_optimized.ll": art.llvm_ir_optimized.encode(),
                 "stats.json": json.dumps(stats, indent=1).encode()}
        for i, obj in enumerate(b.objects):
            files[f"object{i}.o"] = bytes(obj)
        if raw:
            files["constants.bin"] = bytes(raw)
        files["meta.json"] = json.dumps(meta).encode()
        for name, data in files.items():
            with open(os.path.join(folder, name), "wb") as f:
                f.write(data)
        manifest = {"format": FORMAT, "graphflux": VERSION, "key": key,
                    "files": {name: _sha(data) for name, data in files.items()}}
        with open(os.path.join(folder, "manifest.json"), "w") as f:
            json.dump(manifest, f)

    @staticmethod
    def _write_text(folder, name, text):
        try:
            with open(os.path.join(folder, name), "w") as f:
                f.write(text)
        except OSError:
            pass


class LibraryStore:
    """Library object code (the GEMMs) on disk, one checksummed file per key, so a second
    process links them without running LLVM."""

    def get(self, key):
        cache = disk_cache()
        if not isinstance(cache, DiskCache):
            return None
        path = os.path.join(cache.folder, f"lib-{key}.o")
        try:
            with open(path, "rb") as f:
                data = f.read()
            with open(path + ".sha256") as f:
                ok = f.read().strip() == _sha(data)
        except OSError:
            return None
        return data if ok else None

    def put(self, key, data):
        cache = disk_cache()
        if not isinstance(cache, DiskCache) or not cache._ready():
            return
        path = os.path.join(cache.folder, f"lib-{key}.o")
        try:
            for target, payload in ((path, data), (path + ".sha256", _sha(data).encode())):
                fd, tmp = tempfile.mkstemp(dir=cache.folder, prefix=".lib-")
                with os.fdopen(fd, "wb") as f:
                    f.write(payload)
                os.replace(tmp, target)
        except OSError as e:
            log.warning("graphflux cache: could not write a library object (%s)", e)
