"""A/B in one process: the kernel tier of an older commit against the current one.

The old commit's ``minicoat/kernels/*.py`` are loaded as a second package (``minicoat.kernels_old``,
registering its kernels over the current ones); the two sets of kernels are then swapped in
and out of the op switch, so both run on the same ops, inputs and process. Single runs
alternate A, B, A, B, ... and each variant's median is reported, with the load average::

    python benchmarks/ab_kernels.py 9605c88~1            # old kernels vs the working tree
    python benchmarks/ab_kernels.py HEAD --threads 1 2   # the same kernels, 1 vs 2 threads
    python benchmarks/ab_kernels.py HEAD~1 --rows step32 --reps 15

Variants: "old" (the commit's kernels, with the threads given first) and "new" with each
thread count of ``--threads``. Rows: dw, dw_bwd, conv, conv_bwd, mbconv, step32, step128.
(docs/performance.md has the figures.)
"""
import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as onp

import minicoat as mc
from minicoat.bench import rows
from minicoat.configs import config
from minicoat.kernels import threads
from minicoat.ops import switch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_old_kernels(rev):
    """Register ``rev``'s kernels; returns the switch's kernel table for them."""
    new = dict(switch._kernels)
    folder = tempfile.mkdtemp(prefix="kernels_old_")
    names = subprocess.run(["git", "ls-tree", "--name-only", rev, "minicoat/kernels/"],
                           cwd=ROOT, check=True, capture_output=True, text=True).stdout.split()
    for path in names:
        if path.endswith(".py"):
            text = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, check=True,
                                  capture_output=True, text=True).stdout
            with open(os.path.join(folder, os.path.basename(path)), "w") as f:
                f.write(text)
    spec = importlib.util.spec_from_file_location(
        "minicoat.kernels_old", os.path.join(folder, "__init__.py"),
        submodule_search_locations=[folder])
    module = importlib.util.module_from_spec(spec)
    sys.modules["minicoat.kernels_old"] = module
    spec.loader.exec_module(module)
    old = dict(switch._kernels)
    switch._kernels.clear()
    switch._kernels.update(new)
    return old, new


def row_fns(name):
    if name in ("dw", "dw_bwd"):
        item = rows.depthwise_item(32, 16, 256)
    elif name in ("conv", "conv_bwd"):
        item = rows.conv2d_item(32, 32, 32, 32)
    elif name == "mbconv":
        return rows.mbconv_item(32, 16, 64, config("coatnet-cifar")).numpy["fwd+bwd"]
    elif name.startswith("step"):
        return rows.step_item(config("coatnet-cifar"), int(name[4:])).numpy["step"]
    return item.numpy["fwd+bwd" if name.endswith("_bwd") else "fwd"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("rev", help="the commit whose kernels are 'old'")
    parser.add_argument("--rows", nargs="+", default=["dw", "dw_bwd", "conv", "conv_bwd"])
    parser.add_argument("--threads", nargs="+", type=int, default=[threads.num_threads()])
    parser.add_argument("--reps", type=int, default=21)
    parser.add_argument("--no-old", action="store_true", help="only the thread counts, new kernels")
    parser.add_argument("--settle", type=float, default=0.15,
                        help="seconds to sleep before each timed run (default 0.15): OpenBLAS's "
                             "workers spin ~0.1 s after a product, and would take a core from "
                             "the next variant")
    args = parser.parse_args()
    old, new = load_old_kernels(args.rev)
    variants = [] if args.no_old else [("old", old, args.threads[0])]
    variants += [(f"new t{t}", new, t) for t in args.threads]
    for name in args.rows:
        fn = row_fns(name)
        times = {v[0]: [] for v in variants}
        reps = args.reps if not name.startswith("step") else max(5, args.reps // 3)
        for rep in range(reps + 1):
            for label, table, t in variants:
                switch._kernels.clear()
                switch._kernels.update(table)
                threads.set_num_threads(t)
                time.sleep(args.settle)
                t0 = time.perf_counter()
                fn()
                if rep:  # the first round warms up
                    times[label].append(1e3 * (time.perf_counter() - t0))
        med = {k: statistics.median(v) for k, v in times.items()}
        base = med[variants[0][0]]
        load = open("/proc/loadavg").read().split()[:3]
        print(f"{name}: " + ", ".join(f"{k} {v:.2f} ms ({v / base:.3f})" for k, v in med.items())
              + f"  [medians of {reps}, load {' '.join(load)}]", flush=True)
    switch._kernels.clear()
    switch._kernels.update(new)
    return mc


if __name__ == "__main__":
    onp.seterr(all="ignore")
    main()
