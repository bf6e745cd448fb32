"""`gf.compile`: a training step specialised per input signature, run as one native call.

The hot path (`CompiledStep.__call__` -> `_Entry.run`) does only what cannot be avoided: check
the batch, look up the signature, write the batch's pointers and the host scalars, call."""
import logging
import time

import numpy as np

from graphflux.compiler.pipeline import compile_graph, graph_key
from graphflux.runtime.executable import Executable

from .eager_step import EagerStep
from .errors import NonFiniteLoss
from .params import Grads, as_params, get_slot
from .signature import check_batch, describe_change, signature
from .tracing import check_params, trace_step

log = logging.getLogger("graphflux")

_ARTIFACTS = {}   # cache key -> Artifact, for the life of the process


def artifact_for(traced):
    """Compile `traced` (a TracedStep), or reuse the artifact of a structurally equal graph.
    Returns (artifact, whether it was compiled now)."""
    key = graph_key(traced.grad_graph)
    art = _ARTIFACTS.get(key)
    if art is not None:
        return art, False
    art = compile_graph(traced.graph, traced.grad_graph, dict(traced.seconds), key)
    _ARTIFACTS[key] = art
    return art, True


class _Entry:
    """One artifact bound to this step's arrays."""

    def __init__(self, step, traced, art):
        self.art = art
        self.ex = ex = Executable(art)
        self.data_slots = []
        self.slot_checks = []
        scalar_keys = {}
        ps = step.ps
        for node, mine in zip(art.grad_graph.inputs, traced.grad_graph.inputs):
            kind, key = traced.bindings[mine.id]
            if kind == "scalar":
                scalar_keys[node.attrs["name"]] = key
                continue
            if node.id not in ex.input_slot:
                continue
            slot = ex.input_slot[node.id]
            if kind == "data":
                self.data_slots.append((slot, key))
            elif kind == "param":
                ex.native.pointers[slot] = ps[key].ctypes.data
            else:
                ex.native.pointers[slot] = key.ctypes.data
        self.keep = [traced.bindings]
        self.scalar_plan = []    # (param, [scalar names]) in the order of the scalars vector
        for name in ex.scalar_names:
            index, key = scalar_keys[name]
            if not self.scalar_plan or self.scalar_plan[-1][0] is not ps[index]:
                self.scalar_plan.append((ps[index], []))
            self.scalar_plan[-1][1].append(key)
        for p in ps:
            for slot in ps.slots[id(p)]:
                self.slot_checks.append((slot, get_slot(slot)))
        self.outputs = {}
        for name, slot, shape, dtype in ex.outputs:
            arr = np.empty(shape, dtype)
            self.outputs[name] = arr
            ex.native.pointers[slot] = arr.ctypes.data

    def slots_changed(self):
        for slot, p in self.slot_checks:
            if get_slot(slot) is not p:
                return slot
        return None


class CompiledStep:
    """`step(*batch)`: with an optimiser, loss + gradients + update in one native call,
    returning the loss; without, returns (loss, Grads)."""

    def __init__(self, loss, ps, opt=None):
        self.loss, self.ps, self.opt = loss, as_params(ps), opt
        self.dtype = check_params(self.ps)
        self._entries = {}      # signature after casts -> _Entry
        self._seen = {}         # raw argument key -> (_Entry, whether arguments need casting)
        self._last = None
        self._warned = set()

    def lower(self, *batch):
        """Compile (or fetch) the artifact for this batch's signature and install it; the step
        is not run."""
        batch = check_batch(batch, self.dtype, self._warned)
        return self._entry(batch, signature(batch)).art

    def _entry(self, batch, sig, reason=None):
        entry = self._entries.get(sig)
        if entry is not None and reason is None:
            return entry
        reason = reason or describe_change(self._last, sig)
        t = time.perf_counter()
        check_params(self.ps)
        traced = trace_step(self.loss, self.ps, batch, self.opt)
        art, fresh = artifact_for(traced)
        entry = _Entry(self, traced, art)
        self._entries[sig] = entry
        self._seen.clear()
        self._last = sig
        log.info("%s step in %.3f s: %s", "compiled" if fresh else "traced (artifact reused)",
                 time.perf_counter() - t, reason)
        return entry

    def __call__(self, *batch):
        key = tuple((a.shape, a.dtype.char, a.flags.c_contiguous) if type(a) is np.ndarray
                    else ("value", repr(a)) for a in batch)
        hit = self._seen.get(key)
        if hit is None or hit[1]:
            prepared = check_batch(batch, self.dtype, self._warned)
            if hit is None:
                sig = signature(prepared)
                entry = self._entries.get(sig) or self._entry(prepared, sig)
                hit = self._seen[key] = (entry, any(a is not b for a, b in zip(prepared, batch)))
            batch = prepared
        entry = hit[0]
        changed = entry.slots_changed()
        if changed is not None:
            sig = signature(batch)
            entry = self._entry(batch, sig, reason=f"parameter slot {changed[1]!r} now holds "
                                                   "a different array")
        return self._run(entry, batch)

    def _run(self, entry, batch):
        native = entry.ex.native
        ptrs = native.pointers
        for slot, i in entry.data_slots:
            ptrs[slot] = batch[i].__array_interface__["data"][0]
        opt = self.opt
        if opt is not None:
            states = opt._state
            records = [states[id(p)] for p, _ in entry.scalar_plan]
            cache, values = {}, []
            for rec, (_, names) in zip(records, entry.scalar_plan):
                vals = cache.get(rec.host)
                if vals is None:
                    d = opt.scalars(rec.host)
                    vals = cache[rec.host] = [d[n] for n in names]
                values.extend(vals)
            native.scalars[:len(values)] = values
        status = native()
        loss = float(entry.outputs["loss"])
        if status:
            raise NonFiniteLoss(f"the loss is {loss}; nothing was updated")
        if opt is None:
            return loss, self._grads(entry)
        advanced = {}
        for rec in records:
            new = advanced.get(rec.host)
            if new is None:
                new = advanced[rec.host] = opt.advance(rec.host)
            rec.host = new
        return loss

    def _grads(self, entry):
        values = []
        for p in self.ps:
            out = entry.outputs.get(f"grad:{self.ps.name(p)}")
            values.append(None if out is None else out.copy())
        return Grads(self.ps, values)


def compile(loss, ps, opt=None, *, mode="compiled"):  # noqa: A001 -- the API's name
    """A step function for `loss(*batch)` over params `ps`; traced on first call (or `lower`)."""
    if mode == "eager":
        return EagerStep(loss, ps, opt)
    if mode != "compiled":
        raise ValueError(f"mode must be 'compiled' or 'eager', got {mode!r}")
    return CompiledStep(loss, ps, opt)
