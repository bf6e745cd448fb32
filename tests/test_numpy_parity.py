"""Every array op graphflux exports, called on plain numpy arrays, gives numpy's own result:
the values, the dtype, the shape, and array or numpy scalar -- for float32, float64, int64 and
bool operands, mixed, broadcast and with Python numbers, wherever numpy accepts them (where
numpy raises, graphflux raises too). The graph's dtype rules (one floating dtype per node)
are for traced code only.

The ops are listed twice: the top-level exports (`gf.where`) and the op functions of
`graphflux.compiler.ops` that losses, layers and VJP rules are written with. A test fails when
either module gains a function that is in neither the parity table nor the list of those
without a numpy twin."""
import inspect
import operator

import numpy as np
import pytest

import graphflux as gf
from graphflux.compiler import ops

DTYPES = [np.float32, np.float64, np.int64, np.bool_]


def _array(dtype, shape, seed):
    """Values with negatives, zeros and (for floats) a NaN, so that where, maximum and the
    reductions meet what numpy treats specially."""
    rng = np.random.default_rng(seed)
    if dtype is np.bool_:
        return rng.random(shape) < 0.5
    values = rng.integers(-3, 4, shape) if dtype is np.int64 else \
        rng.standard_normal(shape) * 2
    values = values.astype(dtype)
    if dtype in (np.float32, np.float64) and values.size > 2:
        values.flat[1] = np.nan
    return values


# The operand shapes of a call: "A" a (3, 4) array, "row" (4,), "col" (3, 1), "s" a Python
# float, "i" a Python int; each array operand is tried in every dtype.
UNARY = [("A",), ("row",)]
BINARY = [("A", "A"), ("A", "row"), ("col", "row"), ("A", "s"), ("i", "A")]
SHAPES = {"A": (3, 4), "row": (4,), "col": (3, 1), "cube": (2, 3, 4), "vec": (4,),
          "mat": (4, 2)}


# name -> (numpy function, [(call, operand kinds, label)]): `call(f, *operands)` applies either
# the graphflux or the numpy function the same way.
def _calls(arity_kinds):
    return [(lambda f, *xs: f(*xs), kinds, "") for kinds in arity_kinds]


def _with_kwargs(*kwargs_list, kinds=("A",)):
    return [(lambda f, x, kw=kw: f(x, **kw), kinds, str(kw)) for kw in kwargs_list]


REDUCE = _with_kwargs({}, {"axis": 0}, {"axis": -1}, {"axis": (0, 1)},
                      {"axis": 1, "keepdims": True})
TRANSPOSE = _with_kwargs({}, {"axes": (1, 0)}) + _with_kwargs({"axes": (2, 0, 1)},
                                                             kinds=("cube",))
MATMUL = _calls([("A", "mat"), ("vec", "mat"), ("A", "vec"), ("vec", "vec"),
                 ("cube", "mat")])
RESHAPE = [(lambda f, x, s=s: f(x, s), ("A",), str(s)) for s in [(12,), (2, -1), (4, 3)]]
WHERE = _calls([("A", "A", "A"), ("A", "row", "col"), ("col", "A", "s"), ("A", "i", "s")])

TOP_LEVEL = {
    "exp": (np.exp, _calls(UNARY)),
    "log": (np.log, _calls(UNARY)),
    "sqrt": (np.sqrt, _calls(UNARY)),
    "tanh": (np.tanh, _calls(UNARY)),
    "sum": (np.sum, REDUCE),
    "mean": (np.mean, REDUCE),
    "max": (np.max, REDUCE),
    "transpose": (np.transpose, TRANSPOSE),
    "reshape": (np.reshape, RESHAPE),
    "matmul": (np.matmul, MATMUL),
    "where": (np.where, WHERE),
    # Flux's flatten, batch-first; numpy has no function of that name, so the twin is written
    # from its definition
    "flatten": (lambda x: x.reshape(x.shape[0], -1) if x.ndim > 1 else x,
                _calls([("A",), ("cube",), ("vec",)])),
}

OPS = {
    **{name: TOP_LEVEL[name] for name in TOP_LEVEL if name != "flatten"},   # graphflux.arrays
    "add": (np.add, _calls(BINARY)),
    "sub": (np.subtract, _calls(BINARY)),
    "mul": (np.multiply, _calls(BINARY)),
    "div": (np.true_divide, _calls(BINARY)),
    "power": (np.power, _calls(BINARY) + [(lambda f, x: f(x, 2), ("A",), "x**2"),
                                          (lambda f, x: f(x, 2.0), ("A",), "x**2.0")]),
    "maximum": (np.maximum, _calls(BINARY)),
    "minimum": (np.minimum, _calls(BINARY)),
    "neg": (np.negative, _calls(UNARY)),
    "square": (np.square, _calls(UNARY)),
    "abs": (np.absolute, _calls(UNARY)),
    "broadcast_to": (np.broadcast_to, [(lambda f, x: f(x, (2, 3, 4)), ("row",), "")]),
    "getitem": (operator.getitem, [(lambda f, x: f(x, (slice(1, 3), -1)), ("A",), ""),
                                   (lambda f, x: f(x, (None, 2)), ("A",), "")]),
}

# Exported functions of these modules that are not numpy functions: activations (checked in
# test_nan_propagation.py), graph plumbing, and helpers with graphflux's own signatures.
NO_NUMPY_TWIN = {"sigmoid", "relu", "elementwise", "bind", "cast", "stop_gradient",
                 "random_uniform", "sum_to_shape", "broadcast_shapes"}


def _top_level_array_ops():
    return {n for n in dir(gf) if inspect.isfunction(getattr(gf, n)) and
            getattr(gf, n).__module__ in ("graphflux.arrays", ops.__name__)}


def _op_functions():
    return {n for n, f in vars(ops).items() if inspect.isfunction(f) and
            f.__module__ == ops.__name__ and not n.startswith("_")}


def test_every_exported_array_op_is_checked():
    assert _top_level_array_ops() - {"tanh"} <= set(TOP_LEVEL)
    assert set(TOP_LEVEL) <= _top_level_array_ops() | {"tanh"}
    assert gf.tanh(np.float64(0.5)) == np.tanh(0.5)      # an activation that is a numpy function
    assert _op_functions() - NO_NUMPY_TWIN == set(OPS)


def _operand(kind, dtype, seed):
    if kind == "s":
        return 1.5
    if kind == "i":
        return 2
    return _array(dtype, SHAPES[kind], seed)


def _dtype_combinations(kinds):
    arrays = [k for k in kinds if k in SHAPES]
    if len(arrays) <= 1:
        return [(d,) * len(arrays) for d in DTYPES]
    # every dtype for each operand against float32 and int64, and each dtype throughout
    combos = {(d,) * len(arrays) for d in DTYPES}
    for i in range(len(arrays)):
        for d in DTYPES:
            for other in (np.float32, np.int64):
                combo = [other] * len(arrays)
                combo[i] = d
                combos.add(tuple(combo))
    return sorted(combos, key=str)


def _cases(table, module):
    for name, (np_fn, calls) in table.items():
        for call, kinds, label in calls:
            for dtypes in _dtype_combinations(kinds):
                ids = f"{name}-{'-'.join(kinds)}-{'-'.join(np.dtype(d).name for d in dtypes)}"
                yield pytest.param(module, name, np_fn, call, kinds, dtypes,
                                   id=f"{ids}{'-' + label if label else ''}")


def _compare(got, expected, name):
    assert type(got) is type(expected), f"{name}: {type(got)} vs numpy's {type(expected)}"
    assert np.shape(got) == np.shape(expected)
    assert got.dtype == expected.dtype, f"{name}: {got.dtype} vs numpy's {expected.dtype}"
    if name == "mean" and expected.dtype.kind == "f":   # the sum times 1/n, numpy's divides
        np.testing.assert_allclose(got, expected, rtol=4 * np.finfo(expected.dtype).eps)
    else:
        np.testing.assert_array_equal(got, expected)


def _check(module, name, np_fn, call, kinds, dtypes):
    it = iter(dtypes)
    operands = [_operand(k, next(it) if k in SHAPES else None, seed)
                for seed, k in enumerate(kinds)]
    with np.errstate(all="ignore"):
        try:
            expected = call(np_fn, *operands)
        except (TypeError, ValueError) as e:
            with pytest.raises(type(e)):
                call(getattr(module, name), *operands)
            return
        got = call(getattr(module, name), *operands)
    _compare(got, expected, name)


@pytest.mark.parametrize("module, name, np_fn, call, kinds, dtypes", _cases(TOP_LEVEL, gf))
def test_top_level_op_gives_numpys_result(module, name, np_fn, call, kinds, dtypes):
    _check(module, name, np_fn, call, kinds, dtypes)


@pytest.mark.parametrize("module, name, np_fn, call, kinds, dtypes",
                         _cases({n: v for n, v in OPS.items() if n not in TOP_LEVEL}, ops))
def test_op_function_gives_numpys_result(module, name, np_fn, call, kinds, dtypes):
    _check(module, name, np_fn, call, kinds, dtypes)


def test_where_on_numpy_arrays_has_the_dtype_of_its_branches():
    """The issue's case: a bool condition used to give a bool array."""
    cond = np.array([True, False, True])
    got = gf.where(cond, np.array([1.0, 2.0, 3.0]), np.array([-1.0, -2.0, -3.0]))
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, [1.0, -2.0, 3.0])
