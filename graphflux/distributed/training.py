"""`gf.train(..., comm=comm)`'s loop: the same items, callbacks and stop/skip as the one-process
loop, with every rank taking part in every step's collective until all of them stop.

A rank cannot leave the loop on its own: the others would wait in the next collective for
ever. So `gf.stop()` on one rank, and a rank's data running out, travel in the next step's
collective: that step updates nothing and every rank leaves the loop together. Parameters
are then those after the last step every rank completed."""
from ..errors import NonFiniteLoss, UsageError


def train_ranks(step, data, callbacks, bar, arity, stop_training, skip_item, step_info):
    """Run the distributed step over `data` on this rank (see the module docstring)."""
    items, i, value, stopping = iter(data), -1, None, False
    while True:
        if stopping:
            outcome = step.exchange(None, stop=True)
        else:
            d = next(items, _END)
            if d is _END:
                outcome = step.exchange(None)
            else:
                i += 1
                args = d if isinstance(d, tuple) else (d,)
                arity.check(args, d, i)
                try:
                    outcome = step.exchange(args)
                except NonFiniteLoss as e:
                    raise NonFiniteLoss(f"data item {i} (index from 0; every rank's item {i} "
                                        f"was skipped): {e}", what=e.what, source=e.source,
                                        item=i) from None
        if outcome.done and outcome.done < step.comm.size and not outcome.stop:
            raise UsageError(f"{outcome.done} of {step.comm.size} ranks ran out of data after "
                             f"{i + 1 if d is _END else i} items while the others had more: "
                             "give every rank the same number of items (gf.DataLoader(..., "
                             "shard=comm) does)")
        if outcome.stop or outcome.done:
            break
        value = outcome.loss
        bar.show(i, value)
        info = step_info(i + 1, i, value)
        try:
            for f, wants_info in callbacks:
                f(info) if wants_info else f()
        except stop_training:
            stopping = True
        except skip_item:
            continue
    if value is not None:
        bar.show(i, value, final=True)


_END = object()
