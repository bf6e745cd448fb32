"""A small CNN on the bundled 8 x 8 digits, compiled: `graphflux demo --cnn` and
examples/cnn_digits.py. The images become (N, 1, 8, 8); two conv-relu-maxpool blocks and a
Dense layer classify them."""
import sys
import time

import numpy as np


def cnn(rng):
    import graphflux as gf
    init = lambda *d: gf.glorot_uniform(*d, rng=rng)  # noqa: E731
    return gf.Chain(gf.Conv((3, 3), 1, 16, gf.relu, pad=1, init=init), gf.MaxPool((2, 2)),
                    gf.Conv((3, 3), 16, 32, gf.relu, pad=1, init=init), gf.MaxPool((2, 2)),
                    gf.flatten, gf.Dense(32 * 2 * 2, 10, init=init))


def main(epochs=15, batchsize=32, out=sys.stdout):
    """Train with Adam; print loss, test accuracy, compile time and compiled-vs-eager time per
    step. Returns the final test accuracy."""
    import graphflux as gf
    from .cli import _median_us, _split_digits
    Xtr, ytr, Xte, yte = _split_digits()
    Xtr, Xte = Xtr.reshape(-1, 1, 8, 8), Xte.reshape(-1, 1, 8, 8)
    Ytr = gf.onehotbatch(ytr, range(10))
    model = cnn(np.random.default_rng(1))
    ps = gf.params(model)

    def loss(x, y):
        return gf.losses.logitcrossentropy(model(x), y)

    step = gf.compile(loss, ps, gf.Adam(0.005))
    predict = gf.jit(model)
    t = time.perf_counter()
    step.lower(Xtr[:batchsize], Ytr[:batchsize])
    print(f"compiled the CNN's training step in {time.perf_counter() - t:.2f} s", file=out)
    data = gf.DataLoader((Xtr, Ytr), batchsize, shuffle=True, rng=2)
    accuracy = 0.0
    for epoch in range(1, epochs + 1):
        losses = [step(x, y) for x, y in data]
        accuracy = float(np.mean(gf.onecold(predict(Xte)) == yte))
        if epoch == 1 or epoch % 5 == 0 or epoch == epochs:
            print(f"epoch {epoch:3d}  loss {np.mean(losses):.4f}  test accuracy {accuracy:.3f}",
                  file=out)
    xb, yb = Xtr[:batchsize], Ytr[:batchsize]
    frozen = gf.compile(loss, ps, gf.Adam(0.0))
    eager = gf.compile(loss, ps, gf.Adam(0.0), mode="eager")
    frozen(xb, yb)
    t_c, t_e = _median_us(lambda: frozen(xb, yb), 300), _median_us(lambda: eager(xb, yb), 50)
    print(f"time per training step (median, batch {batchsize}): compiled {t_c:.0f} us, eager "
          f"{t_e:.0f} us -> compiled is {t_e / t_c:.1f}x faster", file=out)
    print(f"final test accuracy {accuracy:.3f}", file=out)
    return accuracy
