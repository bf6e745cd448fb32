"""When an array a compiled step holds is replaced.

A compiled step or `gf.jit` function binds the model's arrays -- parameters, optimiser state,
running statistics, random counters -- by their memory, once, when it is traced. Something
that puts a *different* array where the step found one (`layer.weight = new`, `gf.load` with
an optimiser, `gf.trainmode`) would leave it reading and writing the old memory. Rather than
check every bound array on every call, graphflux moves one process-wide counter whenever it
sees such a replacement; every step compares the counter on each call (one integer compare)
and retraces when it moved, which binds whatever the model holds now."""
import numpy as np

from graphflux.compiler.tracer import Tracer

GENERATION = [0]
WHY = ["nothing replaced"]     # the last replacement, for the retrace's log line


def replaced(why):
    """Something a step may hold was replaced: every step retraces on its next call."""
    GENERATION[0] += 1
    WHY[0] = why


class HoldsArrays:
    """Base of graphflux's layers: assigning an attribute that held an array (or giving one
    an array where it held something else, such as `bias=None`) counts as a replacement.
    Tracing's own stand-ins (tracers put into the slots while a loss runs) do not."""

    def __setattr__(self, name, value):
        old = self.__dict__.get(name, value)
        if old is not value and not isinstance(old, Tracer) and not isinstance(value, Tracer) \
                and (isinstance(old, np.ndarray) or isinstance(value, np.ndarray)):
            replaced(f"{type(self).__name__}.{name} now holds a different array")
        object.__setattr__(self, name, value)
