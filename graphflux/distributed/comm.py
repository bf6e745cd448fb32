"""`gf.distributed.Comm`: an mpi4py communicator with the few collectives training needs.

The gradient sum must give every rank the same bits, or parameters drift apart one rounding
at a time. The MPI standard asks that of `Allreduce`, but MPICH's recursive-exchange
algorithm has broken it (pmodels/mpich#6538), so on three or more ranks `sum_` reduces onto
rank 0 and broadcasts that one result: every rank then holds a copy of the same array,
whatever the library does. On two ranks every element of any algorithm's sum is one IEEE
addition of the same two numbers, a + b or b + a, which are the same bits (addition is
commutative; only its association can differ, and two operands have one), so `Allreduce` is
used there: it moves half the bytes of reduce-then-broadcast."""
import logging
import os

from ..errors import UsageError

log = logging.getLogger("graphflux")
EXTRA = 'pip install "graphflux[mpi]"'


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise UsageError(f"gf.distributed needs mpi4py and an MPI library ({e}): {EXTRA} "
                         "installs both, then start the script with mpiexec -n 2 python "
                         "script.py") from None
    return MPI


class Comm:
    """`rank` and `size` of an mpi4py communicator (`gf.distributed.Comm(MPI.COMM_WORLD)`),
    and its collectives on numpy arrays and small Python values. Every rank must make the same
    calls in the same order, as with any MPI program.

    `node` is the communicator of the ranks that share this one's memory (by default MPI's
    own split of the ranks by machine, `COMM_TYPE_SHARED`): they exchange gradients through
    shared memory, and one of them per node (`leaders`, its node rank 0) over the network."""

    def __init__(self, mpi_comm, node=None):
        mpi = _mpi()
        for name, c in (("mpi_comm", mpi_comm), ("node", node)):
            if c is not None and not isinstance(c, mpi.Comm):
                raise UsageError(f"gf.distributed.Comm's {name} must be an mpi4py "
                                 f"communicator (such as MPI.COMM_WORLD), got "
                                 f"{type(c).__name__}")
        self.mpi, self._MPI = mpi_comm, mpi
        self.rank, self.size = mpi_comm.Get_rank(), mpi_comm.Get_size()
        self.node = node if node is not None else \
            mpi_comm.Split_type(mpi.COMM_TYPE_SHARED, key=self.rank)
        self.node_size, self.node_rank = self.node.Get_size(), self.node.Get_rank()
        leaders = mpi_comm.Split(0 if self.node_rank == 0 else mpi.UNDEFINED, key=self.rank)
        self.leaders = leaders if self.node_rank == 0 else None
        self.node_count = mpi_comm.allreduce(int(self.node_rank == 0))

    def __repr__(self):
        return f"Comm(rank {self.rank} of {self.size})"

    def barrier(self):
        self.mpi.Barrier()

    def bcast(self, value, root=0):
        """A picklable value from `root` to every rank."""
        return self.mpi.bcast(value, root=root)

    def allgather(self, value):
        """Every rank's value, in rank order, on every rank."""
        return self.mpi.allgather(value)

    def bcast_array(self, array, root=0):
        """Overwrite `array` (C-contiguous) on every rank with root's."""
        self.mpi.Bcast(array, root=root)

    def sum_(self, array):
        """Replace `array` (C-contiguous) on every rank by the sum over ranks -- the same bits
        on every rank."""
        exact_sum(self.mpi, array, self._MPI)


def exact_sum(mpi_comm, array, MPI):
    """`array` on every rank of `mpi_comm` replaced by the sum over them, the same bits on
    every rank: one `Allreduce` on two ranks, otherwise reduced onto rank 0, then broadcast."""
    if mpi_comm.Get_size() == 2:
        mpi_comm.Allreduce(MPI.IN_PLACE, array, op=MPI.SUM)
    elif mpi_comm.Get_rank() == 0:
        mpi_comm.Reduce(MPI.IN_PLACE, array, op=MPI.SUM, root=0)
        mpi_comm.Bcast(array, root=0)
    else:
        mpi_comm.Reduce(array, None, op=MPI.SUM, root=0)
        mpi_comm.Bcast(array, root=0)


def default_threads(comm):
    """A rank's share of its node's cores: the cores this process may run on divided by the
    ranks on its node, so `mpiexec -n 2` on two cores runs one thread each."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        (os.cpu_count() or 1)
    return max(1, cores // comm.node_size)


_WORLD = []


def world():
    """The communicator of every process `mpiexec` started (MPI.COMM_WORLD). The first call
    also sets this process's default thread count to its share of the node's cores, unless
    GRAPHFLUX_NUM_THREADS says otherwise."""
    if not _WORLD:
        comm = Comm(_mpi().COMM_WORLD)
        share_cores(comm)
        _WORLD.append(comm)
    return _WORLD[0]


def share_cores(comm):
    """Give this rank its share of the node's cores as its thread count (before the thread
    pool starts; an explicit GRAPHFLUX_NUM_THREADS wins)."""
    if os.environ.get("GRAPHFLUX_NUM_THREADS"):
        return
    threads = default_threads(comm)
    os.environ["GRAPHFLUX_NUM_THREADS"] = str(threads)
    from graphflux.runtime import pool
    started = pool.started_threads()
    if started is not None and started != threads:
        log.warning("the thread pool started with %d threads before gf.distributed.world(); "
                    "this rank's share of the node is %d: call world() before the first step, "
                    "or set GRAPHFLUX_NUM_THREADS", started, threads)
