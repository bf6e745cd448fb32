"""The `graphflux` command: `demo` trains on the bundled digits; `bench` times compiled against
eager on the standard workloads."""
import argparse
import sys
import time

import numpy as np


def _split_digits(seed=0):
    import graphflux as gf
    X, y = gf.datasets.digits()
    order = np.random.default_rng(seed).permutation(len(X))
    test, train = order[:360], order[360:]
    return X[train], y[train], X[test], y[test]


def _median_us(f, n):
    times = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1e6


def demo(epochs=30, batchsize=32, out=sys.stdout):
    """Train Chain(Dense(64, 32, tanh), Dense(32, 10)) with Adam on the digits; report loss,
    accuracy, compile time and compiled-vs-eager time per step. Returns the test accuracy."""
    import graphflux as gf
    Xtr, ytr, Xte, yte = _split_digits()
    Ytr = gf.onehotbatch(ytr, range(10))
    rng = np.random.default_rng(1)
    model = gf.Chain(gf.Dense(64, 32, gf.tanh, init=lambda *d: gf.glorot_uniform(*d, rng=rng)),
                     gf.Dense(32, 10, init=lambda *d: gf.glorot_uniform(*d, rng=rng)))
    ps = gf.params(model)
    opt = gf.Adam(0.01)

    def loss(x, y):
        return gf.losses.logitcrossentropy(model(x), y)

    step = gf.compile(loss, ps, opt)
    data = gf.DataLoader((Xtr, Ytr), batchsize, shuffle=True, rng=2)
    t = time.perf_counter()
    step.lower(Xtr[:batchsize], Ytr[:batchsize])
    compile_s = time.perf_counter() - t
    print(f"compiled the training step in {compile_s:.2f} s "
          f"({len(ps)} parameters arrays, batch {batchsize})", file=out)
    accuracy = 0.0
    for epoch in range(1, epochs + 1):
        losses = [step(x, y) for x, y in data]
        accuracy = float(np.mean(gf.onecold(model(Xte)) == yte))
        if epoch == 1 or epoch % 5 == 0 or epoch == epochs:
            print(f"epoch {epoch:3d}  loss {np.mean(losses):.4f}  test accuracy {accuracy:.3f}",
                  file=out)
    xb, yb = Xtr[:batchsize], Ytr[:batchsize]
    eager = gf.compile(loss, ps, gf.Adam(0.0), mode="eager")
    frozen = gf.compile(loss, ps, gf.Adam(0.0))
    frozen(xb, yb)
    t_c = _median_us(lambda: frozen(xb, yb), 2000)
    t_e = _median_us(lambda: eager(xb, yb), 300)
    print(f"time per training step (median): compiled {t_c:.1f} us, eager {t_e:.1f} us "
          f"-> compiled is {t_e / t_c:.1f}x faster", file=out)
    print(f"final test accuracy {accuracy:.3f}", file=out)
    return accuracy


def main(argv=None):
    parser = argparse.ArgumentParser(prog="graphflux", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="train on the bundled digits, compiled, and time it")
    p.add_argument("--epochs", type=int, default=30)
    p = sub.add_parser("bench", help="compiled vs eager on the standard workloads")
    p.add_argument("--workloads", nargs="*", default=None)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "demo":
        demo(args.epochs)
    else:
        from .bench import run
        run(args.workloads, args.steps, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
