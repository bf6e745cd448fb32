"""The runtime's numpy table: built-ins that use a numpy ufunc directly must equal the function
generated from their sympy definition."""
import numpy as np
import pytest

from graphflux.compiler import elementwise as ew
from graphflux.runtime.numpy_impls import UFUNCS, elementwise_function


@pytest.mark.parametrize("name", sorted(UFUNCS))
def test_ufunc_equals_sympy_definition(name):
    rng = np.random.default_rng(1)
    fn = ew.get(name)
    args = [np.abs(rng.standard_normal((4, 5))) + 0.1 for _ in range(fn.arity)]
    np.testing.assert_allclose(UFUNCS[name](*args), elementwise_function(name)(*args),
                               rtol=1e-15, atol=0)
