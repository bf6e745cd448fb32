"""Data-parallel training of an MLP on the bundled digits, one process per core:

    mpiexec -n 2 python examples/data_parallel.py

Every rank runs this same script. Each step every rank takes its own batch of 32 (the
DataLoader's batchsize is per rank, as PyTorch's DistributedSampler: the global batch is 32 x
ranks) and the gradients are averaged over the ranks, so the model trains as one process would
on the global batch; rank 0 prints and saves. Without mpiexec it is one rank doing it all."""
import os
import tempfile
import time

import numpy as np

import graphflux as gf

comm = gf.distributed.world()     # before the first step: sets this rank's share of the cores
X, labels = gf.datasets.digits()
Y = gf.onehotbatch(labels, range(10))
train, test = slice(0, 1500), slice(1500, None)

model = gf.Chain(gf.Dense(64, 64, gf.relu), gf.Dense(64, 10))   # rank 0's weights win
ps = gf.params(model)
opt = gf.Adam(0.01)


def loss(x, y):
    return gf.losses.logitcrossentropy(model(x), y)


start = time.perf_counter()
for epoch in gf.epochs(20):
    batches = gf.DataLoader((X[train], Y[train]), batchsize=32, shuffle=True, rng=epoch,
                            shard=comm)
    gf.train(loss, ps, batches, opt, comm=comm)
seconds = time.perf_counter() - start

accuracy = np.mean(gf.onecold(model(X[test])) == labels[test])
path = os.path.join(tempfile.gettempdir(), "graphflux_data_parallel.npz")
gf.save(path, model, opt, comm=comm)
if comm.rank == 0:
    print(f"{comm.size} rank(s) x {os.environ['GRAPHFLUX_NUM_THREADS']} thread(s): "
          f"20 epochs in {seconds:.2f} s, test accuracy {accuracy:.3f}, saved to {path}")
