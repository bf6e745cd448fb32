"""Every error a user can cause derives from GraphfluxError, so `except gf.GraphfluxError` catches
them all; the subclasses also derive from the builtin that fits, so plain Python habits work too."""


class GraphfluxError(Exception):
    """Base class of every error graphflux raises because of its input."""


class ShapeError(GraphfluxError, ValueError):
    """Operand shapes that do not fit an op; the message names the op, shapes and user line."""


class TraceError(GraphfluxError, TypeError):
    """Something the tracer cannot turn into a graph (control flow, numpy on traced values)."""


class CompileError(GraphfluxError, ValueError):
    """A graph the code generator cannot lower."""


class SignatureError(GraphfluxError, ValueError):
    """Arguments whose shapes, dtypes or lengths do not fit the call."""
