"""The on-disk artifact cache: compile once, train many -- across processes.

An entry is a folder named by the artifact's key (sha256 of the traced graph, the optimiser's
description, versions, CPU name and features, thread count). It holds the object code, the
binding metadata, constants, and beside them the LLVM IR texts, stats and (once computed) the
assembly. `manifest.json` carries the sha256 of every file and must list every file the loader
needs: an entry that is truncated, corrupted, incomplete or written by another version fails
the check and is recompiled, never loaded. Entries are written to a temporary folder and
renamed into place, so concurrent processes filling the same entry cannot leave a half-written
one. The cache folder is created private to the user (0700). Object code is never loaded from,
nor written to, a folder or file that another user owns or can write to: whoever can write it
could make us run their code. Such a folder is warned about once per process."""
import hashlib
import json
import logging
import os
import shutil
import stat
import tempfile
import threading
import time

import numpy as np

from graphflux.compiler.pipeline import VERSION, Artifact, Binary

log = logging.getLogger("graphflux")
FORMAT = 2      # 2: steps check every gradient is finite before writing
NEEDED = ("meta.json", "llvm_ir.ll", "llvm_ir_optimized.ll")   # besides object{i}.o
META_FIELDS = {"symbol": str, "objects": int, "slots": list, "scalar_refs": list,
               "outputs": list, "arena_bytes": int, "thread_settings": dict, "stats": dict,
               "constants": list}

_warned = set()               # cache folders already warned about in this process
_warned_lock = threading.Lock()


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


class Unsafe(Exception):
    """A folder or file another user owns or can write to: nothing in or under it is loaded."""

    def __init__(self, path, reason, fix):
        super().__init__(f"{path} {reason}")
        self.path, self.reason, self.fix = path, reason, fix


def _tuples(x):
    return tuple(_tuples(i) for i in x) if isinstance(x, list) else x


def _sha(data):
    return hashlib.sha256(data).hexdigest()


def _check_private(path, st):
    """Raise Unsafe unless `st` (the status of `path`) is ours and writable only by us: code
    loaded from anything another user can write runs with our rights."""
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise Unsafe(path, "belongs to another user",
                     "remove it, or set GRAPHFLUX_CACHE_DIR to a folder of your own")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        mode = "700" if stat.S_ISDIR(st.st_mode) else "600"
        raise Unsafe(path, "is writable by others", f"chmod {mode} {path}")


def _check_folder(path):
    """Raise Unsafe unless the folder `path` is private to us (OSError if it is missing)."""
    _check_private(path, os.stat(path))


def _read_private(path):
    """The bytes of the file at `path`, checked private on the open file itself, so the
    check and the read see the same file."""
    with open(path, "rb") as f:
        _check_private(path, os.fstat(f.fileno()))
        return f.read()


def _write_private(folder, name, data):
    """Write `folder/name` readable and writable by us alone whatever the umask (the loader
    refuses anything others can write), atomically: a reader sees the old file or the new."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, os.path.join(folder, name))
    except OSError:
        os.unlink(tmp)
        raise


def _warn_once(folder, message, *args):
    """Log a warning about the cache `folder` unless this process already has: an unusable
    folder affects every compile, and one warning says all there is to say."""
    with _warned_lock:
        if folder in _warned:
            return
        _warned.add(folder)
    log.warning(message, *args)


def _warn_unsafe(folder, err):
    """Say (once per cache folder) which object code was refused and how to fix it."""
    what = "the cache is disabled" if err.path == folder else "it is not loaded"
    _warn_once(folder, "graphflux cache: %s %s, so %s and steps are compiled instead (fix: %s)",
               err.path, err.reason, what, err.fix)


def _plain_name(name):
    """Whether a manifest's file name stays inside the entry folder."""
    return (isinstance(name, str) and name not in ("", ".", "..") and "\0" not in name
            and os.path.basename(name) == name)


def _manifest_files(data, key):
    """The {name: sha256} map of an entry's manifest; ValueError unless it is one, written
    by this graphflux version for `key`."""
    manifest = json.loads(data)
    if not isinstance(manifest, dict):
        raise ValueError("manifest.json is not a JSON object")
    if (manifest.get("format"), manifest.get("graphflux"), manifest.get("key")) != \
            (FORMAT, VERSION, key):
        raise ValueError("written by another graphflux version or for another key")
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(
            _plain_name(n) and isinstance(d, str) for n, d in files.items()):
        raise ValueError("manifest.json has no valid map of files to checksums")
    return files


def _checked_meta(files):
    """meta.json decoded, once the manifest is known to cover every file the loader needs;
    ValueError otherwise (an incomplete entry is recompiled, not half-loaded)."""
    missing = [n for n in NEEDED if n not in files]
    if missing:
        raise ValueError(f"manifest.json does not list {', '.join(missing)}")
    meta = json.loads(files["meta.json"])
    if not isinstance(meta, dict) or not all(
            isinstance(meta.get(k), t) for k, t in META_FIELDS.items()):
        raise ValueError("meta.json lacks a field or has one of the wrong type")
    if not 0 < meta["objects"] <= len(files):
        raise ValueError("meta.json gives an impossible number of object files")
    missing = [f"object{i}.o" for i in range(meta["objects"]) if f"object{i}.o" not in files]
    if missing:
        raise ValueError(f"manifest.json does not list {', '.join(missing)}")
    return meta


def _binary_fields(meta, files):
    """The Binary's fields an entry describes; ValueError when meta.json's parts do not fit
    (numpy checks each constant lies inside constants.bin), so that building the Binary
    itself cannot fail."""
    raw = files.get("constants.bin", b"")
    try:
        constants = [np.frombuffer(raw, dtype=d, count=int(np.prod(s, dtype=np.int64)),
                                   offset=o).reshape(s).copy() for d, s, o in meta["constants"]]
        outputs = [(n, tuple(s), d) for n, s, d in meta["outputs"]]
    except (TypeError, IndexError) as e:
        raise ValueError(f"meta.json does not describe the entry ({e})") from e
    objects = [files[f"object{i}.o"] for i in range(meta["objects"])]
    return (meta["symbol"], objects, _tuples(meta["slots"]), _tuples(meta["scalar_refs"]),
            outputs, constants, meta["arena_bytes"], meta["thread_settings"],
            meta.get("batch_capacity", 0))


class DiskCache:
    def __init__(self, folder):
        self.folder = folder

    def _ready(self):
        """Create the folder private to the user; whether entries may be written there (not
        into one others can write to: they could swap in object code of their own)."""
        try:
            os.makedirs(self.folder, mode=0o700, exist_ok=True)
            _check_folder(self.folder)
        except Unsafe as e:
            _warn_unsafe(self.folder, e)
            return False
        except OSError as e:
            _warn_once(self.folder, "graphflux cache disabled: cannot create %s (%s)",
                       self.folder, e)
            return False
        return True

    def entry(self, key):
        return os.path.join(self.folder, key)

    def load(self, key, graph, stages, graph_seconds=0.0):
        """The Artifact stored under `key`, or None (missing, damaged, foreign or unsafe)."""
        path = self.entry(key)
        if not os.path.isdir(path):
            return None
        t = time.perf_counter()
        try:
            meta, files, asm = self._read_entry(path, key)
            fields = _binary_fields(meta, files)
            ir, ir_optimized = (files[n].decode() for n in NEEDED[1:])
        except Unsafe as e:
            _warn_unsafe(self.folder, e)
            return None
        except (OSError, ValueError) as e:
            log.info("graphflux cache entry %s is damaged, incomplete or from another version "
                     "(%s): recompiling", key[:12], e)
            return None
        stats = meta["stats"]
        stats["cache_hit"] = True
        stats["seconds"] = {"trace": graph_seconds, "ad": 0.0, "passes": 0.0, "codegen": 0.0,
                            "llvm_opt": 0.0, "machine_code": 0.0,
                            "load": time.perf_counter() - t}
        art = Artifact(Binary(*fields), graph, ir, ir_optimized, stats, stages, asm)
        art.on_asm = lambda text: self._write_text(path, "asm.s", text)
        return art

    def _read_entry(self, path, key):
        """(meta, {name: bytes}, assembly text or None) of the entry at `path`, every file
        checked against the manifest; raises Unsafe (a folder or file on the way is not
        private), ValueError or OSError (damaged or incomplete)."""
        _check_folder(self.folder)
        _check_folder(path)
        files = self._verified_files(path, key)
        meta = _checked_meta(files)
        asm_path = os.path.join(path, "asm.s")
        asm = _read_private(asm_path).decode() if os.path.exists(asm_path) else None
        return meta, files, asm

    def _verified_files(self, path, key):
        digests = _manifest_files(_read_private(os.path.join(path, "manifest.json")), key)
        files = {}
        for name, digest in digests.items():
            data = _read_private(os.path.join(path, name))
            if _sha(data) != digest:
                raise ValueError(f"{name} does not match its checksum")
            files[name] = data
        return files

    def store(self, key, art):
        """Write the entry atomically (temporary folder, then rename), replacing a damaged or
        unsafe one; never raises."""
        if not self._ready():
            return
        tmp = None
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
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            log.warning("graphflux cache: could not write %s (%s)", key[:12], e)

    def _write(self, folder, key, art):
        b = art.binary
        stats = {k: v for k, v in art.stats.items() if k != "seconds"}
        stats["compile_seconds"] = art.stats.get("seconds", {})
        meta = {"symbol": b.symbol, "objects": len(b.objects), "slots": b.slots,
                "scalar_refs": b.scalar_refs, "outputs": [list(o) for o in b.outputs],
                "arena_bytes": b.arena_bytes, "thread_settings": b.thread_settings,
                "batch_capacity": b.batch_capacity, "stats": stats, "constants": []}
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
            _write_private(folder, name, data)
        manifest = {"format": FORMAT, "graphflux": VERSION, "key": key,
                    "files": {name: _sha(data) for name, data in files.items()}}
        _write_private(folder, "manifest.json", json.dumps(manifest).encode())

    @staticmethod
    def _write_text(folder, name, text):
        try:
            _write_private(folder, name, text.encode())
        except OSError:
            pass


class LibraryStore:
    """Library object code (the GEMMs) on disk, one checksummed file per key, so a second
    process links them without running LLVM."""

    def get(self, key):
        """The stored object code for `key`, or None (missing, damaged, or in a folder or
        file others could have written)."""
        cache = disk_cache()
        if not isinstance(cache, DiskCache):
            return None
        path = os.path.join(cache.folder, f"lib-{key}.o")
        try:
            _check_folder(cache.folder)
            data = _read_private(path)
            ok = _read_private(path + ".sha256").decode().strip() == _sha(data)
        except Unsafe as e:
            _warn_unsafe(cache.folder, e)
            return None
        except (OSError, ValueError):
            return None
        return data if ok else None

    def put(self, key, data):
        cache = disk_cache()
        if not isinstance(cache, DiskCache) or not cache._ready():
            return
        try:
            _write_private(cache.folder, f"lib-{key}.o", data)
            _write_private(cache.folder, f"lib-{key}.o.sha256", _sha(data).encode())
        except OSError as e:
            log.warning("graphflux cache: could not write a library object (%s)", e)
