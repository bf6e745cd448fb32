"""`gf.compare(loss, ps, batch, opt)`: a user's own step, compiled against eager, side by side.

Both modes start from the same parameters and optimiser state, must reach the same losses, and
are timed in interleaved rounds; then a timed variant of the compiled step (a cycle counter
around every kernel call: compiler.lower) says where its time goes. The parameters (and the
optimiser's state for them) are restored afterwards: comparing does not train the model.
Running statistics the loss updates (BatchNorm) are not restored."""
import copy
import time
from dataclasses import dataclass, field

import numpy as np

from graphflux.compiler.lower import profile_symbol
from graphflux.compiler.pipeline import compile_graph
from graphflux.runtime.native import cycle_counter_hz

from .bench import _times, loss_check
from .compiled import CompiledStep
from .eager_step import EagerStep
from .params import as_params
from .tracing import step_graph, trace_loss


@dataclass
class Comparison:
    compiled_median_us: float
    compiled_iqr_us: float
    eager_median_us: float
    eager_iqr_us: float
    compile_s: float
    flops: int
    losses_agree: bool
    losses: dict
    kernels: list = field(default_factory=list)    # dicts: name, kind, share, us, nodes, lines

    @property
    def speedup(self):
        return self.eager_median_us / self.compiled_median_us

    @property
    def gflops(self):
        return self.flops / self.compiled_median_us / 1e3

    def __str__(self):
        in_kernels = sum(k["us"] for k in self.kernels)
        lines = [f"compiled {self.compiled_median_us:.1f} us (+-{self.compiled_iqr_us:.1f} iqr), "
                 f"eager {self.eager_median_us:.1f} us (+-{self.eager_iqr_us:.1f}): "
                 f"{self.speedup:.1f}x; compile {self.compile_s:.2f} s; {self.gflops:.2f} GFLOP/s; "
                 f"losses agree: {self.losses_agree}",
                 f"where the compiled step's time goes (a timed run of its kernels): "
                 f"{in_kernels:.1f} us in kernels, the rest of the median in the host path",
                 f"  {'kernel':<28} {'kind':<12} {'share':>6} {'us':>9}  nodes / lines"]
        for k in sorted(self.kernels, key=lambda k: -k["share"]):
            lines.append(f"  {k['name'][:28]:<28} {k['kind']:<12} {100 * k['share']:5.1f}% "
                         f"{k['us']:9.2f}  {', '.join(k['nodes'])}  {'; '.join(k['lines'])}")
        return "\n".join(lines)


class _Restore:
    """Puts the parameters' values and the optimiser's state for them back on exit."""

    def __init__(self, ps, opt):
        self.ps, self.opt = ps, opt

    def __enter__(self):
        self.values = [p.copy() for p in self.ps]
        self.states = {} if self.opt is None else {
            id(p): (copy.deepcopy(st.arrays), st.host) for p in self.ps
            if (st := self.opt.state_of(p)) is not None}
        return self

    def __exit__(self, *exc):
        for p, v in zip(self.ps, self.values):
            np.copyto(p, v)
        if self.opt is not None:
            for p in self.ps:
                st, saved = self.opt.state_of(p), self.states.get(id(p))
                if st is None:
                    continue
                if saved is None:       # created by the comparison: back to fresh values
                    saved = (self.opt.state_init(p), self.opt.host_init())
                for k, a in saved[0].items():
                    np.copyto(st.arrays[k], a)
                st.host = saved[1]


def compare(loss, ps, batch, opt=None, *, steps=100, check_steps=5, rtol=1e-4):
    """Time `loss(*batch)`'s training step (or gradient, without `opt`) compiled and eager,
    check their losses agree over `check_steps` steps from the same start, and time each
    kernel of the compiled step. Returns a Comparison (print it)."""
    ps = as_params(ps)
    batch = tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)
    compiled, eager = CompiledStep(loss, ps, opt), EagerStep(loss, ps, opt)
    first = lambda out: out if opt is not None else out[0]  # noqa: E731
    with _Restore(ps, opt):
        t = time.perf_counter()
        compiled.lower(*batch)
        compile_s = time.perf_counter() - t
        losses = {"compiled": [first(compiled(*batch)) for _ in range(check_steps)]}
    with _Restore(ps, opt):
        losses["eager"] = [first(eager(*batch)) for _ in range(check_steps)]
    agree = all(loss_check([c], [e], rtol)["losses_agree"]
                for c, e in zip(losses["compiled"], losses["eager"]))
    samples = {"compiled": [], "eager": []}
    with _Restore(ps, opt):
        for _ in range(5):                  # interleaved rounds, so drift hits both alike
            samples["compiled"].extend(_times(lambda: compiled(*batch), max(steps // 5, 1)))
            samples["eager"].extend(_times(lambda: eager(*batch), max(steps // 20, 1)))
        kernels = _kernel_times(compiled, loss, ps, opt, batch, steps)
    med = {k: float(np.median(v)) for k, v in samples.items()}
    iqr = {k: float(np.subtract(*np.percentile(v, [75, 25]))) for k, v in samples.items()}
    art = compiled.lower(*batch)
    return Comparison(med["compiled"], iqr["compiled"], med["eager"], iqr["eager"], compile_s,
                      int(art.stats["flops"]), bool(agree), losses, kernels)


def _kernel_times(step, loss, ps, opt, batch, steps):
    """Run the timed variant of the step `steps` times: each kernel's mean time per call and
    its share of the time spent in kernels."""
    prepared = step.prepared(batch)
    traced = trace_loss(loss, ps, prepared)
    art = compile_graph(traced.graph, step_graph(traced, ps, opt, warn=False),
                        dict(traced.seconds), key=f"profile-{id(traced):x}", profile=True)
    native = step.run_variant(art, traced, prepared, steps)
    rows = art.kernels
    counts = np.ctypeslib.as_array((np.ctypeslib.ctypes.c_int64 * len(rows)).from_address(
        native.global_address(profile_symbol(art.symbol))))
    total, hz = max(int(counts.sum()), 1), cycle_counter_hz()
    return [{"name": r["name"], "kind": r["kind"], "share": int(c) / total,
             "us": int(c) / steps / hz * 1e6, "nodes": r["nodes"], "lines": r["lines"]}
            for r, c in zip(rows, counts)]
