"""Train mode and every gradient of one timm CoAtNet against timm's autograd (float64), once.

What ``tests/test_timm.py::test_train_mode_and_every_gradient_match`` checks for coatnet_0 and
coatnet_2, for the models the test suite leaves out for memory and time (coatnet_3_224 holds
167M parameters, coatnet_4_224 275M: float64 weights and gradients on both sides ~9-13 GB)::

    pip install --no-deps timm==1.0.31 pyyaml safetensors huggingface_hub
    nice -n 15 /usr/bin/time -v python benchmarks/timm_gradients.py coatnet_3_224 [--size 64 64]

Random weights, BatchNorm statistics and relative-bias tables (``tests/timm_helpers.randomize``),
a batch of 2 images, training mode; loss ``sum(logits * g)`` with a fixed random ``g``. Prints
the train-mode logits error, the worst running-statistic error, the gradients' worst and
median normwise relative error over every parameter leaf (``minicoat.testing.tree_errors``, as
the tests: a leaf whose true gradient is 0, the shift of a BatchNorm followed by a 1x1
convolution and another BatchNorm, is measured against the whole gradient's norm) and the
number of leaves, the peak RSS and the wall time (docs/timm.md has the measured table). Exit
status 1 if any error is above 1e-12.
"""

import argparse
import gc
import os
import platform
import resource
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))  # timm_helpers, and the torchvision stub
import importlib.util  # noqa: E402

if importlib.util.find_spec("torchvision") is None:
    sys.path.insert(0, os.path.join(HERE, "..", "tests", "_stubs"))

import autograd.numpy as anp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from timm_helpers import numpy_state_dict, timm_model, to_nchw  # noqa: E402

import minicoat as mc  # noqa: E402
from minicoat.interop import timm as mt  # noqa: E402
from minicoat.testing import tree_errors  # noqa: E402
from minicoat.tree import flatten  # noqa: E402


def zero_leaves(ours, theirs):
    """How many leaves ``tree_errors`` measures against the tree's norm (true value 0)."""
    a, b = flatten(ours), flatten(theirs)
    total = np.sqrt(sum(np.sum(v ** 2) for v in b.values()))
    return sum(max(np.linalg.norm(a[k]), np.linalg.norm(b[k])) < 1e-8 * total for k in a)


def measure(name, size):
    import timm

    started = time.perf_counter()
    model = timm_model(timm, name, size).train()
    x = np.random.default_rng(0).standard_normal((2, *size, 3))
    g = np.random.default_rng(1).standard_normal((2, 1000))
    config = mt.config(name, image_size=size)
    params, state = mt.load_state_dict(numpy_state_dict(model), config)
    theirs = model(to_nchw(x))  # updates timm's running statistics in place
    (theirs * torch.from_numpy(g)).sum().backward()
    theirs = theirs.detach().numpy().copy()
    _, theirs_state = mt.load_state_dict(numpy_state_dict(model), config)
    grads_by_name = {k: v.grad.numpy() for k, v in model.named_parameters()}
    theirs_grads, _ = mt.load_state_dict({**numpy_state_dict(model), **grads_by_name}, config)
    del model, grads_by_name  # timm's weights and gradients: copied into minicoat's trees
    gc.collect()

    ours, ours_state = mc.forward(params, state, x, config, train=True)
    _, grads = mc.value_and_grad(
        lambda p: anp.sum(mc.forward(p, state, x, config, train=True, check=False)[0] * g)
    )(params)
    logits = mc.rel_error(ours, theirs)
    stats = tree_errors(ours_state, theirs_state)
    errors = tree_errors(grads, theirs_grads)  # as the tests measure (zero leaves: absolute)
    worst = max(errors, key=errors.get)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    return dict(
        model=name, size=f"{size[0]}x{size[1]}", parameters=mc.count_params(params),
        train_logits=logits, running_stats_worst=max(stats.values()),
        grad_worst=errors[worst], grad_worst_leaf=worst,
        grad_median=statistics.median(errors.values()), leaves=len(errors),
        zero_leaves=zero_leaves(grads, theirs_grads),
        peak_rss_gb=peak_gb, wall_seconds=time.perf_counter() - started)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", choices=[f"coatnet_{n}_224" for n in range(5)])
    parser.add_argument("--size", type=int, nargs=2, default=(64, 64), metavar=("H", "W"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # as the tests (tests/conftest.py)
    r = measure(args.model, tuple(args.size))
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    print(f"{r['model']} {r['size']} train mode, float64, {r['parameters']:,} parameters "
          f"(timm {__import__('timm').__version__}, torch {torch.__version__}, {cpu})")
    print(f"  train logits            {r['train_logits']:.2e}")
    print(f"  running stats (worst)   {r['running_stats_worst']:.2e}")
    print(f"  gradients worst/median  {r['grad_worst']:.2e} / {r['grad_median']:.2e} "
          f"({r['leaves']} leaves, {r['zero_leaves']} of them 0 in exact arithmetic; worst "
          f"{r['grad_worst_leaf']})")
    print(f"  peak RSS {r['peak_rss_gb']:.1f} GB, wall {r['wall_seconds']:.0f} s")
    return 0 if max(r["train_logits"], r["running_stats_worst"], r["grad_worst"]) <= 1e-12 else 1


if __name__ == "__main__":
    sys.exit(main())
