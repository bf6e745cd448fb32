"""Where in the user's code a node came from: the innermost stack frame outside graphflux."""
import os
import sys

_package_dirs = None


def _graphflux_dirs():
    global _package_dirs
    if _package_dirs is None or len(_package_dirs) < 3:
        names = ("graphflux", "graphflux.compiler", "graphflux.runtime")
        _package_dirs = tuple(
            os.path.dirname(os.path.abspath(sys.modules[n].__file__)) + os.sep
            for n in names if n in sys.modules
        )
    return _package_dirs


def user_source_line():
    """Return "file.py:LINE" of the first caller frame outside graphflux's own folders."""
    dirs = _graphflux_dirs()
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not filename.startswith(dirs) and not filename.startswith("<frozen"):
            return f"{os.path.basename(filename)}:{frame.f_lineno}"
        frame = frame.f_back
    return "<graphflux>"
