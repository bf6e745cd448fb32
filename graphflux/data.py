"""DataLoader and one-hot helpers. Observations run along axis 0."""
import numbers

import numpy as np

from graphflux.compiler.errors import GraphfluxError

from .layers import as_rng


class DataError(GraphfluxError, ValueError):
    """Data whose parts do not fit together."""


class DataLoader:
    """Mini-batches of `data` (an array, a tuple or a dict of arrays sharing their length along
    axis 0), yielding the same structure. Shuffles afresh at the start of every iteration.

    With `shard=comm` (gf.distributed) each rank yields its share of every global batch of
    `batchsize` x ranks observations: the global batches are those of one process with that
    batch size, split over the ranks as evenly as they go, so every rank takes the same number
    of steps and the union of a step's shares is the global batch. A short last batch may leave
    a rank an empty share (its weight in the gradient is 0). Without `rng` the permutation's
    seed is rank 0's, sent to every rank; a given `rng` must be the same on every rank."""

    def __init__(self, data, batchsize=1, *, shuffle=False, partial=True, rng=None,
                 shard=None):
        arrays = list(data.values()) if isinstance(data, dict) else \
            list(data) if isinstance(data, tuple) else [data]
        if not arrays:
            raise DataError("DataLoader needs at least one array")
        lengths = [np.shape(a)[0] if np.ndim(a) else None for a in arrays]
        if None in lengths or len(set(lengths)) != 1:
            shapes = ", ".join(str(np.shape(a)) for a in arrays)
            raise DataError(f"DataLoader arrays must share their length along axis 0, got "
                            f"shapes {shapes}")
        if isinstance(batchsize, bool) or not isinstance(batchsize, numbers.Integral) \
                or batchsize < 1:
            raise DataError(f"batchsize must be a whole number >= 1, got {batchsize!r}")
        self.data, self.n, self.shard = data, lengths[0], shard
        ranks = 1 if shard is None else shard.size
        self.batchsize = min(int(batchsize) * ranks, self.n)   # the global batch
        if shard is not None and rng is None:
            rng = shard.bcast(int(as_rng(None).integers(2 ** 62)) if shard.rank == 0 else None)
        self.shuffle, self.partial, self.rng = shuffle, partial, as_rng(rng)

    def __len__(self):
        return -(-self.n // self.batchsize) if self.partial else self.n // self.batchsize

    def _take(self, idx):
        pick = (lambda a: a[idx]) if not isinstance(idx, slice) else (lambda a: a[idx])
        if isinstance(self.data, dict):
            return {k: pick(v) for k, v in self.data.items()}
        if isinstance(self.data, tuple):
            return tuple(pick(v) for v in self.data)
        return pick(self.data)

    def __iter__(self):
        order = self.rng.permutation(self.n) if self.shuffle else None
        for b in range(len(self)):
            lo, hi = b * self.batchsize, min((b + 1) * self.batchsize, self.n)
            if self.shard is not None:
                lo, hi = _share(lo, hi, self.shard)
            yield self._take(order[lo:hi] if order is not None else slice(lo, hi))


def _share(lo, hi, comm):
    """Rank comm.rank's part of positions [lo, hi): contiguous parts, sizes differing by at
    most one, the larger first (numpy.array_split's rule)."""
    size, extra = divmod(hi - lo, comm.size)
    start = lo + comm.rank * size + min(comm.rank, extra)
    return start, start + size + (comm.rank < extra)


def onehotbatch(labels, classes):
    """(n, k) float32 with a 1 in column classes.index(label) of each row."""
    classes = list(classes)
    index = {c: i for i, c in enumerate(classes)}
    labels = np.asarray(labels).ravel()
    out = np.zeros((labels.size, len(classes)), dtype=np.float32)
    for row, lab in enumerate(labels.tolist()):
        if lab not in index:
            raise DataError(f"label {lab!r} (row {row}) is not one of the classes {classes}")
        out[row, index[lab]] = 1
    return out


def onecold(y, classes=None):
    """The class of the largest entry along the last axis (indices when classes is None)."""
    idx = np.argmax(np.asarray(y), axis=-1)
    return idx if classes is None else np.asarray(list(classes))[idx]
