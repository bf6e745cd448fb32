"""Fusing the elementwise kernel that follows a matrix product or a convolution into its
write-back: a Dense or Conv layer's bias and activation are applied to each block of the
product (each sample of the convolution) as soon as it is final, while it is still in cache,
instead of in a second pass over memory.

A loop kernel becomes the epilogue when it comes right after the product, loops over the
product's output, reads that output only where it was written (element (i, j) at (i, j)), and
only stores -- a reduction (a bias gradient's sum over rows) would add the blocks in an order
that depends on how the product was split."""


def fuse_epilogues(kernels):
    """`kernels` with each fusible loop kernel moved into the GEMM or forward convolution
    before it."""
    out = []
    for kern in kernels:
        last = out[-1] if out else None
        if last is not None and last.epilogue is None and (
                last.kind == "gemm" and fits(last, kern) or
                last.kind == "conv" and last.mode == "forward" and fits_conv(last, kern)):
            last.epilogue = kern
            last.nodes = last.nodes + kern.nodes
            continue
        out.append(kern)
    return out


def fits(gemm, kern):
    return kern.kind == "loop" and tuple(kern.shape) == (gemm.m, gemm.n) and _reads_in_place(
        gemm, kern, (gemm.a, gemm.b))


def fits_conv(conv, kern):
    """As `fits`, over the convolution's (N, C, *spatial) output, each output moving along the
    samples (the convolution's tasks run samples in parallel, each calling the epilogue on its
    own)."""
    return kern.kind == "loop" and not kern.chunks and tuple(kern.shape) == tuple(
        conv.out.shape) and all(lay.strides[0] != 0 for lay, _, _ in kern.outputs) \
        and _reads_in_place(conv, kern, (conv.first, conv.second))


def _reads_in_place(producer, kern, operands):
    if any(mode != "store" for _, _, mode in kern.outputs):
        return False
    c = producer.out
    reads_c = [lay for lay in kern.inputs if lay.buffer is c.buffer]
    return bool(reads_c) and all(lay.offset == c.offset and tuple(lay.strides) == tuple(c.strides)
                                 for lay in reads_c) \
        and all(lay.buffer is not op.buffer for lay, _, _ in kern.outputs for op in operands)
