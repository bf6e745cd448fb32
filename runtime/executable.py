"""A compiled step bound to memory: the native step plus the map from the Binary's slots to
arrays. Constants are bound once; inputs per call or once (parameters, state); outputs are
arrays this object owns, or fresh ones per run."""
import numpy as np

from .native import NativeStep


class Executable:
    def __init__(self, binary):
        self.binary = binary
        self.native = NativeStep(binary.objects, binary.symbol, len(binary.slots),
                                 binary.arena_bytes, len(binary.scalar_refs),
                                 binary.thread_settings)
        self.input_slot = {}
        self.output_slot = {}
        self._keep = []
        for slot, (kind, key) in enumerate(binary.slots, start=1):
            if kind == "input":
                self.input_slot[key] = slot
            elif kind == "const":
                arr = binary.constants[key]
                self._keep.append(arr)
                self.native.pointers[slot] = arr.ctypes.data
            else:
                self.output_slot[key] = slot
        self.outputs = [(name, self.output_slot[name], tuple(shape), np.dtype(dtype))
                        for name, shape, dtype in binary.outputs]
        self._bound = set()

    def bind(self, ref, array):
        """Point the input `ref` at `array` (which must stay alive while this is used)."""
        self.native.pointers[self.input_slot[ref]] = array.ctypes.data
        self._bound.add(ref)

    def bind_output(self, name, array):
        """Have the step write output `name` into `array` (kept alive by the caller)."""
        self.native.pointers[self.output_slot[name]] = array.ctypes.data

    def data_slot(self, ref):
        """The pointer-table slot of input `ref`: the per-call fast path writes a batch's
        pointer there directly (`native.pointers[slot] = address`)."""
        return self.input_slot[ref]

    def run(self, scalars=(), rows=None):
        """Run once with fresh output arrays; returns (status, {name: array}). `rows`: the
        outputs of a batch-symbolic step to make that many rows long instead of its capacity
        (their first axis is the batch length, so the step writes a prefix of the rows)."""
        if len(self._bound) != len(self.input_slot):
            missing = [ref for ref in self.input_slot if ref not in self._bound]
            raise RuntimeError(f"graph inputs not bound: {missing}")
        outs = {}
        for name, slot, shape, dtype in self.outputs:
            if rows and name in rows:
                shape = (rows[name],) + shape[1:]
            arr = np.empty(shape, dtype)
            outs[name] = arr
            self.native.pointers[slot] = arr.ctypes.data
        if len(scalars):
            self.native.scalars[:len(scalars)] = scalars
        self.last_outputs = outs      # the pointer table refers to them until the next run
        return self.native(), outs
