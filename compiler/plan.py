"""From an optimised Graph to a schedule of kernels over planned memory.

Every value gets a Layout: a buffer, an element offset and strides. Movement ops (transpose,
broadcast, slice, contiguous reshape) only change the layout, so they cost no kernel; fused
groups, matrix products and copies are kernels. Intermediate buffers live in one arena, reused
once dead (liveness over the schedule), and every kernel's outputs are disjoint from its inputs,
which is what makes the `noalias` on kernel arguments true.

All loop bounds and buffer sizes are derived here from node shapes, in one place."""
from dataclasses import dataclass, field

import numpy as np

from . import elementwise as ew
from .errors import CompileError
from .fusion import FUSIBLE, REDUCTIONS
from .graph import toposort
from .matmul import SCRATCH_BYTES, pack_elements

ALIGN = 64
VIEW_OPS = ("reshape", "transpose", "broadcast", "slice", "stop_gradient")
KERNEL_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


class Buffer:
    """A storage region: `ext` (a caller's array, slot `slot` of the pointer table), `arena`
    (offset assigned by the planner) or `scalars` (the float64 host-scalar vector)."""

    def __init__(self, kind, nbytes, slot=None, name=""):
        self.kind, self.nbytes, self.slot, self.name = kind, int(nbytes), slot, name
        self.offset = None

    def __repr__(self):
        return f"Buffer({self.kind} {self.name} {self.nbytes}B)"


@dataclass
class Layout:
    buffer: Buffer
    offset: int
    strides: tuple
    shape: tuple
    dtype: np.dtype

    def is_contiguous(self):
        """Dense row-major, whatever the strides of size-1 dimensions say."""
        return all(st == d for n, st, d in zip(self.shape, self.strides,
                                               _dense_strides(self.shape)) if n != 1)


def _dense_strides(shape):
    strides, acc = [], 1
    for s in reversed(shape):
        strides.append(acc)
        acc *= s
    return tuple(reversed(strides))


@dataclass
class LoopKernel:
    """One loop nest over `shape`. `inputs`: (Layout, sympy Symbol) read with strides over the
    iteration space; `outputs`: (Layout, sympy expr, mode) with mode store/sum/max; reduction
    outputs have zero strides on the reduced axes and are initialised before the loop."""
    name: str
    shape: tuple
    dtype: np.dtype
    inputs: list
    outputs: list
    nodes: list = field(default_factory=list)


@dataclass
class GemmKernel:
    name: str
    a: Layout
    b: Layout
    out: Layout
    m: int
    n: int
    k: int
    pack_a: Buffer = None
    pack_b: Buffer = None
    scratch: Buffer = None
    nodes: list = field(default_factory=list)


@dataclass
class RandomKernel:
    """Counter-based uniform numbers (ops.random_uniform) written densely into `out`."""
    name: str
    out: Layout
    counter: Layout
    key: int
    nodes: list = field(default_factory=list)


@dataclass
class FiniteCheckKernel:
    """flag = sum of (x - x) over the gradient `src`: 0 when every element is finite, NaN
    otherwise (inf - inf and NaN - NaN are NaN; without nnan/ninf fast-math LLVM may not fold
    x - x). The step reads the flags after every compute kernel, before the first write."""
    name: str
    src: Layout
    flag: Layout
    index: int               # the parameter whose gradient this is
    nodes: list = field(default_factory=list)


@dataclass
class Plan:
    kernels: list            # compute kernels in order
    update_kernels: list     # copies into parameters/state, run only when the loss is finite
    ext_slots: list          # (kind, key) per pointer-table slot after slot 0 (the arena):
                             # ("input", ref), ("const", index), ("output", name)
    scalar_refs: list        # the "ref" of each host scalar, in the order of the scalars vector
    constants: list          # arrays bound to ext slots of kind "const"
    arena_bytes: int
    loss_layout: Layout
    flops: int
    checks: list             # FiniteCheckKernels, in parameter order (also in `kernels`)


def _broadcast_strides(layout, shape):
    """Strides of `layout` read over iteration space `shape` (numpy broadcasting)."""
    lead = len(shape) - len(layout.shape)
    out = [0] * lead
    for s, st, full in zip(layout.shape, layout.strides, shape[lead:]):
        out.append(0 if s == 1 and full != 1 else st)
    return tuple(out)


class Planner:
    def __init__(self, graph, vector_width, threads=1):
        self.graph = graph
        self.layouts = {}
        self.kernels = []
        self.ext_slots = []
        self.constants = []
        self.scalar_refs = []
        self.scalars = Buffer("scalars", 0, name="scalars")
        self.output_slot = {}
        self.flops = 0
        self.arena_buffers = []
        self.output_buffers = {}
        self.written_in_place = set()        # update values a moved loop writes directly
        self.vector_width = vector_width     # dtype -> SIMD lanes, sizes the GEMM packing
        self.threads = threads               # GEMM threads: one packing share each

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
        lay = Layout(buf, 0, _dense_strides(node.shape), node.shape, node.dtype)
        self.layouts[node.id] = lay
        return lay

    def layout(self, node):
        lay = self.layouts.get(node.id)
        if lay is None:
            raise CompileError(f"internal: no layout for {node} (scheduled out of order)")
        return lay

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
        for unit in self._units():
            self._emit_unit(unit)
            for node in unit[1]:            # check a gradient while it is still in cache
                if node.id in waiting and node.id in self.layouts:
                    self.kernels.append(self._placed(waiting.pop(node.id)))
        self.kernels.extend(self._placed(kern) for kern in waiting.values())
        for node, buf in pending_outputs:
            dst = Layout(buf, 0, _dense_strides(node.shape), node.shape, node.dtype)
            self.kernels.append(self._copy_kernel(self.layout(node), dst, f"out_{buf.name}"))
        loss = dict(g.outputs).get("loss")
        loss_layout = None
        if loss is not None:
            loss_layout = Layout(self.output_buffers["loss"], 0, (), (), loss.dtype)
        updates = self._updates_in_place(g.updates)
        for target, value in g.updates:
            if value.id not in self.written_in_place:
                updates.append(self._copy_kernel(self.layout(value), self.layout(target),
                                                 f"update_{target.attrs.get('name', target.id)}"))
        arena = self._assign_arena(self.kernels + updates,
                                   keep=[checks[0].flag.buffer] if checks else [])
        return Plan(self.kernels, updates, self.ext_slots, self.scalar_refs, self.constants,
                    arena, loss_layout, self.flops, checks)

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

    def _updates_in_place(self, updates):
        """Move loops whose only results are new values of parameters or state (the optimiser
        update) after the loss check, writing straight into those arrays instead of the arena
        and a copy. Safe when nothing else reads the loop's results and the loop reads each old
        value at the very element it writes (same layout), never elsewhere."""
        target_of = {v.id: t for t, v in updates}
        read = {}
        for k in self.kernels:
            for lay in _kernel_inputs(k):
                read.setdefault(id(lay.buffer), []).append(k)
        moved = []
        for k in list(self.kernels):
            if not isinstance(k, LoopKernel) or not k.outputs:
                continue
            values = [n for n in k.nodes if n.id in target_of and n.id in self.layouts]
            outs = {id(lay.buffer) for lay, _, _ in k.outputs}
            if len(values) != len(k.outputs) or any(read.get(b) for b in outs):
                continue
            plan, ok = [], True
            for n in values:
                dst = self.layout(target_of[n.id])
                same = Layout(dst.buffer, dst.offset, _broadcast_strides(dst, k.shape), k.shape,
                              dst.dtype)
                ok &= dst.is_contiguous() and dst.shape == k.shape and dst.dtype == n.dtype
                ok &= all(lay == same for lay, _ in k.inputs if lay.buffer is dst.buffer)
                ok &= not any(other is not k for other in read.get(id(dst.buffer), [])
                              if other in moved)
                plan.append((n, same))
            if not ok:
                continue
            by_buffer = {id(self.layout(n).buffer): same for n, same in plan}
            k.outputs = [(by_buffer[id(lay.buffer)], e, mode) for lay, e, mode in k.outputs]
            for n, _ in plan:
                self.written_in_place.add(n.id)
            self.kernels.remove(k)
            moved.append(k)
        return moved

    def _units(self):
        """Kernel-level schedule: fused groups as one unit each, in dependency order."""
        groups = self.graph.groups
        nodes = toposort(self.graph.roots())
        members = {}
        for n in nodes:
            if n.id in groups:
                members.setdefault(groups[n.id], []).append(n)
        unit_of, unit_of_group = {}, {}
        units = []
        for n in nodes:
            if n.id in groups:
                gid = groups[n.id]
                if gid not in unit_of_group:
                    unit_of_group[gid] = len(units)
                    units.append(("group", members[gid]))
                unit_of[n.id] = unit_of_group[gid]
            else:
                unit_of[n.id] = len(units)
                units.append(("node", [n]))
        deps = []
        for kind, ns in units:
            ids = {m.id for m in ns}
            deps.append({unit_of[i.id] for m in ns for i in m.inputs if i.id not in ids})
        order, state = [], [0] * len(units)
        for start in range(len(units)):
            stack = [(start, iter(sorted(deps[start])))]
            if state[start]:
                continue
            state[start] = 1
            while stack:
                u, it = stack[-1]
                d = next(it, None)
                if d is None:
                    stack.pop()
                    order.append(units[u])
                elif not state[d]:
                    state[d] = 1
                    stack.append((d, iter(sorted(deps[d]))))
        return order

    def _emit_unit(self, unit):
        kind, nodes = unit
        if kind == "group":
            return self._group_kernel(nodes)
        node = nodes[0]
        if node.id in self.layouts:
            return
        op = node.op
        if op == "const":
            buf = self._ext("const", len(self.constants), node.shape, node.dtype, "const")
            self.constants.append(np.ascontiguousarray(node.value))
            self._materialised(node, buf)
        elif op in VIEW_OPS:
            self._view(node)
        elif op == "matmul":
            self._gemm(node)
        elif op == "unslice":
            self._unslice(node)
        elif op == "random":
            out = self._materialised(node, self._new_buffer(node))
            self.kernels.append(RandomKernel(f"random{len(self.kernels)}", out,
                                             self.layout(node.inputs[0]), node.attrs["key"],
                                             [node]))
        else:
            raise CompileError(f"no lowering for op {op} (at {node.source})")

    def _view(self, node):
        src = self.layout(node.inputs[0])
        a = node.attrs
        if node.op == "stop_gradient":
            lay = src
        elif node.op == "transpose":
            lay = Layout(src.buffer, src.offset, tuple(src.strides[p] for p in a["perm"]),
                         node.shape, node.dtype)
        elif node.op == "broadcast":
            lay = Layout(src.buffer, src.offset, _broadcast_strides(src, node.shape),
                         node.shape, node.dtype)
        elif node.op == "slice":
            off = src.offset + sum(s * st for s, st in zip(a["starts"], src.strides))
            lay = Layout(src.buffer, off, tuple(st * k for st, k in zip(src.strides, a["steps"])),
                         node.shape, node.dtype)
        else:  # reshape
            if src.is_contiguous():
                lay = Layout(src.buffer, src.offset, _dense_strides(node.shape), node.shape,
                             node.dtype)
            else:
                buf = self._new_buffer(node)
                tmp = Layout(buf, 0, _dense_strides(src.shape), src.shape, src.dtype)
                self.kernels.append(self._copy_kernel(src, tmp, f"reshape{len(self.kernels)}"))
                lay = Layout(buf, 0, _dense_strides(node.shape), node.shape, node.dtype)
        self.layouts[node.id] = lay

    def _copy_kernel(self, src, dst, name):
        import sympy as sp
        s = sp.Symbol("in0", real=True)
        _check_dtype(dst.dtype, name)
        return LoopKernel(name, dst.shape, dst.dtype,
                          [(Layout(src.buffer, src.offset, _broadcast_strides(src, dst.shape),
                                   dst.shape, src.dtype), s)],
                          [(dst, s, "store")])

    def _group_kernel(self, nodes):
        import sympy as sp
        ids = {n.id for n in nodes}
        reductions = [n for n in nodes if n.op in REDUCTIONS]
        shape = reductions[0].inputs[0].shape if reductions else nodes[0].shape
        dtype = nodes[0].dtype if not reductions else reductions[0].dtype
        for n in nodes:
            _check_dtype(n.dtype, n.source)
        consumers_outside = self._used_outside(ids)
        inputs, symbol_of, exprs = [], {}, {}

        def operand(i):
            if i.id in ids:
                return exprs[i.id]
            if i.op == "const" and i.size == 1:
                return sp.Float(float(i.value.reshape(())), 17)
            if i.id not in symbol_of:
                sym = sp.Symbol(f"in{len(inputs)}", real=True)
                lay = self.layout(i)
                inputs.append((Layout(lay.buffer, lay.offset, _broadcast_strides(lay, shape),
                                      shape, lay.dtype), sym))
                symbol_of[i.id] = sym
            return symbol_of[i.id]

        outputs = []
        for n in nodes:
            args = [operand(i) for i in n.inputs]
            if n.op == "cast" or n.op in REDUCTIONS:
                e = args[0]
            else:
                fn = ew.get(n.attrs["fn"])
                e = fn.expr.xreplace(dict(zip(fn.symbols, args)))
            exprs[n.id] = e
            self.flops += n.size if n.op not in REDUCTIONS else n.inputs[0].size
            if n.op in REDUCTIONS or n.id in consumers_outside:
                buf = self._new_buffer(n)
                lay = self._materialised(n, buf)
                if n.op in REDUCTIONS:
                    axes = n.attrs["axes"]
                    st, it = [], iter(lay.strides)
                    for d in range(len(shape)):
                        if n.attrs["keepdims"]:
                            st.append(0 if d in axes else lay.strides[d])
                        else:
                            st.append(0 if d in axes else next(it))
                    it_lay = Layout(buf, 0, tuple(st), shape, n.dtype)
                    outputs.append((it_lay, e, "sum" if n.op == "reduce_sum" else "max"))
                else:
                    outputs.append((lay, e, "store"))
        self.kernels.append(LoopKernel(f"k{len(self.kernels)}", shape, dtype, inputs, outputs,
                                       nodes))

    def _used_outside(self, ids):
        used = set()
        for n in toposort(self.graph.roots()):
            if n.id not in ids:
                used.update(i.id for i in n.inputs if i.id in ids)
        used.update(n.id for _, n in self.graph.outputs if n.id in ids)
        used.update(v.id for _, v in self.graph.updates if v.id in ids)
        used.update(g.id for _, g in self.graph.checks if g.id in ids)
        return used

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
        pa, pb = pack_elements(m, n, k, self.vector_width[node.dtype], node.dtype,
                               self.threads)
        isz = node.dtype.itemsize
        kern = GemmKernel(f"gemm{len(self.kernels)}", la2, lb2, out, m, n, k,
                          Buffer("arena", pa * isz, name="packA"),
                          Buffer("arena", pb * isz, name="packB"),
                          Buffer("arena", SCRATCH_BYTES, name="threads"), nodes=[node])
        self.flops += 2 * m * n * k
        self.kernels.append(kern)

    def _unslice(self, node):
        import sympy as sp
        out = self._materialised(node, self._new_buffer(node))
        self.kernels.append(LoopKernel(f"zero{len(self.kernels)}", node.shape, node.dtype, [],
                                       [(out, sp.Float(0.0), "store")], [node]))
        a = node.attrs
        off = sum(s * st for s, st in zip(a["starts"], out.strides))
        dst = Layout(out.buffer, off, tuple(st * k for st, k in zip(out.strides, a["steps"])),
                     node.inputs[0].shape, node.dtype)
        self.kernels.append(self._copy_kernel(self.layout(node.inputs[0]), dst,
                                              f"unslice{len(self.kernels)}"))

    # -- memory ------------------------------------------------------------------------------
    def _assign_arena(self, kernels, keep=()):
        """Greedy reuse: a buffer's region returns to the free list after its last reader;
        buffers in `keep` stay allocated to the end."""
        last_use, first_def = {}, {}
        for k, kern in enumerate(kernels):
            for lay in _kernel_layouts(kern):
                if lay.buffer.kind == "arena":
                    first_def.setdefault(id(lay.buffer), k)
                    last_use[id(lay.buffer)] = k
        for buf in keep:
            last_use[id(buf)] = len(kernels)
        by_def = {}
        for buf in self.arena_buffers:
            if id(buf) in first_def:
                by_def.setdefault(first_def[id(buf)], []).append(buf)
        free, top, live = [], 0, []

        def alloc(nbytes):
            nonlocal top
            nbytes = -(-max(nbytes, 1) // ALIGN) * ALIGN
            for i, (off, size) in enumerate(free):
                if size >= nbytes:
                    if size > nbytes:
                        free[i] = (off + nbytes, size - nbytes)
                    else:
                        free.pop(i)
                    return off, nbytes
            off = top
            top += nbytes
            return off, nbytes

        for k, kern in enumerate(kernels):
            for buf in by_def.get(k, []):
                buf.offset, size = alloc(buf.nbytes)
                live.append((buf, size))
            if isinstance(kern, GemmKernel):
                released = []
                for buf in (kern.pack_a, kern.pack_b, kern.scratch):
                    buf.offset, size = alloc(buf.nbytes)
                    released.append((buf.offset, size))
                free.extend(released)
            still = []
            for buf, size in live:
                if last_use[id(buf)] <= k:
                    free.append((buf.offset, size))
                else:
                    still.append((buf, size))
            live = still
            free.sort()
            merged = []
            for off, size in free:
                if merged and merged[-1][0] + merged[-1][1] == off:
                    merged[-1] = (merged[-1][0], merged[-1][1] + size)
                else:
                    merged.append((off, size))
            free[:] = merged
        return top


def _kernel_inputs(kern):
    if isinstance(kern, GemmKernel):
        return [kern.a, kern.b]
    if isinstance(kern, RandomKernel):
        return [kern.counter]
    if isinstance(kern, FiniteCheckKernel):
        return [kern.src]
    return [lay for lay, _ in kern.inputs]


def _kernel_layouts(kern):
    if isinstance(kern, GemmKernel):
        return [kern.a, kern.b, kern.out]
    if isinstance(kern, RandomKernel):
        return [kern.counter, kern.out]
    if isinstance(kern, FiniteCheckKernel):
        return [kern.src, kern.flag]
    return [lay for lay, _ in kern.inputs] + [lay for lay, _, _ in kern.outputs]


def _check_dtype(dtype, where):
    if np.dtype(dtype) not in KERNEL_DTYPES:
        raise CompileError(f"native kernels compute in float32 or float64, not {dtype}; cast the "
                           f"array (at {where})")
