"""Flux.Optimise 0.13.17, ported: every rule against a step-by-step numpy float64 reference written
here from the Flux formulas (notes/flux-training-api.md section b and Flux's
src/optimise/optimisers.jl), through `gf.update` (eager) and a compiled step; Flux's defaults;
Flux's test/optimise.jl testsets "Optimise", "Optimiser", "ExpDecay", "Clipping" and
"update!: handle Fills from Zygote"; and hyperparameters changed between compiled steps.

Conventions: `x .-= apply!(opt, x, g)`, per-parameter state created lazily, scalar state (t,
beta^t, ExpDecay's eta and counters) advanced once per step. Hyperparameter attributes use Flux's
struct field names (`eta`, `rho`, `beta`, `wd`, `thresh`, `gamma`, `decay`, `step`, `clip`,
`start`), except Flux's `epsilon` field, which graphflux spells `eps` (as the loss keyword)."""
import logging

import numpy as np
import pytest

import graphflux as gf

EPS = 1e-8          # Flux.Optimise.EPS
RTOL = 1e-9         # parameters vs the numpy reference, float64
STEPS = 10


# ---- numpy float64 reference implementations (one parameter array each) ------------------------
# Each `apply(x, g)` returns the step Δ; the caller does x -= Δ. Hyperparameters are plain
# attributes read on every call, so a test may change them between steps, as in Flux.

class RefDescent:
    """Δ = η g."""
    def __init__(self, eta=0.1):
        self.eta = eta

    def apply(self, x, g):
        return self.eta * g


class RefMomentum:
    """v ← ρ v − η g; Δ = −v."""
    def __init__(self, eta=0.01, rho=0.9):
        self.eta, self.rho, self.v = eta, rho, None

    def apply(self, x, g):
        if self.v is None:
            self.v = np.zeros_like(x)
        self.v = self.rho * self.v - self.eta * g
        return -self.v


class RefNesterov:
    """d = ρ² v − (1 + ρ) η g; v ← ρ v − η g; Δ = −d."""
    def __init__(self, eta=0.001, rho=0.9):
        self.eta, self.rho, self.v = eta, rho, None

    def apply(self, x, g):
        if self.v is None:
            self.v = np.zeros_like(x)
        d = self.rho ** 2 * self.v - (1 + self.rho) * self.eta * g
        self.v = self.rho * self.v - self.eta * g
        return -d


class RefRMSProp:
    """a ← ρ a + (1 − ρ) g²; Δ = g η / (√a + ε)."""
    def __init__(self, eta=0.001, rho=0.9, eps=EPS):
        self.eta, self.rho, self.eps, self.a = eta, rho, eps, None

    def apply(self, x, g):
        if self.a is None:
            self.a = np.zeros_like(x)
        self.a = self.rho * self.a + (1 - self.rho) * g * g
        return g * self.eta / (np.sqrt(self.a) + self.eps)


class _AdamFamily:
    """m ← β1 m + (1 − β1) g; v ← β2 v + (1 − β2) g²; βp = (β1^t, β2^t) starts at β and is
    multiplied by the current β after every step."""
    def __init__(self, eta=0.001, beta=(0.9, 0.999), eps=EPS):
        self.eta, self.beta, self.eps = eta, tuple(beta), eps
        self.m = self.v = self.bp = None

    def _init(self, x):
        if self.m is None:
            self.m, self.v, self.bp = np.zeros_like(x), np.zeros_like(x), list(self.beta)

    def _moments(self, x, g):
        self._init(x)
        b1, b2 = self.beta
        self.m = b1 * self.m + (1 - b1) * g
        self.v = b2 * self.v + (1 - b2) * g * g

    def _advance(self):
        self.bp = [self.bp[0] * self.beta[0], self.bp[1] * self.beta[1]]


class RefAdam(_AdamFamily):
    """Δ = η · [m/(1 − β1^t)] / (√(v/(1 − β2^t)) + ε)."""
    def apply(self, x, g):
        self._moments(x, g)
        d = (self.m / (1 - self.bp[0])) / (np.sqrt(self.v / (1 - self.bp[1])) + self.eps) * self.eta
        self._advance()
        return d


class RefRAdam(_AdamFamily):
    """ρ∞ = 2/(1 − β2) − 1; ρt = ρ∞ − 2t β2^t/(1 − β2^t); if ρt > 4:
    r = √((ρt−4)(ρt−2)ρ∞ / ((ρ∞−4)(ρ∞−2)ρt)), Δ = η r m̂/(√v̂ + ε); else Δ = η m̂."""
    def __init__(self, eta=0.001, beta=(0.9, 0.999), eps=EPS):
        super().__init__(eta, beta, eps)
        self.t = 1

    def apply(self, x, g):
        self._moments(x, g)
        rinf = 2 / (1 - self.beta[1]) - 1
        rho = rinf - 2 * self.t * self.bp[1] / (1 - self.bp[1])
        mhat = self.m / (1 - self.bp[0])
        if rho > 4:
            r = np.sqrt((rho - 4) * (rho - 2) * rinf / ((rinf - 4) * (rinf - 2) * rho))
            d = mhat / (np.sqrt(self.v / (1 - self.bp[1])) + self.eps) * self.eta * r
        else:
            d = mhat * self.eta
        self._advance()
        self.t += 1
        return d


class RefAdaMax(_AdamFamily):
    """m as Adam; u ← max(β2 u, |g|); Δ = (η/(1 − β1^t)) m/(u + ε)."""
    def apply(self, x, g):
        self._init(x)          # self.v plays u
        b1, b2 = self.beta
        self.m = b1 * self.m + (1 - b1) * g
        self.v = np.maximum(b2 * self.v, np.abs(g))
        d = (self.eta / (1 - self.bp[0])) * self.m / (self.v + self.eps)
        self._advance()
        return d


class RefOAdam(_AdamFamily):
    """m, v as Adam; term = η m̂/(√v̂ + ε); Δ = 2 term − previous term."""
    def __init__(self, eta=0.001, beta=(0.5, 0.9), eps=EPS):
        super().__init__(eta, beta, eps)
        self.prev = None

    def apply(self, x, g):
        self._moments(x, g)
        if self.prev is None:
            self.prev = np.zeros_like(x)
        term = self.eta * (self.m / (1 - self.bp[0])) / (np.sqrt(self.v / (1 - self.bp[1])) + self.eps)
        d = 2 * term - self.prev
        self.prev = term
        self._advance()
        return d


class RefAdaGrad:
    """a starts at ε (not 0); a ← a + g²; Δ = g η/(√a + ε)."""
    def __init__(self, eta=0.1, eps=EPS):
        self.eta, self.eps, self.a = eta, eps, None

    def apply(self, x, g):
        if self.a is None:
            self.a = np.full_like(x, self.eps)
        self.a = self.a + g * g
        return g * self.eta / (np.sqrt(self.a) + self.eps)


class RefAdaDelta:
    """a ← ρ a + (1 − ρ) g²; Δ = g √(d + ε)/√(a + ε); d ← ρ d + (1 − ρ) Δ². No learning rate."""
    def __init__(self, rho=0.9, eps=EPS):
        self.rho, self.eps, self.a, self.d = rho, eps, None, None

    def apply(self, x, g):
        if self.a is None:
            self.a, self.d = np.zeros_like(x), np.zeros_like(x)
        self.a = self.rho * self.a + (1 - self.rho) * g * g
        step = g * np.sqrt(self.d + self.eps) / np.sqrt(self.a + self.eps)
        self.d = self.rho * self.d + (1 - self.rho) * step * step
        return step


class RefAMSGrad:
    """m = v = v̂ start at ε; m, v as Adam; v̂ ← max(v̂, v); Δ = η m/(√v̂ + ε); no bias correction."""
    def __init__(self, eta=0.001, beta=(0.9, 0.999), eps=EPS):
        self.eta, self.beta, self.eps, self.m = eta, tuple(beta), eps, None

    def apply(self, x, g):
        b1, b2 = self.beta
        if self.m is None:
            self.m, self.v, self.vhat = (np.full_like(x, self.eps) for _ in range(3))
        self.m = b1 * self.m + (1 - b1) * g
        self.v = b2 * self.v + (1 - b2) * g ** 2
        self.vhat = np.maximum(self.vhat, self.v)
        return self.eta * self.m / (np.sqrt(self.vhat) + self.eps)


class RefNAdam(_AdamFamily):
    """m, v as Adam; Δ = η (β1 m/(1 − β1·β1^t) + (1 − β1) g/(1 − β1^t)) / (√(v β2/(1 − β2^t)) + ε)."""
    def apply(self, x, g):
        self._moments(x, g)
        b1, b2 = self.beta
        b1p, b2p = self.bp
        d = ((b1 * self.m / (1 - b1 * b1p) + (1 - b1) * g / (1 - b1p))
             / (np.sqrt(self.v * b2 / (1 - b2p)) + self.eps) * self.eta)
        self._advance()
        return d


class RefAdaBelief(_AdamFamily):
    """m as Adam; s ← β2 s + (1 − β2)(g − m)² + ε² (new m); Δ = η m̂/(√(s/(1 − β2^t)) + ε²)."""
    def apply(self, x, g):
        self._init(x)          # self.v plays s
        b1, b2 = self.beta
        e2 = self.eps ** 2
        self.m = b1 * self.m + (1 - b1) * g
        self.v = b2 * self.v + (1 - b2) * (g - self.m) ** 2 + e2
        d = self.eta * (self.m / (1 - self.bp[0])) / (np.sqrt(self.v / (1 - self.bp[1])) + e2)
        self._advance()
        return d


class RefWeightDecay:
    """Δ ← Δ + wd x (x before the update)."""
    def __init__(self, wd=0.0):
        self.wd = wd

    def apply(self, x, g):
        return g + self.wd * x


class RefClipValue:
    """Δ ← clamp(Δ, −thresh, thresh)."""
    def __init__(self, thresh):
        self.thresh = thresh

    def apply(self, x, g):
        return np.clip(g, -self.thresh, self.thresh)


class RefClipNorm:
    """n = ‖Δ‖₂ of this array; if n > thresh: Δ ← Δ thresh/n."""
    def __init__(self, thresh):
        self.thresh = thresh

    def apply(self, x, g):
        n = np.sqrt(np.sum(g * g))
        return g * (self.thresh / n) if n > self.thresh else g


class RefExpDecay:
    """n ← n + 1 (first call n = 1); if n > start and n % step == 0: η ← max(η decay, clip);
    Δ ← η Δ with the possibly just-updated η."""
    def __init__(self, eta=0.001, decay=0.1, step=1000, clip=1e-4, start=0):
        self.eta, self.decay, self.step, self.clip, self.start = eta, decay, step, clip, start
        self.n = 0

    def apply(self, x, g):
        self.n += 1
        if self.n > self.start and self.n % self.step == 0:
            self.eta = max(self.eta * self.decay, self.clip)
        return g * self.eta


class RefInvDecay:
    """n from 1: Δ ← Δ/(1 + γ n); n ← n + 1."""
    def __init__(self, gamma=0.001):
        self.gamma, self.n = gamma, 1

    def apply(self, x, g):
        d = g * (1 / (1 + self.gamma * self.n))
        self.n += 1
        return d


class RefChain:
    """Optimiser(o1, o2, ...): Δ = o1(Δ), then o2, ... in order."""
    def __init__(self, *rules):
        self.rules = rules

    def apply(self, x, g):
        for r in self.rules:
            g = r.apply(x, g)
        return g


def RefAdamW(eta=0.001, beta=(0.9, 0.999), decay=0.0):
    """Flux: AdamW(η, β, decay) = Optimiser(Adam(η, β), WeightDecay(decay)) -- decay not scaled by η."""
    return RefChain(RefAdam(eta, beta), RefWeightDecay(decay))


# ---- cases: (id, graphflux optimiser factory, reference factory, also run compiled) -------------
# Factories are lambdas so a name graphflux does not define yet fails only its own tests.
B = (0.8, 0.9)      # a non-default beta that also exercises RAdam's rectified branch from step 5

CASES = [
    ("Descent()", lambda: gf.Descent(), lambda: RefDescent(), False),
    ("Descent(0.03)", lambda: gf.Descent(0.03), lambda: RefDescent(0.03), True),
    ("Momentum()", lambda: gf.Momentum(), lambda: RefMomentum(), False),
    ("Momentum(0.02,0.8)", lambda: gf.Momentum(0.02, 0.8), lambda: RefMomentum(0.02, 0.8), True),
    ("Nesterov()", lambda: gf.Nesterov(), lambda: RefNesterov(), False),
    ("Nesterov(0.01,0.7)", lambda: gf.Nesterov(0.01, 0.7), lambda: RefNesterov(0.01, 0.7), True),
    ("RMSProp()", lambda: gf.RMSProp(), lambda: RefRMSProp(), False),
    ("RMSProp(0.01,0.8,1e-6)", lambda: gf.RMSProp(0.01, 0.8, 1e-6),
     lambda: RefRMSProp(0.01, 0.8, 1e-6), True),
    ("Adam()", lambda: gf.Adam(), lambda: RefAdam(), False),
    ("Adam(0.01,B,1e-6)", lambda: gf.Adam(0.01, B, 1e-6), lambda: RefAdam(0.01, B, 1e-6), True),
    ("RAdam()", lambda: gf.RAdam(), lambda: RefRAdam(), False),
    ("RAdam(0.01,B,1e-6)", lambda: gf.RAdam(0.01, B, 1e-6), lambda: RefRAdam(0.01, B, 1e-6), True),
    ("AdaMax()", lambda: gf.AdaMax(), lambda: RefAdaMax(), False),
    ("AdaMax(0.01,B,1e-6)", lambda: gf.AdaMax(0.01, B, 1e-6), lambda: RefAdaMax(0.01, B, 1e-6),
     True),
    ("AdaGrad()", lambda: gf.AdaGrad(), lambda: RefAdaGrad(), False),
    ("AdaGrad(0.05,1e-6)", lambda: gf.AdaGrad(0.05, 1e-6), lambda: RefAdaGrad(0.05, 1e-6), True),
    ("AdaDelta()", lambda: gf.AdaDelta(), lambda: RefAdaDelta(), False),
    ("AdaDelta(0.5,1e-6)", lambda: gf.AdaDelta(0.5, 1e-6), lambda: RefAdaDelta(0.5, 1e-6), True),
    ("AMSGrad()", lambda: gf.AMSGrad(), lambda: RefAMSGrad(), False),
    ("AMSGrad(0.01,B,1e-6)", lambda: gf.AMSGrad(0.01, B, 1e-6), lambda: RefAMSGrad(0.01, B, 1e-6),
     True),
    ("NAdam()", lambda: gf.NAdam(), lambda: RefNAdam(), False),
    ("NAdam(0.01,B,1e-6)", lambda: gf.NAdam(0.01, B, 1e-6), lambda: RefNAdam(0.01, B, 1e-6), True),
    ("AdamW()", lambda: gf.AdamW(), lambda: RefAdamW(), False),
    ("AdamW(0.01,B,0.1)", lambda: gf.AdamW(0.01, B, 0.1), lambda: RefAdamW(0.01, B, 0.1), True),
    ("OAdam()", lambda: gf.OAdam(), lambda: RefOAdam(), False),
    ("OAdam(0.01,(0.6,0.8),1e-6)", lambda: gf.OAdam(0.01, (0.6, 0.8), 1e-6),
     lambda: RefOAdam(0.01, (0.6, 0.8), 1e-6), True),
    ("AdaBelief()", lambda: gf.AdaBelief(), lambda: RefAdaBelief(), False),
    ("AdaBelief(0.01,B,1e-6)", lambda: gf.AdaBelief(0.01, B, 1e-6),
     lambda: RefAdaBelief(0.01, B, 1e-6), True),
    # the composable rules on their own (x -= rule(g)), as Flux allows
    ("WeightDecay()", lambda: gf.WeightDecay(), lambda: RefWeightDecay(), False),
    ("WeightDecay(0.1)", lambda: gf.WeightDecay(0.1), lambda: RefWeightDecay(0.1), True),
    ("ClipValue(0.5)", lambda: gf.ClipValue(0.5), lambda: RefClipValue(0.5), True),
    ("ClipNorm(1.0)", lambda: gf.ClipNorm(1.0), lambda: RefClipNorm(1.0), True),
    ("ExpDecay()", lambda: gf.ExpDecay(), lambda: RefExpDecay(), False),
    # start = 3: no decay at n = 3 (n > start is strict), decays at 6 and 9, clipped at 9
    ("ExpDecay(0.2,0.5,3,0.06,3)", lambda: gf.ExpDecay(0.2, 0.5, 3, 0.06, 3),
     lambda: RefExpDecay(0.2, 0.5, 3, 0.06, 3), True),
    ("InvDecay()", lambda: gf.InvDecay(), lambda: RefInvDecay(), False),
    ("InvDecay(0.5)", lambda: gf.InvDecay(0.5), lambda: RefInvDecay(0.5), True),
    # compositions
    ("Optimiser(ClipValue,Adam)", lambda: gf.Optimiser(gf.ClipValue(0.5), gf.Adam(0.01)),
     lambda: RefChain(RefClipValue(0.5), RefAdam(0.01)), True),
    ("Optimiser(ClipNorm,Momentum)", lambda: gf.Optimiser(gf.ClipNorm(1.0), gf.Momentum(0.05)),
     lambda: RefChain(RefClipNorm(1.0), RefMomentum(0.05)), True),
    ("Optimiser(WeightDecay,Descent)", lambda: gf.Optimiser(gf.WeightDecay(0.1), gf.Descent(0.1)),
     lambda: RefChain(RefWeightDecay(0.1), RefDescent(0.1)), True),
    ("Optimiser(Adam,ExpDecay)",
     lambda: gf.Optimiser(gf.Adam(0.1), gf.ExpDecay(1.0, 0.5, 3, 0.1, 2)),
     lambda: RefChain(RefAdam(0.1), RefExpDecay(1.0, 0.5, 3, 0.1, 2)), True),
    ("Optimiser(RMSProp,InvDecay)", lambda: gf.Optimiser(gf.RMSProp(0.01), gf.InvDecay(0.2)),
     lambda: RefChain(RefRMSProp(0.01), RefInvDecay(0.2)), True),
    ("Optimiser(WeightDecay,ClipNorm,NAdam,ExpDecay,InvDecay)",
     lambda: gf.Optimiser(gf.WeightDecay(0.01), gf.ClipNorm(0.8), gf.NAdam(0.02),
                          gf.ExpDecay(1.0, 0.5, 4, 0.2), gf.InvDecay(0.1)),
     lambda: RefChain(RefWeightDecay(0.01), RefClipNorm(0.8), RefNAdam(0.02),
                      RefExpDecay(1.0, 0.5, 4, 0.2), RefInvDecay(0.1)), True),
    # nesting: Flux's AdamW is itself an Optimiser, and an Optimiser is an optimiser
    ("Optimiser(AdamW,ClipValue)",
     lambda: gf.Optimiser(gf.AdamW(0.01, (0.9, 0.999), 0.05), gf.ClipValue(0.004)),
     lambda: RefChain(RefAdamW(0.01, (0.9, 0.999), 0.05), RefClipValue(0.004)), False),
]
COMPILED_CASES = [c for c in CASES if c[3]]


def case_id(case):
    return case[0]


def problem():
    """x0 (2, 3) and 10 gradients whose scales straddle the clipping thresholds above."""
    rng = np.random.default_rng(1234)
    x0 = rng.standard_normal((2, 3))
    scales = [0.1, 1.0, 0.3, 2.0, 0.05, 1.2, 0.2, 0.8, 3.0, 0.15]
    grads = [s * rng.standard_normal((2, 3)) for s in scales]
    return x0, grads


def reference_trajectory(ref, x0, grads):
    x = x0.copy()
    xs = []
    for g in grads:
        x = x - ref.apply(x, g.copy())
        xs.append(x.copy())
    return xs


def assert_trajectory(xs, ref_xs, x0):
    """Parameters to rtol 1e-9, and each step's displacement (which can be ~1e-4 of x) to 1e-7."""
    prev, prev_ref = x0, x0
    for t, (x, xr) in enumerate(zip(xs, ref_xs), start=1):
        np.testing.assert_allclose(x, xr, rtol=RTOL, atol=1e-12, err_msg=f"parameter after step {t}")
        np.testing.assert_allclose(prev - x, prev_ref - xr, rtol=1e-7, atol=1e-12,
                                   err_msg=f"displacement of step {t}")
        prev, prev_ref = x, xr


def compiled_step(x, opt):
    """A compiled step whose gradient with respect to the parameter `x` is the array `c`: x sits
    in a dict slot that gf.params records, so tracing sees it (a bare `x * c` would be computed
    by numpy before any graphflux op saw it); c is captured, its contents read on every call."""
    c = np.zeros_like(x)
    p = {"x": x}
    step = gf.compile(lambda: gf.sum(p["x"] * c), gf.params(p), opt)
    return step, c, p


# ---- (a) every rule against the numpy reference -------------------------------------------------

@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_update_eager_matches_numpy_reference(case):
    """notes b; Flux's update!(opt, x, x̄): x .-= apply!(opt, x, copy(x̄)) -- the caller's
    gradient array is not modified."""
    _, make_opt, make_ref, _ = case
    x0, grads = problem()
    opt = make_opt()
    x = x0.copy()
    xs = []
    for g in grads:
        g_in = g.copy()
        gf.update(opt, x, g_in)
        np.testing.assert_array_equal(g_in, g)
        xs.append(x.copy())
    assert_trajectory(xs, reference_trajectory(make_ref(), x0, grads), x0)


@pytest.mark.parametrize("case", COMPILED_CASES, ids=case_id)
def test_compiled_step_matches_numpy_reference(case):
    """The same rules fused into one native step: loss = sum(x * c), so the gradient is c."""
    _, make_opt, make_ref, _ = case
    x0, grads = problem()
    x = x0.copy()
    step, c, p = compiled_step(x, make_opt())
    xs = []
    for g in grads:
        c[...] = g
        step()
        assert p["x"] is x
        xs.append(x.copy())
    assert_trajectory(xs, reference_trajectory(make_ref(), x0, grads), x0)


# ---- defaults and attribute names ---------------------------------------------------------------

ADAM_DEFAULTS = {"eta": 0.001, "beta": (0.9, 0.999), "eps": 1e-8}
DEFAULTS = [   # src/optimise/optimisers.jl constructors (code, not docstrings)
    ("Descent", {"eta": 0.1}),
    ("Momentum", {"eta": 0.01, "rho": 0.9}),
    ("Nesterov", {"eta": 0.001, "rho": 0.9}),
    ("RMSProp", {"eta": 0.001, "rho": 0.9, "eps": 1e-8}),
    ("Adam", ADAM_DEFAULTS),
    ("RAdam", ADAM_DEFAULTS),
    ("AdaMax", ADAM_DEFAULTS),
    ("AMSGrad", ADAM_DEFAULTS),
    ("NAdam", ADAM_DEFAULTS),
    ("AdaBelief", ADAM_DEFAULTS),
    ("OAdam", {"eta": 0.001, "beta": (0.5, 0.9), "eps": 1e-8}),   # docstring says eta = 0.0001
    ("AdaGrad", {"eta": 0.1, "eps": 1e-8}),
    ("AdaDelta", {"rho": 0.9, "eps": 1e-8}),
    ("WeightDecay", {"wd": 0}),
    ("ExpDecay", {"eta": 0.001, "decay": 0.1, "step": 1000, "clip": 1e-4, "start": 0}),  # doc: start=1
    ("InvDecay", {"gamma": 0.001}),
]


@pytest.mark.parametrize("name,expected", DEFAULTS, ids=[d[0] for d in DEFAULTS])
def test_default_hyperparameters_are_fluxs(name, expected):
    cls = getattr(gf, name)
    assert getattr(gf.optimise, name) is cls       # gf.optimise, re-exported at top level
    opt = cls()
    for attr, value in expected.items():
        got = getattr(opt, attr)
        assert got == value, f"{name}().{attr} == {got!r}, Flux's default is {value!r}"
        if attr == "beta":
            assert isinstance(got, tuple)


def test_positional_arguments_follow_flux_order():
    """Flux's positional constructors; AdaDelta's first argument is rho (AdaDelta(1e-2) means
    rho = 0.01); ExpDecay(eta, decay, decay_step, clip, start)."""
    assert gf.Momentum(0.02, 0.8).eta == 0.02 and gf.Momentum(0.02, 0.8).rho == 0.8
    o = gf.Adam(0.01, (0.8, 0.9), 1e-6)
    assert (o.eta, o.beta, o.eps) == (0.01, (0.8, 0.9), 1e-6)
    o = gf.AdaDelta(0.5, 1e-6)
    assert (o.rho, o.eps) == (0.5, 1e-6)
    assert gf.AdaDelta(1e-2).rho == 1e-2
    o = gf.AdaGrad(0.05, 1e-6)
    assert (o.eta, o.eps) == (0.05, 1e-6)
    o = gf.ExpDecay(0.2, 0.5, 3, 0.01, 2)
    assert (o.eta, o.decay, o.step, o.clip, o.start) == (0.2, 0.5, 3, 0.01, 2)
    assert gf.WeightDecay(0.1).wd == 0.1
    assert gf.InvDecay(0.5).gamma == 0.5
    assert gf.ClipValue(0.5).thresh == 0.5
    assert gf.ClipNorm(1.0).thresh == 1.0


def test_clip_rules_have_no_default_threshold():
    """ClipValue(thresh), ClipNorm(thresh): Flux defines no zero-argument constructor."""
    with pytest.raises(TypeError):
        gf.ClipValue()
    with pytest.raises(TypeError):
        gf.ClipNorm()


# ---- (b) test/optimise.jl testsets "Optimise" (lines 8-28) and "Optimiser" (lines 30-46) ---------
# Flux: w = randn(10, 10) (seed 84), w′ = randn(10, 10) (seed 42), loss(x) = mse(w*x, w′*x) with
# x = rand(10), 10^5 updates of w′, then loss(rand(10, 10)) < 0.01. Batch-first: x is (1, 10) and
# w*x becomes x @ w.T. Here: at most 10^5 steps with gf.train (compiled), in chunks of 2500,
# stopping once a fresh rand batch is below 0.005; then Flux's check on another fresh batch.

OPTIMISE = [   # line 13: the list and constructor arguments Flux trains with
    ("AdamW()", lambda: gf.AdamW()), ("AdaGrad(0.1)", lambda: gf.AdaGrad(0.1)),
    ("AdaMax()", lambda: gf.AdaMax()), ("AdaDelta(0.9)", lambda: gf.AdaDelta(0.9)),
    ("AMSGrad()", lambda: gf.AMSGrad()), ("NAdam()", lambda: gf.NAdam()),
    ("RAdam()", lambda: gf.RAdam()), ("Descent(0.1)", lambda: gf.Descent(0.1)),
    ("Adam()", lambda: gf.Adam()), ("OAdam()", lambda: gf.OAdam()),
    ("AdaBelief()", lambda: gf.AdaBelief()), ("Nesterov()", lambda: gf.Nesterov()),
    ("RMSProp()", lambda: gf.RMSProp()), ("Momentum()", lambda: gf.Momentum()),
    # line 37: Optimiser(Opt(), Adam(0.001)) for Opt in [InvDecay, WeightDecay, ExpDecay]
    ("Optimiser(InvDecay(),Adam(0.001))", lambda: gf.Optimiser(gf.InvDecay(), gf.Adam(0.001))),
    ("Optimiser(WeightDecay(),Adam(0.001))",
     lambda: gf.Optimiser(gf.WeightDecay(), gf.Adam(0.001))),
    ("Optimiser(ExpDecay(),Adam(0.001))", lambda: gf.Optimiser(gf.ExpDecay(), gf.Adam(0.001))),
]


@pytest.mark.parametrize("name,make_opt", OPTIMISE, ids=[o[0] for o in OPTIMISE])
def test_flux_optimise_trains_linear_map(name, make_opt):
    rng = np.random.default_rng(84)
    w = rng.standard_normal((10, 10))
    wp = np.random.default_rng(42).standard_normal((10, 10))

    def loss(x):
        return gf.losses.mse(x @ gf.transpose(w), x @ gf.transpose(wp))

    def test_loss():
        xt = rng.random((10, 10))
        return float(np.mean((xt @ w.T - xt @ wp.T) ** 2))

    opt, ps = make_opt(), gf.params(wp)
    steps, chunk = 0, 2500
    while steps < 100_000:
        gf.train(loss, ps, gf.DataLoader(rng.random((chunk, 10)), batchsize=1), opt)
        steps += chunk
        if test_loss() < 0.005:
            break
    final = test_loss()
    assert final < 0.01, f"{name}: loss {final} after {steps} steps"


# ---- (c) test/optimise.jl testset "ExpDecay" (lines 102-154) ------------------------------------

def expdecay_etas(o, mode, n=8):
    """The step ExpDecay applies to a gradient of 1.0 on p = [0.0]: Flux's apply!(o, p, [1.0])[1].
    p is reset to 0 in place before each step, so -p is exactly the step."""
    p = np.zeros(1)
    if mode == "eager":
        def one():
            gf.update(o, p, np.ones(1))
    else:
        step, c, _ = compiled_step(p, o)
        c[...] = 1.0

        def one():
            step()
    out = []
    for _ in range(n):
        p[...] = 0.0
        one()
        out.append(float(-p[0]))
    return out


@pytest.mark.parametrize("mode", ["eager", "compiled"])
def test_expdecay_sanity_check(mode):
    """"Sanity Check" (line 104): ExpDecay(0.2, 0.5, 1, 1e-3): eta_k = max(0.2 * 0.5^k, 1e-3), exactly."""
    o = gf.ExpDecay(0.2, 0.5, 1, 1e-3)
    expected = [max(0.2 * 0.5 ** k, 1e-3) for k in range(1, 9)]
    assert expdecay_etas(o, mode) == expected
    assert o.eta == o.clip == 1e-3


@pytest.mark.parametrize("mode", ["eager", "compiled"])
def test_expdecay_starting_step(mode):
    """"starting step" (line 113): start = 4: eta_k = max(0.2 * 0.5^max(k - 4, 0), 1e-3)."""
    start = 4
    o = gf.ExpDecay(0.2, 0.5, 1, 1e-3, start)
    expected = [max(0.2 * 0.5 ** max(k - start, 0), 1e-3) for k in range(1, 9)]
    assert expdecay_etas(o, mode) == expected


def test_expdecay_decays_at_1000_2000_3000_and_4000_then_stays_at_clip():
    """Lines 123-153: ExpDecay(0.1, 0.1, 1000, 1e-4) on mse(w*x, w1*x): the step is exactly
    eta * gradient every time, eta changes at steps 1000, 2000, 3000 and 4000 (0.1^4 is
    1.0000000000000003e-4 in float64, so reaching the clip at 4000 is still a change) and ends
    equal to clip. Flux runs 10^5 steps; nothing can change after 4000, so 6000 here."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((10, 10))
    w1 = rng.standard_normal((10, 10))
    o = gf.ExpDecay(0.1, 0.1, 1000, 1e-4)
    decay_steps = []
    exact = True
    for t in range(1, 6001):
        prev_eta = o.eta
        x = rng.random(10)
        r = w1 @ x - w @ x
        grad = 2 / r.size * np.outer(r, x)        # gradient of mse(w*x, w1*x) w.r.t. w1
        before = w1.copy()
        gf.update(o, w1, grad)
        if o.eta != prev_eta:
            decay_steps.append(t)
        if not np.array_equal(w1, before - o.eta * grad):   # x .-= eta .* grad, exactly
            exact = False
    assert exact
    assert decay_steps == [1000, 2000, 3000, 4000]
    assert o.eta == o.clip


# ---- test/optimise.jl testsets "Clipping" (lines 156-166) and "update!: handle Fills" (168-193) -

def test_clipping():
    """w̄ = gradient of sum(w * x) with x = 1000 randn(10): ClipValue(1.0) bounds every entry,
    ClipNorm(1.0) bounds the norm. The rules run alone on p = 0, so p = -apply!(rule, g)."""
    rng = np.random.default_rng(3)
    x = 1000 * rng.standard_normal(10)
    wbar = np.tile(x, (10, 1))                # d/dw sum(w @ x) = ones(10) x'
    p = np.zeros((10, 10))
    gf.update(gf.ClipValue(1.0), p, wbar.copy())
    assert np.all(-p <= 1) and np.all(-p >= -1)
    np.testing.assert_array_equal(-p, np.clip(wbar, -1, 1))
    p = np.zeros((10, 10))
    gf.update(gf.ClipNorm(1.0), p, wbar.copy())
    assert np.linalg.norm(p) <= 1 + 1e-12
    np.testing.assert_allclose(-p, wbar / np.linalg.norm(wbar), rtol=1e-12)


def test_update_accepts_a_read_only_broadcast_gradient():
    """"update!: handle Fills from Zygote" (line 168): a FillArrays.Ones gradient is immutable;
    Flux copies it before apply! mutates it. numpy's analogue is a read-only broadcast view."""
    rng = np.random.default_rng(5)
    w = rng.standard_normal((10, 10))
    wold = w.copy()
    g = np.broadcast_to(np.float64(1.0), w.shape)
    gf.update(gf.Descent(0.1), w, g)
    np.testing.assert_allclose(w, wold - 0.1, rtol=1.5e-8)


@pytest.mark.parametrize("mode", ["eager", "compiled"])
def test_update_with_params_and_grads_of_sum(mode):
    """Issue #1510 part of "update!: handle Fills from Zygote" (line 186): gs = gradient(() ->
    sum(w), θ); update!(Descent(0.1), θ, gs) gives w ≈ wold .- 0.1."""
    rng = np.random.default_rng(6)
    w = rng.standard_normal((10, 10))
    wold = w.copy()
    ps = gf.params(w)
    gs = gf.gradient(lambda: gf.sum(w), ps, mode=mode)
    gf.update(gf.Descent(0.1), ps, gs)
    np.testing.assert_allclose(w, wold - 0.1, rtol=1.5e-8)


# ---- (d) hyperparameters changed between compiled steps: read every call, no recompilation ------

def step_records(caplog):
    return [r for r in caplog.records if r.name == "graphflux"
            and any(s in r.getMessage() for s in ("compiled step", "traced step", "loaded step"))]


def run_with_schedule(caplog, opt, ref, schedule, targets=None):
    """10 compiled steps; before step t, set attributes schedule[t] on the optimiser objects (and
    the reference's). Returns the trajectory and checks it against the reference and that the
    first call is the only one that compiled/traced."""
    x0, grads = problem()
    x = x0.copy()
    step, c, _ = compiled_step(x, opt)
    xr = x0.copy()
    targets = targets or {"": (opt, ref)}
    xs = []
    with caplog.at_level(logging.INFO, logger="graphflux"):
        for t, g in enumerate(grads):
            for (key, attr), value in schedule.get(t, {}).items():
                o, r = targets[key]
                setattr(o, attr, value)
                setattr(r, attr, value)
            c[...] = g
            step()
            if t == 0:
                after_first = len(step_records(caplog))
            xr = xr - ref.apply(xr, g)
            np.testing.assert_allclose(x, xr, rtol=RTOL, atol=1e-12, err_msg=f"after step {t + 1}")
            xs.append(x.copy())
    assert after_first <= 1
    assert len(step_records(caplog)) == after_first, \
        "changing a hyperparameter recompiled/retraced the step: " + \
        "; ".join(r.getMessage() for r in step_records(caplog)[after_first:])
    return xs


def test_adam_eta_and_beta_changes_take_effect_and_eta_zero_freezes(caplog):
    """Flux reads o.eta / o.beta on every apply!; βp keeps multiplying by the current β."""
    schedule = {3: {("", "eta"): 0.05}, 5: {("", "beta"): (0.8, 0.99)}, 7: {("", "eta"): 0.0}}
    xs = run_with_schedule(caplog, gf.Adam(0.01), RefAdam(0.01), schedule)
    assert not np.array_equal(xs[5], xs[6])
    for t in (7, 8, 9):          # eta = 0 from step 8 on: the parameter no longer changes
        np.testing.assert_array_equal(xs[t], xs[6])


def test_descent_eta_zero_freezes_without_recompiling(caplog):
    schedule = {2: {("", "eta"): 0.3}, 5: {("", "eta"): 0.0}}
    xs = run_with_schedule(caplog, gf.Descent(0.1), RefDescent(0.1), schedule)
    for t in range(5, 10):
        np.testing.assert_array_equal(xs[t], xs[4])


def test_momentum_eta_and_rho_changes_take_effect(caplog):
    schedule = {3: {("", "rho"): 0.5}, 6: {("", "eta"): 0.05}}
    run_with_schedule(caplog, gf.Momentum(0.02, 0.9), RefMomentum(0.02, 0.9), schedule)


def test_composed_rules_hyperparameters_change_without_recompiling(caplog):
    """Optimiser(WeightDecay, ClipValue, Descent): the component objects stay the user's, so
    setting wd / thresh / eta on them takes effect on the next compiled step."""
    wd, clip, desc = gf.WeightDecay(0.1), gf.ClipValue(0.5), gf.Descent(0.1)
    rwd, rclip, rdesc = RefWeightDecay(0.1), RefClipValue(0.5), RefDescent(0.1)
    targets = {"wd": (wd, rwd), "clip": (clip, rclip), "desc": (desc, rdesc)}
    schedule = {2: {("wd", "wd"): 0.5}, 4: {("clip", "thresh"): 0.05},
                6: {("desc", "eta"): 0.02}, 8: {("desc", "eta"): 0.0}}
    xs = run_with_schedule(caplog, gf.Optimiser(wd, clip, desc), RefChain(rwd, rclip, rdesc),
                           schedule, targets)
    np.testing.assert_array_equal(xs[9], xs[7])
