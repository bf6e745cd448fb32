"""graphflux: Flux.jl's training API for Python, compiled through LLVM."""
from . import compiler, runtime  # noqa: F401
