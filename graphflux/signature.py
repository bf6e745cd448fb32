"""What a call's data looks like: checks and casts at the boundary, the signature an artifact
is specialised on, and the words for why a new one was needed."""
import warnings

import numpy as np

from graphflux.compiler.errors import SignatureError


def is_native_dense(a):
    """Whether native code may read `a` by its raw pointer: a plain ndarray (not a subclass
    whose pointer may not be the whole story), C-contiguous, aligned, in native byte order."""
    return type(a) is np.ndarray and a.flags.c_contiguous and a.flags.aligned \
        and a.dtype.isnative


def native_dense(a):
    """`a` itself when native code may read it by pointer, else a native-order C-contiguous
    copy (a memmap, a strided view, big-endian or unaligned data) -- never a raw pointer."""
    if is_native_dense(a):
        return a
    return np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("=")).view(np.ndarray)


def fast_key(a):
    """What decides, for one argument, whether it can be passed as it is: the exact type,
    shape, dtype (byte order included), contiguity and alignment. Equal keys mean equal
    treatment, which is what lets a step skip `check_batch` on a repeated signature."""
    if isinstance(a, np.ndarray):
        return (type(a), a.shape, a.dtype, a.flags.c_contiguous, a.flags.aligned)
    return ("value", repr(a))


def check_batch(batch, dtype, warned):
    """Cast floating arrays to the parameters' dtype (one warning per signature), make arrays
    native-order, C-contiguous plain ndarrays, and refuse arrays whose dtype native code
    cannot read -- all before compiling. Arrays may differ in length: a single observation
    (`x` of shape (784,), `y` of (10,)) is data too, and the ops report real mismatches."""
    out = []
    for i, a in enumerate(batch):
        if isinstance(a, np.ndarray):
            if a.ndim == 0:
                raise SignatureError(f"argument {i} is a 0-d array; data arguments are "
                                     "batch-first arrays (put constants in the loss's closure)")
            if a.dtype.kind not in "fiub":
                raise SignatureError(f"argument {i} has dtype {a.dtype}: data arguments must "
                                     "be numeric arrays (float, int or bool); convert it with "
                                     ".astype(np.float32)")
            if a.dtype.kind == "f" and a.dtype != dtype:
                key = (i, a.dtype.str)
                if key not in warned:
                    warned.add(key)
                    warnings.warn(f"argument {i} is {a.dtype}, the parameters are {dtype}: "
                                  "converting it (convert the data once to avoid the copy)",
                                  stacklevel=4)
                a = np.ascontiguousarray(a, dtype=dtype)
            a = native_dense(a)
        out.append(a)
    return out


def signature(batch):
    return tuple((a.shape, a.dtype.str) if isinstance(a, np.ndarray) else ("value", repr(a))
                 for a in batch)


def describe_change(old, new):
    if old is None:
        return "first call with " + ", ".join(
            f"argument {i}: {s[1]}{list(s[0])}" if s[0] != "value" else f"argument {i}: {s[1]}"
            for i, s in enumerate(new)) if new else "first call"
    for i, (a, b) in enumerate(zip(old, new)):
        if a != b:
            if a[0] != b[0]:
                return f"new shape for argument {i}: {a[0]} -> {b[0]}"
            return f"new dtype or value for argument {i}: {a[1]} -> {b[1]}"
    return f"{len(new)} arguments instead of {len(old)}"
