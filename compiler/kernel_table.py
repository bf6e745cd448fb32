"""`art.kernels`: the kernels of a step as a table a user reads at a glance -- name, kind, the
graph nodes and source lines each computes, flops, bytes moved, and the vector width its loop
actually got, read from the optimised IR (possible because kernels stay separate functions).
A `1` there means a scalar loop: the place to look when a step is slower than it should be."""
import re

import numpy as np

_DEFINE = re.compile(r'^define [^@]*@"?([\w.]+)"?\(.*?^}', re.M | re.S)
_VECTOR = re.compile(r"<(\d+) x (?:float|double)>")


def vector_widths(optimized_ir):
    """function name -> the widest float vector its body uses (1: scalar code)."""
    out = {}
    for m in _DEFINE.finditer(optimized_ir):
        widths = [int(w) for w in _VECTOR.findall(m.group(0))]
        out[m.group(1)] = max(widths, default=1)
    return out


def kernel_rows(plan, optimized_ir, gemm_width):
    """One dict per kernel, in the order the step runs them (compute, then updates)."""
    widths = vector_widths(optimized_ir)
    rows = []
    for phase, kernels in (("compute", plan.kernels), ("update", plan.update_kernels)):
        for kern in kernels:
            function = getattr(kern, "function", kern.name)
            rows.append({
                "name": kern.name + (f"+{kern.epilogue.name}" if kern.epilogue else ""),
                "kind": kern.kind, "phase": phase, "function": function,
                "nodes": [plan.node_names.get(n.id, "?") for n in kern.nodes],
                "lines": sorted({n.source for n in kern.nodes if n.source}),
                "flops": int(kern.flops()), "bytes": int(kern.bytes_moved()),
                "vector_width": gemm_width[np.dtype(kern.out.dtype)] if kern.kind == "gemm" else
                widths.get(function, 1)})
    return rows


class KernelTable(list):
    """The rows of `kernel_rows`, printed as a table."""

    def __str__(self):
        head = f"{'kernel':<28} {'kind':<12} {'vec':>3} {'flops':>10} {'bytes':>10}  nodes / lines"
        lines = [head, "-" * len(head)]
        for r in self:
            shared = "" if r["function"] == r["name"] else f" (code of {r['function']})"
            lines.append(f"{r['name'][:28]:<28} {r['kind']:<12} {r['vector_width']:>3} "
                         f"{r['flops']:>10} {r['bytes']:>10}  {', '.join(r['nodes'])}"
                         f"{shared}  {'; '.join(r['lines'])}")
        return "\n".join(lines)
