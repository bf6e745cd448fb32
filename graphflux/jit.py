"""`gf.jit(f)`: a compiled function of arrays, without gradients -- `predict = gf.jit(model)`.

Arrays the function reads that are not its arguments (a model's weights) are bound by identity
and read on every call, so a jitted model sees later training; an array replaced by another
(`m[0].weight = new`, `gf.load`) makes the next call retrace (graphflux.bindings). Calls of one
jitted function take turns: they share its native pointer table and outputs."""
import logging
import threading
import time

import numpy as np

from graphflux.compiler.batch_axis import NotSymbolic, batch_scalar_value, generalise
from graphflux.compiler.errors import TraceError
from graphflux.compiler.graph import Graph
from graphflux.compiler.tracer import TraceContext, Tracer
from graphflux.runtime.cache import disk_cache
from graphflux.runtime.executable import Executable

from . import bindings
from .batch_lengths import BatchLengths, batch_arguments, general_signature
from .compiled import bind_inputs, cached_artifact
from .params import SlotWatch, params
from .signature import describe_change, native_dense, signature
from .tracing import TRACE_LOCK

log = logging.getLogger("graphflux")


class _JitEntry:
    """One artifact bound to the arrays its trace captured. A batch-symbolic one
    (compiler.batch_axis) serves every batch length up to its capacity: its outputs whose
    axis 0 is the batch length are made as long as the call's batch."""

    def __init__(self, art, ctx, graph, single, batch_arg=None, batch_outputs=()):
        self.art, self.single = art, single
        self.ex = Executable(art.binary)
        captured = [arr for arr, _ in ctx.captured.values()]
        self.data, self.copies, self.keep = bind_inputs(
            self.ex, lambda ref: captured[ref[1]], graph)
        self.capacity = art.binary.batch_capacity
        self.batch_outputs = set(batch_outputs)
        self.batch_arg = batch_arg

    def run(self, args):
        if not self.capacity:
            return self.ex.run()[1]
        n = args[self.batch_arg].shape[0]
        scalars = [batch_scalar_value(ref, n) for ref in self.art.binary.scalar_refs]
        return self.ex.run(scalars, rows={name: n for name in self.batch_outputs})[1]


class Jitted:
    def __init__(self, f):
        self.f = f
        self._entries = {}
        self._last = None
        self._generation = bindings.GENERATION[0]
        self._why = None
        self._lengths = BatchLengths()
        self._lock = threading.Lock()
        # a model's own arrays, by slot: replaced ones are seen even in a class of the user's
        self._ps = params() if hasattr(f, "__code__") else params(f)
        self._slots = SlotWatch(self._ps)

    def lower(self, *args):
        """Compile (or fetch) the artifact for these arguments' signature; nothing runs."""
        with self._lock:
            return self._entry(self._prepare(args))[0].art

    @staticmethod
    def _prepare(args):
        return tuple(native_dense(a) if isinstance(a, np.ndarray) else a for a in args)

    def _entry(self, args):
        stale = self._slots.changed()
        if self._generation != bindings.GENERATION[0] or stale is not None:
            self._entries.clear()
            self._lengths.general.clear()
            self._why = bindings.WHY[0] if stale is None else \
                f"slot {stale[1]!r} now holds a different array"
            self._slots = SlotWatch(self._ps)
        sig = signature(args)
        entry = self._entries.get(sig)
        if entry is None:
            entry = self._lengths.shared(args, lambda a: self._trace(a)[1])
            if entry is None:
                entry = self._compile(args, sig)
            self._entries[sig] = entry
        return entry, args

    def _trace(self, args):
        ctx = TraceContext()
        tracers = [ctx.new_input(a.shape, a.dtype, f"x{i}", "data", ("data", i))
                   if isinstance(a, np.ndarray) else a for i, a in enumerate(args)]
        with TRACE_LOCK, ctx:
            out = self.f(*tracers)
        single = not isinstance(out, tuple)
        outs = (out,) if single else out
        if not all(isinstance(o, Tracer) for o in outs):
            raise TraceError("gf.jit: the function must return a traced array (or a tuple "
                             "of them) computed from its arguments or a model's arrays")
        graph = Graph(list(ctx.inputs), [(f"out{i}", o.node) for i, o in enumerate(outs)],
                      list(ctx.updates), name="jit")      # a layer forced to train mode
        return ctx, graph, single

    def _longer(self, graph, longer):
        """(the function's graph at the longer batch of BatchLengths.other_length, the outputs
        whose axis 0 is the batch length); an output with the batch length in another axis
        would not be a prefix of the capacity's, so that compiles per length."""
        graph_b = self._trace(longer)[1]
        outputs = []
        for (name, a), (_, b) in zip(graph.outputs, graph_b.outputs):
            if a.shape[1:] != b.shape[1:]:
                raise NotSymbolic(f"output {name} has the batch length in an axis "
                                  "other than its first")
            if a.shape[:1] != b.shape[:1]:
                outputs.append(name)
        return graph_b, outputs

    def _compile(self, args, sig):
        t = time.perf_counter()
        reason = self._why or describe_change(self._last, sig)
        ctx, graph, single = self._trace(args)
        seconds = {"trace": time.perf_counter() - t}
        other = self._lengths.other_length(args, lambda longer: self._longer(graph, longer))
        entry = None
        if other is not None:
            (graph_b, outputs), n_b, n = other
            try:
                ga, gb = generalise(graph, graph_b, n, n_b)
                art, how = cached_artifact(graph, f"jit batch<={n}", lambda: ga, seconds,
                                           graph.outputs[0][1].dtype,
                                           batch=lambda: (gb, n_b, n))
                entry = _JitEntry(art, ctx, graph, single, batch_arguments(args)[0], outputs)
            except NotSymbolic as e:
                self._lengths.per_length[general_signature(args)] = str(e)
        if entry is None:
            art, how = cached_artifact(graph, "jit", lambda: graph, seconds,
                                       graph.outputs[0][1].dtype)
            entry = _JitEntry(art, ctx, graph, single)
        if how == "compiled":
            disk_cache().store(art.stats["key"], art)
        self._last, self._why = sig, None
        self._generation = bindings.GENERATION[0]
        lengths = self._lengths.compiled(args, entry)
        log.info("%s jit function in %.3f s: %s%s", how, time.perf_counter() - t, reason,
                 lengths)
        return entry

    def __call__(self, *args):
        with self._lock:
            entry, args = self._entry(self._prepare(args))
            ex = entry.ex
            for _, i in entry.data:
                ex.bind(("data", i), args[i])
            for buf, arr in entry.copies:
                np.copyto(buf, arr)
            outs = entry.run(args)
        values = [outs[f"out{i}"] for i in range(len(outs))]
        return values[0] if entry.single else tuple(values)


def jit(f):
    """A compiled version of `f` (arrays in, arrays out), specialised per input signature."""
    return Jitted(f)
