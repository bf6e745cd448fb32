"""The Flux training docs' example, in graphflux: a 784-32-10 model trained with train()."""
import numpy as np

import graphflux as gf

m = gf.Chain(gf.Dense(784, 32, gf.σ), gf.Dense(32, 10), gf.softmax)


def loss(x, y):
    return gf.losses.mse(m(x), y)


ps = gf.params(m)
x = np.random.rand(1, 784).astype(np.float32)   # one observation, batch-first
y = np.random.rand(1, 10).astype(np.float32)
data = [(x, y)] * 3

print("loss before", float(loss(x, y)))
gf.train(loss, ps, data, gf.Descent(0.1), cb=gf.throttle(lambda: print("training"), 10))
print("loss after ", float(loss(x, y)))
