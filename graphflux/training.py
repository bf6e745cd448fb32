"""`gf.train` and its helpers: callbacks, stop/skip, throttle, epochs."""
import functools
import inspect
import logging
import sys
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass

from graphflux.compiler.errors import TraceError
from graphflux.compiler.source import user_source_line
from graphflux.compiler.tracer import TraceContext, current_context

from .compiled import CompiledStep, check_mode, check_optimiser
from .eager_step import EagerStep
import numpy as np

from .errors import ArgumentError, NonFiniteLoss, UsageError
from .params import Params, as_params, params
from .tracing import check_params

log = logging.getLogger("graphflux")


class StopTraining(Exception):
    """Raised by gf.stop(): train() ends after the current step."""


class SkipItem(Exception):
    """Raised by gf.skip(): train() moves on to the next data item."""


def stop():
    raise StopTraining()


def skip():
    if isinstance(current_context(), TraceContext):
        raise TraceError("gf.skip() cannot run inside a compiled loss (the loss is traced once, "
                         "not run per item): use mode='eager', or call skip() from a callback "
                         f"(at {user_source_line()})")
    raise SkipItem()


@dataclass
class StepInfo:
    """What a callback that takes one argument receives."""
    step: int
    index: int
    loss: float


def _takes_one_argument(f):
    try:
        sig = inspect.signature(f)
    except (TypeError, ValueError):
        return False
    for p in sig.parameters.values():
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL):
            return True
    return False


def _callbacks(cb):
    if cb is None:
        return []
    fs = list(cb) if isinstance(cb, (list, tuple)) else [cb]
    for f in fs:
        if not callable(f):
            raise TypeError(f"cb must be a callable or a list of callables, got {f!r}")
    return [(f, _takes_one_argument(f)) for f in fs]


STEPS_PER_OPTIMISER = 8
_STEPS = weakref.WeakKeyDictionary()    # optimiser -> its steps, most recently used last


def cached_steps(opt):
    """How many steps `gf.train` keeps for this optimiser."""
    return len(_STEPS.get(opt, ()))


def _loss_key(loss):
    """What makes two loss functions the same computation: a fresh `lambda x, y: ...` per
    epoch has the same code, defaults, globals and captured objects as the last one, so it
    reuses its step instead of piling up a step (and its native code) per lambda. Anything
    else (a callable object, a partial) is keyed by identity."""
    code = getattr(loss, "__code__", None)
    if code is None:
        return ("object", id(loss))
    cells = tuple(id(c.cell_contents) if _filled(c) else None for c in loss.__closure__ or ())
    return ("function", code, id(loss.__globals__), tuple(map(id, loss.__defaults__ or ())),
            tuple(map(id, (loss.__kwdefaults__ or {}).values())), cells)


def _filled(cell):
    try:
        cell.cell_contents
    except ValueError:
        return False
    return True


def _step_for(loss, ps, opt, mode, model=None, comm=None):
    """Reuse one step object per (loss, params, optimiser, mode, communicator), so calling
    train once per epoch traces once and the last partial batch compiles once. The optimiser
    keeps the STEPS_PER_OPTIMISER most recently used steps. With `model` (explicit style) the
    loss is called as loss(model, *batch)."""
    cache = _STEPS.get(opt)
    if cache is None:
        cache = _STEPS[opt] = OrderedDict()
    key = (_loss_key(loss), tuple(map(id, ps)), mode, id(model), id(comm))
    entry = cache.get(key)
    if entry is None:
        call = loss if model is None else functools.partial(loss, model)
        step = _new_step(call, ps, opt, mode, comm)
        # the key holds ids: the entry keeps those objects alive, so no id is reused
        entry = cache[key] = (loss, model, tuple(ps), comm, step)
        while len(cache) > STEPS_PER_OPTIMISER:
            cache.popitem(last=False)
    cache.move_to_end(key)
    return entry[-1]


class _Arity:
    """Checks that each data item fits the loss's parameters before the loss runs, so a
    mistake in the shape of `data` gets words about `data`, not a TypeError from inside the
    trace. Only items whose length differs from the last checked one cost a check."""

    def __init__(self, loss, data):
        try:
            self.signature = inspect.signature(loss)
        except (TypeError, ValueError):
            self.signature = None
        self.data, self.last = data, None

    def check(self, args, item, i):
        if self.signature is None or len(args) == self.last:
            return
        try:
            self.signature.bind(*args)
        except TypeError as e:
            raise ArgumentError(self._message(args, item, i, e)) from None
        self.last = len(args)

    def _message(self, args, item, i, e):
        params = [p for p in self.signature.parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        wanted = f"{len(params)} argument{'s' if len(params) != 1 else ''}"
        names = ", ".join(p.name for p in params)
        text = f"the loss takes {wanted} ({names}) but data item {i} gives {len(args)} ({e})"
        if isinstance(self.data, tuple) and all(isinstance(a, np.ndarray) for a in self.data):
            return (f"data is a tuple of {len(self.data)} arrays, so each array is one item: "
                    f"pass data=[(x, y)] (a list of tuples) or a gf.DataLoader; {text}")
        if isinstance(item, list):
            return (f"data item {i} is a list, which is passed as one argument; make each item "
                    f"a tuple (x, y) to have it splatted as loss(x, y); {text}")
        return f"{text}; a tuple item is splatted as loss(*item), anything else is passed whole"


class OptState:
    """What gf.setup returns (Flux 0.14's explicit style): the rule and the model it trains."""

    def __init__(self, rule, model):
        self.rule, self.model, self.ps = rule, model, params(model)

    def __repr__(self):
        return f"OptState({self.rule!r}, {len(self.ps)} arrays)"


def setup(rule, model):
    """Optimiser state for `model` (explicit style): use with gf.train(loss, model, data,
    state), where loss(model, *batch)."""
    check_params(params(model))
    return OptState(rule, model)


def _is_model(x):
    return not isinstance(x, (Params, np.ndarray, list, tuple, dict)) and hasattr(x, "__dict__")


class _Progress:
    """A one-line progress bar with the running (exponentially averaged) loss, on stderr."""

    def __init__(self, total, enabled, stream=None):
        self.total, self.enabled, self.last, self.avg = total, enabled, 0.0, None
        self.stream = stream or sys.stderr

    def show(self, i, loss, final=False):
        self.avg = loss if self.avg is None else 0.9 * self.avg + 0.1 * loss
        now = time.perf_counter()
        if not self.enabled or (not final and now - self.last < 0.1):
            return
        self.last = now
        if self.total:
            filled = int(20 * (i + 1) / self.total)
            bar = f"[{'#' * filled}{'.' * (20 - filled)}] {i + 1}/{self.total}"
        else:
            bar = f"step {i + 1}"
        self.stream.write(f"\r{bar}  loss {self.avg:.4g}" + ("\n" if final else ""))
        self.stream.flush()


def _new_step(loss, ps, opt, mode, comm):
    if comm is None:
        return EagerStep(loss, ps, opt) if mode == "eager" else CompiledStep(loss, ps, opt)
    if mode == "eager":
        raise UsageError("data-parallel training (comm=...) runs compiled steps only: leave "
                         "mode at 'compiled'")
    from .distributed.step import DistributedStep
    return DistributedStep(loss, ps, opt, comm)


def train(loss, ps, data, opt, *, cb=None, mode="compiled", progress=None, comm=None):
    """For each item d of data: loss(*d) (or loss(d)), gradient, update, callbacks. With
    `comm` (gf.distributed), every rank trains on its own data and gradients are summed
    across ranks (graphflux.distributed)."""
    check_mode(mode)
    callbacks = _callbacks(cb)
    check_optimiser(opt, allow=(OptState,))
    if _is_model(ps):          # explicit style: train(loss, model, data, setup(rule, model))
        state = opt if isinstance(opt, OptState) else setup(opt, ps)
        step = _step_for(loss, state.ps, state.rule, mode, model=ps, comm=comm)
    else:
        if isinstance(opt, OptState):
            raise TypeError("gf.train(loss, ps, data, opt): an optimiser state from gf.setup "
                            "goes with a model, gf.train(loss, model, data, state)")
        step = _step_for(loss, as_params(ps), opt, mode, comm=comm)
    total = len(data) if hasattr(data, "__len__") else None
    bar = _Progress(total, sys.stderr.isatty() if progress is None else bool(progress))
    i, value = -1, None
    arity = _Arity(step.loss, data)
    if comm is not None:
        from .distributed.training import train_ranks
        return train_ranks(step, data, callbacks, bar, arity, StopTraining, SkipItem, StepInfo)
    for i, d in enumerate(data):
        args = d if isinstance(d, tuple) else (d,)
        arity.check(args, d, i)
        try:
            value = step(*args)
        except SkipItem:
            continue
        except StopTraining:
            break
        except NonFiniteLoss as e:
            raise NonFiniteLoss(f"the {e.what} is not finite on data item {i} (index from 0); "
                                "parameters, optimiser state, running statistics and counters "
                                f"are as before that item ({e})", what=e.what, source=e.source,
                                item=i) from None
        bar.show(i, value)
        info = StepInfo(i + 1, i, value)
        try:
            for f, wants_info in callbacks:
                f(info) if wants_info else f()
        except StopTraining:
            break
        except SkipItem:
            continue
    if value is not None:
        bar.show(i, value, final=True)


def throttle(f, timeout, *, leading=True, trailing=False):
    """Call f at most once per `timeout` seconds (Flux's throttle); keeps f's signature.
    With trailing=True the last call made during the cool-down runs when it ends."""
    state = {"last": None, "pending": None, "timer": None, "result": None}
    lock = threading.Lock()

    def fire_pending():
        with lock:
            pending, state["pending"], state["timer"] = state["pending"], None, None
            if pending is None:
                return
            state["last"] = time.monotonic()
            state["timer"] = threading.Timer(timeout, fire_pending)
            state["timer"].daemon = True
            state["timer"].start()
        state["result"] = pending()

    @functools.wraps(f)
    def throttled(*args, **kwargs):
        now = time.monotonic()
        with lock:
            cooling = state["last"] is not None and now - state["last"] < timeout
            if not cooling and leading:
                state["last"] = now
                call = True
            else:
                call = False
                if trailing or (not leading and not cooling):
                    state["pending"] = lambda: f(*args, **kwargs)
                    if state["timer"] is None:
                        wait = timeout - (now - state["last"]) if cooling else timeout
                        if not cooling:
                            state["last"] = now
                        state["timer"] = threading.Timer(max(wait, 0), fire_pending)
                        state["timer"].daemon = True
                        state["timer"].start()
        if call:
            state["result"] = f(*args, **kwargs)
        return state["result"]
    return throttled


def epochs(n):
    """range(1, n+1) that logs `Epoch i` at INFO before each epoch (Flux's @epochs)."""
    for i in range(1, n + 1):
        log.info("Epoch %d", i)
        yield i


def ncycle(data, n):
    """Iterate over `data` n times (IterTools.ncycle)."""
    for _ in range(n):
        yield from data


def patience(predicate, wait):
    """A function that returns True once `predicate` (called with the same arguments) has been
    true `wait` times in a row (Flux.patience)."""
    count = 0

    def on_trigger(*args, **kwargs):
        nonlocal count
        count = count + 1 if predicate(*args, **kwargs) else 0
        return count >= wait
    return on_trigger


def early_stopping(f, delay, *, distance=lambda best, score: best - score, init_score=0,
                   min_dist=0):
    """True once the score f() has not improved (by at least min_dist) `delay` times in a row;
    `distance(best, score)` (default best - score: lower is better) measures improvement."""
    best = init_score

    def trigger(*args, **kwargs):
        nonlocal best
        score = f(*args, **kwargs)
        delta = distance(best, score)
        best = best if delta < 0 else score
        return delta < min_dist
    return patience(trigger, delay)


def plateau(f, width, *, distance=lambda last, score: last - score, init_score=0,
            min_dist=1e-6):
    """True once f() has changed by less than min_dist `width` times in a row."""
    last = init_score

    def is_plateau(*args, **kwargs):
        nonlocal last
        score = f(*args, **kwargs)
        delta = abs(distance(last, score))
        last = score
        return delta < min_dist
    return patience(is_plateau, width)
