"""What a compiled step or jit function knows about batch lengths (compiler.batch_axis): per
signature with the batch length left out, the batch-symbolic entry that serves every length up
to its capacity, or why that signature compiles per length. Steps and `gf.jit` keep one each."""
import numpy as np

from graphflux.compiler.batch_axis import NotSymbolic, generalise

from .signature import signature


def batch_arguments(batch):
    """The positions of the arrays whose axis 0 is the batch length: those as long as the
    first array."""
    arrays = [(i, a) for i, a in enumerate(batch) if isinstance(a, np.ndarray) and a.ndim]
    return [i for i, a in arrays if a.shape[0] == arrays[0][1].shape[0]] if arrays else []


def general_signature(batch):
    """The signature with the batch length left out: batches that differ only in it may share
    a batch-symbolic artifact."""
    args = batch_arguments(batch)
    return tuple(((None,) + s[0][1:], s[1]) if i in args else s
                 for i, s in enumerate(signature(batch)))


class BatchLengths:
    def __init__(self):
        self.general = {}      # general_signature -> the batch-symbolic entry (the largest)
        self.per_length = {}   # general_signature -> why it compiles per batch length

    def shared(self, batch, trace_graph):
        """The batch-symbolic entry that serves this batch's length, or None. `trace_graph
        (batch)` traces at the new length first (once per length; a few ms), and the entry is
        used only if that graph is its capacity's apart from the batch length: Python that
        branches on the length (a check that raises for a batch of one, another op below some
        length) is run and seen, never skipped."""
        general = general_signature(batch)
        entry = self.general.get(general)
        if entry is None or batch[entry.batch_arg].shape[0] > entry.capacity:
            return None
        n = batch[entry.batch_arg].shape[0]
        try:
            generalise(entry.art.graph, trace_graph(batch), entry.capacity, n)
        except NotSymbolic as e:
            self.per_length[general] = f"at batch length {n}: {e}"
            return None
        return entry

    def other_length(self, batch, trace):
        """(`trace(the batch one row longer)`, its length n + 1, n) to compile one artifact
        for every length up to n, or None when this signature compiles per length (no
        batch, found so before, or the trace fails -- any failure means: not the same
        function of the length). The longer batch's arrays are zero-stride stand-ins: only
        their shapes are traced."""
        general = general_signature(batch)
        args = batch_arguments(batch)
        if not args or general in self.per_length:
            return None
        n = batch[args[0]].shape[0]
        longer = [np.broadcast_to(np.zeros((1,) + a.shape[1:], a.dtype), (n + 1,) + a.shape[1:])
                  if i in args else a for i, a in enumerate(batch)]
        try:
            return trace(longer), n + 1, n
        except Exception as e:  # noqa: BLE001
            self.per_length[general] = (f"tracing at batch length {n + 1} failed "
                                        f"({type(e).__name__}: {e})")
            return None

    def compiled(self, batch, entry):
        """Record a new entry; returns the log line's note on the lengths it serves."""
        general = general_signature(batch)
        if entry.capacity:
            self.general[general] = entry
            return f" (serves batch lengths up to {entry.capacity})"
        if general in self.per_length:
            return f" (per batch length: {self.per_length[general]})"
        return ""
