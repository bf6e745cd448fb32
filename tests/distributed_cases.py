"""Programs that tests/test_distributed.py runs under `mpiexec -n N`: `python
distributed_cases.py CASE FOLDER` runs one case on every rank and writes what each rank saw to
FOLDER/CASE.rank<r>.npz (arrays) and FOLDER/CASE.rank<r>.json (everything else), for the test
to compare with a single-process reference. No assertions here: the test judges."""
import json
import os
import sys

import numpy as np

import graphflux as gf

SAMPLES, FEATURES, OUTPUTS, PER_RANK = 50, 5, 3, 4


def regression_data(dtype=np.float64):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(SAMPLES, FEATURES)).astype(dtype)
    y = rng.normal(size=(SAMPLES, OUTPUTS)).astype(dtype)
    return x, y


def regression_model(seed):
    """A small f64 MLP whose parameters come from `seed` (a rank's own, so broadcasting rank
    0's is what makes them agree)."""
    model = gf.f64(gf.Chain(gf.Dense(FEATURES, 8, gf.tanh), gf.Dense(8, OUTPUTS)))
    init = np.random.default_rng(seed)
    for p in gf.params(model):
        p[...] = init.normal(size=p.shape) * 0.5
    return model


def flat(ps):
    return np.concatenate([np.ravel(p) for p in ps])


def case_train(comm, out):
    """Three ways to train the same data: gf.train (implicit params), gf.train (explicit
    style), a gf.compile loop; rank 0's initial parameters must win."""
    x, y = regression_data()
    result = {}
    for style in ("implicit", "explicit", "compile"):
        model = regression_model(seed=11 + comm.rank)
        ps = gf.params(model)
        opt = gf.Adam(1e-2)
        loader = gf.DataLoader((x, y), PER_RANK, shuffle=True, rng=3, shard=comm)
        losses = []
        if style == "implicit":
            loss = lambda a, b: gf.losses.mse(model(a), b)  # noqa: E731
            for _ in range(2):
                gf.train(loss, ps, loader, opt, comm=comm, cb=lambda s: losses.append(s.loss))
        elif style == "explicit":
            state = gf.setup(opt, model)
            for _ in range(2):
                gf.train(lambda m, a, b: gf.losses.mse(m(a), b), model, loader, state,
                         comm=comm, cb=lambda s: losses.append(s.loss))
        else:
            step = gf.compile(lambda a, b: gf.losses.mse(model(a), b), ps, opt, comm=comm)
            for _ in range(2):
                losses += [step(a, b) for a, b in loader]
        result[style] = flat(ps)
        result[style + "_losses"] = np.array(losses)
    return result, {}


def case_cnn(comm, out):
    """float32 CNN with BatchNorm and Dropout: parameters and running statistics must stay
    bitwise identical; dropout counters must differ."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(24, 1, 8, 8)).astype(np.float32)
    y = gf.onehotbatch(rng.integers(0, 3, 24), range(3))
    model = gf.Chain(gf.Conv((3, 3), 1, 4), gf.BatchNorm(4, gf.relu), gf.MaxPool((2, 2)),
                     gf.flatten,
                     gf.Dropout(0.3, seed=5), gf.Dense(36, 3))
    loss = lambda a, b: gf.losses.logitcrossentropy(model(a), b)  # noqa: E731
    loader = gf.DataLoader((x, y), 4, shuffle=True, rng=2, shard=comm)
    gf.train(loss, gf.params(model), loader, gf.Adam(1e-2), comm=comm)
    bn, drop = model.layers[1], model.layers[4]
    return {"params": flat(gf.params(model)), "stats": np.concatenate([bn.mean, bn.var]),
            "counter": np.array(drop.counter)}, {}


def case_nonfinite(comm, out):
    """Rank 1's third item holds a NaN: no rank updates at that item, every rank raises."""
    x, y = regression_data()
    model = regression_model(seed=11)
    ps = gf.params(model)
    items = [(x[k * 4:(k + 1) * 4], y[k * 4:(k + 1) * 4]) for k in range(4)]
    if comm.rank == 1:
        items[2][0][1, 1] = np.nan
    before = {}
    seen = []

    def keep(s):
        seen.append(s.step)
        before[s.step] = flat(ps)
    info = {}
    try:
        gf.train(lambda a, b: gf.losses.mse(model(a), b), ps, items, gf.Adam(1e-2), comm=comm,
                 cb=keep)
        info["raised"] = None
    except gf.NonFiniteLoss as e:
        info.update(raised=str(e), item=e.item, what=e.what)
    info["steps"] = seen
    return {"final": flat(ps), "after_second": before[2]}, info


def case_stop(comm, out):
    """gf.stop() from rank 1's callback at step 3: every rank ends after step 3's update."""
    x, y = regression_data()
    model = regression_model(seed=11)
    ps = gf.params(model)
    items = [(x[k * 4:(k + 1) * 4], y[k * 4:(k + 1) * 4]) for k in range(10)]
    seen, after = [], {}

    def cb(s):
        seen.append(s.step)
        after[s.step] = flat(ps)
        if comm.rank == 1 and s.step == 3:
            gf.stop()
    gf.train(lambda a, b: gf.losses.mse(model(a), b), ps, items, gf.Adam(1e-2), comm=comm,
             cb=cb)
    return {"final": flat(ps), "after_third": after[3]}, {"steps": seen}


def case_shard(comm, out):
    """Which observations each rank's batches hold, over two shuffled epochs."""
    loader = gf.DataLoader(np.arange(23), 3, shuffle=True, shard=comm)
    epochs = [[b.tolist() for b in loader] for _ in range(2)]
    return {}, {"epochs": epochs, "len": len(loader)}


def case_saveload(comm, out):
    """Rank 0 writes; load reads on rank 0 only (the others pass a path that does not exist)."""
    model = regression_model(seed=11 + comm.rank)
    opt = gf.Adam(1e-2)
    x, y = regression_data()
    loader = gf.DataLoader((x, y), PER_RANK, shard=comm)
    ps = gf.params(model)
    gf.train(lambda a, b: gf.losses.mse(model(a), b), ps, loader, opt, comm=comm)
    path = os.path.join(out, "model.npz")
    gf.save(path, model, opt, comm=comm)
    fresh = regression_model(seed=99 + comm.rank)
    fresh_opt = gf.Adam(1e-2)
    gf.load(path if comm.rank == 0 else path + ".not-there", fresh, fresh_opt, comm=comm)
    moments = [a for p in gf.params(fresh) for a in fresh_opt.state_of(p).arrays.values()]
    return {"trained": flat(ps), "loaded": flat(gf.params(fresh)),
            "moments": flat(moments)}, {"files": sorted(os.listdir(out))}


def case_mismatch(comm, out):
    """Ranks started with different GRAPHFLUX_NUM_THREADS must refuse to train."""
    model = regression_model(seed=11)
    x, y = regression_data()
    try:
        gf.train(lambda a, b: gf.losses.mse(model(a), b), gf.params(model),
                 [(x[:4], y[:4])], gf.Adam(), comm=comm)
        return {}, {"raised": None}
    except gf.GraphfluxError as e:
        return {}, {"raised": str(e)}


def case_misuse(comm, out):
    """Rank 1's data runs out one item early: every rank raises instead of waiting for ever.
    Eager mode and a step without an optimiser are refused with comm."""
    x, y = regression_data()
    model = regression_model(seed=11)
    ps = gf.params(model)
    items = [(x[k * 4:(k + 1) * 4], y[k * 4:(k + 1) * 4]) for k in range(4 - comm.rank)]
    loss = lambda a, b: gf.losses.mse(model(a), b)  # noqa: E731
    info = {}
    for name, run in [
            ("uneven", lambda: gf.train(loss, ps, items, gf.Adam(), comm=comm)),
            ("eager", lambda: gf.train(loss, ps, items, gf.Adam(), comm=comm, mode="eager")),
            ("no_optimiser", lambda: gf.compile(loss, ps, comm=comm))]:
        try:
            run()
            info[name] = None
        except gf.GraphfluxError as e:
            info[name] = f"{type(e).__name__}: {e}"
    return {}, info


def world():
    """gf.distributed.world(), or with RANKS_PER_NODE=k set, a Comm whose nodes are groups of
    k consecutive ranks: the exchange between nodes (over MPI) runs on one machine too."""
    per_node = os.environ.get("RANKS_PER_NODE")
    if not per_node:
        return gf.distributed.world()
    from mpi4py import MPI
    rank = MPI.COMM_WORLD.Get_rank()
    os.environ["GRAPHFLUX_NUM_THREADS"] = "1"
    return gf.distributed.Comm(MPI.COMM_WORLD, node=MPI.COMM_WORLD.Split(rank // int(per_node),
                                                                         rank))


def main():
    case, out = sys.argv[1], sys.argv[2]
    comm = world()
    arrays, info = globals()["case_" + case](comm, out)
    info["threads"] = os.environ.get("GRAPHFLUX_NUM_THREADS")
    stem = os.path.join(out, f"{case}.rank{comm.rank}")
    np.savez(stem + ".npz", **arrays)
    with open(stem + ".json", "w") as f:
        json.dump(info, f)


if __name__ == "__main__":
    main()
