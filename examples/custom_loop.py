"""A custom training loop on the bundled digits: gradient + update, then a compiled step and a
look at what the compiler made of it."""
import numpy as np

import graphflux as gf

X, labels = gf.datasets.digits()
Y = gf.onehotbatch(labels, range(10))
model = gf.Chain(gf.Dense(64, 32, gf.relu), gf.Dense(32, 10))
ps = gf.params(model)
opt = gf.Adam(0.01)


def loss(x, y):
    return gf.losses.logitcrossentropy(model(x), y)


for x, y in gf.DataLoader((X, Y), batchsize=64, shuffle=True, rng=0):
    gs = gf.gradient(lambda: loss(x, y), ps)        # traced, differentiated, compiled, reused
    gf.update(opt, ps, gs)

step = gf.compile(loss, ps, opt)                      # forward + backward + Adam, one call
art = step.lower(X[:64], Y[:64])
print(art.optimized_graph)
print({k: art.stats[k] for k in ("nodes", "flops", "arena_bytes")})
for epoch in gf.epochs(5):
    for x, y in gf.DataLoader((X, Y), batchsize=64, shuffle=True, rng=epoch):
        step(x, y)
print("training accuracy", np.mean(gf.onecold(model(X)) == labels))
