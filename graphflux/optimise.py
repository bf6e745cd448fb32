"""Flux.Optimise rules, each written once with graphflux ops so the same definition updates
numpy arrays eagerly (`gf.update`) and becomes part of the compiled step.

A rule sees per-element state (moments: arrays the native step updates in place) and scalars.
Scalars come from `scalars(host)`, computed on the host in float64 from the hyperparameters
(read every step, so `opt.eta = ...` needs no recompile) and the per-parameter host state
(step count, beta^t), which `advance` moves on after each successful step."""
import numpy as np

from graphflux.compiler import ops


class ParamState:
    """An optimiser's state for one parameter: per-element arrays and the host scalars."""
    __slots__ = ("x", "arrays", "host")

    def __init__(self, x, arrays, host):
        self.x, self.arrays, self.host = x, arrays, host


class Optimiser:
    state_names = ()

    def __init__(self):
        self._state = {}    # id(x) -> ParamState

    def host_init(self):
        return ()

    def advance(self, host):
        return host

    def scalars(self, host):
        """name -> float for this step."""
        raise NotImplementedError

    def rule(self, x, g, state, s):
        """(delta, {state name: new value}); the update is x -= delta."""
        raise NotImplementedError

    def state_init(self, x):
        return {name: np.zeros_like(x) for name in self.state_names}

    # -- per-parameter state, created lazily by identity ---------------------------------
    def slot(self, x):
        """The ParamState of array `x`, created on first use."""
        entry = self._state.get(id(x))
        if entry is None or entry.x is not x:
            entry = self._state[id(x)] = ParamState(x, self.state_init(x), self.host_init())
        return entry

    def __repr__(self):
        hp = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({hp})"


class Descent(Optimiser):
    """x -= eta * g."""

    def __init__(self, eta=0.1):
        super().__init__()
        self.eta = eta

    def scalars(self, host):
        return {"eta": self.eta}

    def rule(self, x, g, state, s):
        return ops.mul(g, s["eta"]), {}


class Momentum(Optimiser):
    """v = rho v - eta g; x += v."""
    state_names = ("velocity",)

    def __init__(self, eta=0.01, rho=0.9):
        super().__init__()
        self.eta, self.rho = eta, rho

    def scalars(self, host):
        return {"eta": self.eta, "rho": self.rho}

    def rule(self, x, g, state, s):
        v = ops.sub(ops.mul(state["velocity"], s["rho"]), ops.mul(g, s["eta"]))
        return ops.neg(v), {"velocity": v}


class Adam(Optimiser):
    """Flux's Adam: eps outside the square root, after bias correction; beta^t per parameter."""
    state_names = ("m", "v")

    def __init__(self, eta=0.001, beta=(0.9, 0.999), eps=1e-8):
        super().__init__()
        self.eta, self.beta, self.eps = eta, tuple(beta), eps

    def host_init(self):
        return self.beta

    def advance(self, host):
        return (host[0] * self.beta[0], host[1] * self.beta[1])

    def scalars(self, host):
        b1, b2 = self.beta
        return {"eta": self.eta, "b1": b1, "1-b1": 1 - b1, "b2": b2, "1-b2": 1 - b2,
                "1-b1^t": 1 - host[0], "1-b2^t": 1 - host[1], "eps": self.eps}

    def rule(self, x, g, state, s):
        m = ops.add(ops.mul(state["m"], s["b1"]), ops.mul(g, s["1-b1"]))
        v = ops.add(ops.mul(state["v"], s["b2"]), ops.mul(ops.square(g), s["1-b2"]))
        denom = ops.add(ops.sqrt(ops.div(v, s["1-b2^t"])), s["eps"])
        delta = ops.mul(ops.div(ops.div(m, s["1-b1^t"]), denom), s["eta"])
        return delta, {"m": m, "v": v}


def apply_eager(opt, x, g):
    """One in-place update of array `x` with gradient `g` in numpy: the rule run on arrays,
    scalars as numpy scalars of x's dtype so the arithmetic matches the compiled step."""
    st = opt.slot(x)
    cast = x.dtype.type
    s = {k: cast(v) for k, v in opt.scalars(st.host).items()}
    delta, new = opt.rule(x, np.asarray(g, dtype=x.dtype), st.arrays, s)
    x -= delta
    for k, v in new.items():
        st.arrays[k][...] = v
    st.host = opt.advance(st.host)
