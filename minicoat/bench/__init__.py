"""``minicoat bench``: NumPy vs the PyTorch twin, op by op and for whole training steps.

One run on one machine measures, for each hot op (depthwise and dense convolution, relative
attention "pre" and "post", an MBConv and a Transformer block) its forward and its
forward+backward time in minicoat and in the PyTorch twin (``minicoat.oracle``: NCHW, the same
weights, float32), and a full training step (forward, backward, AdamW update) of a small
preset at two batch sizes; and, in a ``readable ms`` column, the same NumPy work with the
readable implementation (the teaching tier's hand-written VJPs, no kernel), so that the table
shows what the kernels buy. It prints one Markdown table::

    python -m minicoat.bench                 # or: minicoat bench
    python -m minicoat.bench --json out.json # also write machine-readable results
    python -m minicoat.bench --quick         # tiny shapes, one repeat: a smoke test
    python -m minicoat.bench --scaling       # + how time and memory grow (batch, image, depth, T)
    python -m minicoat.bench --no-readable   # without the readable column (quicker)

How it measures:

* time: the median of repeated runs (``time.perf_counter``), each framework in blocks of runs
  that start with untimed warm-up runs (>= 0.25 s), blocks alternating NumPy, torch, NumPy, ...
  so that a drifting background load hits both alike (``time_blocks`` says why not single runs);
* peak memory: NumPy's by ``tracemalloc`` (NumPy reports its array allocations to it) and, for
  both frameworks, by the growth of the process's peak resident set size (Linux: reset
  ``VmHWM`` through ``/proc/self/clear_refs`` after ``malloc_trim``, run once, read it back);
  torch's allocator is invisible to tracemalloc, so the RSS figure is the one to compare.
  For the training steps each framework's RSS is measured in a fresh process of its own
  (one warm-up step, then the measured one): in the shared process the heap left behind by the
  other framework's runs inflates the figure by a third or more;
* GFLOP/s: FLOPs = 2 x the multiply-adds of ``count_flops``' rules (forward), 3x that for
  forward+backward (each product appears once more for each of its two inputs), divided by
  the median time, and shown against each framework's own float32 1024x1024 matmul rate
  measured in the same run;
* threads: ``torch.get_num_threads()``; NumPy's BLAS threads via ``threadpoolctl`` (NumPy's
  elementwise ufuncs are single-threaded either way);
* BLAS kernels: the set NumPy's OpenBLAS runs (``threadpoolctl``), and whether OpenBLAS
  detected it or the environment forced it (``OPENBLAS_CORETYPE``). A machine that pins an
  older set (``Haswell``, AVX2) on an AVX-512 CPU halves NumPy's matrix products while torch
  still runs AVX-512 kernels: benchmark with the pin unset (``docs/performance.md``).

torch is needed for the twin (``pip install -e '.[test]'``); the core never imports it.
"""


import argparse
import json
import sys

from .. import model
from ..configs import config as preset
from .machine import _load_average, machine_info
from .measure import (  # noqa: F401  (re-exported: the measuring helpers' public home)
    _add_gflops,
    measure,
    peak_rss_mb,
    peak_tracemalloc_mb,
    readable,
    time_blocks,
)
from .report import format_header, format_scaling, format_table
from .rows import PRESET, attention_item, attention_macs, hot_items, matmul_item, step_item


def run_table(quick, only=None, repeats=None, with_readable=True):
    """Measure every row; returns (rows, matmul peak GFLOP/s per framework)."""
    op_repeats = repeats or (1 if quick else 15)
    step_repeats = repeats or (1 if quick else 5)
    rows = []
    settle = 0.0 if quick else 0.25
    mm = measure(matmul_item(), "fwd", op_repeats, 1 if quick else 3, memory=False,
                 settle_s=settle)
    peak = {fw: mm["flops"] / (mm[f"{fw}_ms"] * 1e-3) / 1e9 for fw in ("numpy", "torch")}
    rows.append(_add_gflops(mm, peak))
    items = [(it, mode, op_repeats) for it in hot_items(quick) for mode in ("fwd", "fwd+bwd")]
    batches = (2, 4) if quick else (32, 128)
    items += [(step_item(preset(PRESET), n), "step", step_repeats) for n in batches]
    for item, mode, reps in items:
        if only and only not in item.name:
            continue
        row = measure(item, mode, reps, 1, settle_s=settle, with_readable=with_readable)
        rows.append(_add_gflops(row, peak))
        print(f"  measured {item.name} [{mode}] {item.shape}", file=sys.stderr, flush=True)
    return rows, peak


def run_scaling(quick):
    """Step time and memory against batch, image size and depth; attention against tokens."""
    base = preset(PRESET)
    reps = 1 if quick else 5
    settle = 0.0 if quick else 0.25
    out = {"batch": [], "image": [], "depth": [], "attention": []}
    batches, images = ((2, 4, 8), (16, 32)) if quick else ((8, 32, 128), (16, 32, 64))
    n_fixed = 2 if quick else 32
    depths = ((2, 1, 1, 1, 1), (2, 2, 2, 2, 1)) if quick else (
        (2, 1, 1, 1, 1), (2, 2, 2, 2, 1), (2, 4, 4, 4, 2))
    runs = [("batch", n, base, n) for n in batches]
    runs += [("image", s, preset(PRESET, image_size=s), n_fixed) for s in images]
    runs += [("depth", list(d), preset(PRESET, depths=d), n_fixed) for d in depths]
    for axis, value, cfg, n in runs:
        # --quick (the test) keeps the RSS in this process: 14 fresh processes take ~40 s
        row = measure(step_item(cfg, n), "step", reps, 1, fresh_rss=not quick, settle_s=settle)
        row["params"] = model.count_params(cfg)
        out[axis].append({axis: value, "batch_size": n, **row})
        print(f"  scaling {axis}={value}", file=sys.stderr, flush=True)
    n, c = (2, 64) if quick else (8, 192)
    grids = (2, 4) if quick else (4, 8, 16, 24)
    for g in grids:
        row = measure(attention_item(n, g, c, c // 32, "pre"), "fwd+bwd", 2 if quick else 5, 1,
                      settle_s=settle)
        tokens = g * g
        quadratic = 2 * tokens * tokens * c  # q k^T and A v; the rest is linear in T
        out["attention"].append({
            "grid": g, "tokens": tokens, "batch_size": n, "channels": c, "heads": c // 32,
            "quadratic_flop_share": quadratic / (attention_macs(n, tokens, c, c) / n), **row,
        })
        print(f"  scaling attention {g}x{g}", file=sys.stderr, flush=True)
    return out



def main(argv=None):
    """Command line: ``minicoat bench [--quick] [--json PATH] [--scaling] [--only NAME]``."""
    parser = argparse.ArgumentParser(
        prog="minicoat bench",
        description="Time minicoat's hot ops and training step against the PyTorch twin.",
    )
    parser.add_argument("--quick", action="store_true", help="tiny shapes, one repeat (smoke)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument(
        "--scaling", action="store_true",
        help="also measure growth with batch, image size, depth and attention tokens",
    )
    parser.add_argument("--only", metavar="NAME", help="only rows whose name contains NAME")
    parser.add_argument("--repeats", type=int, help="timed runs per row (default 15 / 5 steps)")
    parser.add_argument(
        "--no-readable", action="store_true",
        help="skip the readable column (NumPy with the teaching tier's VJPs, no kernels)",
    )
    args = parser.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats must be a positive integer, got {args.repeats}")

    info = machine_info()
    rows, peak = run_table(args.quick, args.only, args.repeats, not args.no_readable)
    info["load_average_at_end"] = _load_average()
    print(format_header(info, peak))
    print(format_table(rows))
    result = {"machine": info, "quick": args.quick, "matmul_peak_gflops": peak, "rows": rows}
    if args.scaling:
        result["scaling"] = run_scaling(args.quick)
        print(format_scaling(result["scaling"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0

