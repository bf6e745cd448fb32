"""`gf.jit(f)`: a compiled function of arrays, without gradients -- `predict = gf.jit(model)`.

Arrays the function reads that are not its arguments (a model's weights) are bound by identity
and read on every call, so a jitted model sees later training; an array replaced by another
(`m[0].weight = new`, `gf.load`) makes the next call retrace (graphflux.bindings). Calls of one
jitted function take turns: they share its native pointer table and outputs."""
import logging
import threading
import time

import numpy as np

from graphflux.compiler.errors import TraceError
from graphflux.compiler.graph import Graph
from graphflux.compiler.tracer import TraceContext, Tracer
from graphflux.runtime.cache import disk_cache
from graphflux.runtime.executable import Executable

from . import bindings
from .compiled import bind_inputs, cached_artifact
from .params import SlotWatch, params
from .signature import describe_change, native_dense, signature
from .tracing import TRACE_LOCK

log = logging.getLogger("graphflux")


class _JitEntry:
    """One artifact bound to the arrays its trace captured."""

    def __init__(self, art, ctx, graph, single):
        self.art, self.single = art, single
        self.ex = Executable(art.binary)
        captured = [arr for arr, _ in ctx.captured.values()]
        self.data, self.copies, self.keep = bind_inputs(
            self.ex, lambda ref: captured[ref[1]], graph)


class Jitted:
    def __init__(self, f):
        self.f = f
        self._entries = {}
        self._last = None
        self._generation = bindings.GENERATION[0]
        self._why = None
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
            self._why = bindings.WHY[0] if stale is None else \
                f"slot {stale[1]!r} now holds a different array"
            self._slots = SlotWatch(self._ps)
        sig = signature(args)
        entry = self._entries.get(sig)
        if entry is None:
            entry = self._entries[sig] = self._compile(args, sig)
        return entry, args

    def _compile(self, args, sig):
        t = time.perf_counter()
        reason = self._why or describe_change(self._last, sig)
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
        seconds = {"trace": time.perf_counter() - t}
        art, how = cached_artifact(graph, "jit", lambda: graph, seconds, outs[0].dtype)
        if how == "compiled":
            disk_cache().store(art.stats["key"], art)
        entry = _JitEntry(art, ctx, graph, single)
        self._last, self._why = sig, None
        self._generation = bindings.GENERATION[0]
        log.info("%s jit function in %.3f s: %s", how, time.perf_counter() - t, reason)
        return entry

    def __call__(self, *args):
        with self._lock:
            entry, args = self._entry(self._prepare(args))
            ex = entry.ex
            for _, i in entry.data:
                ex.bind(("data", i), args[i])
            for buf, arr in entry.copies:
                np.copyto(buf, arr)
            _, outs = ex.run()
        values = [outs[f"out{i}"] for i in range(len(outs))]
        return values[0] if entry.single else tuple(values)


def jit(f):
    """A compiled version of `f` (arrays in, arrays out), specialised per input signature."""
    return Jitted(f)
