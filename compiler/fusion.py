"""Elementwise fusion: chains of elementwise ops over one iteration space become one loop, and a
reduction joins the loop that produces its input (softmax's exp and sum run as one pass).

The result is the same graph annotated with `groups` (node id -> kernel number); the lowering
emits one loop nest per group. A node joins a group only when the group stays convex: none of
the node's other inputs may depend on the group, or the group would have to run twice."""

FUSIBLE = ("elementwise", "cast")
REDUCTIONS = ("reduce_sum", "reduce_max")


class _Group:
    def __init__(self, gid, shape, dtype):
        self.id, self.shape, self.dtype = gid, shape, dtype
        self.members = set()
        self.reductions = set()


def _depends_on(node, group, memo):
    """Does `node` (outside `group`) read any member of `group`, directly or transitively?"""
    stack, seen = [node], set()
    while stack:
        n = stack.pop()
        if n.id in seen:
            continue
        seen.add(n.id)
        if n.id in memo:
            if memo[n.id]:
                return True
            continue
        for i in n.inputs:
            if i.id in group.members:
                return True
            stack.append(i)
    return False


def _can_join(node, group, producer):
    if node.op in REDUCTIONS:
        shape_ok = producer.shape == group.shape and producer.id not in group.reductions
    else:
        shape_ok = node.shape == group.shape and node.dtype == group.dtype
        shape_ok = shape_ok and not any(i.id in group.reductions for i in node.inputs)
    if not shape_ok:
        return False
    memo = {}
    return not any(_depends_on(i, group, memo) for i in node.inputs
                   if i.id not in group.members)


def fuse_elementwise(graph):
    groups, group_of = [], {}
    for node in graph.nodes:
        if node.op not in FUSIBLE and node.op not in REDUCTIONS:
            continue
        chosen = None
        for i in node.inputs:
            g = group_of.get(i.id)
            if g is not None and i.op in FUSIBLE and i.dtype == node.inputs[0].dtype \
                    and (node.op in REDUCTIONS or i.dtype == node.dtype) \
                    and _can_join(node, g, i):
                chosen = g
                break
        if chosen is None:
            shape = node.inputs[0].shape if node.op in REDUCTIONS else node.shape
            chosen = _Group(len(groups), shape, node.dtype)
            groups.append(chosen)
        chosen.members.add(node.id)
        if node.op in REDUCTIONS:
            chosen.reductions.add(node.id)
        group_of[node.id] = chosen
    return graph.replace({}, groups={k: g.id for k, g in group_of.items()})
