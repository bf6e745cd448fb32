"""The errors users can cause; all derive from GraphfluxError."""
from graphflux.compiler.errors import (CompileError, GraphfluxError, ShapeError,  # noqa: F401
                                       SignatureError, TraceError)


class NonFiniteLoss(GraphfluxError, FloatingPointError):
    """The loss was NaN or infinite; parameters and optimiser state were left untouched."""
