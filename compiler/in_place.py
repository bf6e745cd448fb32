"""Writing the optimiser's update straight into the parameters and state: a loop whose only
results are new values of arrays the step updates moves after the finiteness checks and
stores into those arrays, instead of into the arena followed by a copy."""
from .kernels import Layout, broadcast_strides


def move_updates_in_place(kernels, updates, layout_of):
    """Take such loops out of `kernels` (in place) and return them, with the ids of the
    update values they now write. Safe when nothing else reads the loop's results and the
    loop reads each old value at the very element it writes (same layout), never elsewhere."""
    target_of = {v.id: t for t, v in updates}
    read = {}
    for k in kernels:
        for lay in k.reads():
            read.setdefault(id(lay.buffer), []).append(k)
    moved, written = [], set()
    for k in list(kernels):
        if k.kind != "loop" or not k.outputs:
            continue
        values = [n for n in k.nodes if n.id in target_of and layout_of(n) is not None]
        outs = {id(lay.buffer) for lay, _, _ in k.outputs}
        if len(values) != len(k.outputs) or any(read.get(b) for b in outs):
            continue
        plan, ok = [], True
        for n in values:
            dst = layout_of(target_of[n.id])
            same = Layout(dst.buffer, dst.offset, broadcast_strides(dst, k.shape), k.shape,
                          dst.dtype)
            ok &= dst.is_contiguous() and dst.shape == k.shape and dst.dtype == n.dtype
            ok &= all(lay == same for lay in k.inputs if lay.buffer is dst.buffer)
            ok &= not any(other is not k for other in read.get(id(dst.buffer), [])
                          if other in moved)
            plan.append((n, same))
        if not ok:
            continue
        by_buffer = {id(layout_of(n).buffer): same for n, same in plan}
        k.outputs = [(by_buffer[id(lay.buffer)], e, mode) for lay, e, mode in k.outputs]
        written.update(n.id for n, _ in plan)
        kernels.remove(k)
        moved.append(k)
    return moved, written
