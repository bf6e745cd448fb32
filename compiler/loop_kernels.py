"""Loop kernels: a fused group of elementwise nodes and reductions becomes one loop nest whose
body is their composed scalar expressions (sympy), and a copy is the simplest such loop."""
from . import elementwise as ew
from .fusion import REDUCTIONS
from .kernels import Layout, LoopKernel, broadcast_strides

LET_SIZE = 40
"""A fused node's expression is substituted into its readers while its tree has at most this
many nodes; a larger one becomes a named intermediate (`LoopKernel.lets`). Substitution copies
the tree once per use, so chains of `where`/`abs`/`max` (each using its input two or three
times) would otherwise grow exponentially, and sympy's work with them."""


def copy_kernel(src, dst, name):
    """dst[...] = src[...], `src` broadcast over `dst`'s shape."""
    import sympy as sp
    s = sp.Symbol("in0", real=True)
    return LoopKernel(name, dst.shape, dst.dtype,
                      [(Layout(src.buffer, src.offset, broadcast_strides(src, dst.shape),
                               dst.shape, src.dtype), s)],
                      [(dst, s, "store")])


def fused_kernel(nodes, name, layout_of, materialise, used_outside):
    """One loop over a fusion group. `layout_of(node)` is where a value computed outside the
    group lives; `materialise(node)` gives a node computed here a dense buffer of its own (for
    reductions and for values `used_outside(node)` the group)."""
    import sympy as sp
    ids = {n.id for n in nodes}
    reductions = [n for n in nodes if n.op in REDUCTIONS]
    shape = reductions[0].inputs[0].shape if reductions else nodes[0].shape
    dtype = nodes[0].dtype if not reductions else reductions[0].dtype
    inputs, symbol_of, exprs, sizes, lets = [], {}, {}, {}, []

    def operand(i):
        if i.id in ids:
            if sizes[i.id] > LET_SIZE:      # bound what is composed: name it instead
                sym = sp.Symbol(f"t{len(lets)}", real=True)
                lets.append((sym, exprs[i.id]))
                exprs[i.id], sizes[i.id] = sym, 1
            return exprs[i.id]
        if i.op == "const" and i.size == 1:
            return sp.Float(float(i.value.reshape(())), 17)
        if i.id not in symbol_of:
            sym = sp.Symbol(f"in{len(inputs)}", real=True)
            lay = layout_of(i)
            inputs.append((Layout(lay.buffer, lay.offset, broadcast_strides(lay, shape),
                                  shape, lay.dtype), sym))
            symbol_of[i.id] = sym
        return symbol_of[i.id]

    outputs = []
    for n in nodes:
        args = [operand(i) for i in n.inputs]
        arg_sizes = [sizes.get(i.id, 1) for i in n.inputs]
        if n.op == "cast" or n.op in REDUCTIONS:
            e, sizes[n.id] = args[0], arg_sizes[0]
        else:
            fn = ew.get(n.attrs["fn"])
            e = fn.expr.xreplace(dict(zip(fn.symbols, args)))
            sizes[n.id] = expression_size(fn, arg_sizes)
        exprs[n.id] = e
        if n.op in REDUCTIONS:
            outputs.append(_reduction_output(n, e, materialise(n), shape))
        elif used_outside(n):
            outputs.append((materialise(n), e, "store"))
    return LoopKernel(name, shape, dtype, inputs, outputs, nodes, lets)


def _reduction_output(n, e, lay, shape):
    """A reduction writes its dense buffer through zero strides on the reduced axes."""
    axes = n.attrs["axes"]
    st, it = [], iter(lay.strides)
    for d in range(len(shape)):
        if n.attrs["keepdims"]:
            st.append(0 if d in axes else lay.strides[d])
        else:
            st.append(0 if d in axes else next(it))
    return (Layout(lay.buffer, 0, tuple(st), shape, n.dtype), e,
            "sum" if n.op == "reduce_sum" else "max")


def expression_size(fn, arg_sizes):
    """Nodes in the tree of `fn` applied to arguments of these tree sizes: each use of an
    argument symbol in `fn.expr` copies the argument's tree."""
    uses = fn.symbol_uses()
    return fn.tree_size() + sum(uses[k] * (size - 1) for k, size in enumerate(arg_sizes))
