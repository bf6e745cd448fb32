"""Small convolutions and their input gradients as vector FMAs over output lines, no patches.

    y[s, o, line, j] = sum over input channels c and window offsets r of
                       w[o, c, r~] * x[s, c, line * stride + r * dilation, j + r_w * dilation]

A block of output channels times a segment of a line's vector pieces are held in registers;
for each input channel and window offset one vector of the input row is loaded and FMAed
against each channel's weight, broadcast. LeNet's channels (1 -> 6 and 6 -> 16) make the GEMM's
panels mostly copying; here each input vector is loaded once per output channel block.

The input gradient of a stride-1 convolution is the same kernel run over dy: with
lo' = (K - 1) d - lo,

    dx[s, c, q] = sum over o and r of w[o, c, (K - 1 - r)~] * dy[s, o, q + r d - lo'],

so only which weight a read offset meets, and the roles of the channel axes, change
(`Direct.reverse`, the weight strides). Where the reads would leave the input (padding), each
sample's input is first copied into a zeroed, padded plane in the task's scratch.

Every output element is one chain of FMAs in a fixed order (channels, then window rows, then
window columns): the split of samples across threads does not change it."""
import math
from dataclasses import dataclass

from llvmlite import ir

from .loops import (accumulator_budget, element_size, entry_alloca, for_range, gep, i64,
                    line_pieces, splat, vector_call)


MAX_PADDED_WORK = 1.5
"""A transpose runs its window over the whole padded dy: prod(x) / prod(dy) times the products
the GEMM path makes (2.25 for LeNet's second layer, where it measured 1.5x slower; 1 for
`SamePad`)."""


@dataclass(frozen=True)
class Direct:
    """One direct convolution: `cin`, `cout` channels per group; `src` the input's spatial
    sizes, `inp` the (padded) plane read, `shift` where the input starts in it; the output's
    sizes, window, stride, dilation; `reverse`: the weight index of read offset r is K-1-r;
    the weight's element strides over (group, output channel, input channel)."""
    groups: int
    cin: int
    cout: int
    src: tuple
    inp: tuple
    shift: tuple
    out: tuple
    window: tuple
    stride: tuple
    dilation: tuple
    reverse: bool
    w_strides: tuple

    def padded(self):
        return self.src != self.inp or any(self.shift)

    def plane(self):
        return math.prod(self.inp)


def _span(o, k, s, d):
    return (o - 1) * s + (k - 1) * d + 1


def plan(g, mode):
    """The Direct a forward or transpose ConvKernel runs, or None when it takes the GEMM path
    (a width stride above 1; a transpose with any stride above 1, or one whose padding would
    multiply the work)."""
    win = math.prod(g.window)
    og, cg = g.o // g.groups, g.c // g.groups
    if mode == "forward" and g.stride[2] == 1:
        inp = tuple(max(_span(o, k, s, d), n + lo) for o, k, s, d, n, lo in zip(
            g.out, g.window, g.stride, g.dilation, g.inp, g.low))
        return Direct(g.groups, cg, og, g.inp, inp, g.low, g.out, g.window, g.stride,
                      g.dilation, not g.flipped, (og * cg * win, cg * win, win))
    if mode == "transpose" and all(s == 1 for s in g.stride) \
            and math.prod(g.inp) <= MAX_PADDED_WORK * math.prod(g.out):
        shift = tuple((k - 1) * d - lo for k, d, lo in zip(g.window, g.dilation, g.low))
        inp = tuple(n + (k - 1) * d for n, k, d in zip(g.inp, g.window, g.dilation))
        return Direct(g.groups, og, cg, g.out, inp, shift, g.inp, g.window, g.stride,
                      g.dilation, g.flipped, (og * cg * win, win, cg * win))
    return None


def scratch_elements(d):
    """Elements of a task's padded copy of one sample (none when the input is read as is)."""
    return d.groups * d.cin * d.plane() if d.padded() else 0


def copy_padded(b, d, src, dst, ty):
    """dst (groups x cin planes of d.inp) = zeros with src's planes placed at d.shift."""
    planes = d.groups * d.cin
    zero = ir.Constant(ty, 0.0)
    for_range(b, 0, planes * d.plane(), lambda e: b.store(zero, gep(b, dst, e, ty)),
              name="pad")
    (sd, sh, sw), (pd, ph, pw) = d.src, d.inp
    lo = [max(0, -s) for s in d.shift]                     # the source range kept, per axis
    hi = [min(n, p - s) for n, p, s in zip(d.src, d.inp, d.shift)]

    def row(c, z, h):
        at = b.add(b.mul(b.add(b.mul(b.add(b.mul(c, i64(pd)), b.add(z, i64(d.shift[0]))),
                                     i64(ph)), b.add(h, i64(d.shift[1]))), i64(pw)),
                   i64(d.shift[2]))
        base = b.mul(b.add(b.mul(b.add(b.mul(c, i64(sd)), z), i64(sh)), h), i64(sw))
        for_range(b, lo[2], hi[2], lambda w: b.store(
            b.load(gep(b, src, b.add(base, w), ty), typ=ty), gep(b, dst, b.add(at, w), ty)),
            name="w")
    for_range(b, 0, planes, lambda c: for_range(b, lo[0], hi[0], lambda z: for_range(
        b, lo[1], hi[1], lambda h: row(c, z, h), name="h"), name="z"), name="c")


def _segments(pieces, budget):
    """The line's pieces in runs of at most `budget` (each run's accumulators fit)."""
    per = max(1, min(len(pieces), budget))
    return [pieces[i:i + per] for i in range(0, len(pieces), per)]


def _blocks(n, per):
    return [(o, min(per, n - o)) for o in range(0, n, per)]


def emit_sample(b, d, x_s, w, y_s, ty, vw):
    """y_s (one sample's output, groups x cout planes) from x_s (its input planes, d.inp)."""
    (od_n, oh_n, ow), (pd, ph, pw) = d.out, d.inp
    kd_n, kh_n, kw_n = d.window
    align = element_size(ty)
    budget = accumulator_budget(align, vw)
    positions = od_n * oh_n * ow
    g_stride, o_stride, i_stride = d.w_strides

    def weight_axis(r, n):
        return b.sub(i64(n - 1), r) if d.reverse else r

    def run(gi, o0, count, segment, od, oh):
        lanes = [n for _, n in segment]
        vtys = [ir.VectorType(ty, n) for n in lanes]
        accs = [[entry_alloca(b, vty) for vty in vtys] for _ in range(count)]
        for oi in range(count):
            for p, vty in enumerate(vtys):
                b.store(ir.Constant(vty, [0.0] * lanes[p]), accs[oi][p])
        w_group = gep(b, w, b.add(b.mul(gi, i64(g_stride)), i64(o0 * o_stride)), ty)

        def channel(c):
            plane = gep(b, x_s, b.mul(b.add(b.mul(gi, i64(d.cin)), c), i64(pd * ph * pw)), ty)
            w_c = gep(b, w_group, b.mul(c, i64(i_stride)), ty)

            def window_row(kd, kh):
                row = gep(b, plane, b.mul(b.add(b.mul(b.add(b.mul(od, i64(d.stride[0])), b.mul(
                    kd, i64(d.dilation[0]))), i64(ph)), b.add(b.mul(oh, i64(d.stride[1])), b.mul(
                        kh, i64(d.dilation[1])))), i64(pw)), ty)
                w_row = b.mul(b.add(b.mul(weight_axis(kd, kd_n), i64(kh_n)),
                                    weight_axis(kh, kh_n)), i64(kw_n))
                for kw in range(kw_n):
                    k = b.add(w_row, i64(kw_n - 1 - kw if d.reverse else kw))
                    scalars = [b.load(gep(b, w_c, b.add(k, i64(oi * o_stride)), ty), typ=ty)
                               for oi in range(count)]
                    for p, ((j0, n), vty) in enumerate(zip(segment, vtys)):
                        v = b.load(gep(b, row, j0 + kw * d.dilation[2], ty), typ=vty,
                                   align=align)
                        for oi in range(count):
                            a = accs[oi][p]
                            b.store(vector_call(b, "fma", splat(b, scalars[oi], vty), v,
                                                b.load(a, typ=vty)), a)
            for_range(b, 0, kd_n, lambda kd: for_range(
                b, 0, kh_n, lambda kh: window_row(kd, kh), name="kh"), name="kd")
        for_range(b, 0, d.cin, channel, name="c")
        line_at = b.mul(b.add(b.mul(od, i64(oh_n)), oh), i64(ow))
        for oi in range(count):
            out = gep(b, y_s, b.add(b.mul(b.add(b.mul(gi, i64(d.cout)), i64(o0 + oi)),
                                          i64(positions)), line_at), ty)
            for p, ((j0, n), vty) in enumerate(zip(segment, vtys)):
                b.store(b.load(accs[oi][p], typ=vty), gep(b, out, j0, ty), align=align)

    pieces = line_pieces(ow, vw)
    for segment in _segments(pieces, budget):
        per = max(1, budget // len(segment))
        for o0, count in _blocks(d.cout, per):
            for_range(b, 0, d.groups, lambda gi: for_range(b, 0, od_n, lambda od: for_range(
                b, 0, oh_n, lambda oh: run(gi, o0, count, segment, od, oh), name="oh"),
                name="od"), name="g")

