"""Memory planning: offsets in one arena for every intermediate buffer, reusing a region once
the last kernel that reads it has run (liveness over the schedule)."""
ALIGN = 64


def assign_arena(kernels, arena_buffers, keep=()):
    """Set `offset` on each arena buffer and return the arena's size in bytes. Greedy: a
    buffer's region returns to the free list after its last reader; a kernel's scratch is
    live only during that kernel; buffers in `keep` stay allocated to the end."""
    last_use, first_def = {}, {}
    for k, kern in enumerate(kernels):
        for lay in kern.layouts():
            if lay.buffer.kind == "arena":
                first_def.setdefault(id(lay.buffer), k)
                last_use[id(lay.buffer)] = k
    for buf in keep:
        last_use[id(buf)] = len(kernels)
    by_def = {}
    for buf in arena_buffers:
        if id(buf) in first_def:
            by_def.setdefault(first_def[id(buf)], []).append(buf)
    free, top, live = [], 0, []

    def alloc(nbytes):
        nonlocal top
        nbytes = -(-max(nbytes, 1) // ALIGN) * ALIGN
        for i, (off, size) in enumerate(free):
            if size >= nbytes:
                if size > nbytes:
                    free[i] = (off + nbytes, size - nbytes)
                else:
                    free.pop(i)
                return off, nbytes
        off = top
        top += nbytes
        return off, nbytes

    for k, kern in enumerate(kernels):
        for buf in by_def.get(k, []):
            buf.offset, size = alloc(buf.nbytes)
            live.append((buf, size))
        released = []
        for buf in kern.scratch():
            buf.offset, size = alloc(buf.nbytes)
            released.append((buf.offset, size))
        free.extend(released)
        still = []
        for buf, size in live:
            if last_use[id(buf)] <= k:
                free.append((buf.offset, size))
            else:
                still.append((buf, size))
        live = still
        free.sort()
        merged = []
        for off, size in free:
            if merged and merged[-1][0] + merged[-1][1] == off:
                merged[-1] = (merged[-1][0], merged[-1][1] + size)
            else:
                merged.append((off, size))
        free[:] = merged
    return top
