"""An Artifact bound to memory: the native step plus the map from graph inputs and outputs to
pointer-table slots. Constants are bound once; inputs and outputs per call."""
import numpy as np

from .native import NativeStep


class Executable:
    def __init__(self, artifact):
        plan = artifact.plan
        self.artifact = artifact
        self.native = NativeStep(artifact.objects, artifact.symbol, len(plan.ext_slots),
                                 plan.arena_bytes, len(plan.scalar_names),
                                 artifact.thread_settings)
        self.input_slot = {}
        self.outputs = []
        self._keep = []
        shapes = {n.id: n for n in artifact.optimized_graph.inputs}
        out_nodes = dict(artifact.optimized_graph.outputs)
        for slot, (kind, key) in enumerate(plan.ext_slots, start=1):
            if kind == "input":
                self.input_slot[key] = slot
            elif kind == "const":
                arr = plan.constants[key]
                self._keep.append(arr)
                self.native.pointers[slot] = arr.ctypes.data
            else:
                node = out_nodes[key]
                self.outputs.append((key, slot, node.shape, node.dtype))
        self.input_nodes = shapes
        self.scalar_names = plan.scalar_names
        self._bound = set()

    def bind(self, node_id, array):
        self.native.pointers[self.input_slot[node_id]] = array.ctypes.data
        self._bound.add(node_id)

    def run(self, scalars=()):
        """Run once with fresh output arrays; returns (status, {name: array})."""
        if len(self._bound) != len(self.input_slot):
            missing = [self.input_nodes[i].attrs.get("name") for i in self.input_slot
                       if i not in self._bound]
            raise RuntimeError(f"graph inputs not bound: {missing}")
        outs = {}
        for name, slot, shape, dtype in self.outputs:
            arr = np.empty(shape, dtype)
            outs[name] = arr
            self.native.pointers[slot] = arr.ctypes.data
        if len(scalars):
            self.native.scalars[:len(scalars)] = scalars
        return self.native(), outs
