"""Flux.Optimise 0.13.17: each rule written once with graphflux ops, so the same definition
updates numpy arrays eagerly (`gf.update`) and becomes part of the compiled step.

A rule sees per-element state (moments: arrays the native step updates in place) and scalars.
Scalars come from `scalars(host)`, computed on the host in float64 from the hyperparameters
(read every step, so `opt.eta = ...` needs no recompile) and the per-parameter host state (step
count, beta^t), which `advance` moves on after each successful step. The update is x -= delta.
Defaults, formulas and quirks follow Flux (notes/flux-training-api.md b)."""
import math
import numbers

import numpy as np

from graphflux.compiler import ops
from graphflux.compiler.errors import GraphfluxError

from .bindings import replaced

EPS = 1e-8


class RestoreError(GraphfluxError, KeyError):
    """A restored optimiser met a parameter it has no state for."""


class HyperparameterError(GraphfluxError, ValueError):
    """A hyperparameter a step would read is not a finite number in the rule's range."""


UNIT = (0.0, 1.0, True)          # (low, high, whether high itself is allowed)
BELOW_ONE = (0.0, 1.0, False)    # a beta whose powers are divided by 1 - beta^t
NON_NEGATIVE = (0.0, math.inf, False)
POSITIVE = (math.nextafter(0.0, 1.0), math.inf, False)


class ParamState:
    """A rule's state for one parameter: per-element arrays and the host scalars, and the
    eager update function generated for it on first use (eager_update)."""
    __slots__ = ("x", "arrays", "host", "numpy_update")

    def __init__(self, x, arrays, host):
        self.x, self.arrays, self.host = x, arrays, host
        self.numpy_update = None


class Rule:
    """Base of every optimiser. Subclasses define `scalars` and `rule`, and where they keep
    state, `state_names` (zero-initialised arrays), `host_init` and `advance`; `ranges` names
    the hyperparameters the rule needs in a range (the rest need only be finite numbers)."""
    state_names = ()
    ranges = {}
    _changes = 0        # counts assignments to public attributes (hyperparameters)
    _checked = -1       # the count at the last successful `check_hyperparameters`

    def __init__(self):
        self._state = {}    # id(x) -> ParamState

    def __setattr__(self, name, value):
        if not name.startswith("_"):
            object.__setattr__(self, "_changes", self._changes + 1)
        object.__setattr__(self, name, value)

    def changes(self):
        return self._changes

    def check_hyperparameters(self):
        """Refuse a hyperparameter that is not a finite number in its range (`opt.eta = None`
        would otherwise turn every parameter into NaN), before a step writes anything. Runs
        only when a hyperparameter was assigned since the last check: free on the hot path."""
        changes = self.changes()
        if changes != self._checked:
            self._check_values("opt")
            self._checked = changes

    def _check_values(self, path):
        for name, value in vars(self).items():
            if not name.startswith("_"):
                _check_hyperparameter(f"{type(self).__name__} ({path}.{name})", value,
                                      self.ranges.get(name))

    def host_init(self):
        return ()

    def advance(self, host):
        return host

    def prepare(self, records):
        """Called once per step on the host, before scalars are read (ExpDecay's schedule)."""

    def scalars(self, host):
        """name -> float for this step."""
        return {}

    def rule(self, x, g, state, s):
        """(delta, {state name: new value}) written with graphflux ops."""
        raise NotImplementedError

    def state_init(self, x):
        return {name: np.zeros_like(x) for name in self.state_names}

    def slot(self, x):
        """The ParamState of array `x`, created on first use (by identity) -- except in an
        optimiser restored by gf.load, which refuses parameters it has no state for."""
        entry = self._state.get(id(x))
        if entry is None or entry.x is not x:
            restored = getattr(self, "_restored_from", None)
            if restored is not None:
                path, names = restored
                name = names.get(id(x), f"of shape {x.shape}")
                raise RestoreError(
                    f"this optimiser was restored from {path}, which has no state for parameter "
                    f"{name}; call opt.allow_fresh_state() to start that parameter from fresh "
                    "state, or load a file saved with it")
            entry = self._state[id(x)] = ParamState(x, self.state_init(x), self.host_init())
            replaced(f"{type(self).__name__} state for a parameter of shape {x.shape} was "
                     "created or restored")
        return entry

    def state_of(self, x):
        """The ParamState of array `x` if it has one (by identity), else None."""
        entry = self._state.get(id(x))
        return entry if entry is not None and entry.x is x else None

    def states(self):
        """Every parameter's state, in creation order."""
        return list(self._state.values())

    def restore(self, entries, restored_from):
        """Replace all per-parameter state by `entries`, (x, {name: array}, host) each (the
        arrays copied into fresh state), as gf.load does; parameters not among them then
        refuse to start from fresh state (`restored_from`: (path, {id: name}))."""
        self._state.clear()
        self._restored_from = None
        for x, arrays, host in entries:
            entry = self.slot(x)
            for k, a in arrays.items():
                np.copyto(entry.arrays[k], a)
            entry.host = host
        self._restored_from = restored_from

    def allow_fresh_state(self):
        """After gf.load, let parameters without restored state start from fresh state."""
        self._restored_from = None

    def __repr__(self):
        hp = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({hp})"


def _check_hyperparameter(field, value, allowed):
    values = value if isinstance(value, tuple) else (value,)
    for v in values:
        if isinstance(v, np.ndarray) and v.ndim == 0 and v.dtype.kind in "fiu":
            v = v[()]
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
            raise HyperparameterError(
                f"{field} is {value!r}: hyperparameters must be finite numbers; set it to one "
                "(nothing was updated)")
        if allowed is not None:
            low, high, high_ok = allowed
            if not (low <= v < high or high_ok and v == high):
                bound = "]" if high_ok else ")"
                raise HyperparameterError(
                    f"{field} is {value!r}, outside [{low:g}, {high:g}{bound}, where the rule "
                    "needs it; set it to a value in that range (nothing was updated)")


def _adam_moments(state, g, s):
    m = ops.add(ops.mul(state["m"], s["b1"]), ops.mul(g, s["1-b1"]))
    v = ops.add(ops.mul(state["v"], s["b2"]), ops.mul(ops.square(g), s["1-b2"]))
    return m, v


class _BetaPowers(Rule):
    """Rules with Adam's moments and per-parameter beta^t (starting at beta^1)."""
    ranges = {"beta": BELOW_ONE, "eps": NON_NEGATIVE}
    state_names = ("m", "v")

    def __init__(self, eta, beta, eps):
        super().__init__()
        self.eta, self.beta, self.eps = eta, tuple(beta), eps

    epsilon = property(lambda self: self.eps, lambda self, v: setattr(self, "eps", v))

    def host_init(self):
        return tuple(self.beta)

    def advance(self, host):
        return (host[0] * self.beta[0], host[1] * self.beta[1]) + tuple(host[2:])

    def scalars(self, host):
        b1, b2 = self.beta
        return {"eta": self.eta, "b1": b1, "1-b1": 1 - b1, "b2": b2, "1-b2": 1 - b2,
                "1-b1^t": 1 - host[0], "1-b2^t": 1 - host[1], "eps": self.eps}


class Descent(Rule):
    """delta = eta * g."""

    def __init__(self, eta=0.1):
        super().__init__()
        self.eta = eta

    def scalars(self, host):
        return {"eta": self.eta}

    def rule(self, x, g, state, s):
        return ops.mul(g, s["eta"]), {}


class Momentum(Rule):
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


class Nesterov(Rule):
    """d = rho^2 v - (1 + rho) eta g; v = rho v - eta g; delta = -d."""
    state_names = ("velocity",)

    def __init__(self, eta=0.001, rho=0.9):
        super().__init__()
        self.eta, self.rho = eta, rho

    def scalars(self, host):
        return {"eta": self.eta, "rho": self.rho, "rho^2": self.rho ** 2,
                "(1+rho)eta": (1 + self.rho) * self.eta}

    def rule(self, x, g, state, s):
        v = state["velocity"]
        d = ops.sub(ops.mul(v, s["rho^2"]), ops.mul(g, s["(1+rho)eta"]))
        new_v = ops.sub(ops.mul(v, s["rho"]), ops.mul(g, s["eta"]))
        return ops.neg(d), {"velocity": new_v}


class RMSProp(Rule):
    """a = rho a + (1 - rho) g^2; delta = g eta / (sqrt(a) + eps)."""
    ranges = {"rho": UNIT, "eps": NON_NEGATIVE}
    state_names = ("acc",)

    def __init__(self, eta=0.001, rho=0.9, eps=EPS):
        super().__init__()
        self.eta, self.rho, self.eps = eta, rho, eps

    epsilon = property(lambda self: self.eps, lambda self, v: setattr(self, "eps", v))

    def scalars(self, host):
        return {"eta": self.eta, "rho": self.rho, "1-rho": 1 - self.rho, "eps": self.eps}

    def rule(self, x, g, state, s):
        a = ops.add(ops.mul(state["acc"], s["rho"]), ops.mul(ops.square(g), s["1-rho"]))
        delta = ops.div(ops.mul(g, s["eta"]), ops.add(ops.sqrt(a), s["eps"]))
        return delta, {"acc": a}


class Adam(_BetaPowers):
    """delta = eta (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps): eps outside the root."""

    def __init__(self, eta=0.001, beta=(0.9, 0.999), eps=EPS):
        super().__init__(eta, beta, eps)

    def rule(self, x, g, state, s):
        m, v = _adam_moments(state, g, s)
        denom = ops.add(ops.sqrt(ops.div(v, s["1-b2^t"])), s["eps"])
        delta = ops.mul(ops.div(ops.div(m, s["1-b1^t"]), denom), s["eta"])
        return delta, {"m": m, "v": v}


class RAdam(_BetaPowers):
    """Rectified Adam: the rectified step once rho_t > 4, plain momentum before (decided on
    the host from t, passed as the scalars `rect` and `plain`, one of them zero)."""

    def __init__(self, eta=0.001, beta=(0.9, 0.999), eps=EPS):
        super().__init__(eta, beta, eps)

    def host_init(self):
        return tuple(self.beta) + (1,)

    def advance(self, host):
        return (host[0] * self.beta[0], host[1] * self.beta[1], host[2] + 1)

    def scalars(self, host):
        s = super().scalars(host)
        b2, t = self.beta[1], host[2]
        rho_inf = 2 / (1 - b2) - 1
        rho = rho_inf - 2 * t * host[1] / (1 - host[1])
        if rho > 4:
            r = np.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
            s.update(rect=self.eta * r, plain=0.0)
        else:
            s.update(rect=0.0, plain=self.eta)
        return s

    def rule(self, x, g, state, s):
        m, v = _adam_moments(state, g, s)
        mhat = ops.div(m, s["1-b1^t"])
        rect = ops.div(ops.mul(mhat, s["rect"]),
                       ops.add(ops.sqrt(ops.div(v, s["1-b2^t"])), s["eps"]))
        return ops.add(rect, ops.mul(mhat, s["plain"])), {"m": m, "v": v}


class AdaMax(_BetaPowers):
    """u = max(b2 u, |g|); delta = eta m / (1 - b1^t) / (u + eps)."""
    state_names = ("m", "u")

    def __init__(self, eta=0.001, beta=(0.9, 0.999), eps=EPS):
        super().__init__(eta, beta, eps)

    def rule(self, x, g, state, s):
        m = ops.add(ops.mul(state["m"], s["b1"]), ops.mul(g, s["1-b1"]))
        u = ops.maximum(ops.mul(state["u"], s["b2"]), ops.abs(g))
        delta = ops.div(ops.div(ops.mul(m, s["eta"]), s["1-b1^t"]), ops.add(u, s["eps"]))
        return delta, {"m": m, "u": u}


class OAdam(_BetaPowers):
    """Optimistic Adam: delta = 2 term - previous term (Flux's code default eta = 0.001)."""
    state_names = ("m", "v", "term")

    def __init__(self, eta=0.001, beta=(0.5, 0.9), eps=EPS):
        super().__init__(eta, beta, eps)

    def rule(self, x, g, state, s):
        m, v = _adam_moments(state, g, s)
        term = ops.mul(ops.div(ops.div(m, s["1-b1^t"]),
                               ops.add(ops.sqrt(ops.div(v, s["1-b2^t"])), s["eps"])), s["eta"])
        delta = ops.add(ops.neg(state["term"]), ops.mul(term, 2.0))
        return delta, {"m": m, "v": v, "term": term}


class AdaGrad(Rule):
    """a += g^2 (a starts at eps, as in Flux); delta = g eta / (sqrt(a) + eps)."""
    ranges = {"eps": NON_NEGATIVE}
    state_names = ("acc",)

    def __init__(self, eta=0.1, eps=EPS):
        super().__init__()
        self.eta, self.eps = eta, eps

    epsilon = property(lambda self: self.eps, lambda self, v: setattr(self, "eps", v))

    def state_init(self, x):
        return {"acc": np.full_like(x, self.eps)}

    def scalars(self, host):
        return {"eta": self.eta, "eps": self.eps}

    def rule(self, x, g, state, s):
        a = ops.add(state["acc"], ops.square(g))
        return ops.div(ops.mul(g, s["eta"]), ops.add(ops.sqrt(a), s["eps"])), {"acc": a}


class AdaDelta(Rule):
    """No learning rate: delta = g sqrt(d + eps) / sqrt(a + eps); the first argument is rho."""
    ranges = {"rho": UNIT, "eps": NON_NEGATIVE}
    state_names = ("acc", "dacc")

    def __init__(self, rho=0.9, eps=EPS):
        super().__init__()
        self.rho, self.eps = rho, eps

    epsilon = property(lambda self: self.eps, lambda self, v: setattr(self, "eps", v))

    def scalars(self, host):
        return {"rho": self.rho, "1-rho": 1 - self.rho, "eps": self.eps}

    def rule(self, x, g, state, s):
        a = ops.add(ops.mul(state["acc"], s["rho"]), ops.mul(ops.square(g), s["1-rho"]))
        delta = ops.div(ops.mul(g, ops.sqrt(ops.add(state["dacc"], s["eps"]))),
                        ops.sqrt(ops.add(a, s["eps"])))
        d = ops.add(ops.mul(state["dacc"], s["rho"]), ops.mul(ops.square(delta), s["1-rho"]))
        return delta, {"acc": a, "dacc": d}


class AMSGrad(Rule):
    """Adam's moments without bias correction and a running max of v; all three start at eps."""
    ranges = {"beta": UNIT, "eps": NON_NEGATIVE}
    state_names = ("m", "v", "vmax")

    def __init__(self, eta=0.001, beta=(0.9, 0.999), eps=EPS):
        super().__init__()
        self.eta, self.beta, self.eps = eta, tuple(beta), eps

    epsilon = property(lambda self: self.eps, lambda self, v: setattr(self, "eps", v))

    def state_init(self, x):
        return {name: np.full_like(x, self.eps) for name in self.state_names}

    def scalars(self, host):
        b1, b2 = self.beta
        return {"eta": self.eta, "b1": b1, "1-b1": 1 - b1, "b2": b2, "1-b2": 1 - b2,
                "eps": self.eps}

    def rule(self, x, g, state, s):
        m, v = _adam_moments(state, g, s)
        vmax = ops.maximum(state["vmax"], v)
        delta = ops.div(ops.mul(m, s["eta"]), ops.add(ops.sqrt(vmax), s["eps"]))
        return delta, {"m": m, "v": v, "vmax": vmax}


class NAdam(_BetaPowers):
    """Nesterov Adam, with Flux's extra beta2 inside the square root."""

    def __init__(self, eta=0.001, beta=(0.9, 0.999), eps=EPS):
        super().__init__(eta, beta, eps)

    def scalars(self, host):
        s = super().scalars(host)
        b1, b2 = self.beta
        s.update({"1-b1*b1^t": 1 - b1 * host[0], "b2/(1-b2^t)": b2 / (1 - host[1])})
        return s

    def rule(self, x, g, state, s):
        m, v = _adam_moments(state, g, s)
        num = ops.add(ops.div(ops.mul(m, s["b1"]), s["1-b1*b1^t"]),
                      ops.div(ops.mul(g, s["1-b1"]), s["1-b1^t"]))
        denom = ops.add(ops.sqrt(ops.mul(v, s["b2/(1-b2^t)"])), s["eps"])
        return ops.mul(ops.div(num, denom), s["eta"]), {"m": m, "v": v}


class AdaBelief(_BetaPowers):
    """s = b2 s + (1 - b2)(g - m)^2 + eps^2; delta = eta m^ / (sqrt(s^) + eps^2) (Flux's eps^2)."""
    state_names = ("m", "s")

    def __init__(self, eta=0.001, beta=(0.9, 0.999), eps=EPS):
        super().__init__(eta, beta, eps)

    def scalars(self, host):
        s = super().scalars(host)
        s["eps^2"] = self.eps ** 2
        return s

    def rule(self, x, g, state, s):
        m = ops.add(ops.mul(state["m"], s["b1"]), ops.mul(g, s["1-b1"]))
        belief = ops.add(ops.add(ops.mul(state["s"], s["b2"]),
                                 ops.mul(ops.square(ops.sub(g, m)), s["1-b2"])), s["eps^2"])
        denom = ops.add(ops.sqrt(ops.div(belief, s["1-b2^t"])), s["eps^2"])
        delta = ops.mul(ops.div(ops.div(m, s["1-b1^t"]), denom), s["eta"])
        return delta, {"m": m, "s": belief}


class WeightDecay(Rule):
    """delta += wd x (decoupled: not scaled by a learning rate)."""

    def __init__(self, wd=0.0):
        super().__init__()
        self.wd = wd

    def scalars(self, host):
        return {"wd": self.wd}

    def rule(self, x, g, state, s):
        return ops.add(g, ops.mul(x, s["wd"])), {}


class ClipValue(Rule):
    """delta clamped to [-thresh, thresh]."""
    ranges = {"thresh": NON_NEGATIVE}

    def __init__(self, thresh):
        super().__init__()
        self.thresh = thresh

    def scalars(self, host):
        return {"thresh": self.thresh, "-thresh": -self.thresh}

    def rule(self, x, g, state, s):
        return ops.minimum(ops.maximum(g, s["-thresh"]), s["thresh"]), {}


class ClipNorm(Rule):
    """delta scaled by thresh / norm(delta) when its 2-norm (per array) exceeds thresh."""
    ranges = {"thresh": NON_NEGATIVE}

    def __init__(self, thresh):
        super().__init__()
        self.thresh = thresh

    def scalars(self, host):
        return {"thresh": self.thresh}

    def rule(self, x, g, state, s):
        norm = ops.sqrt(ops.sum(ops.square(g)))
        scale = ops.where(ops.elementwise("greater", norm, s["thresh"]),
                          ops.div(s["thresh"], norm), 1.0)
        return ops.mul(g, scale), {}


class ExpDecay(Rule):
    """delta *= eta, where eta decays by `decay` (down to `clip`) every `decay_step` updates
    after `start`. Flux counts updates per array and decays the shared eta when the first
    array reaches such a count; graphflux decays once per step in the same way."""
    ranges = {"decay": NON_NEGATIVE, "step": POSITIVE, "clip": NON_NEGATIVE}

    def __init__(self, eta=0.001, decay=0.1, decay_step=1000, clip=1e-4, start=0):
        super().__init__()
        self.eta, self.decay, self.step, self.clip, self.start = eta, decay, decay_step, clip, \
            start

    def host_init(self):
        return (0,)

    def advance(self, host):
        return (host[0] + 1,)

    def prepare(self, records):
        counts = [r.host[0] for r in records]
        for i in range(len(counts)):
            counts[i] += 1
            hits = [c for c in counts if c > self.start and c % self.step == 0]
            if counts[i] in hits and len(hits) == 1:
                self.eta = max(self.eta * self.decay, self.clip)

    def scalars(self, host):
        return {"eta": self.eta}

    def rule(self, x, g, state, s):
        return ops.mul(g, s["eta"]), {}


class InvDecay(Rule):
    """delta /= 1 + gamma n, with n the array's update count from 1."""
    ranges = {"gamma": NON_NEGATIVE}

    def __init__(self, gamma=0.001):
        super().__init__()
        self.gamma = gamma

    def host_init(self):
        return (1,)

    def advance(self, host):
        return (host[0] + 1,)

    def scalars(self, host):
        return {"1+gamma*n": 1 + self.gamma * host[0]}

    def rule(self, x, g, state, s):
        return ops.div(g, s["1+gamma*n"]), {}


class Optimiser(Rule):
    """Compose rules: delta passes through each in order (Flux's Optimiser/OptimiserChain)."""

    def __init__(self, *rules):
        super().__init__()
        self._os = list(rules)

    os = property(lambda self: self._os)

    def changes(self):
        return self._changes + sum(o.changes() for o in self._os)

    def _check_values(self, path):
        for i, o in enumerate(self._os):
            o._check_values(f"{path}[{i}]")

    def __repr__(self):
        return f"Optimiser({', '.join(map(repr, self._os))})"

    def __getitem__(self, i):
        return self.os[i]

    def __len__(self):
        return len(self.os)

    def __iter__(self):
        return iter(self.os)

    @property
    def state_names(self):
        return tuple(f"{i}.{n}" for i, o in enumerate(self.os) for n in o.state_names)

    def state_init(self, x):
        return {f"{i}.{n}": a for i, o in enumerate(self.os) for n, a in o.state_init(x).items()}

    def host_init(self):
        return tuple(o.host_init() for o in self.os)

    def advance(self, host):
        return tuple(o.advance(h) for o, h in zip(self.os, host))

    def prepare(self, records):
        for i, o in enumerate(self.os):
            o.prepare([ParamState(r.x, None, r.host[i]) for r in records])

    def scalars(self, host):
        return {f"{i}.{k}": v for i, (o, h) in enumerate(zip(self.os, host))
                for k, v in o.scalars(h).items()}

    def rule(self, x, g, state, s):
        new = {}
        for i, o in enumerate(self.os):
            sub_state = {n: state[f"{i}.{n}"] for n in o.state_names}
            sub_s = {k[len(f"{i}."):]: v for k, v in s.items() if k.startswith(f"{i}.")}
            g, sub_new = o.rule(x, g, sub_state, sub_s)
            new.update({f"{i}.{n}": v for n, v in sub_new.items()})
        return g, new


def AdamW(eta=0.001, beta=(0.9, 0.999), decay=0.0):  # noqa: N802 -- Flux's name
    """Optimiser(Adam(eta, beta), WeightDecay(decay)): decay not scaled by eta (Flux 0.13)."""
    return Optimiser(Adam(eta, beta), WeightDecay(decay))
