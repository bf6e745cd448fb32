"""graphflux.runtime: execution -- numpy implementations of the ops (registered into the
compiler's table on import), the reference interpreter, eager mode and native-code loading."""
from graphflux.compiler import llvm_backend as _llvm_backend

from . import numpy_impls  # noqa: F401
from .cache import LibraryStore
from .interpreter import evaluate  # noqa: F401

_llvm_backend.LIBRARY_STORE[:] = [LibraryStore()]
