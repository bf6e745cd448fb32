"""`graphflux bench`: the standard workloads, compiled against eager (and hand-written numpy
where one is given), median and spread of the time per training step measured side by side in
one run, the cold compile time, a check that both modes reach the same loss, and the distance
to the machine's limit: each compiled step's GFLOP/s against numpy's own sgemm rate, measured
in the same run."""
import contextlib
import json
import os
import platform
import time

import numpy as np

from .bench_others import jax_step, torch_step


def _mlp(sizes, acts, rng, dtype=np.float32):
    import graphflux as gf
    init = lambda *d: gf.glorot_uniform(*d, rng=rng, dtype=dtype)  # noqa: E731
    return gf.Chain(*[gf.Dense(a, b, act, init=init)
                      for (a, b), act in zip(zip(sizes, sizes[1:]), acts)])


def lenet(rng, dtype=np.float32):
    """LeNet-5 for 1 x 28 x 28 images: conv5x5 1->6 relu, maxpool 2, conv5x5 6->16 relu,
    maxpool 2, flatten, Dense 256->120->84->10."""
    import graphflux as gf
    init = lambda *d: gf.glorot_uniform(*d, rng=rng, dtype=dtype)  # noqa: E731
    return gf.Chain(gf.Conv((5, 5), 1, 6, gf.relu, init=init), gf.MaxPool((2, 2)),
                    gf.Conv((5, 5), 6, 16, gf.relu, init=init), gf.MaxPool((2, 2)), gf.flatten,
                    gf.Dense(256, 120, gf.relu, init=init), gf.Dense(120, 84, gf.relu, init=init),
                    gf.Dense(84, 10, init=init))


def workloads():
    import graphflux as gf
    return {
        "seed-mlp": dict(sizes=(784, 32, 10), acts=(gf.σ, gf.identity), softmax=True,
                         loss="mse", opt=lambda: gf.Descent(0.1), batch=128),
        "mlp-wide": dict(sizes=(784, 512, 512, 10), acts=(gf.relu, gf.relu, gf.identity),
                         softmax=False, loss="logitcrossentropy", opt=lambda: gf.Adam(1e-3),
                         batch=256),
        "tiny": dict(sizes=(64, 32, 10), acts=(gf.tanh, gf.identity), softmax=False,
                     loss="logitcrossentropy", opt=lambda: gf.Adam(1e-3), batch=32),
        "lenet": dict(model=lenet, input=(1, 28, 28), softmax=False, loss="logitcrossentropy",
                      opt=lambda: gf.Adam(1e-3), batch=64, loss_rtol=1e-3),
    }


def build(spec, seed=0):
    """(model, params, loss function, optimiser, x, y) for a workload spec."""
    import graphflux as gf
    rng = np.random.default_rng(seed)
    model = spec["model"](rng) if "model" in spec else _mlp(spec["sizes"], spec["acts"], rng)
    if spec["softmax"]:
        model = gf.Chain(*model.layers, gf.softmax)
    x = rng.random((spec["batch"],) + spec.get("input", spec.get("sizes", (0,))[:1]),
                   dtype=np.float32)
    y = gf.onehotbatch(rng.integers(0, 10, spec["batch"]), range(10))
    lossfn = getattr(gf.losses, spec["loss"])

    def loss(x, y):
        return lossfn(model(x), y)
    return model, gf.params(model), loss, spec["opt"](), x, y


def _times(f, steps):
    out = []
    for _ in range(steps):
        t = time.perf_counter()
        f()
        out.append(time.perf_counter() - t)
    return np.array(out) * 1e6


def sgemm_rate(n=2048, repeats=5):
    """GFLOP/s of numpy's float32 n x n product (its BLAS, with the threads it uses by
    default): the machine's practical limit for dense work, measured now, beside the steps."""
    rng = np.random.default_rng(0)
    a = rng.random((n, n), dtype=np.float32)
    b = rng.random((n, n), dtype=np.float32)
    a @ b
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2.0 * n ** 3 / float(np.median(times)) / 1e9


SETTLE_S = 0.3
"""A pause before each timed block: OpenBLAS's threads spin for about 0.1 s after a product
(and graphflux's workers for 0.25 ms after a kernel), so a block timed right after another
would share a core with them."""


def side_by_side(name, spec):
    """A workload's hand-written numpy, compiled and eager steps, each from the same weights,
    and its batch: (hand, compiled, eager, x, y)."""
    import graphflux as gf
    from graphflux.hand_numpy import for_workload
    model, ps, loss, opt, x, y = build(spec)
    _, ps_e, loss_e, opt_e, _, _ = build(spec)
    return (for_workload(name, model), gf.compile(loss, ps, opt),
            gf.compile(loss_e, ps_e, opt_e, mode="eager"), x, y)


def timed_blocks(runners, rounds, steps, contexts=None):
    """Median us per call of each runner (name -> function): blocks of `steps` calls, round
    after round in rotating order (the block right after numpy's is measurably slower), with
    a pause of SETTLE_S before each block; `contexts[name]()` is entered around that runner's
    block."""
    contexts = contexts or {}
    samples = {k: [] for k in runners}
    order = list(runners.items())
    for r in range(rounds):
        for name, f in order[r % len(order):] + order[:r % len(order)]:
            time.sleep(SETTLE_S)
            with contexts.get(name, contextlib.nullcontext)():
                f()
                samples[name].extend(_times(f, steps))
    return {k: float(np.median(v)) for k, v in samples.items()}


def measure(name, spec, steps=200, check_steps=20, peak=None):
    import graphflux as gf
    from graphflux.hand_numpy import for_workload
    result = {"workload": name}
    losses = {}
    for mode in ("compiled", "eager"):
        _, ps, loss, opt, x, y = build(spec)
        step = gf.compile(loss, ps, opt, mode=mode)
        t = time.perf_counter()
        step(x, y)
        if mode == "compiled":
            result["compile_s"] = time.perf_counter() - t
            result["flops"] = int(step.lower(x, y).stats["flops"])
        losses[mode] = [step(x, y) for _ in range(check_steps)]
        n = steps if mode == "compiled" else max(steps // 4, 20)
        time.sleep(SETTLE_S)
        us = _times(lambda: step(x, y), n)
        result[f"{mode}_median_us"] = float(np.median(us))
        result[f"{mode}_iqr_us"] = float(np.subtract(*np.percentile(us, [75, 25])))
    model, _, _, _, x, y = build(spec)
    hand = for_workload(name, model)
    if hand is not None:
        hand.step(x, y)
        time.sleep(SETTLE_S)
        result["numpy_median_us"] = float(np.median(_times(lambda: hand.step(x, y),
                                                           max(steps // 4, 20))))
        result["compiled_per_numpy"] = result["compiled_median_us"] / result["numpy_median_us"]
    result["speedup"] = result["eager_median_us"] / result["compiled_median_us"]
    result["gflops"] = result["flops"] / result["compiled_median_us"] / 1e3
    if peak:
        result["percent_of_sgemm"] = 100.0 * result["gflops"] / peak
    # LeNet's float32 losses drift apart by up to 4e-4 in 20 Adam steps (Adam's 1 / sqrt(v)
    # magnifies rounding differences of near-zero gradients; in float64 the two modes agree
    # to 2e-16 over the same steps), hence its wider tolerance
    result.update(loss_check(losses["compiled"], losses["eager"], spec.get("loss_rtol", 1e-4)))
    for label, builder in (("pytorch", torch_step), ("jax", jax_step)):
        model, _, _, _, x, y = build(spec)
        other = builder(spec, model)
        if other is None:
            continue
        first = [other(x, y) for _ in range(check_steps + 1)]
        time.sleep(SETTLE_S)
        us = _times(lambda: other(x, y), max(steps // 4, 20))
        result[f"{label}_median_us"] = float(np.median(us))
        result[f"{label}_first_loss"] = first[0]
    return result


def loss_check(compiled, eager, rtol=1e-4):
    """Both modes must reach the same loss after the same steps (float32: rtol 1e-4)."""
    c, e = float(compiled[-1]), float(eager[-1])
    ok = bool(np.isfinite(c) and abs(c - e) <= rtol * max(abs(e), 1e-12))
    return {"loss_compiled": c, "loss_eager": e, "losses_agree": ok}


def machine():
    import llvmlite.binding as llvm
    return {"cpu": llvm.get_host_cpu_name(), "cores": os.cpu_count(),
            "python": platform.python_version(), "numpy": np.__version__}


def run(names=None, steps=200, as_json=False):
    """Measure with a fresh, temporary artifact cache, so compile times are real compiles."""
    import tempfile
    previous = os.environ.get("GRAPHFLUX_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="graphflux-bench-") as folder:
        os.environ["GRAPHFLUX_CACHE_DIR"] = folder
        try:
            return _run(names, steps, as_json)
        finally:
            if previous is None:
                os.environ.pop("GRAPHFLUX_CACHE_DIR", None)
            else:
                os.environ["GRAPHFLUX_CACHE_DIR"] = previous


def pool_settings():
    from graphflux.runtime.pool import pool
    return pool().settings()


def _run(names, steps, as_json):
    specs = workloads()
    names = names or list(specs)
    unknown = [n for n in names if n not in specs]
    if unknown:
        raise SystemExit(f"unknown workload(s) {unknown}; choose from {list(specs)}")
    peak = sgemm_rate()
    results = [measure(n, specs[n], steps, peak=peak) for n in names]
    extra = [k[:-len("_median_us")] for k in ("pytorch_median_us", "jax_median_us")
             if any(k in r for r in results)]
    if as_json:
        print(json.dumps({"machine": machine(), "sgemm_gflops": peak, "pool": pool_settings(),
                          "results": results}, indent=2))
        return results
    m = machine()
    print(f"machine: {m['cpu']}, {m['cores']} cores, python {m['python']}, numpy {m['numpy']}; "
          f"numpy sgemm 2048^2: {peak:.1f} GFLOP/s; thread pool: {pool_settings()}")
    print(f"{'workload':10s} {'compiled us':>12s} {'+-iqr':>7s} {'eager us':>10s} {'ratio':>6s} "
          f"{'numpy us':>9s} {'c/numpy':>7s} {'compile s':>9s}  losses agree {'GFLOP/s':>8s} "
          f"{'% sgemm':>8s}" + "".join(f" {e + ' us':>12s}" for e in extra))
    for r in results:
        print(f"{r['workload']:10s} {r['compiled_median_us']:12.1f} {r['compiled_iqr_us']:7.1f} "
              f"{r['eager_median_us']:10.1f} {r['speedup']:6.1f} "
              f"{r.get('numpy_median_us', float('nan')):9.1f} "
              f"{r.get('compiled_per_numpy', float('nan')):7.2f} {r['compile_s']:9.2f}  "
              f"{str(r['losses_agree']):12s} {r['gflops']:8.2f} {r['percent_of_sgemm']:8.1f}"
              + "".join(f" {r.get(e + '_median_us', float('nan')):12.1f}" for e in extra))
    return results
