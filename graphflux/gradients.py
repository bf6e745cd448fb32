"""gradient, pullback, withgradient and update, implicit (Params) and explicit (arrays) style.

Compiled, the closure is traced on every call (it may capture new data) and native code is
reused whenever the traced graph is structurally the same."""
import threading

import numpy as np

from graphflux.runtime.executable import Executable
from graphflux.runtime.lru import LRU

from .compiled import artifact_for, bind_inputs, check_mode
from .eager_step import eager_value_and_grads
from .eager_update import update_eager
from .modelstate import state
from .params import Grads, Params, as_params, params
from .signature import native_dense
from .training import _is_model
from .tracing import check_params, input_array, trace_loss

_EXECUTABLES = LRU(8)    # artifact symbol -> (Executable, lock): calls on one take turns


def _compiled_value_and_grads(f, ps, args=()):
    check_params(ps)
    args = tuple(native_dense(a) if isinstance(a, np.ndarray) else a for a in args)
    traced = trace_loss(f, ps, args)
    art, _ = artifact_for(traced, ps)
    entry = _EXECUTABLES.get(art.symbol)
    if entry is None:
        entry = _EXECUTABLES.setdefault(art.symbol, (Executable(art.binary), threading.Lock()))
    ex, lock = entry
    with lock:    # copies are made now, from the arrays as they are: traced on every call
        bind_inputs(ex, lambda ref: input_array(ref, ps, None, args, traced.captured),
                    traced.graph, with_data=True)
        _, outs = ex.run()
    grads = [outs.get(f"grad:{ps.name(p)}") for p in ps]
    return float(outs["loss"]), grads


def value_and_grads(f, ps, args=(), mode="compiled"):
    check_mode(mode)
    if mode == "eager":
        return eager_value_and_grads(f, ps, args)
    return _compiled_value_and_grads(f, ps, args)


def _explicit(args):
    """Explicit style: the arguments go in a list whose array slots `params` records, so
    tracing puts a tracer in each and `f` sees traced values, as JAX's grad does; a model
    argument contributes its trainable arrays, found in their own slots."""
    box = [np.ascontiguousarray(a) if isinstance(a, np.ndarray) else a for a in args]
    ps = Params()
    for i, a in enumerate(box):
        if isinstance(a, np.ndarray) and a.dtype.kind == "f":
            ps.add(a, (box, i), f"arg{i}")
        elif _is_model(a):
            sub = params(a)
            for p in sub:
                ps.add(p, None, f"arg{i}.{sub.name(p)}")
                for slot in sub.slots[id(p)]:
                    ps.add(p, slot)
    return ps, box


def gradient(f, *args, mode="compiled"):
    """gradient(f, ps) -> Grads (f takes no arguments); gradient(f, *arrays) -> tuple."""
    if len(args) == 1 and isinstance(args[0], Params):
        _, grads = value_and_grads(f, args[0], (), mode)
        return Grads(args[0], grads)
    ps, box = _explicit(args)
    arrays = list(box)
    _, grads = value_and_grads(lambda: f(*box), ps, (), mode) if len(ps) else (None, [])
    by_id = {id(p): g for p, g in zip(ps, grads)}
    return tuple(by_id.get(id(a)) if isinstance(a, np.ndarray) else
                 _structure(a, by_id) if _is_model(a) else None for a in arrays)


def _structure(model, grads_by_id):
    """A model's gradient as gf.state's nested dicts: trainable arrays get their gradient,
    everything else None."""
    trainable = {id(p) for p in params(model)}

    def walk(tree):
        return {k: walk(v) if isinstance(v, dict) else
                (grads_by_id.get(id(v)) if id(v) in trainable else None)
                for k, v in tree.items()}
    return walk(state(model))


def withgradient(f, ps, mode="compiled"):
    """(loss value, Grads) in one pass."""
    ps = as_params(ps)
    value, grads = value_and_grads(f, ps, (), mode)
    return value, Grads(ps, grads)


def pullback(f, ps, mode="compiled"):
    """(value, back) with back(seed) -> Grads scaled by seed (Zygote's pullback)."""
    ps = as_params(ps)
    value, grads = value_and_grads(f, ps, (), mode)

    def back(seed=1.0):
        return Grads(ps, [None if g is None else g * np.asarray(seed, g.dtype) for g in grads])
    return value, back


def update(opt, ps, gs):
    """update(opt, ps, gs) or update(opt, x, dx): apply the optimiser in place."""
    if isinstance(ps, np.ndarray):
        update_eager(opt, [(ps, gs)])
        return
    update_eager(opt, [(p, gs[p]) for p in ps])
