"""A data-parallel training step: each rank's compiled gradient, one sum over ranks, the same
compiled update everywhere.

A step is two native functions around one collective. The gradient function (a CompiledStep
without an optimiser, of the loss times the batch length) writes every gradient straight into
its place in one contiguous exchange buffer; the buffer's tail carries the step's few numbers
-- batch length, loss, flags, rank 0's hyperparameters, running statistics. One sum of the
ranks' buffers (exchange.py: through shared memory within a node, `Comm.sum_` between nodes)
gives every rank the same bits; the update function reads the summed gradients in place,
scaled by 1 / (the ranks' total batch length): the gradient of the mean loss over
the union of the ranks' batches. Identical inputs, identical native code, identical results:
parameters stay bitwise the same on every rank."""
import numpy as np

from graphflux.compiler import ops
from graphflux.compiler.graph import Graph
from graphflux.compiler.llvm_backend import host_description, num_threads
from graphflux.compiler.tracer import TraceContext

from ..compiled import (CompiledStep, _Entry, advance_hosts, bind_inputs, cached_artifact,
                        optimiser_scalars)
from ..errors import NonFiniteLoss, UsageError
from ..params import as_params
from .exchange import Exchange
from ..signature import check_batch
from ..tracing import (check_params, input_array, optimiser_description, step_graph,
                       trace_loss, trace_update)

ALIGN = 16
"""Each gradient starts on a 64-byte line of the exchange buffer."""
COUNTER_STRIDE = 2.0 ** 32
"""Rank r's dropout counters start r * 2^32 steps apart: disjoint streams of masks."""
# the control block at the buffer's tail, in elements
LENGTH, LOSS, STOP, DONE, CONTRIBUTORS, STATUS = range(6)


def batch_length(batch):
    """The weight of a batch: the length of axis 0 of its first array (tracing.batch_weight
    reads the same from the traced graph); 0 for no batch."""
    if batch is None:
        return 0
    for a in batch:
        if isinstance(a, np.ndarray) and a.ndim:
            return a.shape[0]
    return 1


def _round(n):
    return -(-n // ALIGN) * ALIGN


class GradientStep(CompiledStep):
    """One rank's loss and weighted gradients, written into views of the exchange buffer
    (no copy), and no Grads object built: the exchange reads the buffer."""

    weighted = True

    def __init__(self, loss, ps, views):
        super().__init__(loss, ps, None)
        self.views = views

    def output_array(self, name, shape, dtype):
        view = self.views.get(name)
        return view if view is not None else np.empty(shape, dtype)

    def _grads(self, entry):
        return None


class _UpdateTrace:
    """What _Entry reads of a traced loss, for the update's graph (it captures nothing)."""

    def __init__(self, graph):
        self.graph, self.captured = graph, []


class UpdateStep:
    """The optimiser's compiled update of every parameter that has a gradient, reading the
    summed gradients from the exchange buffer, scaled by a host scalar (1 / total length)."""

    def __init__(self, ps, opt, grads):
        self.ps, self.opt = ps, opt
        ctx = TraceContext()
        scale = ctx.new_scalar(ps[0].dtype, "1/total batch length", ("weight", "inverse"))
        updates = []
        for k, (i, view) in enumerate(grads):
            p, name = ps[i], ps.name(ps[i])
            pnode = ctx.add_param(p, name, ("param", i)).node
            g = ctx.new_input(p.shape, p.dtype, f"summed gradient of {name}", "data",
                              ("data", k))
            with ctx:
                scaled = ops.mul(g, scale).node
            updates += trace_update(ctx, opt, p, i, pnode, scaled, name)
        # the optimiser's scalars first, as optimiser_scalars writes them; the scale last
        inputs = [n for n in ctx.inputs if n is not scale.node] + [scale.node]
        graph = Graph(inputs, [], updates, name="update")
        art, _ = cached_artifact(graph, optimiser_description(opt) + " summed-gradient update",
                                 lambda: graph, {"trace": 0.0}, ps[0].dtype)
        self.entry = entry = _Entry(self, _UpdateTrace(graph), art)
        views = [view for _, view in grads]
        bind_inputs(entry.ex, lambda ref: views[ref[1]] if ref[0] == "data" else input_array(
            ref, ps, opt, None, []), graph, with_data=True)
        self.scale_index = len(art.binary.scalar_refs) - 1
        self.hyper_count = self.scale_index

    def output_array(self, name, shape, dtype):
        return np.empty(shape, dtype)

    def scalars(self):
        """This rank's hyperparameters for the step (only rank 0's are used)."""
        values, self._shared = optimiser_scalars(self.opt, self.entry)
        return values

    def __call__(self, hyper, inverse_total):
        scalars = self.entry.scalars
        scalars[:self.hyper_count] = hyper
        scalars[self.scale_index] = inverse_total
        self.entry.ex.native()
        advance_hosts(self.opt, self.entry, self._shared)


class Outcome:
    """What one collective step gave every rank: the mean loss over the ranks' batches (None
    when nothing was updated), whether a rank asked to stop, and how many ran out of data."""

    def __init__(self, loss=None, stop=False, done=0):
        self.loss, self.stop, self.done = loss, stop, done


class DistributedStep:
    """`step(*batch)` on every rank: the mean loss over all ranks' batches, after one update
    that every rank applies identically. The first call checks that the ranks can agree
    (same CPU, threads and model), lays out the exchange buffer, compiles both functions and
    broadcasts rank 0's parameters, optimiser state and running statistics."""

    def __init__(self, loss, ps, opt, comm):
        from .comm import Comm
        if not isinstance(comm, Comm):
            raise UsageError(f"comm must be a gf.distributed.Comm (gf.distributed.world()), "
                             f"got {type(comm).__name__}")
        if opt is None:
            raise UsageError("a data-parallel step needs an optimiser: gf.compile(loss, ps, "
                             "opt, comm=comm)")
        self.loss, self.ps, self.opt, self.comm = loss, as_params(ps), opt, comm
        self.dtype = check_params(self.ps)
        self.started = False

    def __call__(self, *batch):
        outcome = self.exchange(batch)
        if outcome.done:
            raise UsageError(f"{outcome.done} rank(s) ran out of data while this one called "
                             "its step: every rank must take the same number of steps")
        return outcome.loss

    def lower(self, *batch):
        """Compile this rank's gradient function for the batch's signature (not run); the
        first call is collective, like the first step."""
        if not self.started:
            self._start(batch)
        return self.gradients.lower(*batch)

    # -- every step ----------------------------------------------------------------------------
    def exchange(self, batch, stop=False):
        """One collective step: this rank's gradients of `batch` (None: its data ran out;
        `stop`: it asks every rank to stop), summed with every other rank's; then, unless a
        rank stopped, ran out or saw a non-finite value, the update. Every rank must call it
        the same number of times."""
        if not self.started:
            self._start(None if stop else batch)
        buf, c, comm = self.buffer, self.control, self.comm
        n = 0 if batch is None or stop else batch_length(batch)
        saved = [a.copy() for a in self.written]
        loss, error, status = 0.0, None, 0
        if n:
            try:
                loss = self.gradients(*batch)[0]
            except NonFiniteLoss as e:
                error, status = e, 1 if e.what == "loss" else 2
        if not n or error is not None:
            buf[:self.grad_end] = 0
        buf[c:self.stats_at] = 0
        ctrl = buf[c:]
        if error is None:
            ctrl[LENGTH], ctrl[LOSS], ctrl[CONTRIBUTORS] = n, n * loss, n > 0
        ctrl[STOP], ctrl[DONE] = stop, batch is None and not stop
        ctrl[STATUS + comm.rank] = status
        hyper = self.update.scalars()
        if comm.rank == 0:
            buf[self.hyper_at:self.hyper_at + len(hyper)] = hyper
        for a, o in zip(self.stats, self.stat_offsets):
            buf[o:o + a.size] = a.ravel() if n and error is None else 0
        total = self.exchanger.total()
        ctrl = total[c:]
        failed = np.flatnonzero(ctrl[STATUS:STATUS + comm.size])
        if len(failed) or ctrl[STOP] or ctrl[DONE]:
            for a, s in zip(self.written, saved):
                np.copyto(a, s)
        if len(failed):
            raise self._nonfinite(error, failed, ctrl)
        if ctrl[STOP] or ctrl[DONE]:
            return Outcome(stop=bool(ctrl[STOP]), done=int(ctrl[DONE]))
        length = float(ctrl[LENGTH])
        self.update(total[self.hyper_at:self.hyper_at + len(hyper)], 1.0 / length)
        for a, o in zip(self.stats, self.stat_offsets):
            np.copyto(a, (total[o:o + a.size] / ctrl[CONTRIBUTORS]).reshape(a.shape))
        return Outcome(float(ctrl[LOSS]) / length)

    def _nonfinite(self, error, failed, ctrl):
        """The collective guard's error, the same kind on every rank: the failing rank's own
        (which names the op and line) with its rank added, a pointer to it elsewhere."""
        ranks = ", ".join(map(str, failed))
        what = "loss" if ctrl[STATUS + failed[0]] == 1 else "gradient"
        if error is not None:
            return NonFiniteLoss(f"on rank {self.comm.rank} (of failing ranks {ranks}): {error}",
                                 what=error.what, source=error.source)
        return NonFiniteLoss(f"the {what} is not finite on rank {ranks} (see that rank's "
                             "error for the op and line); no rank updated anything",
                             what=what)

    # -- the first step ------------------------------------------------------------------------
    def _start(self, batch):
        """Agree with the other ranks, lay out the buffer, build both functions, broadcast."""
        comm, ps = self.comm, self.ps
        mine, traced = None, None
        if batch is not None and batch_length(batch) > 0:
            traced = trace_loss(self.loss, ps, check_batch(batch, self.dtype, set()))
            mine = self._describe(step_graph(traced, ps, None, warn=False), traced)
        self._check_agreement(comm.allgather((host_description(), num_threads(), mine)))
        grads, stats, counters = mine[0], mine[1], mine[2]
        self.stats = [traced.captured[k] for k in stats]
        self.written = self.stats + [traced.captured[k] for k in counters]
        self._layout(grads)
        self.gradients = GradientStep(self.loss, ps, {
            f"grad:{ps.name(ps[i])}": view for i, view in self.grad_views})
        self.update = UpdateStep(ps, self.opt, self.summed_views)
        self._broadcast(grads, [traced.captured[k] for k in counters])
        self.started = True

    def _describe(self, graph, traced):
        """(parameters with a gradient, captured float arrays the step updates -- running
        statistics --, dropout counters, their shapes), by index: every rank must agree."""
        names = {name for name, _ in graph.outputs}
        grads = [i for i, p in enumerate(self.ps) if f"grad:{self.ps.name(p)}" in names]
        counters = sorted({n.inputs[0].attrs["ref"][1] for n in graph.nodes
                           if n.op == "random" and n.inputs[0].op == "input"
                           and n.inputs[0].attrs["ref"][0] == "captured"})
        stats = sorted({t.attrs["ref"][1] for t, _ in graph.updates
                        if t.attrs["ref"][0] == "captured" and t.attrs["ref"][1] not in counters
                        and traced.captured[t.attrs["ref"][1]].dtype.kind == "f"})
        shapes = [p.shape for p in self.ps] + [traced.captured[k].shape for k in stats]
        return grads, stats, counters, shapes

    def _check_agreement(self, everyone):
        """Refuse to start where ranks would round differently or disagree on the model."""
        cpu0, threads0, model0 = everyone[0]
        for r, (cpu, threads, model) in enumerate(everyone):
            if model is None:
                raise UsageError(f"rank {r} has no data at the first step: every rank needs a "
                                 "non-empty first batch (give the DataLoader at least "
                                 "batchsize x ranks samples)")
            if cpu != cpu0 or threads != threads0:
                raise UsageError(
                    f"rank {r} runs on {cpu} with {threads} threads but rank 0 on {cpu0} "
                    f"with {threads0}: different native code rounds differently, so "
                    "parameters would drift apart; run every rank on the same kind of CPU "
                    "with the same GRAPHFLUX_NUM_THREADS")
            if model != model0:
                raise UsageError(f"rank {r}'s model differs from rank 0's (parameters with a "
                                 "gradient, running statistics, dropout layers): every rank "
                                 "must build the same model and loss")

    def _layout(self, grads):
        """One buffer per rank: each gradient (aligned), the control block, rank 0's
        hyperparameters (at most this many: each parameter's optimiser scalars), the running
        statistics; the exchange sums them into one more, which the update reads."""
        ps, opt, offset, offsets = self.ps, self.opt, 0, []
        for i in grads:
            offsets.append(offset)
            offset += _round(ps[i].size)
        self.grad_end = self.control = offset
        self.hyper_at = offset + STATUS + self.comm.size
        self.stats_at = self.hyper_at + sum(len(opt.scalars(opt.slot(ps[i]).host))
                                            for i in grads)
        self.stat_offsets = list(np.cumsum([0] + [a.size for a in self.stats])[:-1]
                                 + self.stats_at)
        self.exchanger = Exchange(self.comm, self.stats_at + sum(a.size for a in self.stats),
                                  self.dtype)
        self.buffer = self.exchanger.mine

        def views(buffer):
            return [(i, buffer[o:o + ps[i].size].reshape(ps[i].shape))
                    for i, o in zip(grads, offsets)]
        self.grad_views, self.summed_views = views(self.buffer), views(self.exchanger.result)

    def _broadcast(self, grads, counters):
        """Rank 0's parameters, optimiser state (arrays and host state) and running
        statistics to every rank; then each rank's dropout counters moved to its own
        stream."""
        comm, ps, opt = self.comm, self.ps, self.opt
        for p in ps:
            comm.bcast_array(p)
        records = [opt.slot(ps[i]) for i in grads]
        for rec in records:
            for a in rec.arrays.values():
                comm.bcast_array(a)
        hosts = comm.bcast([rec.host for rec in records])
        for rec, host in zip(records, hosts):
            rec.host = host
        for a in self.written:
            comm.bcast_array(a)
        for a in counters:
            a += comm.rank * COUNTER_STRIDE
