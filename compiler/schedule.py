"""The kernel-level schedule: which nodes become one kernel (a fusion group, or a node of its
own) and in what order, plus the map from each node to its consumers -- both built once, in
time linear in the graph."""


def consumers(graph):
    """node id -> ids of the nodes that read it; outputs, updates and checks count as readers
    (id None), so a node they need is never treated as internal to a fused kernel."""
    readers = {}
    for n in graph.nodes:
        for i in n.inputs:
            readers.setdefault(i.id, set()).add(n.id)
    for n in graph.roots():
        readers.setdefault(n.id, set()).add(None)
    return readers


def units(graph):
    """[("group", nodes) | ("node", [node])] in an order where every unit follows the units it
    reads (depth-first over unit dependencies, so a fused group whose members are spread out
    in the node order still runs after everything it needs)."""
    groups = graph.groups
    nodes = graph.nodes
    members, unit_of, unit_of_group, out = {}, {}, {}, []
    for n in nodes:
        if n.id in groups:
            members.setdefault(groups[n.id], []).append(n)
    for n in nodes:
        if n.id in groups:
            gid = groups[n.id]
            if gid not in unit_of_group:
                unit_of_group[gid] = len(out)
                out.append(("group", members[gid]))
            unit_of[n.id] = unit_of_group[gid]
        else:
            unit_of[n.id] = len(out)
            out.append(("node", [n]))
    deps = []
    for _, ns in out:
        ids = {m.id for m in ns}
        deps.append({unit_of[i.id] for m in ns for i in m.inputs if i.id not in ids})
    order, state = [], [0] * len(out)
    for start in range(len(out)):
        if state[start]:
            continue
        state[start] = 1
        stack = [(start, iter(sorted(deps[start])))]
        while stack:
            u, it = stack[-1]
            d = next(it, None)
            if d is None:
                stack.pop()
                order.append(out[u])
            elif not state[d]:
                state[d] = 1
                stack.append((d, iter(sorted(deps[d]))))
    return order
