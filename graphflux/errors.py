"""The errors users can cause; all derive from GraphfluxError."""
from graphflux.compiler.errors import (CompileError, GraphfluxError, ShapeError,  # noqa: F401
                                       SignatureError, TraceError)


class UsageError(GraphfluxError, ValueError):
    """An option or size outside what it may be (`mode="fast"`, `Dense(-1, 3)`, `Dropout(1.5)`)."""


class ArgumentError(GraphfluxError, TypeError):
    """A value of the wrong kind: a loss called with the wrong number of arguments, a layer that
    is not callable, an optimiser class where an instance belongs."""


class FileWriteError(GraphfluxError, OSError):
    """A file graphflux was asked to write could not be written; nothing was changed."""


class MissingFileError(GraphfluxError, FileNotFoundError):
    """A file graphflux was asked to read does not exist."""


class NonFiniteLoss(GraphfluxError, FloatingPointError):
    """The loss or a gradient was NaN or infinite; parameters, optimiser state, running
    statistics and counters were left untouched. `what` says which ("loss" or "gradient of
    <parameter>"), `source` the user line of the first non-finite node (when found), `item`
    the data item (set by gf.train)."""

    def __init__(self, message, *, what="loss", source=None, item=None):
        super().__init__(message)
        self.what, self.source, self.item = what, source, item
