"""Loop kernels: a fused group of elementwise nodes and reductions becomes one loop nest, whose
body calls each node's scalar function (compiler.scalar_library) on the values of its inputs;
a copy is the simplest such loop. Nothing is composed symbolically, so building a kernel is
linear in its nodes however long a chain of `where`/`abs`/`max` gets."""
from .fusion import REDUCTIONS
from .kernels import Layout, LoopKernel, broadcast_strides


def copy_kernel(src, dst, name):
    """dst[...] = src[...], `src` broadcast over `dst`'s shape."""
    return LoopKernel(name, dst.shape, dst.dtype,
                      [Layout(src.buffer, src.offset, broadcast_strides(src, dst.shape),
                              dst.shape, src.dtype)],
                      [], [(dst, ("in", 0), "store")])


def fused_kernel(nodes, name, layout_of, materialise, used_outside):
    """One loop over a fusion group. `layout_of(node)` is where a value computed outside the
    group lives; `materialise(node)` gives a node computed here a dense buffer of its own (for
    reductions and for values `used_outside(node)` the group). Values are referred to as
    ("in", k) -- the k-th input --, ("op", j) -- the j-th call -- or ("num", x)."""
    ids = {n.id for n in nodes}
    reductions = [n for n in nodes if n.op in REDUCTIONS]
    shape = reductions[0].inputs[0].shape if reductions else nodes[0].shape
    dtype = nodes[0].dtype if not reductions else reductions[0].dtype
    inputs, input_of, calls, value_of, outputs = [], {}, [], {}, []

    def operand(i):
        if i.id in ids:
            return value_of[i.id]
        if i.op == "const" and i.size == 1:
            return ("num", float(i.value.reshape(())))
        if i.id not in input_of:
            lay = layout_of(i)
            inputs.append(Layout(lay.buffer, lay.offset, broadcast_strides(lay, shape),
                                 shape, lay.dtype))
            input_of[i.id] = ("in", len(inputs) - 1)
        return input_of[i.id]

    for n in nodes:
        args = tuple(operand(i) for i in n.inputs)
        if n.op == "cast" or n.op in REDUCTIONS:
            value = args[0]
        else:
            calls.append((n.attrs["fn"], args))
            value = ("op", len(calls) - 1)
        value_of[n.id] = value
        if n.op in REDUCTIONS:
            outputs.append(_reduction_output(n, value, materialise(n), shape))
        elif used_outside(n):
            outputs.append((materialise(n), value, "store"))
    return LoopKernel(name, shape, dtype, inputs, calls, outputs, nodes)


def _reduction_output(n, value, lay, shape):
    """A reduction writes its dense buffer through zero strides on the reduced axes."""
    axes = n.attrs["axes"]
    st, it = [], iter(lay.strides)
    for d in range(len(shape)):
        if n.attrs["keepdims"]:
            st.append(0 if d in axes else lay.strides[d])
        else:
            st.append(0 if d in axes else next(it))
    return (Layout(lay.buffer, 0, tuple(st), shape, n.dtype), value,
            "sum" if n.op == "reduce_sum" else "max")
