"""The `graphflux` command: `demo` trains on the bundled digits; `inspect` prints any stage of a
compiled step; `bench` times compiled against eager on the standard workloads."""
import argparse
import json
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
    from .bench import _times
    return float(np.median(_times(f, n)))


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install 'graphflux[plot]'") from None
    return plt


def _plot(path, history):
    """Loss and accuracy per epoch as a PNG (matplotlib is the optional `plot` extra)."""
    plt = _pyplot()
    epochs = range(1, len(history) + 1)
    fig, left = plt.subplots(figsize=(6, 4))
    left.plot(epochs, [h[0] for h in history], color="tab:blue")
    left.set_xlabel("epoch")
    left.set_ylabel("training loss", color="tab:blue")
    right = left.twinx()
    right.plot(epochs, [h[1] for h in history], color="tab:orange")
    right.set_ylabel("test accuracy", color="tab:orange")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def demo(epochs=30, batchsize=32, out=sys.stdout, plot=None):
    """Train Chain(Dense(64, 32, tanh), Dense(32, 10)) with Adam on the digits; report loss,
    accuracy, compile time and compiled-vs-eager time per step. Returns the test accuracy."""
    import graphflux as gf
    if plot:
        _pyplot()            # fail before training, not after
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
          f"({len(ps)} parameter arrays, batch {batchsize})", file=out)
    accuracy, history = 0.0, []
    for epoch in range(1, epochs + 1):
        losses = [step(x, y) for x, y in data]
        accuracy = float(np.mean(gf.onecold(model(Xte)) == yte))
        history.append((float(np.mean(losses)), accuracy))
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
    if plot:
        _plot(plot, history)
        print(f"wrote {plot}", file=out)
    return accuracy


DEMO_EPOCHS = 30
STAGES = ("graph", "grad", "optimized", "kernels", "llvm", "llvm-opt", "asm", "stats")


def _load_script(path):
    """A user's script for `inspect`: it defines `loss`, `ps` (params, or anything gf.params
    takes), `batch` (a tuple of example arrays) and optionally `opt`."""
    import runpy
    import graphflux as gf
    ns = runpy.run_path(path, run_name="__graphflux_inspect__")
    missing = [n for n in ("loss", "ps", "batch") if n not in ns]
    if missing:
        raise SystemExit(f"{path} must define {', '.join(missing)} (see `graphflux inspect -h`)")
    batch = ns["batch"] if isinstance(ns["batch"], tuple) else (ns["batch"],)
    return ns["loss"], gf.params(ns["ps"]), ns.get("opt"), batch


def inspect(workload=None, script=None, stage="optimized", dot=None, out=sys.stdout):
    """Print one stage of the compiled step of a built-in workload or a user's script."""
    import graphflux as gf
    from .bench import build, workloads
    if script:
        loss, ps, opt, batch = _load_script(script)
    else:
        specs = workloads()
        if workload not in specs:
            raise SystemExit(f"unknown workload {workload!r}; choose from {list(specs)} or "
                             "pass --script FILE")
        _, ps, loss, opt, x, y = build(specs[workload])
        batch = (x, y)
    art = gf.compile(loss, ps, opt).lower(*batch)
    graphs = {"graph": art.graph, "grad": art.grad_graph, "optimized": art.optimized_graph}
    texts = {"llvm": lambda: art.llvm_ir, "llvm-opt": lambda: art.llvm_ir_optimized,
             "asm": lambda: art.asm,
             "kernels": lambda: str(art.kernels),
             "stats": lambda: json.dumps(art.stats, indent=2, default=str)}
    print(str(graphs[stage]) if stage in graphs else texts[stage](), file=out)
    if dot:
        with open(dot, "w") as f:
            f.write(graphs.get(stage, art.optimized_graph).to_dot())
    return art


def main(argv=None):
    parser = argparse.ArgumentParser(prog="graphflux", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="train on the bundled digits, compiled, and time it")
    p.add_argument("--epochs", type=int, default=DEMO_EPOCHS)
    p.add_argument("--plot", metavar="FILE", help="write the loss and accuracy curves (PNG)")
    p.add_argument("--cnn", action="store_true",
                   help="a small CNN on the digits as (N, 1, 8, 8) images instead of the MLP")
    p = sub.add_parser("inspect", help="print a stage of a compiled step",
                       description="Print a stage of the compiled training step of a built-in "
                       "workload (seed-mlp, mlp-wide, tiny) or of a script that defines "
                       "`loss`, `ps`, `batch` (a tuple of example arrays) and optionally `opt`.")
    p.add_argument("workload", nargs="?", default="tiny")
    p.add_argument("--script", metavar="FILE")
    p.add_argument("--stage", choices=STAGES, default="optimized")
    p.add_argument("--dot", metavar="FILE", help="also write the stage's graph as Graphviz")
    p = sub.add_parser("bench", help="compiled vs eager on the standard workloads or a script",
                       description="Time compiled against eager on the standard workloads, or "
                       "with --script on a file that defines `loss`, `ps`, `batch` and "
                       "optionally `opt` (as for inspect): medians, spread, GFLOP/s, the "
                       "compile time and where the compiled step's time goes, per kernel.")
    p.add_argument("--workloads", nargs="*", default=None)
    p.add_argument("--script", metavar="FILE")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "demo" and args.cnn:
        from .cnn_demo import main as cnn_demo
        cnn_demo(args.epochs if args.epochs != DEMO_EPOCHS else 15)
    elif args.command == "demo":
        demo(args.epochs, plot=args.plot)
    elif args.command == "inspect":
        inspect(args.workload, args.script, args.stage, args.dot)
    elif args.script:
        import dataclasses
        import graphflux as gf
        loss, ps, opt, batch = _load_script(args.script)
        result = gf.compare(loss, ps, batch, opt, steps=args.steps)
        print(json.dumps(dataclasses.asdict(result), indent=2) if args.json else result)
    else:
        from .bench import run
        run(args.workloads, args.steps, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
