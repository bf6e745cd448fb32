"""Reading resident memory for the memory benchmarks (compile_memory.py, soak.py): the resident
set from /proc, and glibc's malloc_trim(0), which hands free heap pages back to the kernel, so
that what remains is what the process holds rather than what its allocator keeps for reuse."""
import ctypes
import gc
import os

try:
    _LIBC = ctypes.CDLL("libc.so.6")
    _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
except OSError:
    _LIBC = None


def resident_bytes():
    """Resident set size in bytes, from /proc/self/statm."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def collect(trim):
    """Collect the garbage (cycles are garbage, not growth), then malloc_trim(0) when `trim`
    (and glibc)."""
    gc.collect()
    if trim and _LIBC is not None:
        _LIBC.malloc_trim(0)
