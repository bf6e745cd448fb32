"""The same training steps in PyTorch (eager) and JAX (jit), for `graphflux bench`'s optional
comparison columns. Neither is a dependency: each builder returns None when its library is
not installed. Both start from the graphflux model's own weights and use the same formulas
(Flux's Adam is PyTorch's and optax's: eps added after the square root)."""
import os



def _layers(model):
    return [layer for layer in model.layers if hasattr(layer, "weight")]


def torch_step(spec, model):
    """A function step(x, y) -> loss running the workload in PyTorch eager mode."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(os.cpu_count() or 1)
    if "model" in spec:
        return _torch_lenet(torch, model)
    params = []
    for layer in _layers(model):
        params += [torch.tensor(layer.weight.copy(), requires_grad=True),
                   torch.tensor(layer.bias.copy(), requires_grad=True)]
    acts = [_torch_act(torch, a) for a in spec["acts"]]
    opt = (torch.optim.SGD(params, lr=0.1) if spec["loss"] == "mse"
           else torch.optim.Adam(params, lr=1e-3, eps=1e-8))

    def forward(x):
        h = x
        for i, act in enumerate(acts):
            h = act(h @ params[2 * i].T + params[2 * i + 1])
        return torch.softmax(h, dim=-1) if spec["softmax"] else h

    def step(x, y):
        x, y = torch.from_numpy(x), torch.from_numpy(y)
        opt.zero_grad()
        out = forward(x)
        loss = (torch.mean((out - y) ** 2) if spec["loss"] == "mse"
                else torch.nn.functional.cross_entropy(out, y))
        loss.backward()
        opt.step()
        return float(loss.detach())
    return step


def _torch_lenet(torch, model):
    """LeNet in PyTorch eager: conv2d takes graphflux's Conv weights flipped (Conv is a true
    convolution, conv2d a cross-correlation)."""
    F = torch.nn.functional
    params = []
    for layer in _layers(model):
        w = layer.weight[..., ::-1, ::-1] if layer.weight.ndim == 4 else layer.weight
        params += [torch.tensor(w.copy(), requires_grad=True),
                   torch.tensor(layer.bias.copy(), requires_grad=True)]
    c1, b1, c2, b2, d1, e1, d2, e2, d3, e3 = params
    opt = torch.optim.Adam(params, lr=1e-3, eps=1e-8)

    def step(x, y):
        x, y = torch.from_numpy(x), torch.from_numpy(y)
        opt.zero_grad()
        h = F.max_pool2d(torch.relu(F.conv2d(x, c1, b1)), 2)
        h = F.max_pool2d(torch.relu(F.conv2d(h, c2, b2)), 2).flatten(1)
        h = torch.relu(h @ d1.T + e1)
        h = torch.relu(h @ d2.T + e2)
        loss = F.cross_entropy(h @ d3.T + e3, y)
        loss.backward()
        opt.step()
        return float(loss.detach())
    return step


def _torch_act(torch, act):
    name = getattr(act, "__name__", "identity")
    return {"sigmoid": torch.sigmoid, "relu": torch.relu, "tanh": torch.tanh}.get(
        name, lambda z: z)


def jax_step(spec, model):
    """A function step(x, y) -> loss running the workload as one jax.jit'd update (MLPs)."""
    if "model" in spec:
        return None
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return None
    acts = [{"sigmoid": jax.nn.sigmoid, "relu": jax.nn.relu, "tanh": jnp.tanh}.get(
        getattr(a, "__name__", "identity"), lambda z: z) for a in spec["acts"]]
    params = [(jnp.asarray(l.weight), jnp.asarray(l.bias)) for l in _layers(model)]
    adam = spec["loss"] != "mse"
    state = {"p": params, "m": jax.tree_util.tree_map(jnp.zeros_like, params),
             "v": jax.tree_util.tree_map(jnp.zeros_like, params), "t": 0}

    def loss_fn(p, x, y):
        h = x
        for (w, b), act in zip(p, acts):
            h = act(h @ w.T + b)
        if spec["softmax"]:
            return jnp.mean((jax.nn.softmax(h, axis=-1) - y) ** 2)
        return -jnp.mean(jnp.sum(y * jax.nn.log_softmax(h, axis=-1), axis=-1))

    @jax.jit
    def update(p, m, v, t, x, y):
        loss, g = jax.value_and_grad(loss_fn)(p, x, y)
        if not adam:
            return loss, jax.tree_util.tree_map(lambda a, b: a - 0.1 * b, p, g), m, v
        m = jax.tree_util.tree_map(lambda a, b: 0.9 * a + 0.1 * b, m, g)
        v = jax.tree_util.tree_map(lambda a, b: 0.999 * a + 0.001 * b * b, v, g)
        c1, c2 = 1 - 0.9 ** t, 1 - 0.999 ** t
        p = jax.tree_util.tree_map(
            lambda a, mm, vv: a - 1e-3 * (mm / c1) / (jnp.sqrt(vv / c2) + 1e-8), p, m, v)
        return loss, p, m, v

    def step(x, y):
        state["t"] += 1
        loss, state["p"], state["m"], state["v"] = update(state["p"], state["m"], state["v"],
                                                          state["t"], x, y)
        return float(loss)
    return step
