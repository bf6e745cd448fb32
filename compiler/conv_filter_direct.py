"""The weight gradient of a small-window convolution, computed directly in vector registers.

    dw[o, c, k] = sum over samples s and output positions p of dy[s, o, p] * x[s, c, p + k]

Through the GEMM (compiler.convolution) this product has a narrow N (a few dozen patch rows)
and spends its time copying: the patch block, then its transposed packing. Here nothing is
copied. For one (o, c) pair, a vector of `lanes` consecutive outputs of a line of dy is loaded
once and multiplied into one accumulator per window position, against the input read at that
position's shift (contiguous, as the width stride is 1): all of a window row's positions,
and as many rows as the accumulators allow, stay in registers across the chunk's samples and
lines. Each accumulator's lanes are added by a fixed tree at the end.

The order of the sum depends only on the geometry and the chunk of samples, never on the
threads: the chunks' partial results are added in chunk order as on the GEMM path."""
import itertools

from llvmlite import ir

from .loops import (accumulator_budget, element_size, entry_alloca, for_range, gep, i64,
                    line_pieces, vector_call)


def applies(g, itemsize, vw):
    """Unit width stride, no padding across the width (a window row's input is one contiguous
    run inside the line), and a window row that fits in the accumulators."""
    kw, d2 = g.window[2], g.dilation[2]
    return g.stride[2] == 1 and g.low[2] == 0 and g.out[2] - 1 + (kw - 1) * d2 < g.inp[2] \
        and kw <= accumulator_budget(itemsize, vw)


def _row_groups(g, itemsize, vw):
    """The window's (kd, kh) rows in passes, as many whole rows per pass as fit."""
    rows = list(itertools.product(range(g.window[0]), range(g.window[1])))
    per = max(1, accumulator_budget(itemsize, vw) // g.window[2])
    return [rows[i:i + per] for i in range(0, len(rows), per)]


def _widen(b, v, lanes):
    """v (fewer lanes) extended to `lanes` with zeros, so a line's tail adds nothing."""
    n = v.type.count
    if n == lanes:
        return v
    zero = ir.Constant(v.type, [0.0] * n)
    return b.shuffle_vector(v, zero, ir.Constant(ir.VectorType(ir.IntType(32), lanes),
                                                 list(range(n)) + [n] * (lanes - n)))


def _lane_sum(b, v):
    n = v.type.count
    while n > 1:
        n //= 2
        idx = ir.VectorType(ir.IntType(32), n)
        v = b.fadd(b.shuffle_vector(v, v, ir.Constant(idx, list(range(n)))),
                   b.shuffle_vector(v, v, ir.Constant(idx, list(range(n, 2 * n)))))
    return b.extract_element(v, ir.Constant(ir.IntType(32), 0))


def emit_chunk(b, g, x, dy, part, s_lo, s_hi, ty, vw):
    """part[o, c, k] = the sum over samples [s_lo, s_hi) (the chunk's partial result)."""
    (od_n, oh_n, ow), (id_, ih, iw) = g.out, g.inp
    kd_n, kh_n, kw_n = g.window
    og, cg = g.o // g.groups, g.c // g.groups
    positions, plane = od_n * oh_n * ow, id_ * ih * iw
    pieces = line_pieces(ow, vw)
    lanes = pieces[0][1]
    vty = ir.VectorType(ty, lanes)
    align = element_size(ty)
    zero = ir.Constant(vty, [0.0] * lanes)
    win = kd_n * kh_n * kw_n
    groups = _row_groups(g, align, vw)
    acc = [entry_alloca(b, vty) for _ in range(len(groups[0]) * kw_n)]

    def oriented(k, n):
        return k if g.flipped else n - 1 - k

    def line(rows, dy_s, x_s, od, oh):
        dy_line = gep(b, dy_s, b.mul(b.add(b.mul(od, i64(oh_n)), oh), i64(ow)), ty)
        for i, (kd, kh) in enumerate(rows):
            at_d = b.sub(b.add(b.mul(od, i64(g.stride[0])), i64(
                oriented(kd, kd_n) * g.dilation[0])), i64(g.low[0]))
            at_h = b.sub(b.add(b.mul(oh, i64(g.stride[1])), i64(
                oriented(kh, kh_n) * g.dilation[1])), i64(g.low[1]))
            inside = b.and_(b.icmp_unsigned("<", at_d, i64(id_)),    # negative: far above
                            b.icmp_unsigned("<", at_h, i64(ih)))
            with b.if_then(inside):
                x_row = gep(b, x_s, b.mul(b.add(b.mul(at_d, i64(ih)), at_h), i64(iw)), ty)
                for j0, n in pieces:
                    piece = ir.VectorType(ty, n)
                    d = _widen(b, b.load(gep(b, dy_line, j0, ty), typ=piece, align=align),
                               lanes)
                    for kw in range(kw_n):
                        shift = j0 + oriented(kw, kw_n) * g.dilation[2]
                        v = _widen(b, b.load(gep(b, x_row, shift, ty), typ=piece, align=align),
                                   lanes)
                        a = acc[i * kw_n + kw]
                        b.store(vector_call(b, "fma", d, v, b.load(a, typ=vty)), a)

    def pair(p):
        o, cl = b.sdiv(p, i64(cg)), b.srem(p, i64(cg))
        c = b.add(b.mul(b.sdiv(o, i64(og)), i64(cg)), cl)
        for rows in groups:
            for a in acc:
                b.store(zero, a)

            def sample(s):
                dy_s = gep(b, dy, b.mul(b.add(b.mul(s, i64(g.o)), o), i64(positions)), ty)
                x_s = gep(b, x, b.mul(b.add(b.mul(s, i64(g.c)), c), i64(plane)), ty)
                for_range(b, 0, od_n, lambda od: for_range(
                    b, 0, oh_n, lambda oh: line(rows, dy_s, x_s, od, oh), name="oh"),
                    name="od")
            for_range(b, s_lo, s_hi, sample, name="s")
            for i, (kd, kh) in enumerate(rows):
                for kw in range(kw_n):
                    k = (kd * kh_n + kh) * kw_n + kw
                    b.store(_lane_sum(b, b.load(acc[i * kw_n + kw], typ=vty)),
                            gep(b, part, b.add(b.mul(p, i64(win)), i64(k)), ty))

    for_range(b, 0, g.o * cg, pair, name="pair")

