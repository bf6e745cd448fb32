"""`gf.train` and its helpers: callbacks, stop/skip, throttle, epochs."""
import functools
import inspect
import logging
import sys
import threading
import time
from dataclasses import dataclass

from graphflux.compiler.errors import TraceError
from graphflux.compiler.source import user_source_line
from graphflux.compiler.tracer import TraceContext, current_context

from .compiled import CompiledStep
from .eager_step import EagerStep
from .errors import NonFiniteLoss
from .params import as_params

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


def _step_for(loss, ps, opt, mode):
    """Reuse one step object per (loss, params, optimiser, mode), so calling train once per
    epoch traces once and the last partial batch compiles once."""
    cache = opt.__dict__.setdefault("_steps", {})
    key = (id(loss), tuple(map(id, ps)), mode)
    entry = cache.get(key)
    if entry is None or entry[0] is not loss:
        step = EagerStep(loss, ps, opt) if mode == "eager" else CompiledStep(loss, ps, opt)
        entry = cache[key] = (loss, step)
    return entry[1]


class _Progress:
    def __init__(self, total, enabled):
        self.total, self.enabled, self.last = total, enabled, 0.0

    def show(self, i, loss, final=False):
        now = time.perf_counter()
        if not self.enabled or (not final and now - self.last < 0.1):
            return
        self.last = now
        total = f"/{self.total}" if self.total else ""
        sys.stderr.write(f"\r  step {i + 1}{total}  loss {loss:.6g}" + ("\n" if final else ""))
        sys.stderr.flush()


def train(loss, ps, data, opt, *, cb=None, mode="compiled", progress=None):
    """For each item d of data: loss(*d) (or loss(d)), gradient, update, callbacks."""
    if mode not in ("compiled", "eager"):
        raise ValueError(f"mode must be 'compiled' or 'eager', got {mode!r}")
    ps = as_params(ps)
    callbacks = _callbacks(cb)
    step = _step_for(loss, ps, opt, mode)
    total = len(data) if hasattr(data, "__len__") else None
    bar = _Progress(total, sys.stderr.isatty() if progress is None else bool(progress))
    i, value = -1, None
    for i, d in enumerate(data):
        args = d if isinstance(d, tuple) else (d,)
        try:
            value = step(*args)
        except SkipItem:
            continue
        except StopTraining:
            break
        except NonFiniteLoss as e:
            raise NonFiniteLoss(f"the loss is not finite on data item {i} (index from 0); "
                                f"parameters and optimiser state are as before that item ({e})") \
                from None
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
