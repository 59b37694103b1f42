"""A/B in one process: the train step of the code before the tiers (668a0b0) and after (main).

Both packages are loaded side by side (the old one as ``minicoat_old``), the same coatnet-cifar
step (forward in train mode, cross-entropy, backward, AdamW) is built in each, and single steps
alternate old, new, old, ... so that the machine's drifting load hits both alike::

    git worktree add /tmp/before-tiers 668a0b0
    python benchmarks/ab_tiers.py /tmp/before-tiers/minicoat

(docs/performance.md, 2026-12-01, has the figures.)
"""
import importlib.util
import statistics
import sys
import time

import numpy as onp


def load(name, path):
    spec = importlib.util.spec_from_file_location(name, f"{path}/__init__.py",
                                                  submodule_search_locations=[path])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


if len(sys.argv) != 2:
    sys.exit("usage: python benchmarks/ab_tiers.py PATH/TO/OLD/minicoat  (a checkout of 668a0b0)")
old = load("minicoat_old", sys.argv[1].rstrip("/"))
importlib.import_module("minicoat_old.autodiff")
import minicoat as new  # noqa: E402

LR, WD = 1e-3, 0.05


def step_fn(pkg, value_and_grad, batch):
    cfg = pkg.config("coatnet-cifar")
    params, state = pkg.init_params(cfg, seed=0)
    rng = onp.random.default_rng(1)
    x = rng.standard_normal((batch, 32, 32, 3)).astype(onp.float32)
    labels = rng.integers(0, 10, batch)
    optim = importlib.import_module(pkg.__name__ + ".optim")
    current = {"p": params, "o": optim.adamw_init(params)}

    def loss(p):
        logits, _ = pkg.forward(p, state, x, cfg, train=True, check=False)
        return pkg.cross_entropy(logits, labels)

    def step():
        _, grads = value_and_grad(loss)(current["p"])
        current["p"], current["o"] = optim.adamw_update(current["p"], grads, current["o"], LR,
                                                        weight_decay=WD, mask=None)
    return step


for batch, reps in ((32, 25), (128, 9)):
    steps = {"old": step_fn(old, sys.modules["minicoat_old.autodiff"].value_and_grad, batch),
             "new": step_fn(new, new.value_and_grad, batch)}
    for s in steps.values():
        s(), s()  # warm up
    times = {"old": [], "new": []}
    for _ in range(reps):
        for name in ("old", "new"):
            t0 = time.perf_counter()
            steps[name]()
            times[name].append(1e3 * (time.perf_counter() - t0))
    med = {k: statistics.median(v) for k, v in times.items()}
    load_average = open("/proc/loadavg").read().split()[:3]
    print(f"batch {batch}: old {med['old']:.1f} ms, new {med['new']:.1f} ms, new/old "
          f"{med['new'] / med['old']:.3f} (medians of {reps}; load average {load_average})")
