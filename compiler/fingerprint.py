"""A hash of graphflux's own source, part of every disk-cache key: editing the compiler (AD,
passes, lowering) or the code that builds and runs steps changes the object code a graph
compiles to, so an entry made by other source must never be loaded -- a hand-kept version
number would be forgotten."""
import functools
import hashlib
import os
import sys
from pathlib import Path


@functools.lru_cache(maxsize=None)
def source_fingerprint():
    """sha256 over the name and content of every .py file of graphflux, graphflux.compiler and
    graphflux.runtime (wherever they are installed), once per process."""
    roots = {Path(__file__).resolve().parent}
    for name in ("graphflux", "graphflux.runtime"):
        module = sys.modules.get(name)
        if module is not None and getattr(module, "__file__", None):
            roots.add(Path(module.__file__).resolve().parent)
    top = Path(os.path.commonpath([str(r) for r in roots]))
    files = sorted({path.resolve() for root in roots for path in root.rglob("*.py")})
    h = hashlib.sha256()
    for path in files:
        h.update(path.relative_to(top).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()
