"""From an optimised Graph to a Plan: kernels (compiler.kernels) in schedule order
(compiler.schedule) over planned memory (compiler.memory).

Which kernel an op becomes is one entry of `PLANNER_RULES` (op -> rule); fused elementwise
groups and reductions become one loop kernel each (compiler.loop_kernels; what may fuse is
fusion.FUSIBLE), and update loops move in place (compiler.in_place). Movement ops only change
a Layout. Every kernel's outputs are disjoint from its inputs, which is what
makes the `noalias` on kernel arguments true. What the backend needs for a kernel -- the GEMM's
packing buffers and thread scratch -- it states through the `backend` object, so this module
imports nothing of it. All loop bounds and buffer sizes are derived here from node shapes."""
from dataclasses import dataclass

import numpy as np

from .epilogue import fuse_epilogues
from .errors import CompileError
from .fusion import FUSIBLE, REDUCTIONS
from .in_place import move_updates_in_place
from .kernels import (Buffer, ConvKernel, FiniteCheckKernel, GemmKernel, Layout, LoopKernel,
                      PoolKernel, RandomKernel, Window, broadcast_strides, dense_strides)
from .loop_kernels import copy_kernel, fused_kernel
from .memory import assign_arena
from .schedule import consumers, units

VIEW_OPS = ("reshape", "transpose", "broadcast", "slice", "stop_gradient")
KERNEL_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


@dataclass
class Plan:
    kernels: list            # compute kernels in order
    update_kernels: list     # writes into parameters/state, run only once all checks passed
    ext_slots: list          # (kind, key) per pointer-table slot after slot 0 (the arena):
                             # ("input", ref), ("const", index), ("output", name)
    scalar_refs: list        # the "ref" of each host scalar, in the order of the scalars vector
    constants: list          # arrays bound to ext slots of kind "const"
    arena_bytes: int
    loss_layout: Layout
    flops: int               # the step's arithmetic (the finiteness checks not counted)
    checks: list             # FiniteCheckKernels, in parameter order (also in `kernels`)
    node_names: dict         # node id -> "%i" as the optimised graph's listing names it
    capacity: int = 0        # a batch-symbolic step's largest batch length (compiler.batch_axis)


class Planner:
    def __init__(self, graph, backend):
        self.graph = graph
        self.backend = backend               # gemm_buffers(m, n, k, dtype) -> bytes needed
        self.layouts = {}
        self.kernels = []
        self.ext_slots = []
        self.constants = []
        self.scalar_refs = []
        self.scalars = Buffer("scalars", 0, name="scalars")
        self.output_slot = {}
        self.arena_buffers = []
        self.output_buffers = {}
        self.readers = consumers(graph)

    # -- buffers and layouts ---------------------------------------------------------------
    def _ext(self, kind, key, shape, dtype, name):
        buf = Buffer("ext", np.prod(shape, dtype=np.int64) * np.dtype(dtype).itemsize,
                     slot=len(self.ext_slots) + 1, name=name)
        self.ext_slots.append((kind, key))
        return buf

    def _new_buffer(self, node):
        slot = self.output_slot.pop(node.id, None)
        if slot is not None:
            return slot
        buf = Buffer("arena", max(node.size, 1) * node.dtype.itemsize, name=f"%{node.id}")
        self.arena_buffers.append(buf)
        return buf

    def _materialised(self, node, buf):
        lay = Layout(buf, 0, dense_strides(node.shape), node.shape, node.dtype)
        self.layouts[node.id] = lay
        return lay

    def layout_if_any(self, node):
        return self.layouts.get(node.id)

    def layout(self, node):
        lay = self.layouts.get(node.id)
        if lay is None:
            raise CompileError(f"internal: no layout for {node} (scheduled out of order)")
        return lay

    def _name(self, prefix, nodes=()):
        """A kernel name that says what it computes: k3_sub_exp_sum, gemm4, copy_loss."""
        words = []
        for n in nodes:
            w = n.attrs.get("fn", n.op.replace("reduce_", ""))
            if w not in words:
                words.append(w)
        tail = "_".join(words[:4]) + ("_etc" if len(words) > 4 else "")
        return f"{prefix}{len(self.kernels)}" + (f"_{tail}" if tail else "")

    # -- the schedule ----------------------------------------------------------------------
    def run(self):
        g = self.graph
        for n in g.inputs:
            if n.op == "scalar":
                self.layouts[n.id] = Layout(self.scalars, len(self.scalar_refs), (), (),
                                            np.dtype(np.float64))
                self.scalar_refs.append(n.attrs["ref"])
            else:
                buf = self._ext("input", n.attrs["ref"], n.shape, n.dtype, n.attrs.get("name", ""))
                self._materialised(n, buf)
        pending_outputs = []
        for name, node in g.outputs:
            buf = self._ext("output", name, node.shape, node.dtype, name)
            self.output_buffers[name] = buf
            if node.op in FUSIBLE or node.op in REDUCTIONS or node.op == "matmul":
                if node.id not in self.output_slot and node.id not in self.layouts:
                    self.output_slot[node.id] = buf
                    continue
            pending_outputs.append((node, buf))
        checks = self._finite_checks(g.checks)
        waiting = {kern.nodes[0].id: kern for kern in checks}
        for kind, nodes in units(g):
            if kind == "group":
                self._group_kernel(nodes)
            elif nodes[0].id not in self.layouts:
                rule = PLANNER_RULES.get(nodes[0].op)
                if rule is None:
                    raise CompileError(f"no lowering for op {nodes[0].op} (at {nodes[0].source})")
                rule(self, nodes[0])
            for node in nodes:            # check a gradient while it is still in cache
                if node.id in waiting and node.id in self.layouts:
                    self.kernels.append(self._placed(waiting.pop(node.id)))
        self.kernels.extend(self._placed(kern) for kern in waiting.values())
        self.kernels = fuse_epilogues(self.kernels)
        for node, buf in pending_outputs:
            dst = Layout(buf, 0, dense_strides(node.shape), node.shape, node.dtype)
            self.kernels.append(self._copy_kernel(self.layout(node), dst, f"copy_{buf.name}"))
        loss = dict(g.outputs).get("loss")
        loss_layout = None
        if loss is not None:
            loss_layout = Layout(self.output_buffers["loss"], 0, (), (), loss.dtype)
        updates, written = move_updates_in_place(self.kernels, g.updates, self.layout_if_any)
        for target, value in g.updates:
            if value.id not in written:
                updates.append(self._copy_kernel(self.layout(value), self.layout(target),
                                                 f"update_{target.attrs.get('name', target.id)}"))
        for kern in self.kernels + updates:
            self._chunk_reductions(kern)
        arena = assign_arena(self.kernels + updates, self.arena_buffers,
                             keep=[checks[0].flag.buffer] if checks else [])
        flops = sum(k.flops() for k in self.kernels + updates if k.kind != "finite_check")
        names = {n.id: f"%{i}" for i, n in enumerate(g.nodes)}
        return Plan(self.kernels, updates, self.ext_slots, self.scalar_refs, self.constants,
                    arena, loss_layout, flops, checks, names)

    def _finite_checks(self, checks):
        """One kernel per gradient, each summing into its float64 slot of one flags buffer,
        which stays allocated to the end of the step (the step reads the flags after every
        compute kernel). Each runs right after its gradient is computed."""
        if not checks:
            return []
        flags = Buffer("arena", 8 * len(checks), name="finite")
        self.arena_buffers.append(flags)
        kernels = []
        for k, (index, node) in enumerate(checks):
            _check_dtype(node.dtype, node.source)
            flag = Layout(flags, k, (), (), np.dtype(np.float64))
            kernels.append(FiniteCheckKernel(f"finite{index}", None, flag, index, [node]))
        return kernels

    def _placed(self, kern):
        """The check, now that its gradient has a layout."""
        kern.src = self.layout(kern.nodes[0])
        return kern

    # -- one rule per op ---------------------------------------------------------------------
    def _const(self, node):
        buf = self._ext("const", len(self.constants), node.shape, node.dtype, "const")
        self.constants.append(np.ascontiguousarray(node.value))
        self._materialised(node, buf)

    def _view(self, node):
        """A view keeps its source's element type: a host scalar (float64 in the scalars
        vector) seen through a broadcast is still read as a float64."""
        src = self.layout(node.inputs[0])
        a = node.attrs
        if node.op == "stop_gradient":
            lay = src
        elif node.op == "transpose":
            lay = Layout(src.buffer, src.offset, tuple(src.strides[p] for p in a["perm"]),
                         node.shape, src.dtype)
        elif node.op == "broadcast":
            lay = Layout(src.buffer, src.offset, broadcast_strides(src, node.shape),
                         node.shape, src.dtype)
        elif node.op == "slice":
            off = src.offset + sum(s * st for s, st in zip(a["starts"], src.strides))
            lay = Layout(src.buffer, off, tuple(st * k for st, k in zip(src.strides, a["steps"])),
                         node.shape, src.dtype)
        elif src.is_contiguous():       # reshape of dense memory: a new view
            lay = Layout(src.buffer, src.offset, dense_strides(node.shape), node.shape,
                         src.dtype)
        else:                           # reshape of strided memory: a copy first
            buf = self._new_buffer(node)
            tmp = Layout(buf, 0, dense_strides(src.shape), src.shape, node.dtype)
            self.kernels.append(self._copy_kernel(src, tmp, self._name("reshape")))
            lay = Layout(buf, 0, dense_strides(node.shape), node.shape, node.dtype)
        self.layouts[node.id] = lay

    def _gemm(self, node):
        a, b = node.inputs
        _check_dtype(node.dtype, node.source)
        la, lb = self.layout(a), self.layout(b)
        sa = la.strides[::-1] if node.attrs["ta"] else la.strides
        sb = lb.strides[::-1] if node.attrs["tb"] else lb.strides
        m, n = node.shape
        k = a.shape[0] if node.attrs["ta"] else a.shape[1]
        out = self._materialised(node, self._new_buffer(node))
        la2 = Layout(la.buffer, la.offset, tuple(sa), (m, k), la.dtype)
        lb2 = Layout(lb.buffer, lb.offset, tuple(sb), (k, n), lb.dtype)
        pa, pb, threads = self.backend.gemm_buffers(m, n, k, node.dtype)
        self.kernels.append(GemmKernel(self._name("gemm"), la2, lb2, out, m, n, k,
                                       Buffer("arena", pa, name="packA"),
                                       Buffer("arena", pb, name="packB"),
                                       Buffer("arena", threads, name="threads"), nodes=[node]))

    def _unslice(self, node):
        out = self._materialised(node, self._new_buffer(node))
        self.kernels.append(LoopKernel(self._name("zero"), node.shape, node.dtype, [], [],
                                       [(out, ("num", 0.0), "store")], [node]))
        a = node.attrs
        off = sum(s * st for s, st in zip(a["starts"], out.strides))
        dst = Layout(out.buffer, off, tuple(st * k for st, k in zip(out.strides, a["steps"])),
                     node.inputs[0].shape, node.dtype)
        self.kernels.append(self._copy_kernel(self.layout(node.inputs[0]), dst,
                                              self._name("unslice")))

    def _random(self, node):
        out = self._materialised(node, self._new_buffer(node))
        self.kernels.append(RandomKernel(self._name("random"), out, self.layout(node.inputs[0]),
                                         node.attrs["key"], [node]))

    def _dense(self, node):
        """The node's layout if it is dense, else a dense copy: window kernels address their
        operands as dense (N, C, *spatial) arrays."""
        lay = self.layout(node)
        if lay.is_contiguous():
            return lay
        buf = Buffer("arena", max(node.size, 1) * node.dtype.itemsize, name=f"dense %{node.id}")
        self.arena_buffers.append(buf)
        dst = Layout(buf, 0, dense_strides(node.shape), node.shape, node.dtype)
        self.kernels.append(self._copy_kernel(lay, dst, self._name("dense")))
        return dst

    def _conv(self, node):
        """conv, conv_transpose, conv_filter_grad: one ConvKernel, its geometry that of the
        forward convolution all three belong to."""
        _check_dtype(node.dtype, node.source)
        a, b = node.inputs
        x, w, y = {"conv": (a, b, node), "conv_transpose": (node, b, a),
                   "conv_filter_grad": (a, node, b)}[node.op]
        attrs = node.attrs
        geometry = Window(x.shape[0], x.shape[1], w.shape[0], attrs["groups"], _three(x.shape[2:]),
                          _three(y.shape[2:]), _three(w.shape[2:]), _three(attrs["stride"]),
                          _three(attrs["dilation"]), _low(attrs), attrs["flipped"])
        mode = {"conv": "forward", "conv_transpose": "transpose",
                "conv_filter_grad": "filter"}[node.op]
        first, second = self._dense(a), self._dense(b)
        out = self._materialised(node, self._new_buffer(node))
        work, partials, tasks = self.backend.conv_buffers(geometry, mode, node.dtype)
        self.kernels.append(ConvKernel(
            self._name(f"conv_{mode}"), mode, first, second, out, geometry,
            Buffer("arena", work, name="conv work"),
            Buffer("arena", partials, name="conv partials") if partials else None, tasks,
            nodes=[node]))

    def _pool(self, node):
        _check_dtype(node.dtype, node.source)
        x = node.inputs[0] if node.op != "meanpool_grad" else node
        y = node if node.op in ("maxpool", "meanpool") else node.inputs[-1]
        attrs = node.attrs
        geometry = Window(x.shape[0], x.shape[1], x.shape[1], 1, _three(x.shape[2:]),
                          _three(y.shape[2:]), _three(attrs["window"]), _three(attrs["stride"]),
                          (1, 1, 1), _low(attrs))
        mode = {"maxpool": "max", "meanpool": "mean", "maxpool_grad": "max_grad",
                "meanpool_grad": "mean_grad"}[node.op]
        inputs = [self._dense(i) for i in node.inputs]
        out = self._materialised(node, self._new_buffer(node))
        self.kernels.append(PoolKernel(self._name(f"pool_{mode}"), mode, inputs, out, geometry,
                                       nodes=[node]))

    def _fused_alone(self, node):
        self._group_kernel([node])

    def _group_kernel(self, nodes):
        for n in nodes:
            _check_dtype(n.dtype, n.source)
        ids = {n.id for n in nodes}
        self.kernels.append(fused_kernel(
            nodes, self._name("k", nodes), self.layout,
            lambda n: self._materialised(n, self._new_buffer(n)),
            lambda n: any(r not in ids for r in self.readers.get(n.id, ()))))

    def _chunk_reductions(self, kern):
        """A loop kernel reducing over its first loop gets the scratch for its per-chunk
        partial results if the backend will split it (`backend.reduction_chunks`)."""
        if kern.kind != "loop":
            return
        chunks, nbytes = self.backend.reduction_chunks(kern)
        if chunks:
            kern.chunks = chunks
            kern.partials = Buffer("arena", nbytes, name=f"partials of {kern.name}")

    def _copy_kernel(self, src, dst, name):
        _check_dtype(dst.dtype, name)
        return copy_kernel(src, dst, name)

PLANNER_RULES = {
    "const": Planner._const,
    **{op: Planner._view for op in VIEW_OPS},
    "matmul": Planner._gemm,
    "unslice": Planner._unslice,
    "random": Planner._random,
    "elementwise": Planner._fused_alone,     # fusion groups every loop op; alone if it did not
    "cast": Planner._fused_alone,
    "reduce_sum": Planner._fused_alone,
    "reduce_max": Planner._fused_alone,
    **{op: Planner._conv for op in ("conv", "conv_transpose", "conv_filter_grad")},
    **{op: Planner._pool for op in ("maxpool", "meanpool", "maxpool_grad", "meanpool_grad")},
}
"""op -> the rule that plans it: which kernel (if any) a node of that op becomes."""


def _three(values, fill=1):
    """Per-axis values of a window over one to three spatial axes, as three (padded in front)."""
    values = tuple(int(v) for v in values)
    return (fill,) * (3 - len(values)) + values


def _low(attrs):
    """A window's low padding per axis, as three."""
    return _three([lo for lo, _ in attrs["pad"]], 0)


def _check_dtype(dtype, where):
    if np.dtype(dtype) not in KERNEL_DTYPES:
        raise CompileError(f"native kernels compute in float32 or float64, not {dtype}; cast the "
                           f"array (at {where})")
