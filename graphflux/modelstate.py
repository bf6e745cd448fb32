"""A model's arrays as data: `state` (nested dicts of every array), `loadmodel` (copy back,
checked first, so a mismatch changes nothing), `f32`/`f64` conversion, and `save`/`load` of a
model with its optimiser in one `.npz`, written atomically."""
import copy
import io
import json
import os
import tempfile
import zipfile

import numpy as np

from graphflux.compiler.errors import GraphfluxError

from .errors import FileWriteError, MissingFileError
from .params import _IGNORED, params


class StateError(GraphfluxError, ValueError):
    """A state or file that does not fit the model it is loaded into."""


def _children(obj):
    """(key, value) pairs of a container or layer, in order; private attributes skipped."""
    if isinstance(obj, (list, tuple)):
        return [(str(i), v) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        return [(str(k), v) for k, v in obj.items()]
    if hasattr(obj, "__dict__") and not isinstance(obj, _IGNORED):
        return [(k, v) for k, v in vars(obj).items() if not k.startswith("_")]
    return []


def state(model, _seen=None):
    """Every array of `model`, trainable or not, as nested dicts with string keys:
    {'layers': {'0': {'weight': ..., 'bias': ...}}}. Arrays are the model's own (not copies)."""
    seen = set() if _seen is None else _seen
    if isinstance(model, np.ndarray):
        return model
    if id(model) in seen:
        return None
    seen.add(id(model))
    out = {}
    for key, value in _children(model):
        if isinstance(value, np.ndarray):
            out[key] = value
        elif not isinstance(value, _IGNORED):
            sub = state(value, seen)
            if sub:
                out[key] = sub
    return out


def _flatten(tree, prefix=""):
    flat = {}
    for k, v in tree.items():
        path = f"{prefix}/{k}" if prefix else k
        if isinstance(v, dict):
            flat.update(_flatten(v, path))
        else:
            flat[path] = v
    return flat


def _check_fits(target, source, what):
    t, s = _flatten(target), _flatten(source)
    missing, extra = sorted(set(t) - set(s)), sorted(set(s) - set(t))
    if missing or extra:
        raise StateError(f"{what} does not match the model's structure: missing "
                         f"{missing or 'nothing'}, unexpected {extra or 'nothing'}")
    for k in t:
        a, b = t[k], np.asarray(s[k])
        if a.shape != b.shape:
            raise StateError(f"{what}: {k} has shape {b.shape}, the model's is {a.shape}")
        if a.dtype != b.dtype and not np.can_cast(b.dtype, a.dtype, "same_kind"):
            raise StateError(f"{what}: {k} has dtype {b.dtype}, the model's is {a.dtype}")
    return t, s


def loadmodel(model, source):
    """Copy the arrays of `source` (as `state` gives) into `model` in place, after checking
    the whole structure, shapes and dtypes: on a mismatch nothing is changed."""
    t, s = _check_fits(state(model), source, "loadmodel")
    for k, a in t.items():
        np.copyto(a, np.asarray(s[k]), casting="same_kind")
    return model


def _convert(model, dtype):
    m = copy.deepcopy(model)
    for container, key, value in _array_slots(m):
        if value.dtype.kind == "f" and value.dtype != dtype:
            converted = value.astype(dtype)
            if isinstance(container, (list, dict)):
                container[key] = converted
            else:
                setattr(container, key, converted)
    return m


def _array_slots(obj, seen=None):
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    for key, value in list(_children(obj)):
        real_key = int(key) if isinstance(obj, list) else key
        if isinstance(obj, dict):
            real_key = next(k for k in obj if str(k) == key)
        if isinstance(value, np.ndarray):
            if not isinstance(obj, tuple):
                yield obj, real_key, value
        elif not isinstance(value, _IGNORED):
            yield from _array_slots(value, seen)


def f32(model):
    """A copy of `model` with its floating arrays in float32."""
    return _convert(model, np.float32)


def f64(model):
    """A copy of `model` with its floating arrays in float64."""
    return _convert(model, np.float64)


def save(path, model, opt=None, *, comm=None):
    """Write the model's whole state (and the optimiser's) to `path` (.npz), atomically: a
    temporary file in the same folder renamed over the target, so a crash leaves the old file.
    With `comm` (gf.distributed) rank 0 writes, once every rank has reached the save (ranks
    hold the same state); an error writing raises on every rank."""
    if comm is not None:
        comm.barrier()
        error = None
        if comm.rank == 0:
            try:
                save(path, model, opt)
            except FileWriteError as e:
                error = str(e)
        error = comm.bcast(error)
        if error is not None:
            raise FileWriteError(f"rank 0: {error}" if comm.rank else error)
        return
    arrays = {f"model/{k}": v for k, v in _flatten(state(model)).items()}
    if opt is not None:
        ps = params(model)
        host = {}
        for p in ps:
            entry = opt.state_of(p)
            if entry is None:
                continue
            name = ps.name(p)
            for k, a in entry.arrays.items():
                arrays[f"opt/{name}/{k}"] = a
            host[name] = entry.host
        meta = {"optimiser": type(opt).__name__, "host": host,
                "hyper": {k: v for k, v in vars(opt).items()
                          if not k.startswith("_") and isinstance(v, (int, float, tuple))}}
        arrays["opt.json"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".graphflux-save-", suffix=".npz")
    except OSError as e:
        raise FileWriteError(f"cannot write {path}: {e.strerror} (its folder {folder} must "
                             "exist and be writable); nothing was written") from None
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError):
            raise FileWriteError(f"cannot write {path}: {e}; the old file, if any, is "
                                 "unchanged") from None
        raise


def load(path, model, opt=None, *, comm=None):
    """Restore a model (and optimiser) written by `save`; shapes, dtypes and structure are
    checked first, and on a mismatch the model and optimiser are left untouched. With `comm`
    (gf.distributed) rank 0 reads the file and sends its bytes to every rank, so the other
    ranks need no access to it."""
    source = path
    if comm is not None:
        raw = None
        if comm.rank == 0:
            try:
                with open(path, "rb") as f:
                    raw = f.read()
            except OSError as e:
                raw = e
        raw = comm.bcast(raw)
        if isinstance(raw, FileNotFoundError):
            raise MissingFileError(f"{path} does not exist on rank 0; nothing was loaded")
        if isinstance(raw, OSError):
            raise StateError(f"rank 0 cannot read {path} ({raw}); nothing was loaded")
        source = io.BytesIO(raw)
    try:
        with np.load(source, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise MissingFileError(f"{path} does not exist; nothing was loaded") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise StateError(f"{path} is truncated or not a valid graphflux .npz file ({e}); "
                         "nothing was loaded") from None
    saved = {k[len("model/"):]: v for k, v in data.items() if k.startswith("model/")}
    t, s = _check_fits(state(model), _unflatten(saved), f"{path}")
    restore = None
    if opt is not None:
        if "opt.json" not in data:
            raise StateError(f"{path} holds no optimiser state (saved without opt)")
        meta = json.loads(bytes(data["opt.json"]).decode())
        if meta["optimiser"] != type(opt).__name__:
            raise StateError(f"{path} holds {meta['optimiser']} state, not {type(opt).__name__}")
        restore = _optimiser_restore(model, opt, data, meta, path)
    for k, a in t.items():
        np.copyto(a, np.asarray(s[k]), casting="same_kind")
    if restore is not None:
        restore()
    return model


def _optimiser_restore(model, opt, data, meta, path):
    """Check the saved optimiser state against the model's parameters; return the function
    that installs it (run only once every check has passed)."""
    ps = params(model)
    plan = []
    for p in ps:
        name = ps.name(p)
        if name not in meta["host"]:
            continue
        arrays = {k.split("/")[-1]: v for k, v in data.items() if k.startswith(f"opt/{name}/")}
        fresh = opt.state_init(p)
        if set(arrays) != set(fresh) or any(arrays[k].shape != fresh[k].shape for k in fresh):
            raise StateError(f"{path}: optimiser state for {name} does not fit that parameter")
        plan.append((p, arrays, _tuples(meta["host"][name])))
    restored = {id(p) for p, _, _ in plan}

    def install():
        for k, v in meta["hyper"].items():
            setattr(opt, k, _tuples(v))
        opt.restore(plan, (path, {id(p): ps.name(p) for p in ps if id(p) not in restored}))
    return install


def _tuples(x):
    return tuple(_tuples(i) for i in x) if isinstance(x, list) else x


def _unflatten(flat):
    tree = {}
    for path, v in flat.items():
        node = tree
        parts = path.split("/")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = v
    return tree
