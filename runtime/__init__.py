"""graphflux.runtime: execution -- numpy implementations of the ops (registered into the
compiler's table on import), the reference interpreter, eager mode and native-code loading."""
from . import numpy_impls  # noqa: F401
from .interpreter import evaluate  # noqa: F401
