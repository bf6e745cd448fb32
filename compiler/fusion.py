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
        self.first = float("inf")     # the earliest member's position in topological order

    def add(self, node_id, position):
        self.members.add(node_id)
        self.first = min(self.first, position)


def _depends_on(node, group, group_of, nodes, position):
    """Does `node` (outside `group`) read any member of `group`, directly or transitively?
    A node in another group stands for its whole group, since a group runs as one loop: this
    keeps the graph of kernels acyclic, not just each group convex. The search stops at nodes
    that come before the group's first member in topological order -- they cannot depend on
    it -- so it stays local instead of walking every ancestor (linear compile time)."""
    stack, seen, seen_groups = [node], set(), set()
    while stack:
        n = stack.pop()
        if n.id in seen or position[n.id] < group.first:
            continue
        seen.add(n.id)
        if n.id in group.members:        # reached through another group's inputs
            return True
        other = group_of.get(n.id)
        if other is not None and other is not group and id(other) not in seen_groups:
            seen_groups.add(id(other))
            for m in other.members:
                stack.extend(i for i in nodes[m].inputs if i.id not in other.members)
        for i in n.inputs:
            if i.id in group.members:
                return True
            stack.append(i)
    return False


def _can_join(node, group, producer, group_of, nodes, position):
    if node.op in REDUCTIONS:
        shape_ok = producer.shape == group.shape and producer.id not in group.reductions
    else:
        shape_ok = node.shape == group.shape and node.dtype == group.dtype
        shape_ok = shape_ok and not any(i.id in group.reductions for i in node.inputs)
    if not shape_ok:
        return False
    return not any(_depends_on(i, group, group_of, nodes, position)
                   for i in node.inputs if i.id not in group.members)


def _mergeable(a, b):
    """Can groups a and b run as one loop? Same space, neither reads the other's reductions,
    and no outside node sits on a path between them (either direction)."""
    if a.shape != b.shape or a.dtype != b.dtype or a.reductions or b.reductions:
        return False
    return True


def fuse_elementwise(graph):
    groups, group_of = [], {}
    order = graph.nodes
    nodes = {n.id: n for n in order}
    position = {n.id: k for k, n in enumerate(order)}

    def external_inputs(g):
        return [i for m in g.members for i in nodes[m].inputs if i.id not in g.members]

    for node in order:
        if node.op not in FUSIBLE and node.op not in REDUCTIONS:
            continue
        candidates = []
        for i in node.inputs:
            g = group_of.get(i.id)
            if g is not None and g not in candidates and i.op in FUSIBLE \
                    and i.dtype == node.inputs[0].dtype \
                    and (node.op in REDUCTIONS or i.dtype == node.dtype) \
                    and _can_join(node, g, i, group_of, nodes, position):
                candidates.append(g)
        chosen = candidates[0] if candidates else None
        if chosen is None:
            shape = node.inputs[0].shape if node.op in REDUCTIONS else node.shape
            chosen = _Group(len(groups), shape, node.dtype)
            groups.append(chosen)
        for other in candidates[1:]:
            if node.op in REDUCTIONS or not _mergeable(chosen, other):
                continue
            merged = _Group(chosen.id, chosen.shape, chosen.dtype)
            merged.members = chosen.members | other.members
            merged.first = min(chosen.first, other.first)
            view = dict(group_of)
            for m in merged.members:
                view[m] = merged
            if any(_depends_on(i, merged, view, nodes, position)
                   for i in external_inputs(merged)):
                continue
            chosen.members |= other.members
            chosen.first = merged.first
            for m in other.members:
                group_of[m] = chosen
            other.members = set()
        chosen.add(node.id, position[node.id])
        if node.op in REDUCTIONS:
            chosen.reductions.add(node.id)
        group_of[node.id] = chosen
    numbering = {}
    for g in groups:
        if g.members:
            numbering[g.id] = len(numbering)
    return graph.replace({}, groups={k: numbering[g.id] for k, g in group_of.items()})
