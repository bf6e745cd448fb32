"""Max pooling over windows that tile the input (LeNet's 2 x 2, stride 2), in explicit vectors.

Left to itself, LLVM vectorises a stride-2 window loop with gathers and masks (a line of 12
outputs under 16 lanes): several times slower than the memory it reads. Here each window row
is one contiguous load of V * kw elements, split into its kw columns by shuffles; the maximum
and, for the gradient, the one element that receives it are found lane by lane with the
same rule as the scalar path (compiler.pooling): the window's llvm.maximum, then the first
element equal to it or the first NaN, in row-major window order. A gradient's kw shares of
a row are interleaved back by shuffles and stored as one vector, so nothing is added: the
windows tile, every input element belongs to exactly one.

A line of `ow` outputs is covered by loops.line_pieces: vectors of the full width, then one
per set bit of what is left, so there is no masked tail."""
import itertools
import math

from llvmlite import ir

from .loops import concat_vectors, element_size, for_range, gep, i64, line_pieces, vector_call

MAX_COLUMNS = 8


def applies(g, mode, unroll):
    """Whether a kernel takes this path: max or its gradient, windows tiling the input, few
    enough window positions to unroll, and a power-of-two window width."""
    kw = g.window[2]
    return mode in ("max", "max_grad") and math.prod(g.window) <= unroll \
        and kw <= MAX_COLUMNS and kw & (kw - 1) == 0 and tiles(g)


def tiles(g):
    """Whether the windows tile the input exactly (stride = window, no padding, nothing left
    over): every input element is then in one window, so a gradient is stored, not added."""
    return all(lo == 0 and s == k and n % k == 0 and o == n // k
               for lo, s, k, n, o in zip(g.low, g.stride, g.window, g.inp, g.out))


def _interleave(b, parts):
    """One vector holding parts[0][0], parts[1][0], ..., parts[0][1], ...: the kw columns of a
    window row back in input order."""
    lanes, kw = parts[0].type.count, len(parts)
    whole = concat_vectors(b, parts)
    order = [k * lanes + j for j in range(lanes) for k in range(kw)]
    return b.shuffle_vector(whole, ir.Constant(whole.type, ir.Undefined), ir.Constant(
        ir.VectorType(ir.IntType(32), lanes * kw), order))


def _columns(b, row, lanes, kw):
    """The kw columns of a loaded window row, each a vector of `lanes`."""
    if kw == 1:
        return [row]
    undef = ir.Constant(row.type, ir.Undefined)
    return [b.shuffle_vector(row, undef, ir.Constant(ir.VectorType(ir.IntType(32), lanes),
                                                      [j * kw + k for j in range(lanes)]))
            for k in range(kw)]


def emit_lines(b, g, mode, x_p, dy_p, out_p, ty, vw):
    """The plane's loops: for every output line, its chunks."""
    kd_n, kh_n, kw = g.window
    ih, iw = g.inp[1], g.inp[2]
    oh_n, ow = g.out[1], g.out[2]
    align = element_size(ty)

    def line(od, oh):
        out_line = b.mul(b.add(b.mul(od, i64(oh_n)), oh), i64(ow))
        rows = [b.mul(b.add(b.mul(b.add(b.mul(od, i64(kd_n)), i64(kd)), i64(ih)),
                            b.add(b.mul(oh, i64(kh_n)), i64(kh))), i64(iw))
                for kd, kh in itertools.product(range(kd_n), range(kh_n))]
        for j0, lanes in line_pieces(ow, vw):
            vty, wide = ir.VectorType(ty, lanes), ir.VectorType(ty, lanes * kw)
            starts = [b.add(r, i64(j0 * kw)) for r in rows]
            values = [v for s in starts for v in _columns(
                b, b.load(gep(b, x_p, s, ty), typ=wide, align=align), lanes, kw)]
            m = values[0]
            for v in values[1:]:
                m = vector_call(b, "maximum", m, v)
            at = b.add(out_line, i64(j0))
            if mode == "max":
                b.store(m, gep(b, out_p, at, ty), align=align)
                continue
            d = b.load(gep(b, dy_p, at, ty), typ=vty, align=align)
            zero = ir.Constant(vty, [0.0] * lanes)
            found = ir.Constant(ir.VectorType(ir.IntType(1), lanes), [0] * lanes)
            shares = []
            for v in values:
                hit = b.or_(b.fcmp_ordered("==", v, m), b.fcmp_unordered("uno", v, v))
                shares.append(b.select(b.and_(hit, b.not_(found)), d, zero))
                found = b.or_(found, hit)
            for r, s in enumerate(starts):
                b.store(_interleave(b, shares[r * kw:(r + 1) * kw]) if kw > 1 else shares[r],
                        gep(b, out_p, s, ty), align=align)
    for_range(b, 0, g.out[0], lambda od: for_range(b, 0, oh_n, lambda oh: line(od, oh),
                                                   name="oh"), name="od")
