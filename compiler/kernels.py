"""The kernel IR: what the planner makes of an optimised graph and a backend turns into code.

A kernel is a small value -- its kind, the layouts it reads and writes, the scratch it needs,
its flops and bytes moved, and the graph nodes it computes -- so the planner, the memory
planner, the emitters and the `art.kernels` listing all read the same description instead of
telling kernels apart by isinstance chains. Each kind names its emitter in
`graphflux.compiler.lower.EMITTERS`; a test walks both tables.

Memory: every value lives in a `Layout` -- a `Buffer` (a caller's array, a region of the arena,
or the host-scalar vector), an element offset and strides -- so movement ops (transpose,
broadcast, slice, contiguous reshape) cost no kernel."""
import math
from dataclasses import dataclass, field

import numpy as np


class Buffer:
    """A storage region: `ext` (a caller's array, slot `slot` of the pointer table), `arena`
    (offset assigned by the memory planner) or `scalars` (the float64 host-scalar vector)."""

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
                                               dense_strides(self.shape)) if n != 1)

    def elements(self):
        """Distinct elements touched (broadcast axes, stride 0, count once)."""
        return math.prod(n for n, st in zip(self.shape, self.strides) if st != 0)

    def nbytes(self):
        return self.elements() * np.dtype(self.dtype).itemsize


def dense_strides(shape):
    strides, acc = [], 1
    for s in reversed(shape):
        strides.append(acc)
        acc *= s
    return tuple(reversed(strides))


def broadcast_strides(layout, shape):
    """Strides of `layout` read over iteration space `shape` (numpy broadcasting)."""
    lead = len(shape) - len(layout.shape)
    out = [0] * lead
    for s, st, full in zip(layout.shape, layout.strides, shape[lead:]):
        out.append(0 if s == 1 and full != 1 else st)
    return tuple(out)


class Kernel:
    """What every kind reports. `reads`/`writes` are Layouts, `scratch` Buffers used only
    while the kernel runs; `structure` is everything its emitted code depends on except which
    buffers it is given, so structurally identical kernels share one function."""
    kind = ""
    batch = ()
    """Which of `dimensions()` are the batch length, run to the run-time length
    (compiler.batch_axis); empty in a step compiled for one batch length."""
    capacity = 0
    """The batch length the kernel's dimensions were planned at, when `batch` is not empty."""
    chunks = 0
    """Loop kernels only: > 0 when reductions over the first loop run in fixed chunks."""
    epilogue = None
    """GEMM and forward convolution kernels only: the loop kernel run on each finished block
    (compiler.epilogue)."""

    def dimensions(self):
        """The sizes the kernel's loops run over."""
        raise NotImplementedError

    def reads(self):
        raise NotImplementedError

    def writes(self):
        raise NotImplementedError

    def scratch(self):
        return []

    def layouts(self):
        return self.reads() + self.writes()

    def flops(self):
        return 0

    def bytes_moved(self):
        return sum(lay.nbytes() for lay in self.layouts())

    def buffers(self):
        """The distinct buffers of its layouts, in order: the emitted function's arguments."""
        out = []
        for lay in self.layouts():
            if all(lay.buffer is not b for b in out):
                out.append(lay.buffer)
        return out

    def structure(self):
        raise NotImplementedError

    def origins(self):
        """id(buffer) -> the first byte of it the kernel touches: the kernel is passed a
        pointer there and addresses its layouts relative to it. Computed when first asked,
        once the planner has settled the kernel's layouts."""
        out = self.__dict__.get("_origins")
        if out is None:
            out = {}
            for lay in self.layouts():
                at = lay.offset * np.dtype(lay.dtype).itemsize
                out[id(lay.buffer)] = min(out.get(id(lay.buffer), at), at)
            self._origins = out
        return out

    def relative(self, lay):
        """The layout's element offset from its buffer's origin in this kernel."""
        size = np.dtype(lay.dtype).itemsize
        delta = lay.offset * size - self.origins()[id(lay.buffer)]
        if delta % size:
            raise ValueError(f"{self.name}: mixed element sizes in one buffer")
        return delta // size

    def _where(self, lay, buffers):
        return ([i for i, b in enumerate(buffers) if b is lay.buffer][0], self.relative(lay),
                lay.strides, lay.shape, np.dtype(lay.dtype).str)


@dataclass(eq=False)
class LoopKernel(Kernel):
    """One loop nest over `shape`. `inputs`: Layouts read with strides over the iteration
    space; `calls`: (elementwise function name, argument values) evaluated in order per
    element; `outputs`: (Layout, value, mode) with mode store/sum/max. A value is ("in", k),
    ("op", j) -- the result of call j -- or ("num", x). Reduction outputs have zero strides on
    the reduced axes and are initialised before the loop."""
    name: str
    shape: tuple
    dtype: np.dtype
    inputs: list
    calls: list
    outputs: list
    nodes: list = field(default_factory=list)
    chunks: int = 0          # > 0: reductions over the first loop in this many fixed chunks
    partials: Buffer = None  # ... each chunk's partial results, added in chunk order after
    kind = "loop"

    def dimensions(self):
        return self.shape

    def reads(self):
        return list(self.inputs)

    def writes(self):
        return [lay for lay, _, _ in self.outputs]

    def scratch(self):
        return [self.partials] if self.partials is not None else []

    def flops(self):
        return sum(n.inputs[0].size if n.op.startswith("reduce") else n.size
                   for n in self.nodes if n.op != "unslice")

    def structure(self):
        bufs = self.buffers()
        return (self.kind, self.shape, self.batch, self.chunks, np.dtype(self.dtype).str,
                tuple(self._where(lay, bufs) for lay in self.inputs), tuple(self.calls),
                tuple((self._where(lay, bufs), v, mode) for lay, v, mode in self.outputs))


@dataclass(eq=False)
class GemmKernel(Kernel):
    """out = a @ b (m x k times k x n, any strides), with the packing buffers and thread
    scratch the backend asked for."""
    name: str
    a: Layout
    b: Layout
    out: Layout
    m: int
    n: int
    k: int
    pack_a: Buffer = None
    pack_b: Buffer = None
    thread_scratch: Buffer = None
    nodes: list = field(default_factory=list)
    epilogue: "LoopKernel" = None     # run on each block of `out` when final (compiler.epilogue)
    kind = "gemm"

    def dimensions(self):
        return (self.m, self.n, self.k)

    def reads(self):
        return [self.a, self.b] + (self.epilogue.reads() if self.epilogue else [])

    def writes(self):
        return [self.out] + (self.epilogue.writes() if self.epilogue else [])

    def scratch(self):
        return [self.pack_a, self.pack_b, self.thread_scratch]

    def flops(self):
        return 2 * self.m * self.n * self.k + (self.epilogue.flops() if self.epilogue else 0)

    def structure(self):
        return None          # a call into the GEMM library: nothing emitted per kernel


@dataclass(eq=False)
class RandomKernel(Kernel):
    """Counter-based uniform numbers (ops.random_uniform) written densely into `out`."""
    name: str
    out: Layout
    counter: Layout
    key: int
    nodes: list = field(default_factory=list)
    kind = "random"

    def dimensions(self):
        return self.out.shape

    def reads(self):
        return [self.counter]

    def writes(self):
        return [self.out]

    def structure(self):
        bufs = self.buffers()
        return (self.kind, self._where(self.counter, bufs), self._where(self.out, bufs),
                self.key, self.batch)


@dataclass(eq=False)
class FiniteCheckKernel(Kernel):
    """flag = sum of (x - x) over the gradient `src`: 0 when every element is finite, NaN
    otherwise (inf - inf and NaN - NaN are NaN; without nnan/ninf fast-math LLVM may not fold
    x - x). The step reads the flags after every compute kernel, before the first write."""
    name: str
    src: Layout
    flag: Layout
    index: int               # the parameter whose gradient this is
    nodes: list = field(default_factory=list)
    kind = "finite_check"

    def dimensions(self):
        return self.src.shape

    def reads(self):
        return [self.src]

    def writes(self):
        return [self.flag]

    def flops(self):
        return 2 * self.src.elements()

    def structure(self):
        bufs = self.buffers()
        return (self.kind, self._where(self.src, bufs), self._where(self.flag, bufs),
                self.batch)


@dataclass(frozen=True)
class Window:
    """A convolution's or pooling's geometry with three spatial axes (fewer are padded in
    front with size 1, window 1, stride 1, no padding): batch `n`, input channels `c`, output
    channels `o` (pooling: o == c), `groups`, and per axis the input, output and window sizes,
    stride, dilation and low padding; `flipped` as compiler.window_geometry says."""
    n: int
    c: int
    o: int
    groups: int
    inp: tuple
    out: tuple
    window: tuple
    stride: tuple
    dilation: tuple
    low: tuple
    flipped: bool = True

    def dimensions(self):
        return (self.n, self.o, self.c) + self.out + self.window

    def patch_rows(self):
        """Rows of one group's patch matrix: input channels of a group times window size."""
        return self.c // self.groups * math.prod(self.window)


@dataclass(eq=False)
class ConvKernel(Kernel):
    """One member of the convolution family (compiler.convolution): `mode` "forward" reads x
    and w and writes y; "transpose" reads dy and w and writes dx; "filter" reads x and dy and
    writes dw, through per-chunk `partials` added in chunk order. `scratch_buffer` holds each
    task's patch block and GEMM packing buffers; `tasks` run on the pool's threads."""
    name: str
    mode: str
    first: Layout
    second: Layout
    out: Layout
    geometry: Window
    work: Buffer = None
    partials: Buffer = None
    tasks: int = 1
    nodes: list = field(default_factory=list)
    epilogue: "LoopKernel" = None     # forward only: run on each sample (compiler.epilogue)
    kind = "conv"

    def dimensions(self):
        return self.geometry.dimensions()

    def reads(self):
        return [self.first, self.second] + (self.epilogue.reads() if self.epilogue else [])

    def writes(self):
        return [self.out] + (self.epilogue.writes() if self.epilogue else [])

    def scratch(self):
        return [self.work] + ([self.partials] if self.partials is not None else [])

    def flops(self):
        g = self.geometry
        return 2 * g.n * g.o * math.prod(g.out) * g.patch_rows() + (
            self.epilogue.flops() if self.epilogue else 0)

    def structure(self):
        return (self.kind, self.mode, self.geometry, self.tasks, self.batch,
                np.dtype(self.out.dtype).str, self.epilogue is not None)


@dataclass(eq=False)
class PoolKernel(Kernel):
    """Max or mean pooling (`mode` "max", "mean") or its gradient ("max_grad" reads x and dy,
    "mean_grad" dy), one (sample, channel) plane at a time (compiler.pooling)."""
    name: str
    mode: str
    inputs: list
    out: Layout
    geometry: Window
    nodes: list = field(default_factory=list)
    kind = "pool"

    def dimensions(self):
        g = self.geometry
        return (g.n, g.c) + g.out

    def reads(self):
        return list(self.inputs)

    def writes(self):
        return [self.out]

    def flops(self):
        g = self.geometry
        return g.n * g.c * math.prod(g.out) * math.prod(g.window)

    def structure(self):
        return (self.kind, self.mode, self.geometry, self.batch, np.dtype(self.out.dtype).str)


KINDS = (LoopKernel, GemmKernel, RandomKernel, FiniteCheckKernel, ConvKernel, PoolKernel)
