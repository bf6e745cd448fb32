"""Train and test modes (Flux's "auto"): Dropout and BatchNorm are active only while graphflux
computes a gradient or a training step, unless gf.trainmode / gf.testmode forces a mode."""

from graphflux.compiler.tracer import current_context

from .bindings import replaced
from .params import _IGNORED

_training = [False]


class training:
    """Mark the code inside as computing a gradient (auto mode turns layers on). A class, not
    a generator: eager mode enters it every step."""

    def __enter__(self):
        self.previous = _training[0]
        _training[0] = True
        return self

    def __exit__(self, *exc):
        _training[0] = self.previous


def is_active(layer):
    return layer.active if layer.active is not None else _training[0]


def _set(model, active, seen=None):
    seen = set() if seen is None else seen
    if id(model) in seen:
        return
    seen.add(id(model))
    if hasattr(model, "active"):
        model.active = active
    children = model if isinstance(model, (list, tuple)) else \
        model.values() if isinstance(model, dict) else \
        vars(model).values() if hasattr(model, "__dict__") else ()
    for child in children:
        if isinstance(child, (list, tuple, dict)) or hasattr(child, "__dict__") and \
                not isinstance(child, _IGNORED):
            _set(child, active, seen)
    replaced("a layer's train/test mode was forced")


def trainmode(model, active=True):
    """Force Dropout/BatchNorm layers in `model` on (active=None: back to auto)."""
    _set(model, active)
    return model


def testmode(model, active=False):
    """Force Dropout/BatchNorm layers in `model` off (active=None: back to auto)."""
    _set(model, active)
    return model


def write_state(array, value):
    """Store a layer's new running statistics: inside a trace or an eager step it becomes part
    of the step (written only when the loss is finite); in a plain call it is written now."""
    ctx = current_context()
    if ctx is not None and hasattr(ctx, "add_update"):
        ctx.add_update(array, value)
    else:
        import numpy as np
        np.copyto(array, value)
