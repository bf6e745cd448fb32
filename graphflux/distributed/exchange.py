"""The step's gradient sum over ranks, without copying within a node.

Ranks on one machine share its memory, so they need no messages: each rank's gradient
function writes into its own segment of one MPI shared-memory window (MPI-3's
`Win.Allocate_shared`), and after a barrier every rank adds up one slice of all the segments,
in rank order, into a `total` region of the same window, which every rank's update then reads
in place. Across machines only the nodes' totals travel: one rank per node (its node rank 0)
sums them with `Comm.sum_`, which gives every node the same bits, and a second barrier lets
the other ranks of the node read the result.

Every element of the total is computed once, by one rank, in one fixed order, and read by all:
the same bits on every rank, as the update needs. No region is written while another rank may
read it: a rank writes its segment only after the previous step's summing barrier, and the
total only after every rank passed the next step's first barrier, which it reaches once its
update of the previous step is done."""
import numpy as np

from .comm import exact_sum

SLICE_ALIGN = 16
"""Each rank's slice of the sum starts on a multiple of 16 elements (a 64-byte line of
float32), so no two ranks write the same cache line."""


class Exchange:
    """`mine`: this rank's array to fill; `total()`: the sum over every rank's `mine`, the
    same bits on every rank, as an array that stays valid until the next `total()`."""

    def __init__(self, comm, size, dtype):
        self.comm, dtype = comm, np.dtype(dtype)
        self.shared = comm.node_size > 1
        if not self.shared:
            self.mine = self.result = np.zeros(size, dtype)
            return
        MPI, node = comm._MPI, comm.node
        total = size if comm.node_rank == 0 else 0
        self.window = MPI.Win.Allocate_shared((size + total) * dtype.itemsize, dtype.itemsize,
                                              comm=node)
        segments = []
        for q in range(comm.node_size):
            memory, _ = self.window.Shared_query(q)
            segments.append(np.frombuffer(memory, dtype))
        self.segments = [s[:size] for s in segments]
        self.result = segments[0][size:2 * size]
        self.mine = self.segments[comm.node_rank]
        self.mine[:] = 0
        share = -(-size // (comm.node_size * SLICE_ALIGN)) * SLICE_ALIGN
        lo = min(size, comm.node_rank * share)
        self.slice = slice(lo, min(size, lo + share))
        self.window.Lock_all()

    def _node_barrier(self):
        """Every rank's writes to the window visible to every rank of the node."""
        self.window.Sync()
        self.comm.node.Barrier()
        self.window.Sync()

    def total(self):
        if not self.shared:                       # alone on its node: the network sums
            if self.comm.node_count > 1:
                exact_sum(self.comm.leaders, self.result, self.comm._MPI)
            return self.result
        self._node_barrier()
        part = self.result[self.slice]
        np.add(self.segments[0][self.slice], self.segments[1][self.slice], out=part)
        for segment in self.segments[2:]:
            np.add(part, segment[self.slice], out=part)
        self._node_barrier()
        if self.comm.node_count > 1:
            if self.comm.leaders is not None:
                exact_sum(self.comm.leaders, self.result, self.comm._MPI)
            self._node_barrier()
        return self.result
