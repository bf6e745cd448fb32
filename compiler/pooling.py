"""Native max and mean pooling and their gradients, one (sample, channel) plane at a time.

The planes are split into POOL_TASKS fixed shares run on the pool's threads; each plane's
result depends on that plane alone, so any split gives the same numbers. Small windows are
unrolled (LeNet's 2 x 2), and bounds are checked only when padding or a partial last window
can put a window position outside the input.

Max pooling's rule, shared with the numpy implementation: a window's result is its first
maximum in row-major window order, or its first NaN (NaN in, NaN out), and the gradient goes
to that one element."""
import itertools
import math

import numpy as np
from llvmlite import ir

from . import pooling_tiled, thread_pool
from . import transcendental as tr
from .loops import I64, for_range, gep, i64, internal_function, share

POOL_TASKS = 8
UNROLL = 16
PTR = ir.PointerType()


def _needs_checks(g):
    return any(lo > 0 or (o - 1) * s + k - lo > n
               for lo, o, s, k, n in zip(g.low, g.out, g.stride, g.window, g.inp))


def _positions(b, window, body):
    """body(kd, kh, kw) for every window offset: unrolled when the window is small."""
    if math.prod(window) <= UNROLL:
        for k in itertools.product(*[range(n) for n in window]):
            body(*[i64(v) for v in k])
        return
    for_range(b, 0, window[0], lambda kd: for_range(b, 0, window[1], lambda kh: for_range(
        b, 0, window[2], lambda kw: body(kd, kh, kw), name="pw"), name="ph"), name="pd")


def _emit_plane(module, kern, name, ty, vw):
    """void name.plane(ptr x, ptr dy, ptr out): one plane, its pointers noalias so that the
    stores into `out` do not make LLVM reload the inputs."""
    g, mode = kern.geometry, kern.mode
    fn = internal_function(module, name + ".plane", [PTR] * 3, noalias=3)
    x_p, dy_p, out_p = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    if pooling_tiled.applies(g, mode, UNROLL):
        pooling_tiled.emit_lines(b, g, mode, x_p, dy_p, out_p, ty, vw)
        b.ret_void()
        return fn
    acc = b.alloca(ty, name="acc")
    best = b.alloca(I64, name="best")
    plane_in = math.prod(g.inp)
    size = float(math.prod(g.window))
    checks = _needs_checks(g)
    direct = mode == "max_grad" and pooling_tiled.tiles(g)
    if mode.endswith("grad") and not direct:
        for_range(b, 0, plane_in, lambda e: b.store(ir.Constant(ty, 0.0), gep(b, out_p, e, ty)),
                  name="zero")

    def position(od, oh, ow):
        o = b.add(b.mul(b.add(b.mul(od, i64(g.out[1])), oh), i64(g.out[2])), ow)
        corner = [b.sub(b.mul(v, i64(s)), i64(lo)) for v, s, lo in
                  zip((od, oh, ow), g.stride, g.low)]

        def visit(use):
            def at(kd, kh, kw):
                idx = [b.add(c, k) for c, k in zip(corner, (kd, kh, kw))]
                off = b.add(b.mul(b.add(b.mul(idx[0], i64(g.inp[1])), idx[1]), i64(g.inp[2])),
                            idx[2])
                if not checks:
                    use(off)
                    return
                inside = None
                for v, n in zip(idx, g.inp):
                    ok = b.and_(b.icmp_signed(">=", v, i64(0)), b.icmp_signed("<", v, i64(n)))
                    inside = ok if inside is None else b.and_(inside, ok)
                with b.if_then(inside):
                    use(off)
            _positions(b, g.window, at)

        if mode in ("max", "max_grad") and not checks and math.prod(g.window) <= UNROLL:
            _branch_free_max(b, g, mode, direct, x_p, dy_p, out_p, o, visit, ty)
        elif mode in ("max", "max_grad"):
            b.store(ir.Constant(ty, -np.inf), acc)
            b.store(i64(-1), best)

            def take(off):
                v = b.load(gep(b, x_p, off, ty), typ=ty)
                m, i = b.load(acc, typ=ty), b.load(best, typ=I64)
                better = b.or_(b.or_(b.icmp_signed("<", i, i64(0)), b.fcmp_ordered(">", v, m)),
                               b.and_(b.fcmp_unordered("uno", v, v), b.fcmp_ordered("ord", m, m)))
                b.store(b.select(better, v, m), acc)
                b.store(b.select(better, off, i), best)
            visit(take)
            if mode == "max":
                b.store(b.load(acc, typ=ty), gep(b, out_p, o, ty))
            elif direct:
                i, d = b.load(best, typ=I64), b.load(gep(b, dy_p, o, ty), typ=ty)
                visit(lambda off: b.store(b.select(b.icmp_signed("==", off, i), d, ir.Constant(
                    ty, 0.0)), gep(b, out_p, off, ty)))
            else:
                i = b.load(best, typ=I64)
                with b.if_then(b.icmp_signed(">=", i, i64(0))):
                    p_dx = gep(b, out_p, i, ty)
                    b.store(b.fadd(b.load(p_dx, typ=ty), b.load(gep(b, dy_p, o, ty), typ=ty)),
                            p_dx)
        elif mode == "mean":
            b.store(ir.Constant(ty, 0.0), acc)
            visit(lambda off: b.store(b.fadd(b.load(acc, typ=ty), b.load(
                gep(b, x_p, off, ty), typ=ty)), acc))
            b.store(b.fdiv(b.load(acc, typ=ty), ir.Constant(ty, size)), gep(b, out_p, o, ty))
        else:
            share = b.fdiv(b.load(gep(b, dy_p, o, ty), typ=ty), ir.Constant(ty, size))

            def spread(off):
                p_dx = gep(b, out_p, off, ty)
                b.store(b.fadd(b.load(p_dx, typ=ty), share), p_dx)
            visit(spread)
    for_range(b, 0, g.out[0], lambda od: for_range(b, 0, g.out[1], lambda oh: for_range(
        b, 0, g.out[2], lambda ow: position(od, oh, ow), name="ow"), name="oh"), name="od")
    b.ret_void()
    return fn


def _branch_free_max(b, g, mode, direct, x_p, dy_p, out_p, o, visit, ty):
    """A small window without bounds checks, without a dependency chain through a select per
    element, so the loop over positions vectorises: the window's maximum by llvm.maximum (NaN
    if any element is NaN), and for the gradient the first element equal to it -- or, when it
    is NaN, the first NaN -- found by flags."""
    offsets = []
    visit(offsets.append)
    values = [b.load(gep(b, x_p, off, ty), typ=ty) for off in offsets]
    m = values[0]
    for v in values[1:]:
        m = tr.call(b, "maximum", ty, m, v)
    if mode == "max":
        b.store(m, gep(b, out_p, o, ty))
        return
    d = b.load(gep(b, dy_p, o, ty), typ=ty)
    found = ir.Constant(ir.IntType(1), 0)
    for off, v in zip(offsets, values):
        hit = b.or_(b.fcmp_ordered("==", v, m), b.fcmp_unordered("uno", v, v))
        mine = b.and_(hit, b.not_(found))
        found = b.or_(found, hit)
        share = b.select(mine, d, ir.Constant(ty, 0.0))
        p_dx = gep(b, out_p, off, ty)
        b.store(share if direct else b.fadd(b.load(p_dx, typ=ty), share), p_dx)


def emit_task(module, kern, name, ty, vw):
    """void name.task(ptr args, i64 t): planes [t * per, (t + 1) * per); args holds the
    inputs (x or dy; for max_grad x then dy), the output and the number of planes."""
    g, mode = kern.geometry, kern.mode
    plane_fn = _emit_plane(module, kern, name, ty, vw)
    task = internal_function(module, name + ".task", [PTR, I64])
    words, t = task.args
    b = ir.IRBuilder(task.append_basic_block("entry"))
    first, second, out = (b.inttoptr(b.load(gep(b, words, k, I64), typ=I64), PTR)
                          for k in range(3))
    planes = b.load(gep(b, words, 3, I64), typ=I64)
    plane_in, plane_out = math.prod(g.inp), math.prod(g.out)
    grad = mode.endswith("grad")

    def plane(p):
        x_p = gep(b, first, b.mul(p, i64(plane_in)), ty)
        dy_p = gep(b, second if mode == "max_grad" else first, b.mul(p, i64(plane_out)), ty)
        out_p = gep(b, out, b.mul(p, i64(plane_in if grad else plane_out)), ty)
        b.call(plane_fn, [x_p, dy_p, out_p])
    for_range(b, *share(b, t, POOL_TASKS, planes), plane, name="plane")
    b.ret_void()
    return task


def call_pool(body, kern, ty, vw):
    task = body.function(kern, lambda module, k, name: emit_task(module, k, name, ty, vw))
    kern.function = task.name[:-len(".task")] + ".plane"    # where its loops are: the listing
    g = kern.geometry
    planes = body.b.mul(body.extent(kern, g.n, 0 in kern.batch), i64(g.c))
    inputs = [body.at(lay) for lay in kern.inputs]
    values = (inputs + [ir.Constant(PTR, None)])[:2] + [body.at(kern.out), planes]
    body.run_tasks(task, values, POOL_TASKS, kern.flops(), sum(
        lay.nbytes() for lay in kern.layouts()), thread_pool.WORK_KINDS.index("elements"))
