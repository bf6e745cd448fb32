"""graphflux.compiler: pure transformations -- graph IR, tracing, the op set, symbolic AD,
optimisation passes and lowering to LLVM. Nothing here executes a graph."""
from . import array_methods, elementwise, ops, tracer  # noqa: F401
from .errors import CompileError, GraphfluxError, ShapeError, SignatureError, TraceError  # noqa: F401
from .graph import Graph, Node  # noqa: F401
