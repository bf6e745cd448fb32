"""Fusing the elementwise kernel that follows a matrix product into the product's write-back:
a Dense layer's bias and activation are applied to each block of the product as soon as the
block is final, while it is still in cache, instead of in a second pass over memory.

A loop kernel becomes its product's epilogue when it comes right after the product, loops
over the product's (m, n) output, reads that output only where it was written (element (i, j)
at (i, j)), and only stores -- a reduction (a bias gradient's sum over rows) would add the
blocks in an order that depends on how the product was split."""


def fuse_gemm_epilogues(kernels):
    """`kernels` with each fusible loop kernel moved into the GEMM before it."""
    out = []
    for kern in kernels:
        last = out[-1] if out else None
        if last is not None and last.kind == "gemm" and last.epilogue is None \
                and fits(last, kern):
            last.epilogue = kern
            last.nodes = last.nodes + kern.nodes
            continue
        out.append(kern)
    return out


def fits(gemm, kern):
    if kern.kind != "loop" or tuple(kern.shape) != (gemm.m, gemm.n):
        return False
    if any(mode != "store" for _, _, mode in kern.outputs):
        return False
    c = gemm.out
    reads_c = [lay for lay in kern.inputs if lay.buffer is c.buffer]
    return bool(reads_c) and all(lay.offset == c.offset and tuple(lay.strides) == tuple(c.strides)
                                 for lay in reads_c) \
        and all(lay.buffer is not gemm.a.buffer and lay.buffer is not gemm.b.buffer
                for lay, _, _ in kern.outputs)
