"""A catalogue of mistakes users plausibly make, one table row each, and what the contract
(../shared/API.md) promises for every one of them: a `gf.GraphfluxError` (also the builtin
that fits) whose message names the offending argument, shape or parameter -- and nothing
changed: the model's arrays, the optimiser's per-parameter state (`.arrays` and `.host`) and
any file involved are bitwise what they were before the call.

A row is (id, mistake, expected error class, words the message must contain). `mistake(w)`
builds its own small fresh model (so rows are independent), registers with the `Watch` `w` what
must stay untouched (warming it up with good steps first where the mistake is about a later
call, so optimiser state exists), and then makes the mistake. Where API.md is silent the row
says which behaviour was chosen (what a user coming from PyTorch would expect).

Words are matched case-insensitively; a tuple of words means "any one of these". Every row's
error must be a GraphfluxError and also an instance of the row's `error` (a class, or a tuple
of classes meaning any one of them).

Besides the table: a cache entry written by another graphflux version is recompiled (not an
error), and one compiled step called from two threads behaves like some serial order."""
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

import graphflux as gf
from helpers import run_together

HERE = os.path.basename(__file__)


# ---- fresh models, batches, and the one loss every warm row uses --------------------------------

def fresh(seed=0, n_in=4, n_hidden=3, n_out=2, dtype=np.float32):
    """Chain(Dense(n_in, n_hidden, relu), Dense(n_hidden, n_out)), deterministic weights."""
    rng = np.random.default_rng(seed)
    init = lambda *d: gf.glorot_uniform(*d, rng=rng, dtype=dtype)  # noqa: E731
    return gf.Chain(gf.Dense(n_in, n_hidden, gf.relu, init=init),
                    gf.Dense(n_hidden, n_out, init=init))


def batch(n=5, n_in=4, n_out=2, seed=1, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, n_in)).astype(dtype),
            rng.standard_normal((n, n_out)).astype(dtype))


def mse_of(m):
    # one source line for every row, so rows with the same model shapes share one artifact
    return lambda x, y: gf.losses.mse(m(x), y)


# ---- what must not change -----------------------------------------------------------------------

def _flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        path = f"{prefix}/{k}" if prefix else k
        out.update(_flat(v, path) if isinstance(v, dict) else {path: v})
    return out


def _host_bits(h):
    """Host scalar state as exact text: tuples of float64 (nested for Optimiser(...))."""
    if isinstance(h, (tuple, list)):
        return tuple(_host_bits(v) for v in h)
    if isinstance(h, (float, np.floating)):
        return float(h).hex()
    return repr(h)


def _arr_bits(a):
    return (a.dtype.str, a.shape, a.tobytes())


class Watch:
    """Snapshots of models (every array of gf.state, by identity and bytes), optimisers
    (per-parameter .arrays and .host) and files or folders, taken when registered;
    `check()` asserts all of them are bitwise unchanged."""

    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.models, self.opts, self.files, self.folders = [], [], [], []

    def model(self, m):
        """Snapshot `m` now (again, if the row replaced one of its arrays after warming)."""
        self.models = [(old, saved) for old, saved in self.models if old is not m]
        self.models.append((m, {k: (a, _arr_bits(a)) for k, a in _flat(gf.state(m)).items()}))
        return m

    def opt(self, opt):
        saved = {k: (e.x, {n: _arr_bits(a) for n, a in e.arrays.items()}, _host_bits(e.host))
                 for k, e in opt._state.items()}
        self.opts.append((opt, saved))
        return opt

    def file(self, path):
        self.files.append((path, path.read_bytes() if path.exists() else None))
        return path

    def folder(self, path):
        self.folders.append((path, sorted(os.listdir(path))))
        return path

    def warm(self, m=None, opt=None, mode="compiled", data=None, loss=None):
        """A fresh model (or `m`) trained two good steps with Adam (or `opt`), then watched.
        Returns (model, loss, params, opt)."""
        m = fresh() if m is None else m
        opt = gf.Adam(0.01) if opt is None else opt
        loss = mse_of(m) if loss is None else loss
        ps = gf.params(m)
        gf.train(loss, ps, [batch() if data is None else data] * 2, opt, mode=mode)
        assert opt._state, "warming up created no optimiser state"
        self.model(m)
        self.opt(opt)
        return m, loss, ps, opt

    def check(self):
        for m, saved in self.models:
            now = _flat(gf.state(m))
            assert set(now) == set(saved), f"the model's arrays changed: {set(now) ^ set(saved)}"
            for k, (arr, bits) in saved.items():
                assert now[k] is arr, f"{k} was replaced by another object ({type(now[k])})"
                assert _arr_bits(arr) == bits, f"{k} changed"
        for opt, saved in self.opts:
            for key, (x, arrays, host) in saved.items():
                entry = opt._state.get(key)
                assert entry is not None and entry.x is x, "optimiser state entry was dropped"
                assert set(entry.arrays) == set(arrays)
                for n, bits in arrays.items():
                    assert _arr_bits(entry.arrays[n]) == bits, f"optimiser state {n} changed"
                assert _host_bits(entry.host) == host, "optimiser host state changed"
            # choice: state created lazily during the failed call is allowed only if it is
            # exactly fresh state (indistinguishable from none: zeros and host_init())
            for key in set(opt._state) - set(saved):
                entry = opt._state[key]
                assert all(not a.any() for a in entry.arrays.values()), \
                    "the failed call left non-zero optimiser state for a new parameter"
                assert _host_bits(entry.host) == _host_bits(opt.host_init())
        for path, data in self.files:
            assert (path.read_bytes() if path.exists() else None) == data, f"{path} changed"
        for path, listing in self.folders:
            assert sorted(os.listdir(path)) == listing, f"{path} now holds other files"


# ---- the table ---------------------------------------------------------------------------------

@dataclasses.dataclass
class Row:
    id: str
    mistake: object            # callable(Watch): sets up, registers what to watch, errs
    error: object              # besides gf.GraphfluxError, the error must be an instance of
                               # this class (a tuple: of one of them); None: nothing more
    words: list                # the message must contain each (a tuple: any one of them)
    forbid: tuple = ()         # classes the error must not be
    note: str = ""             # the choice made where API.md is silent


ROWS = []


def row(error=None, words=(), forbid=(), note=""):
    def register(f):
        ROWS.append(Row(f.__name__, f, error, list(words), forbid, note))
        return f
    return register


V, T = ValueError, TypeError
TV = (TypeError, ValueError)        # in `error`, a tuple means: an instance of one of these


# ---- DATA ----

@row(error=T, words=["2", "3", "argument"],
     note="PyTorch: calling with the wrong number of arguments is a TypeError")
def arity_too_many(w):
    m, loss, ps, opt = w.warm()
    x, y = batch()
    gf.train(loss, ps, [(x, y, y)], opt)


@row(error=T, words=["2", "1", "argument"])
def arity_too_few(w):
    m, loss, ps, opt = w.warm()
    x, _ = batch()
    gf.train(loss, ps, [(x,)], opt)


@row(error=V, words=["(5, 7)", "4", HERE + ":"])
def wrong_feature_count(w):
    m, loss, ps, opt = w.warm()
    x, y = batch(n_in=7)
    gf.train(loss, ps, [(x, y)], opt)


@row(error=V, words=["(5, 7)", "4", HERE + ":"])
def wrong_feature_count_eager(w):
    m, loss, ps, opt = w.warm(mode="eager")
    x, y = batch(n_in=7)
    gf.train(loss, ps, [(x, y)], opt, mode="eager")


@row(error=TV, words=["argument 0", ("U3", "str")],
     note="numbers read as text (np.loadtxt(dtype=str)) are refused, not parsed; PyTorch's "
          "torch.as_tensor refuses str arrays with a TypeError")
def strings_as_data(w):
    m, loss, ps, opt = w.warm()
    _, y = batch()
    x = np.array([["0.1", "0.2", "0.3", "0.4"]] * 5)
    gf.train(loss, ps, [(x, y)], opt)


@row(error=TV, words=["argument 0", "object"],
     note="an object array (pandas .values of mixed columns) is refused, not converted; "
          "PyTorch refuses numpy.object_ with a TypeError")
def object_array_as_data(w):
    m, loss, ps, opt = w.warm()
    x, y = batch()
    obj = np.empty(x.shape, dtype=object)
    obj[...] = x.tolist()
    gf.train(loss, ps, [(obj, y)], opt)


@row(error=V, words=[("0-d", "()")],
     note="a 0-d array fed to Dense(4, 3): refused at the boundary or by the matmul's shape "
          "check; either way the message shows the empty shape")
def zero_d_array_as_data(w):
    m, loss, ps, opt = w.warm()
    _, y = batch()
    gf.train(loss, ps, [(np.array(0.5, dtype=np.float32), y[0])], opt)


@row(error=gf.NonFiniteLoss, words=["data item 0", "loss", HERE + ":"])
def nan_in_data(w):
    m, loss, ps, opt = w.warm()
    x, y = batch()
    x[2, 1] = np.nan
    gf.train(loss, ps, [(x, y)], opt)


@row(error=gf.NonFiniteLoss, words=["data item 0", "loss", HERE + ":"])
def nan_in_data_eager(w):
    m, loss, ps, opt = w.warm(mode="eager")
    x, y = batch()
    x[2, 1] = np.nan
    gf.train(loss, ps, [(x, y)], opt, mode="eager")


def _inf_case(w, mode):
    """-inf in x[0, 0] with layer 0's weight column 0 positive: every pre-activation of row 0
    is -inf, relu makes it 0, so the loss is finite -- but d weight = dz.T @ x has 0 * -inf =
    NaN in column 0."""
    m = fresh()
    m[0].weight[:, 0] = np.abs(m[0].weight[:, 0]) + 0.1
    m, loss, ps, opt = w.warm(m=m, mode=mode)
    x, y = batch()
    x[0, 0] = -np.inf
    hidden = np.maximum(x.astype(np.float64) @ m[0].weight.T.astype(np.float64) + m[0].bias, 0)
    out = hidden @ m[1].weight.T.astype(np.float64) + m[1].bias
    assert np.isfinite(np.mean((out - y) ** 2))        # the loss itself is finite
    gf.train(loss, ps, [(x, y)], opt, mode=mode)


@row(error=gf.NonFiniteLoss, words=["gradient", "data item 0", HERE + ":"])
def inf_in_data_gives_nan_gradient(w):
    _inf_case(w, "compiled")


@row(error=gf.NonFiniteLoss, words=["gradient", "data item 0", HERE + ":"])
def inf_in_data_gives_nan_gradient_eager(w):
    _inf_case(w, "eager")


@row(error=T, words=["[(x, y)]"],
     note="data=(x, y) iterates x then y; the message leads with the fix, data=[(x, y)]")
def pair_as_data_instead_of_list_of_pairs(w):
    m, loss, ps, opt = w.warm()
    gf.train(loss, ps, batch(), opt)


@row(error=T, words=["tuple"],
     note="API.md splats tuples only; a list item [x, y] (what torch's collate yields) is "
          "passed as one argument, so a 2-argument loss fails -- the message must say to "
          "use a tuple")
def list_item_instead_of_tuple(w):
    m, loss, ps, opt = w.warm()
    x, y = batch()
    gf.train(loss, ps, [[x, y]], opt)


@row(error=V, words=["mse", "(5, 2)", "(5, 3)", HERE + ":"])
def target_of_wrong_shape(w):
    m, loss, ps, opt = w.warm()
    x, _ = batch()
    _, y3 = batch(n_out=3)
    gf.train(loss, ps, [(x, y3)], opt)


# ---- MODELS ----

@row(error=T, words=["layers.0.weight", "int64"])
def int_parameters(w):
    ints = lambda o, i: np.ones((o, i), dtype=np.int64)  # noqa: E731
    m = w.model(gf.Chain(gf.Dense(4, 3, gf.relu, init=ints), gf.Dense(3, 2)))
    opt = w.opt(gf.Adam(0.01))
    gf.train(mse_of(m), gf.params(m), [batch()], opt)


@row(words=["layers.0.weight", "contiguous"])
def fortran_order_parameter(w):
    m, loss, ps, opt = w.warm()
    m[0].weight = np.asfortranarray(m[0].weight)
    w.model(m)
    gf.train(loss, gf.params(m), [batch()], opt)


@row(words=["layers.0.weight", "contiguous"])
def strided_view_parameter(w):
    m, loss, ps, opt = w.warm()
    big = np.zeros((3, 8), dtype=np.float32)
    big[:, ::2] = m[0].weight
    m[0].weight = big[:, ::2]
    w.model(m)
    gf.train(loss, gf.params(m), [batch()], opt)


@row(words=["layers.0.weight", ("byte order", "endian", ">f4")], forbid=(KeyError,),
     note="refused (API.md), with an error naming the parameter -- never a bare KeyError")
def big_endian_parameter(w):
    m, loss, ps, opt = w.warm()
    m[0].weight = m[0].weight.astype(">f4")
    w.model(m)
    gf.train(loss, gf.params(m), [batch()], opt)


@row(words=["layers.0.weight", ("writeable", "writable", "read-only", "read only")],
     note="weights rebuilt with np.frombuffer are read-only")
def read_only_parameter(w):
    m, loss, ps, opt = w.warm()
    m[0].weight = np.frombuffer(m[0].weight.tobytes(), dtype=np.float32).reshape(3, 4)
    w.model(m)
    gf.train(loss, gf.params(m), [batch()], opt)


@row(words=[("layers.0.weight", "layers.0.bias"), "overlap"])
def overlapping_parameters(w):
    m = fresh()
    flat = np.zeros(14, dtype=np.float32)         # one buffer, carved up wrongly
    flat[:12] = m[0].weight.ravel()
    m[0].weight, m[0].bias = flat[:12].reshape(3, 4), flat[10:13]
    w.model(m)
    opt = w.opt(gf.Adam(0.01))
    gf.train(mse_of(m), gf.params(m), [batch()], opt)


@row(error=V, words=["in_features", "-1"],
     note="checked at construction, like torch.nn.Linear(-1, 3)")
def dense_with_negative_size(w):
    gf.Dense(-1, 3)


@row(error=T, words=["'relu'", ("σ", "activation", "callable")],
     note="a Keras habit; refused at construction or at the call, naming the string")
def dense_with_activation_as_string(w):
    x, _ = batch()
    gf.Chain(gf.Dense(4, 3, "relu"), gf.Dense(3, 2))(x)


@row(error=V, words=["1.5", "p"], note="PyTorch: nn.Dropout(1.5) is a ValueError")
def dropout_probability_above_one(w):
    gf.Dropout(1.5)


@row(error=T, words=["callable", ("5", "int")],
     note="refused at construction (like nn.Sequential) or at the call")
def chain_with_a_number_in_it(w):
    m = w.model(fresh())
    x, _ = batch()
    gf.Chain(m, 5)(x)


@row(error=V, words=["BatchNorm", "(1, 3)"],
     note="API.md: in training a batch with one value per channel is an error")
def batchnorm_batch_of_one_in_training(w):
    m = gf.Chain(gf.Dense(4, 3), gf.BatchNorm(3))
    m, loss, ps, opt = w.warm(m=m, data=batch(n_out=3))
    x, y = batch(n=1, n_out=3)
    gf.train(loss, ps, [(x, y)], opt)


# ---- LOSSES ----

@row(words=["scalar", "(5, 2)"],
     note="like PyTorch's backward() on a non-scalar: an error, never an implicit sum")
def loss_is_not_a_scalar(w):
    m, loss, ps, opt = w.warm()
    gf.train(lambda x, y: m(x) - y, ps, [batch()], opt)


@row(words=["tuple", "scalar"],
     note="returning (loss, aux) as with jax has_aux is refused; the message must not claim "
          "that the result does not depend on the parameters")
def loss_returns_a_tuple(w):
    m, loss, ps, opt = w.warm()
    gf.train(lambda x, y: (gf.losses.mse(m(x), y), m(x)), ps, [batch()], opt)


@row(words=["depend", "parameter"],
     note="the model's output computed outside the loss: nothing could be trained, so an "
          "error (as PyTorch's backward() on a tensor without grad_fn), not a no-op")
def loss_does_not_depend_on_parameters(w):
    m, loss, ps, opt = w.warm()
    x, y = batch()
    yhat = m(x)
    gf.train(lambda: gf.losses.mse(yhat, y), ps, [()], opt)


@row(error=T, words=["control flow", "gf.where", HERE + ":"])
def python_if_on_traced_value(w):
    m, loss, ps, opt = w.warm()

    def bad(x, y):
        err = gf.losses.mse(m(x), y)
        if err > 1.0:
            return err * 2.0
        return err
    gf.train(bad, ps, [batch()], opt)


@row(error=T, words=["agg", "'mean'"])
def agg_given_as_string(w):
    m, loss, ps, opt = w.warm()
    gf.train(lambda x, y: gf.losses.mse(m(x), y, agg="mean"), ps, [batch()], opt)


# ---- TRAINING ----

@row(error=V, words=["mode", "'fast'"])
def unknown_mode(w):
    m, loss, ps, opt = w.warm()
    gf.train(loss, ps, [batch()], opt, mode="fast")


@row(error=T, words=["Adam", "opt"],
     note="gf.Adam without parentheses; the message should say gf.Adam()")
def optimiser_class_instead_of_instance(w):
    m = w.model(fresh())
    gf.train(mse_of(m), gf.params(m), [batch()], gf.Adam)


@row(error=V, words=["batchsize", "-2"])
def dataloader_negative_batchsize(w):
    gf.DataLoader(batch(), batchsize=-2)


@row(words=["batchsize", "2.5"],
     note="not truncated silently: torch's DataLoader(batch_size=2.5) is an error too")
def dataloader_fractional_batchsize(w):
    gf.DataLoader(batch(), batchsize=2.5)


@row(error=V, words=["(5, 4)", "(4, 2)"])
def dataloader_arrays_of_different_lengths(w):
    x, _ = batch()
    _, y = batch(n=4)
    gf.DataLoader((x, y), batchsize=2)


@row(error=V, words=["3", "classes"])
def onehotbatch_label_outside_classes(w):
    gf.onehotbatch([0, 1, 3], range(3))


@row(error=TV, words=["Adam", "eta"],
     note="checked on the host before the native call; nothing written")
def eta_set_to_none_between_steps(w):
    m, loss, ps, opt = w.warm()
    opt.eta = None
    gf.train(loss, ps, [batch()], opt)


@row(error=TV, words=["Adam", "eta"])
def eta_set_to_none_between_steps_eager(w):
    m, loss, ps, opt = w.warm(mode="eager")
    opt.eta = None
    gf.train(loss, ps, [batch()], opt, mode="eager")


@row(error=TV, words=["Adam", "eta", "'0.01'"],
     note="a learning rate read from a config file as text is refused, not parsed")
def eta_set_to_a_string(w):
    m, loss, ps, opt = w.warm()
    opt.eta = "0.01"
    gf.train(loss, ps, [batch()], opt)


@row(error=V, words=["Adam", "eta", "nan"],
     note="a NaN hyperparameter would write NaN into every parameter: refused like PyTorch's "
          "'Invalid learning rate' ValueError, before anything is written")
def eta_set_to_nan(w):
    m, loss, ps, opt = w.warm()
    opt.eta = float("nan")
    gf.train(loss, ps, [batch()], opt)


@row(error=V, words=["Adam", "beta", "1.0"],
     note="PyTorch's range rule 0 <= beta < 1 (beta1 = 1 freezes the momentum for ever)")
def adam_beta_one_between_steps(w):
    m, loss, ps, opt = w.warm()
    opt.beta = (1.0, 0.999)
    gf.train(loss, ps, [batch()], opt)


@row(error=V, words=["beta", "-0.1"],
     note="PyTorch's range rule; refused at construction or at the first step")
def adam_negative_beta(w):
    m = w.model(fresh())
    gf.train(mse_of(m), gf.params(m), [batch()], gf.Adam(0.01, (-0.1, 0.999)))


# ---- FILES ----

def _saved(w, m=None):
    """A checkpoint of a warmed model with its Adam state, in tmp; returns its path."""
    a = fresh(seed=5) if m is None else m
    a_opt = gf.Adam(0.01)
    gf.train(mse_of(a), gf.params(a), [batch()], a_opt)
    path = w.tmp / "m.npz"
    gf.save(path, a, a_opt)
    return path


@row(error=V, words=["m.npz", ("layers/0/weight", "layers.0.weight"), "(3, 4)", "(3, 6)"])
def load_file_of_another_model(w):
    path = w.file(_saved(w))
    b = fresh(n_in=6)
    b, _, _, b_opt = w.warm(m=b, data=batch(n_in=6))
    gf.load(path, b, b_opt)


@row(words=["m.npz", ("truncated", "corrupt", "damaged", "incomplete", "not a valid")],
     note="a half-written download: an error naming the file, model and optimiser untouched")
def load_truncated_file(w):
    path = _saved(w)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    w.file(path)
    m, _, _, opt = w.warm()
    gf.load(path, m, opt)


@row(error=FileNotFoundError, words=["missing.npz"],
     note="a GraphfluxError that is also the builtin FileNotFoundError")
def load_missing_file(w):
    m, _, _, opt = w.warm()
    gf.load(w.tmp / "missing.npz", m, opt)


@row(error=V, words=["Adam", "Descent"])
def load_optimiser_state_of_another_optimiser(w):
    path = w.file(_saved(w))
    m, _, _, opt = w.warm(opt=gf.Descent(0.1))
    gf.load(path, m, opt)


@row(error=OSError, words=["blocker"],
     note="root ignores permission bits, so a chmod-0500 folder would not fail for root: the "
          "target's parent is a regular FILE, which fails (ENOTDIR) for every user. Choice: "
          "a GraphfluxError that is also an OSError, naming the path")
def save_where_the_folder_is_a_file(w):
    blocker = w.tmp / "blocker"
    blocker.write_bytes(b"not a folder")
    w.file(blocker)
    w.folder(w.tmp)
    m, _, _, opt = w.warm()
    gf.save(blocker / "m.npz", m, opt)


@row(error=OSError, words=["no-such-folder"],
     note="like torch.save, the folder is not created; a GraphfluxError and OSError")
def save_into_a_folder_that_does_not_exist(w):
    w.folder(w.tmp)
    m, _, _, opt = w.warm()
    gf.save(w.tmp / "no-such-folder" / "m.npz", m, opt)


def _contains(msg, word):
    if isinstance(word, tuple):
        return any(_contains(msg, v) for v in word)
    return word.lower() in msg.lower()


@pytest.mark.parametrize("r", ROWS, ids=[r.id for r in ROWS])
def test_mistake_is_refused_with_a_clear_error_and_changes_nothing(r, tmp_path):
    w = Watch(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            r.mistake(w)
        except Exception as e:     # noqa: BLE001 -- every class is checked below
            err = e
        else:
            err = None
    assert err is not None, f"{r.id}: no error was raised"
    desc = f"{type(err).__module__}.{type(err).__qualname__}: {err}"
    assert issubclass(type(err), gf.GraphfluxError), f"not a GraphfluxError -- {desc}"
    if r.error is not None:
        assert isinstance(err, r.error), f"expected also a {r.error} -- {desc}"
    for cls in r.forbid:
        assert not isinstance(err, cls), f"must not be a {cls.__name__} -- {desc}"
    msg = str(err)
    missing = [word for word in r.words if not _contains(msg, word)]
    assert not missing, f"message lacks {missing} -- {desc}"
    w.check()


def test_table_is_large_and_ids_are_unique():
    assert len(ROWS) >= 34
    assert len({r.id for r in ROWS}) == len(ROWS)


# ---- a cache entry from another graphflux version -----------------------------------------------

CACHE_CASE = '''
import json, sys
import numpy as np
import graphflux as gf


def model():
    rng = np.random.default_rng(11)
    init = lambda *d: gf.glorot_uniform(*d, rng=rng, dtype=np.float64)
    return gf.Chain(gf.Dense(3, 5, gf.tanh, init=init), gf.Dense(5, 2, init=init))


def data():
    rng = np.random.default_rng(12)
    return rng.standard_normal((7, 3)), rng.standard_normal((7, 2))


def real(m):
    return lambda x, y: gf.losses.mse(m(x), y)


def foreign(m):
    return lambda x, y: gf.losses.mse(m(x), y) * 3.0


def run():
    m = model()
    step = gf.compile(real(m), gf.params(m))
    x, y = data()
    art = step.lower(x, y)
    loss, _ = step(x, y)
    print(json.dumps({"loss": loss, "cache_hit": bool(art.stats["cache_hit"]),
                      "key": art.stats["key"]}))
'''


def test_cache_entry_written_by_another_version_is_recompiled(tmp_path, monkeypatch):
    """The manifest of the entry for this loss names another graphflux version, and its files
    are (consistently checksummed) those of a different loss, 3x this one: loading it would
    return the wrong loss. The contract: recompiled, never loaded; not an error."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("GRAPHFLUX_CACHE_DIR", str(cache))
    monkeypatch.delenv("GRAPHFLUX_CACHE", raising=False)
    (tmp_path / "cache_case.py").write_text(textwrap.dedent(CACHE_CASE))
    monkeypatch.syspath_prepend(str(tmp_path))
    import cache_case

    m = cache_case.model()
    x, y = cache_case.data()
    real_step = gf.compile(cache_case.real(m), gf.params(m))
    foreign_step = gf.compile(cache_case.foreign(m), gf.params(m))
    real_key = real_step.lower(x, y).stats["key"]
    foreign_key = foreign_step.lower(x, y).stats["key"]
    assert real_key != foreign_key
    entry, other = cache / real_key, cache / foreign_key
    assert entry.is_dir() and other.is_dir()
    shutil.rmtree(entry)
    shutil.copytree(other, entry)
    manifest = json.loads((entry / "manifest.json").read_text())
    manifest.update(graphflux="0.0.1.dev-other", key=real_key)
    (entry / "manifest.json").write_text(json.dumps(manifest))

    # a fresh process (nothing in memory) with the same source file, hence the same key
    env = dict(os.environ, GRAPHFLUX_CACHE_DIR=str(cache), PYTHONPATH=os.pathsep.join(
        [str(tmp_path)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    out = subprocess.run([sys.executable, "-c", "import cache_case; cache_case.run()"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    W1, b1, W2, b2 = (np.asarray(p, np.float64) for p in gf.params(m))
    expected = np.mean((np.tanh(x @ W1.T + b1) @ W2.T + b2 - y) ** 2)
    # loading the foreign entry would give 3 * expected (and report cache_hit and its key)
    np.testing.assert_allclose(result["loss"], expected, rtol=1e-12, atol=0)
    assert result["cache_hit"] is False
    assert result["key"] == real_key


# ---- two threads, one compiled step -------------------------------------------------------------

def test_one_compiled_step_called_from_two_threads_behaves_like_a_serial_order():
    """Descent with the same batch every call: every serial order of the 100 calls gives the
    same parameters, and the k-th call to run returns the serial run's k-th loss -- so the
    threaded losses are exactly the serial losses in some order."""
    def build():
        return fresh(seed=21, n_in=64, n_hidden=256, n_out=8, dtype=np.float64)
    x, y = batch(n=256, n_in=64, n_out=8, seed=22, dtype=np.float64)

    serial = build()
    serial_step = gf.compile(mse_of(serial), gf.params(serial), gf.Descent(0.01))
    serial_losses = [serial_step(x, y) for _ in range(100)]

    m = build()
    step = gf.compile(mse_of(m), gf.params(m), gf.Descent(0.01))
    step.lower(x, y)        # compiled up front (never run), so the native calls race from the start
    losses = [[], []]

    def work(k):
        for _ in range(50):
            losses[k].append(step(x, y))
    run_together(work)
    for p, q in zip(gf.params(m), gf.params(serial)):
        np.testing.assert_allclose(p, q, rtol=0, atol=1e-12)
    threaded = sorted(losses[0] + losses[1])
    assert len(threaded) == 100
    np.testing.assert_allclose(threaded, sorted(serial_losses), rtol=0, atol=1e-12)
