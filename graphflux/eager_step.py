"""Eager mode behind the same interfaces: the loss runs op by op on numpy with a tape, the
gradient comes from the tape, the optimiser rule runs on arrays."""
import gc
import math

import numpy as np

from graphflux.compiler.errors import TraceError
from graphflux.runtime.eager import EagerContext, EagerTensor, backward

from .modes import training
from .eager_update import update_eager
from .nonfinite import eager_nonfinite_error, first_nonfinite_gradient
from .params import Grads, as_params, warn_unused
from .signature import check_batch
from .tracing import TRACE_LOCK, check_params, installed, no_parameter_message


def eager_value_and_grads(f, ps, args=(), warn=True, ctx=None, owned=True, check=None):
    """(loss value as float, list of gradient arrays or None) of `f(*args)` over params `ps`,
    recorded in `ctx` (an idle EagerContext over `ps`; a new one by default). With `owned`
    the gradients are fresh arrays the caller may keep (runtime.eager.backward). Running
    statistics are written only when the loss is finite and `check(value, grads)`, if given,
    returns without raising -- as the native step writes them."""
    ctx = EagerContext(ps) if ctx is None else ctx
    ctx.idle = False
    collecting = gc.isenabled()
    gc.disable()        # a step allocates thousands of short-lived objects; the tape is
    try:                # released explicitly below, so cyclic collection adds only cost
        with TRACE_LOCK, installed(ps, ctx.leaves), ctx, training():
            out = f(*args)
        grads = backward(ctx, out, owned)
        value = _scalar(out.value if type(out) is EagerTensor else out)
        if check is not None:
            check(value, grads)
        if math.isfinite(value):
            ctx.apply_updates()
    finally:
        ctx.release()
        if collecting:
            gc.enable()
    if warn:
        for g in grads:
            if g is None:
                warn_unused(ps, grads)
                break
    return value, grads


def _scalar(x):
    """The loss as a Python float (a numpy scalar, a number, or an array of one element)."""
    if type(x) is np.ndarray and x.ndim or not isinstance(x, (np.generic, np.ndarray, float)):
        x = np.asarray(x).reshape(())
    return float(x)


class EagerStep:
    """The eager twin of CompiledStep (`gf.compile(..., mode="eager")`), with the same
    guarantees: a bad hyperparameter, a non-finite loss or a non-finite gradient raises
    before anything is written."""

    def __init__(self, loss, ps, opt=None):
        self.loss, self.ps, self.opt = loss, as_params(ps), opt
        self.dtype = check_params(self.ps)
        self._warned = set()
        self._ctx = EagerContext(self.ps)   # reused step after step: its leaves stay

    def __call__(self, *batch):
        batch = check_batch(batch, self.dtype, self._warned)
        if self.opt is not None:
            self.opt.check_hyperparameters()
        with TRACE_LOCK:
            if not self._ctx.idle:     # a step called from inside its own loss
                self._ctx = EagerContext(self.ps)
            loss, grads = eager_value_and_grads(self.loss, self.ps, batch, ctx=self._ctx,
                                                owned=self.opt is None,
                                                check=lambda v, gs: self._check(v, gs, batch))
            if self.opt is None:
                return loss, Grads(self.ps, grads)
            update_eager(self.opt, zip(self.ps, grads))
        return loss

    def _check(self, loss, grads, batch):
        if self.opt is not None and len(self.ps) and all(g is None for g in grads):
            raise TraceError(no_parameter_message(self.ps))
        if math.isfinite(loss):
            bad = first_nonfinite_gradient(grads)
            if bad is None:
                return
            what = f"gradient of {self.ps.name(self.ps[bad])}"
        else:
            what = "loss"
        raise eager_nonfinite_error(what, loss, self.loss, self.ps, batch)
