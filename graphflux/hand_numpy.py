"""Careful hand-written numpy training steps for the standard workloads: the yardstick eager
mode must stay close to (DESIGN.md: "as fast as careful numpy code, not a straw man")."""
import numpy as np


def _params(model):
    return [(layer.weight.copy(), layer.bias.copy()) for layer in model.layers
            if hasattr(layer, "weight")]


class SeedMLP:
    """Dense(784,32,σ) -> Dense(32,10) -> softmax, mse, Descent(0.1)."""

    def __init__(self, model, eta=0.1):
        (self.W1, self.b1), (self.W2, self.b2) = _params(model)
        self.eta = np.float32(eta)

    def step(self, x, y):
        W1, b1, W2, b2 = self.W1, self.b1, self.W2, self.b2
        h = 1 / (1 + np.exp(-(x @ W1.T + b1)))
        z = h @ W2.T + b2
        e = np.exp(z - z.max(axis=1, keepdims=True))
        p = e * (1 / e.sum(axis=1, keepdims=True))   # one division per row, as gf.softmax
        d = p - y
        loss = np.mean(d * d)
        gp = d * np.float32(2 / d.size)
        gz = p * (gp - (gp * p).sum(axis=1, keepdims=True))
        gh = gz @ W2
        gz1 = gh * h * (1 - h)
        W2 -= self.eta * (gz.T @ h)
        b2 -= self.eta * gz.sum(axis=0)
        W1 -= self.eta * (gz1.T @ x)
        b1 -= self.eta * gz1.sum(axis=0)
        return float(loss)


class AdamMLP:
    """Dense layers with tanh/relu hidden activations, logitcrossentropy, Flux's Adam."""

    def __init__(self, model, act, eta=1e-3, beta=(0.9, 0.999), eps=1e-8):
        self.layers = [list(p) for p in _params(model)]
        self.act = act
        self.eta, self.b1, self.b2, self.eps = eta, beta[0], beta[1], eps
        self.state = [[np.zeros_like(a) for a in layer for _ in range(2)]
                      for layer in self.layers]
        self.t = 0

    def step(self, x, y):
        hs, h = [x], x
        for i, (W, b) in enumerate(self.layers):
            z = h @ W.T + b
            h = z if i == len(self.layers) - 1 else (np.tanh(z) if self.act == "tanh"
                                                       else np.maximum(z, 0))
            hs.append(h)
        z = hs[-1]
        s = z - z.max(axis=1, keepdims=True)
        lse = np.log(np.exp(s).sum(axis=1, keepdims=True))
        loss = -np.mean((y * (s - lse)).sum(axis=1))
        g = (np.exp(s - lse) - y) / np.float32(len(x))
        grads = []
        for i in range(len(self.layers) - 1, -1, -1):
            W, _ = self.layers[i]
            grads.append((g.T @ hs[i], g.sum(axis=0)))
            if i:
                g = g @ W
                g = g * (1 - hs[i] * hs[i]) if self.act == "tanh" else g * (hs[i] > 0)
        grads.reverse()
        self.t += 1
        c1, c2 = 1 - self.b1 ** self.t, 1 - self.b2 ** self.t
        for layer, st, gs in zip(self.layers, self.state, grads):
            for k, (p, gr) in enumerate(zip(layer, gs)):
                m, v = st[2 * k], st[2 * k + 1]
                m *= self.b1
                m += (1 - self.b1) * gr
                v *= self.b2
                v += (1 - self.b2) * (gr * gr)
                p -= self.eta * (m / c1) / (np.sqrt(v / c2) + self.eps)
        return float(loss)


def for_workload(name, model):
    """The hand-written numpy step of an MLP workload (None for the others)."""
    if name == "lenet":
        return None
    if name == "seed-mlp":
        return SeedMLP(model)
    return AdamMLP(model, "tanh" if name == "tiny" else "relu")
