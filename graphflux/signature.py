"""What a call's data looks like: checks and casts at the boundary, the signature an artifact
is specialised on, and the words for why a new one was needed."""
import warnings

import numpy as np

from graphflux.compiler.errors import SignatureError


def check_batch(batch, dtype, warned):
    """Cast floating arrays to the parameters' dtype (one warning per signature), make arrays
    C-contiguous, and refuse arrays whose axis-0 lengths differ -- all before compiling."""
    out, n0 = [], None
    for i, a in enumerate(batch):
        if isinstance(a, np.ndarray):
            if a.ndim == 0:
                raise SignatureError(f"argument {i} is a 0-d array; data arguments are "
                                     "batch-first arrays (put constants in the loss's closure)")
            if n0 is None:
                n0 = (i, a.shape[0])
            elif a.shape[0] != n0[1]:
                raise SignatureError(
                    f"data arguments must share their batch length (axis 0): argument {n0[0]} "
                    f"has {n0[1]} rows but argument {i} has {a.shape[0]} (shape {a.shape})")
            if a.dtype.kind == "f" and a.dtype != dtype:
                key = (i, a.dtype.str)
                if key not in warned:
                    warned.add(key)
                    warnings.warn(f"argument {i} is {a.dtype}, the parameters are {dtype}: "
                                  "converting it (convert the data once to avoid the copy)",
                                  stacklevel=4)
                a = a.astype(dtype)
            elif not a.flags.c_contiguous:
                a = np.ascontiguousarray(a)
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
