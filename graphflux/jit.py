"""`gf.jit(f)`: a compiled function of arrays, without gradients -- `predict = gf.jit(model)`.

Arrays the function reads that are not its arguments (a model's weights) are bound by identity
and read on every call, so a jitted model sees later training."""
import logging
import time

import numpy as np

from graphflux.compiler.errors import TraceError
from graphflux.compiler.graph import Graph
from graphflux.compiler.tracer import TraceContext, Tracer
from graphflux.runtime.cache import disk_cache
from graphflux.runtime.executable import Executable

from . import modes
from .compiled import cached_artifact
from .signature import describe_change, signature

log = logging.getLogger("graphflux")


class Jitted:
    def __init__(self, f):
        self.f = f
        self._entries = {}
        self._last = None
        self._mode_epoch = modes.EPOCH[0]

    def lower(self, *args):
        """Compile (or fetch) the artifact for these arguments' signature; nothing runs."""
        return self._entry(args)[0][2]

    def _entry(self, args):
        args = tuple(np.ascontiguousarray(a) if isinstance(a, np.ndarray) else a for a in args)
        if self._mode_epoch != modes.EPOCH[0]:
            self._mode_epoch = modes.EPOCH[0]
            self._entries.clear()
        sig = signature(args)
        entry = self._entries.get(sig)
        if entry is None:
            t = time.perf_counter()
            reason = describe_change(self._last, sig)
            ctx = TraceContext()
            tracers = [ctx.new_input(a.shape, a.dtype, f"x{i}", "data", ("data", i))
                       if isinstance(a, np.ndarray) else a for i, a in enumerate(args)]
            with ctx:
                out = self.f(*tracers)
            single = not isinstance(out, tuple)
            outs = (out,) if single else out
            if not all(isinstance(o, Tracer) for o in outs):
                raise TraceError("gf.jit: the function must return a traced array (or a tuple "
                                 "of them) computed from its arguments or a model's arrays")
            graph = Graph(list(ctx.inputs), [(f"out{i}", o.node) for i, o in enumerate(outs)],
                          list(ctx.updates), name="jit")      # a layer forced to train mode
            seconds = {"trace": time.perf_counter() - t}
            art, how = cached_artifact(graph, "jit", lambda: graph, seconds,
                                       outs[0].dtype)
            if how == "compiled":
                disk_cache().store(art.stats["key"], art)
            ex = Executable(art.binary)
            captured = [arr for arr, _ in ctx.captured.values()]
            data = []
            for ref, slot in ex.input_slot.items():
                if ref[0] == "data":
                    data.append((ref, ref[1]))
                else:
                    ex.bind(ref, captured[ref[1]])
            entry = self._entries[sig] = (ex, data, art, single, captured)
            self._last = sig
            log.info("%s jit function in %.3f s: %s", how, time.perf_counter() - t, reason)
        return entry, args

    def __call__(self, *args):
        (ex, data, art, single, _), args = self._entry(args)
        for ref, i in data:
            ex.bind(ref, args[i])
        _, outs = ex.run()
        values = [outs[f"out{i}"] for i in range(len(outs))]
        return values[0] if single else tuple(values)


def jit(f):
    """A compiled version of `f` (arrays in, arrays out), specialised per input signature."""
    return Jitted(f)
