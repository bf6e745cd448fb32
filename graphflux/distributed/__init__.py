"""Data-parallel training over MPI (`pip install "graphflux[mpi]"`): the same compiled step
run by several processes, each on its share of the data, gradients summed by MPI.

Importing this package needs nothing beyond graphflux; `world()` and `Comm` need mpi4py, and
say so by naming the extra."""
from .comm import Comm, world  # noqa: F401
