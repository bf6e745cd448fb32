"""`gf.compile`: a training step specialised per input signature, run as one native call.

The hot path (`CompiledStep.__call__` -> `_run`) does only what cannot be avoided: check
the batch, look up the signature, write the batch's pointers and the host scalars, call."""
import ctypes
import logging
import os
import tempfile
import threading
import time
import traceback

import numpy as np

from graphflux.compiler.batch_axis import NotSymbolic, batch_scalar_value, generalise
from graphflux.compiler.pipeline import compile_graph, graph_key, prepare_libraries
from graphflux.runtime.cache import disk_cache
from graphflux.runtime.executable import Executable
from graphflux.runtime.lru import LRU

from . import bindings
from .batch_lengths import BatchLengths, general_signature
from .eager_step import EagerStep
from .errors import ArgumentError, UsageError
from .nonfinite import nonfinite_error
from .optimise import Rule
from .params import Grads, SlotWatch, as_params, warn_names
from .signature import (check_batch, describe_change, fast_key, is_native_dense, native_dense,
                        signature)
from .tracing import (ParameterError, check_params, input_array, optimiser_description,
                      step_graph, trace_loss)

log = logging.getLogger("graphflux")

_ARTIFACTS = LRU(32)   # cache key -> Artifact: the most recently used; a step keeps its own


def cached_artifact(graph, extra, build, seconds, dtype, batch=None):
    """The artifact of a traced `graph`: from this process, from the disk cache (no AD,
    passes, sympy or LLVM), or compiled now from `build()` (the graph to compile). The key is
    computed before `build` runs, from the traced graph, `extra`, versions and CPU. With
    `batch()` -- (the step at another batch length, that length, this one), called after
    `build` -- the artifact serves every batch length up to this one (compiler.batch_axis).
    Returns (artifact, "memory" | "disk" | "compiled")."""
    key = graph_key(graph, extra)
    art = _ARTIFACTS.get(key)
    how = "memory"
    if art is None:
        art = disk_cache().load(key, graph, build, seconds["trace"])
        how = "disk"
    if art is None:
        prepare_libraries(dtype)
        stages = {"graph": graph}
        try:
            full = stages["grad_graph"] = build()
            art = compile_graph(graph, full, seconds, key, stages,
                                batch=batch() if batch else None)
        except NotSymbolic:
            raise
        except Exception as e:
            folder = dump_stages(stages, e)
            if folder is not None:
                e.add_note(f"GRAPHFLUX_DEBUG: every stage this compile reached is in {folder}")
            raise
        how = "compiled"
    _ARTIFACTS[key] = art
    return art, how


def artifact_for(traced, ps, opt=None, other=None, weighted=False):
    """The artifact of a training step (opt given) or of loss and gradients (opt None;
    `weighted`: of the loss times the batch length, tracing.step_graph). With `other` = (the
    loss traced at another batch length, that length, this batch's length), one that serves
    every batch length up to this one, or NotSymbolic."""
    fresh, general = [], {}

    def build():
        fresh.append(True)
        graph = step_graph(traced, ps, opt, warn=len(fresh) == 1, weighted=weighted)
        if other is None:
            return graph
        traced_b, n_b, n = other
        graph, general["b"] = generalise(
            graph, step_graph(traced_b, ps, opt, warn=False, weighted=weighted), n, n_b)
        return graph
    batch = None
    extra = optimiser_description(opt) + (" weighted" if weighted else "")
    if other is not None:
        extra += f" batch<={other[2]}"
        batch = lambda: (general["b"], other[1], other[2])  # noqa: E731
    art, how = cached_artifact(traced.graph, extra, build, traced.seconds,
                               ps[0].dtype if len(ps) else np.float32, batch)
    if how == "compiled":
        used = _updated_or_output(art.binary, ps, opt)
        art.stats["unused_params"] = [ps.name(p) for i, p in enumerate(ps) if i not in used]
        disk_cache().store(art.stats["key"], art)
    elif art.stats.get("unused_params"):
        warn_names(art.stats["unused_params"])
    return art, how


def dump_stages(stages, error):
    """With GRAPHFLUX_DEBUG=1, write every stage a failing compile reached to a new folder
    and return its path."""
    if os.environ.get("GRAPHFLUX_DEBUG", "0") in ("", "0"):
        return None
    folder = tempfile.mkdtemp(prefix="graphflux-debug-")
    for name, stage in stages.items():
        with open(os.path.join(folder, f"{name}.txt"), "w") as f:
            f.write(str(stage))
    with open(os.path.join(folder, "error.txt"), "w") as f:
        f.write("".join(traceback.format_exception(error)))
    return folder


def _updated_or_output(binary, ps, opt):
    """Positions of the parameters the step updates (or outputs a gradient for)."""
    if opt is None:
        names = {name for name, _, _ in binary.outputs}
        return {i for i, p in enumerate(ps) if f"grad:{ps.name(p)}" in names}
    return {ref[1] for ref in binary.scalar_refs if ref[0] == "scalar"}


class _Entry:
    """One artifact bound to this step's arrays. Parameters, optimiser state and running
    statistics are bound by pointer once; captured arrays native code cannot read by pointer
    (strided, big-endian, subclasses) through a buffer refreshed on every call."""

    def __init__(self, step, traced, art):
        self.art = art
        self.captured = traced.captured
        self.ex = ex = Executable(art.binary)
        ps, opt = step.ps, step.opt
        self.data_slots, self.copies, self.keep = bind_inputs(
            ex, lambda ref: input_array(ref, ps, opt, None, traced.captured), traced.graph)
        self.scalar_plan = []    # (param, [scalar names]) in the order of the scalars vector
        for ref in art.binary.scalar_refs:
            if ref[0] != "scalar":
                continue
            _, index, name = ref
            if not self.scalar_plan or self.scalar_plan[-1][0] is not ps[index]:
                self.scalar_plan.append((ps[index], []))
            self.scalar_plan[-1][1].append(name)
        # a batch-symbolic artifact (compiler.batch_axis): the host scalars made from the batch
        # length, after the optimiser's, and the argument whose axis 0 is that length
        self.capacity = art.binary.batch_capacity
        self.batch_scalars = [(k, ref) for k, ref in enumerate(art.binary.scalar_refs)
                              if ref[0] == "batch"]
        self.length = None       # the batch length the scalars vector holds
        self.batch_arg = min((n.attrs["ref"][1] for n in traced.graph.inputs
                              if n.attrs.get("role") == "data" and n.shape),
                             default=None) if self.capacity else None
        # per-parameter host state, created now; replacing it (gf.load) moves the bindings
        # generation, which rebuilds this entry, so the records stay the ones in use
        self.records = [opt.slot(p) for p, _ in self.scalar_plan]
        # every parameter reads the scalars in the optimiser's own order: when they also share
        # their host state (the usual case), one dict of scalars serves them all
        self.same_names = bool(self.records) and all(
            names == list(opt.scalars(rec.host)) for rec, (_, names) in
            zip(self.records, self.scalar_plan))
        self.slots = SlotWatch(ps)
        self.outputs = {}
        for name, _, shape, dtype in ex.outputs:
            self.outputs[name] = step.output_array(name, shape, dtype)
            ex.bind_output(name, self.outputs[name])
        self.loss = self.outputs.get("loss")
        self.prepares = opt is not None and type(opt).prepare is not Rule.prepare
        # the host scalars' float64 vector seen as a ctypes array: a list is written into it
        # in one C loop (numpy's conversion of a list costs twice as much)
        n = len(art.binary.scalar_refs)
        self.scalars = (ctypes.c_double * n).from_address(ex.native.scalars_ptr) if n else None


def data_address(a):
    """The address of a native-dense array's first element, by the buffer protocol (a third
    of the cost of `__array_interface__`, which builds a dict); read-only or empty arrays,
    which ctypes will not wrap, the slow way."""
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(a))
    except (TypeError, ValueError):
        return a.__array_interface__["data"][0]


def bind_inputs(ex, resolve, graph, with_data=False):
    """Bind the inputs of Executable `ex` to `resolve(ref)` -- the one place steps, jit
    functions and gradients do it. Data inputs are left to the caller's per-call fast path
    unless `with_data`. Returns (data slots as (slot, argument index), copies to refresh before
    each call, arrays to keep alive)."""
    written = {t.attrs["ref"] for t, _ in graph.updates}
    data_slots, copies, keep = [], [], []
    for ref in ex.input_slot:
        if ref[0] == "data" and not with_data:
            data_slots.append((ex.data_slot(ref), ref[1]))
            continue
        arr = bound_array(resolve(ref), ref in written, copies)
        keep.append(arr)
        ex.bind(ref, arr)
    return data_slots, copies, keep


def bound_array(arr, written, copies):
    """The array to bind for a captured input: `arr` itself when native code may use its
    pointer; otherwise a copy that `copies` refreshes before every call. An array the step
    writes (a running statistic, a counter) must be bindable as it is."""
    if is_native_dense(arr):
        return arr
    if written:
        raise ParameterError(
            f"an array the step updates in place (shape {arr.shape}, {arr.dtype}, "
            f"{type(arr).__name__}) must be a C-contiguous ndarray in native byte order; "
            "replace it with np.ascontiguousarray(x, dtype=x.dtype.newbyteorder('='))")
    buf = native_dense(arr)
    copies.append((buf, arr))
    return buf


class CompiledStep:
    """`step(*batch)`: with an optimiser, loss + gradients + update in one native call,
    returning the loss; without, returns (loss, Grads). Calls take turns (the native call
    shares this step's pointer table, arena and outputs); other steps run concurrently."""

    weighted = False
    """Differentiate the loss times the batch length (a data-parallel rank's gradients)."""

    def __init__(self, loss, ps, opt=None):
        self.loss, self.ps, self.opt = loss, as_params(ps), opt
        self.dtype = check_params(self.ps)
        self._generation = bindings.GENERATION[0]
        self._entries = {}      # signature after casts -> _Entry
        self._seen = {}         # fast_key per argument -> (_Entry, whether arguments need preparing)
        self._last = None
        self._warned = set()
        self._why = None        # why the entries were dropped, for the next compile's log line
        self._lengths = BatchLengths()
        self._lock = threading.Lock()

    def output_array(self, name, shape, dtype):
        """The array the native step writes output `name` into, bound once per entry."""
        return np.empty(shape, dtype)

    def lower(self, *batch):
        """Compile (or fetch) the artifact for this batch's signature and install it; the step
        is not run."""
        with self._lock:
            if self._generation != bindings.GENERATION[0]:
                self._follow_replacements()
            batch = check_batch(batch, self.dtype, self._warned)
            return self._entry(batch, signature(batch)).art

    def prepared(self, batch):
        """The batch as the native step reads it (casts, native copies), checked."""
        return check_batch(batch, self.dtype, self._warned)

    def run_variant(self, art, traced, batch, times):
        """Bind another artifact of this step's loss -- a timed variant (gf.compare) -- to
        this step's arrays and run it `times` times on a prepared batch; returns its native
        step (whose globals hold what the variant recorded)."""
        entry = _Entry(self, traced, art)
        with self._lock:
            for _ in range(times):
                self._run(entry, batch)
        return entry.ex.native

    def _follow_replacements(self):
        """Drop every entry: an array they bound was replaced (graphflux.bindings)."""
        self._entries.clear()
        self._lengths.general.clear()
        self._seen.clear()
        self._why = bindings.WHY[0]

    def _entry(self, batch, sig, reason=None):
        entry = self._entries.get(sig)
        if entry is not None and reason is None:
            return entry
        if reason is None and self._why is None:
            entry = self._shared_entry(batch, sig)
            if entry is not None:
                return entry
        reason = reason or self._why or describe_change(self._last, sig)
        t = time.perf_counter()
        check_params(self.ps)
        traced = trace_loss(self.loss, self.ps, batch)
        other = self._lengths.other_length(
            batch, lambda longer: trace_loss(self.loss, self.ps, longer))
        try:
            art, how = artifact_for(traced, self.ps, self.opt, other, self.weighted)
        except NotSymbolic as e:
            self._lengths.per_length[general_signature(batch)] = str(e)
            art, how = artifact_for(traced, self.ps, self.opt, weighted=self.weighted)
        entry = _Entry(self, traced, art)
        self._entries[sig] = entry
        lengths = self._lengths.compiled(batch, entry)
        self._seen.clear()
        self._last = sig
        self._why = None
        self._generation = bindings.GENERATION[0]
        what = {"compiled": "compiled step", "disk": "loaded step from the disk cache",
                "memory": "traced step (artifact reused)"}[how]
        log.info("%s in %.3f s: %s%s", what, time.perf_counter() - t, reason, lengths)
        return entry

    def _shared_entry(self, batch, sig):
        """The entry of a batch-symbolic artifact that serves this batch's length, if any
        (BatchLengths.shared: the loss is traced at the new length and checked first)."""
        entry = self._lengths.shared(batch, lambda b: trace_loss(self.loss, self.ps, b).graph)
        if entry is None:
            return None
        self._entries[sig] = entry
        self._seen.clear()
        log.info("batch length %d runs on the step compiled for lengths up to %d",
                 batch[entry.batch_arg].shape[0], entry.capacity)
        return entry

    def __call__(self, *batch):
        with self._lock:
            if self._generation != bindings.GENERATION[0]:
                self._follow_replacements()
            key = tuple(map(fast_key, batch))
            hit = self._seen.get(key)
            if hit is None or hit[1]:
                prepared = check_batch(batch, self.dtype, self._warned)
                if hit is None:
                    sig = signature(prepared)
                    entry = self._entries.get(sig) or self._entry(prepared, sig)
                    hit = self._seen[key] = (entry,
                                             any(a is not b for a, b in zip(prepared, batch)))
                batch = prepared
            entry = hit[0]
            changed = entry.slots.changed()
            if changed is not None:
                entry = self._entry(batch, signature(batch),
                                    reason=f"parameter slot {changed[1]!r} now holds a "
                                           "different array")
            return self._run(entry, batch)

    def _run(self, entry, batch):
        native = entry.ex.native
        ptrs = native.pointers
        for slot, i in entry.data_slots:
            ptrs[slot] = data_address(batch[i])
        for buf, arr in entry.copies:
            np.copyto(buf, arr)
        opt = self.opt
        values, shared = optimiser_scalars(opt, entry) if opt is not None else ([], False)
        if entry.capacity:
            n = batch[entry.batch_arg].shape[0]
            if n != entry.length:           # written once per length, not per step
                for k, ref in entry.batch_scalars:
                    entry.scalars[k] = batch_scalar_value(ref, n)
                entry.length = n
        status = native()
        loss = entry.loss.item()
        if status:
            raise self._nonfinite(entry, batch, values, status, loss)
        if opt is None:
            return loss, self._grads(entry)
        advance_hosts(opt, entry, shared)
        return loss

    def _nonfinite(self, entry, batch, scalars, status, loss):
        """The error for a step that wrote nothing: the native status says whether the loss
        (1) or the gradient of parameter status - 2 was not finite."""
        what = "loss" if status == 1 else f"gradient of {self.ps.name(self.ps[status - 2])}"
        graph, captured = entry.art.grad_graph, entry.captured
        scalar_values = dict(zip(entry.art.binary.scalar_refs, scalars))
        if entry.capacity:
            n = batch[entry.batch_arg].shape[0]
            scalar_values.update((ref, batch_scalar_value(ref, n)) for _, ref in
                                 entry.batch_scalars)
            if n != entry.capacity:      # the artifact's graph has the capacity's shapes
                traced = trace_loss(self.loss, self.ps, batch)
                graph = step_graph(traced, self.ps, self.opt, warn=False)
                captured = traced.captured
        values = {n.id: scalar_values[n.attrs["ref"]] if n.op == "scalar" else
                  input_array(n.attrs["ref"], self.ps, self.opt, batch, captured)
                  for n in graph.inputs}
        return nonfinite_error(what, loss, graph, values)

    def _grads(self, entry):
        values = []
        for p in self.ps:
            out = entry.outputs.get(f"grad:{self.ps.name(p)}")
            values.append(None if out is None else out.copy())
        return Grads(self.ps, values)


def optimiser_scalars(opt, entry):
    """Write the optimiser's host scalars for this step into the entry's scalars vector (the
    first of its scalars); returns (the values, whether every parameter shares one host
    state -- the usual case, where one scalars dict serves them all)."""
    opt.check_hyperparameters()
    records = entry.records
    if entry.prepares:
        opt.prepare(records)
    shared = entry.same_names and all(r.host is records[0].host for r in records)
    if shared:
        values = list(opt.scalars(records[0].host).values()) * len(records)
    else:
        values, cache = [], {}
        for rec, (_, names) in zip(records, entry.scalar_plan):
            vals = cache.get(rec.host)
            if vals is None:
                d = opt.scalars(rec.host)
                vals = cache[rec.host] = [d[n] for n in names]
            values += vals
    entry.scalars[:len(values)] = values
    return values, shared


def advance_hosts(opt, entry, shared):
    """Move every parameter's host state on by one step, once per distinct state."""
    records = entry.records
    if shared:
        host = opt.advance(records[0].host)
        for rec in records:
            rec.host = host
        return
    advanced = {}
    for rec in records:
        new = advanced.get(rec.host)
        if new is None:
            new = advanced[rec.host] = opt.advance(rec.host)
        rec.host = new


def check_optimiser(opt, allow=()):
    """An optimiser instance (or None); a class given without calling it is the usual slip."""
    if opt is None or isinstance(opt, (Rule,) + tuple(allow)):
        return
    if isinstance(opt, type):
        raise ArgumentError(f"opt is the class {opt.__name__}, not an optimiser: call it, "
                            f"e.g. gf.{opt.__name__}()")
    raise ArgumentError(f"opt must be an optimiser such as gf.Adam(), got {opt!r}")


def check_mode(mode):
    if mode not in ("compiled", "eager"):
        raise UsageError(f"mode must be 'compiled' or 'eager', got {mode!r}")


def compile(loss, ps, opt=None, *, mode="compiled", comm=None):  # noqa: A001 -- the API's name
    """A step function for `loss(*batch)` over params `ps`; traced on first call (or `lower`).
    With `comm` (gf.distributed), a data-parallel step: every rank calls it on its own batch
    and gets the mean loss over all of them."""
    check_optimiser(opt)
    check_mode(mode)
    if comm is not None:
        if mode == "eager":
            raise UsageError("data-parallel training (comm=...) runs compiled steps only: "
                             "leave mode at 'compiled'")
        from .distributed.step import DistributedStep
        return DistributedStep(loss, ps, opt, comm)
    return EagerStep(loss, ps, opt) if mode == "eager" else CompiledStep(loss, ps, opt)
