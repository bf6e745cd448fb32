"""Data-parallel training under a real `mpiexec` (tests/distributed_cases.py, one subprocess per
case, with a timeout), judged against single-process training in this process."""
import json
import os
import shutil
import subprocess
import sys
import sysconfig

import numpy as np
import pytest

import graphflux as gf

try:
    import mpi4py  # noqa: F401
    HAVE_MPI = True
except ImportError:
    HAVE_MPI = False
needs_mpi = pytest.mark.skipif(not HAVE_MPI, reason="mpi4py is not installed: pip install "
                               "'graphflux[mpi]' (CI installs it) to run the data-parallel tests")

CASES = os.path.join(os.path.dirname(__file__), "distributed_cases.py")
sys.path.insert(0, os.path.dirname(__file__))
import distributed_cases as cases  # noqa: E402


def mpiexec():
    """The mpiexec beside this Python (the mpich wheel puts it there, maybe not on PATH)."""
    here = os.path.join(sysconfig.get_path("scripts"), "mpiexec")
    return here if os.path.exists(here) else shutil.which("mpiexec")


def run(case, ranks, folder, rank_env=None, timeout=240, env=None):
    """Run `case` on `ranks` ranks (`env`: extra environment for all); returns [(arrays,
    info)] by rank."""
    exe = mpiexec()
    assert exe, "mpi4py is installed but no mpiexec was found beside Python or on PATH"
    if rank_env is None:
        command = [exe, "-n", str(ranks), sys.executable, CASES, case, str(folder)]
    else:                                    # one executable per rank, each its own env
        command = [exe]
        for r, env in enumerate(rank_env):
            if r:
                command.append(":")
            command += ["-n", "1"]
            for k, v in env.items():
                command += ["-env", k, v]
            command += [sys.executable, CASES, case, str(folder)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, **(env or {})))
    assert done.returncode == 0, f"{case} on {ranks} ranks failed:\n{done.stdout}\n{done.stderr}"
    results = []
    for r in range(ranks):
        stem = os.path.join(folder, f"{case}.rank{r}")
        with np.load(stem + ".npz") as z:
            arrays = {k: z[k] for k in z.files}
        with open(stem + ".json") as f:
            results.append((arrays, json.load(f)))
    return results


def same_bits(results, key):
    return all(a[key].tobytes() == results[0][0][key].tobytes() for a, _ in results)


def reference(ranks):
    """The same training in one process on the union of the ranks' batches: the DataLoader
    of batch size PER_RANK x ranks with the same seed, from rank 0's initial parameters."""
    x, y = cases.regression_data()
    model = cases.regression_model(seed=11)
    ps, opt, losses = gf.params(model), gf.Adam(1e-2), []
    loader = gf.DataLoader((x, y), cases.PER_RANK * ranks, shuffle=True, rng=3)
    for _ in range(2):
        gf.train(lambda a, b: gf.losses.mse(model(a), b), ps, loader, opt,
                 cb=lambda s: losses.append(s.loss))
    return cases.flat(ps), np.array(losses)


@needs_mpi
@pytest.mark.parametrize("ranks, per_node", [(2, None), (3, None), (2, 1), (4, 2), (3, 2)])
def test_training_equals_one_process_on_the_union_of_batches(ranks, per_node, tmp_path):
    """gf.train (implicit and explicit style) and a gf.compile loop, on 2 ranks and on 3
    (where the last batch leaves rank 2 an empty share), give every rank the same bits, and
    the parameters and losses of one process training on the concatenated batches (float64,
    rtol 1e-10: the sums are associated differently). Rank 0's initial parameters win: the
    other ranks start from their own. `per_node` groups the ranks into pretend machines, so
    the sum between nodes runs: one rank per node (MPI only), two nodes of two, and nodes of
    two and one."""
    results = run("train", ranks, tmp_path,
                  env=per_node and {"RANKS_PER_NODE": str(per_node)})
    expected, expected_losses = reference(ranks)
    for style in ("implicit", "explicit", "compile"):
        assert same_bits(results, style), style
        np.testing.assert_allclose(results[0][0][style], expected, rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(results[0][0][style + "_losses"], expected_losses,
                                   rtol=1e-10)


@needs_mpi
def test_cnn_with_batchnorm_and_dropout_stays_identical(tmp_path):
    """float32 conv net: parameters and BatchNorm's running statistics (averaged across ranks
    each step) stay bitwise identical; each rank's dropout counter is its own stream."""
    results = run("cnn", 2, tmp_path)
    assert same_bits(results, "params")
    assert same_bits(results, "stats")
    assert np.isfinite(results[0][0]["params"]).all()
    c0, c1 = (float(a["counter"]) for a, _ in results)
    assert c1 - c0 == 2.0 ** 32


@needs_mpi
def test_a_nonfinite_loss_on_one_rank_stops_every_rank(tmp_path):
    """Rank 1's item 2 holds a NaN: both ranks raise NonFiniteLoss for item 2 naming rank 1,
    and both keep the parameters after item 1 -- one process's after two steps of the
    union."""
    results = run("nonfinite", 2, tmp_path)
    for arrays, info in results:
        assert info["item"] == 2 and info["what"] == "loss" and info["steps"] == [1, 2]
        assert "rank 1" in info["raised"]
        assert arrays["final"].tobytes() == arrays["after_second"].tobytes()
    assert "distributed_cases.py" in results[1][1]["raised"]   # the failing rank names the line
    assert same_bits(results, "final")
    x, y = cases.regression_data()
    model = cases.regression_model(seed=11)
    items = [(np.concatenate([x[k * 4:(k + 1) * 4]] * 2), np.concatenate(
        [y[k * 4:(k + 1) * 4]] * 2)) for k in range(2)]
    gf.train(lambda a, b: gf.losses.mse(model(a), b), gf.params(model), items, gf.Adam(1e-2))
    np.testing.assert_allclose(results[0][0]["final"], cases.flat(gf.params(model)),
                               rtol=1e-10)


@needs_mpi
def test_stop_on_one_rank_stops_all(tmp_path):
    """gf.stop() in rank 1's callback at step 3: every rank's callbacks saw steps 1-3 only, and
    the step after it (carried by that step's collective) updated nothing."""
    results = run("stop", 2, tmp_path)
    for arrays, info in results:
        assert info["steps"] == [1, 2, 3]
        assert arrays["final"].tobytes() == arrays["after_third"].tobytes()
    assert same_bits(results, "final")


@needs_mpi
@pytest.mark.parametrize("ranks", [2, 3])
def test_dataloader_shards_are_disjoint_and_cover_every_epoch(ranks, tmp_path):
    """23 observations, 3 per rank: each epoch's shares are disjoint, cover all 23, and every
    rank has the same number of batches; step k's shares make one global batch of the
    single-process loader's size (3 x ranks, the last one shorter), split evenly."""
    results = run("shard", ranks, tmp_path)
    lengths = {info["len"] for _, info in results}
    assert lengths == {-(-23 // (3 * ranks))}
    for epoch in range(2):
        shares = [info["epochs"][epoch] for _, info in results]
        assert len({len(s) for s in shares}) == 1
        seen = [v for s in shares for batch in s for v in batch]
        assert sorted(seen) == list(range(23))
        for k in range(len(shares[0])):
            size = min(3 * ranks, 23 - 3 * ranks * k)
            sizes = [len(s[k]) for s in shares]
            assert sum(sizes) == size and max(sizes) - min(sizes) <= 1
    assert results[0][1]["epochs"][0] != results[0][1]["epochs"][1]   # reshuffled


@needs_mpi
def test_save_writes_on_rank_zero_and_load_reads_there(tmp_path):
    """gf.save(comm=) leaves one file (no temporaries); gf.load(comm=) restores rank 0's
    state on every rank though only rank 0 was given a path that exists."""
    results = run("saveload", 2, tmp_path)
    for arrays, _ in results:
        assert arrays["loaded"].tobytes() == arrays["trained"].tobytes()
    assert same_bits(results, "moments")
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".graphflux-save-")]
    with np.load(tmp_path / "model.npz") as z:
        assert "opt.json" in z.files


@needs_mpi
def test_ranks_with_different_thread_settings_are_refused(tmp_path):
    """Different GRAPHFLUX_NUM_THREADS compile different kernels, which round differently:
    every rank refuses at the first step, naming the threads."""
    results = run("mismatch", 2, tmp_path, rank_env=[{"GRAPHFLUX_NUM_THREADS": "1"},
                                                     {"GRAPHFLUX_NUM_THREADS": "2"}])
    for _, info in results:
        assert info["raised"] and "threads" in info["raised"]


@needs_mpi
def test_running_out_of_data_early_and_misuse_raise_on_every_rank(tmp_path):
    """Rank 1 has one item fewer: both ranks raise (no rank waits for ever in a collective).
    Eager mode and a step without an optimiser are refused."""
    results = run("misuse", 2, tmp_path)
    for _, info in results:
        assert "ran out of data" in info["uneven"]
        assert "compiled" in info["eager"] and "UsageError" in info["eager"]
        assert "optimiser" in info["no_optimiser"]


def test_without_mpi4py_the_error_names_the_extra():
    """graphflux imports and trains without mpi4py; gf.distributed.world() says what to
    install."""
    code = ("import sys; sys.modules['mpi4py'] = None\n"
            "import graphflux as gf\n"
            "try:\n    gf.distributed.world()\n"
            "except gf.GraphfluxError as e:\n    print(e)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert 'pip install "graphflux[mpi]"' in done.stdout
