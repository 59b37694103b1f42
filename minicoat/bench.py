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
import ctypes
import datetime
import gc
import itertools
import json
import multiprocessing
import os
import platform
import statistics
import sys
import time
import tracemalloc
from concurrent.futures import ProcessPoolExecutor
from typing import NamedTuple

import numpy as onp

from . import blocks, model
from .configs import config as preset
from .ops import (
    conv2d,
    cross_entropy,
    depthwise_conv2d,
    implementation,
    make_vjp,
    relative_attention,
    value_and_grad,
)
from .optim import adamw_init, adamw_update
from .plans import make_block

PRESET = "coatnet-cifar"
LR, WEIGHT_DECAY = 1e-3, 0.05  # AdamW in both frameworks, decay on every leaf (torch's default)


# ----------------------------------------------------------------------------------------
# Measuring
# ----------------------------------------------------------------------------------------


def time_blocks(fns, repeats, warmup=1, budget_s=20.0, rounds=3, settle_s=0.25):
    """Median milliseconds of each of ``fns`` (NumPy, torch, ...), in alternating blocks of runs.

    Each function runs in blocks: first untimed runs (at least ``warmup`` of them, and at
    least ``settle_s`` seconds' worth), then its share of the ``repeats`` timed runs. The blocks
    alternate, numpy then torch (then the readable implementation), ``rounds`` times (fewer once
    ``budget_s`` seconds are spent and 3 runs each are timed), so that a slow drift of the
    machine's load hits all alike.

    Why blocks and the settling time: after a parallel region the worker threads of OpenBLAS
    (NumPy's matrix products) and of torch keep spinning on the cores for a while before they
    sleep. A run that starts right after the other framework's competes with them for the two
    cores; timing single runs alternately slowed both 1.5-10x at the op sizes here (conv2d
    forward: numpy 5.3 -> 15.3 ms, torch 2.1 -> 28.4 ms). Returns
    ``(milliseconds per function, samples per function)``.
    """
    rounds = max(1, min(rounds, repeats))
    per_round = -(-repeats // rounds)  # ceil
    times = tuple([] for _ in fns)
    start = time.perf_counter()
    for _ in range(rounds):
        for fn, samples in zip(fns, times, strict=True):
            settle_until = time.perf_counter() + settle_s
            for i in itertools.count():
                if i >= warmup and time.perf_counter() >= settle_until:
                    break
                fn()
            for _ in range(per_round):
                t0 = time.perf_counter()
                fn()
                samples.append(time.perf_counter() - t0)
        if len(times[0]) >= 3 and time.perf_counter() - start > budget_s:
            break
    return [statistics.median(t) * 1e3 for t in times], len(times[0])


def readable(fn):
    """``fn`` run with the readable implementation: the teaching tier, no kernel."""

    def run():
        with implementation("readable"):
            return fn()

    return run


def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


_LIBC = _libc()


def _status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"no {field} in /proc/self/status")


def peak_rss_mb(fn):
    """Growth of the peak resident set size while ``fn()`` runs, in MiB (None off Linux).

    Free memory is first handed back to the system (``malloc_trim``) and the kernel's
    high-water mark reset to the current RSS, so every page ``fn`` touches counts.
    """
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = _status_kb("VmRSS")
        fn()
        return (_status_kb("VmHWM") - base) / 1024
    except OSError:
        return None


def peak_tracemalloc_mb(fn):
    """Peak memory traced by ``tracemalloc`` (NumPy arrays and Python objects) above the start."""
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        fn()
        return (tracemalloc.get_traced_memory()[1] - base) / 2**20
    finally:
        tracemalloc.stop()


# ----------------------------------------------------------------------------------------
# The items: an op, a block or a training step, in both frameworks
# ----------------------------------------------------------------------------------------


class Item(NamedTuple):
    """Something to time: ``numpy[mode]`` and ``torch[mode]`` are argument-free callables."""

    name: str
    shape: str
    flops: float  # forward FLOPs (2 x multiply-adds); 0 when not counted
    numpy: dict  # mode ("fwd", "fwd+bwd" or "step") -> callable
    torch: dict
    rebuild: tuple = None  # (builder, args) that make this item again in a fresh process


def _torch():
    try:
        import torch
    except ImportError as err:
        raise SystemExit(
            "minicoat bench compares against the PyTorch twin and needs torch: "
            "pip install -e '.[test]' (the CPU build, see the README)"
        ) from err
    return torch


def _nchw(torch, x, grad=False):
    return torch.from_numpy(onp.ascontiguousarray(x.transpose(0, 3, 1, 2))).requires_grad_(grad)


def _op_item(name, shape, flops, f, inputs, f_torch, torch_inputs):
    """An op given as ``f(*inputs)`` (NumPy, differentiated w.r.t. every input) and its twin
    ``f_torch(*torch_inputs)`` (tensors with ``requires_grad``)."""
    torch = _torch()
    y = f(*inputs)
    rng = onp.random.default_rng(1)
    g = rng.standard_normal(onp.shape(y)).astype(onp.asarray(y).dtype)
    with torch.no_grad():
        g_torch = torch.from_numpy(g.copy()).reshape(f_torch(*torch_inputs).shape)

    def numpy_fwd_bwd():
        vjp, _ = make_vjp(lambda args: f(*args), tuple(inputs))
        return vjp(g)

    def torch_fwd():
        with torch.no_grad():
            return f_torch(*torch_inputs)

    def torch_fwd_bwd():
        for t in torch_inputs:
            t.grad = None
        f_torch(*torch_inputs).backward(g_torch)

    return Item(
        name, shape, flops,
        {"fwd": lambda: f(*inputs), "fwd+bwd": numpy_fwd_bwd},
        {"fwd": torch_fwd, "fwd+bwd": torch_fwd_bwd},
    )


def _module_item(name, shape, flops, f, x, params, module, x_torch):
    """A block: ``f(x, params)`` in NumPy (grads w.r.t. x and every parameter) and ``module``."""
    torch = _torch()
    y = f(x, params)
    g = onp.random.default_rng(1).standard_normal(y.shape).astype(y.dtype)
    g_torch = _nchw(torch, g)

    def numpy_fwd_bwd():
        vjp, _ = make_vjp(lambda args: f(*args), (x, params))
        return vjp(g)

    def torch_fwd():
        with torch.no_grad():
            return module(x_torch)

    def torch_fwd_bwd():
        module.zero_grad(set_to_none=True)
        x_torch.grad = None
        module(x_torch).backward(g_torch)

    return Item(
        name, shape, flops,
        {"fwd": lambda: f(x, params), "fwd+bwd": numpy_fwd_bwd},
        {"fwd": torch_fwd, "fwd+bwd": torch_fwd_bwd},
    )


def matmul_item(size=1024):
    """float32 ``size x size`` matrix product: the reference rate for GFLOP/s."""
    torch = _torch()
    rng = onp.random.default_rng(0)
    a, b = (rng.standard_normal((size, size)).astype(onp.float32) for _ in range(2))
    at, bt = torch.from_numpy(a), torch.from_numpy(b)
    return Item(
        "matmul", f"{size}x{size} @ {size}x{size}", 2.0 * size**3,
        {"fwd": lambda: a @ b}, {"fwd": lambda: at @ bt},
    )


def depthwise_item(n, h, c):
    torch = _torch()
    rng = onp.random.default_rng(0)
    x = rng.standard_normal((n, h, h, c)).astype(onp.float32)
    w = (rng.standard_normal((3, 3, c)) / 3).astype(onp.float32)
    w_t = torch.from_numpy(onp.ascontiguousarray(w.transpose(2, 0, 1)[:, None])).requires_grad_()
    return _op_item(
        "depthwise_conv2d 3x3", f"({n},{h},{h},{c})", 2.0 * n * h * h * 9 * c,
        depthwise_conv2d, (x, w),
        lambda xt, wt: torch.nn.functional.conv2d(xt, wt, padding=1, groups=c),
        (_nchw(torch, x, True), w_t),
    )


def conv2d_item(n, h, c_in, c_out):
    torch = _torch()
    rng = onp.random.default_rng(0)
    x = rng.standard_normal((n, h, h, c_in)).astype(onp.float32)
    w = (rng.standard_normal((3, 3, c_in, c_out)) / onp.sqrt(9 * c_in)).astype(onp.float32)
    b = onp.zeros(c_out, onp.float32)
    w_t = torch.from_numpy(onp.ascontiguousarray(w.transpose(3, 2, 0, 1))).requires_grad_()
    b_t = torch.from_numpy(b.copy()).requires_grad_()
    return _op_item(
        "conv2d 3x3", f"({n},{h},{h},{c_in})->{c_out}", 2.0 * n * h * h * 9 * c_in * c_out,
        conv2d, (x, w, b),
        lambda xt, wt, bt: torch.nn.functional.conv2d(xt, wt, bt, padding=1),
        (_nchw(torch, x, True), w_t, b_t),
    )


def attention_params(c, dim, heads, h, w, rng):
    """Random relative-attention parameters (minicoat layout), float32."""
    return {
        "w_qkv": (rng.standard_normal((c, 3 * dim)) / onp.sqrt(c)).astype(onp.float32),
        "b_qkv": (0.1 * rng.standard_normal(3 * dim)).astype(onp.float32),
        "w_out": (rng.standard_normal((dim, dim)) / onp.sqrt(dim)).astype(onp.float32),
        "b_out": (0.1 * rng.standard_normal(dim)).astype(onp.float32),
        "rel_bias": (0.02 * rng.standard_normal((heads, (2 * h - 1) * (2 * w - 1)))).astype(
            onp.float32
        ),
    }


def attention_macs(n, tokens, c, dim):
    """Multiply-adds of relative attention: q/k/v and output projections, q k^T and A v."""
    return n * (tokens * c * 3 * dim + 2 * tokens * tokens * dim + tokens * dim * dim)


def attention_item(n, h, c, heads, variant):
    torch = _torch()
    from .oracle import ops as twin

    p = attention_params(c, c, heads, h, h, onp.random.default_rng(0))
    x = onp.random.default_rng(1).standard_normal((n, h, h, c)).astype(onp.float32)
    p_t = {
        k: torch.from_numpy(onp.ascontiguousarray(v.T if k.startswith("w") else v))
        .requires_grad_()
        for k, v in p.items()
    }
    names = tuple(p)

    def twin_attention(xt, *ps):
        return twin.relative_attention(xt, dict(zip(names, ps, strict=True)), heads, variant)

    return _op_item(
        f"relative_attention {variant}", f"({n},{h},{h},{c}) heads {heads}",
        2.0 * attention_macs(n, h * h, c, c),
        lambda x, p: relative_attention(x, p, heads, variant), (x, p),
        twin_attention,
        (_nchw(torch, x, True), *(p_t[k] for k in names)),
    )


def mbconv_macs(n, block):
    """Multiply-adds of a stride-1 MBConv block without shortcut projection (``count_flops``)."""
    h, w = block.grid_out
    mid, c_in, c_out = block.expanded, block.c_in, block.c_out
    return n * (h * w * (c_in * mid + 9 * mid + mid * c_out) + 2 * mid * block.se)


def mbconv_item(n, h, c, cfg):
    torch = _torch()
    from .oracle.network import MBConv, copy_into

    block = make_block(cfg, "C", c, c, 1, (h, h))
    params = model.init_from_spec(blocks.mbconv_spec(block), onp.random.default_rng(0))
    state = model.init_state(blocks.mbconv_state(block))
    x = onp.random.default_rng(1).standard_normal((n, h, h, c)).astype(onp.float32)
    module = copy_into(MBConv(block, cfg), params, state).train()
    return _module_item(
        "MBConv block", f"({n},{h},{h},{c}) expand {cfg.mbconv_expand}",
        2.0 * mbconv_macs(n, block),
        lambda x, p: blocks.mbconv_forward(p, state, x, block, cfg, train=True)[0],
        x, params, module, _nchw(torch, x, True),
    )


def transformer_macs(n, h, c, cfg):
    """Multiply-adds of a stride-1 Transformer block of width ``c`` on an ``h x h`` grid."""
    tokens = h * h
    return attention_macs(n, tokens, c, c) + n * 2 * tokens * c * c * cfg.ffn_expand


def transformer_item(n, h, c, cfg):
    torch = _torch()
    from .oracle.network import Transformer, copy_into

    block = make_block(cfg, "T", c, c, 1, (h, h))
    params = model.init_from_spec(blocks.transformer_spec(block), onp.random.default_rng(0))
    x = onp.random.default_rng(1).standard_normal((n, h, h, c)).astype(onp.float32)
    module = copy_into(Transformer(block, cfg), params).train()
    return _module_item(
        "Transformer block", f"({n},{h},{h},{c}) heads {block.heads}",
        2.0 * transformer_macs(n, h, c, cfg),
        lambda x, p: blocks.transformer_forward(p, x, block, cfg),
        x, params, module, _nchw(torch, x, True),
    )


def step_item(cfg, n, name=None):
    """One training step: forward (train mode), cross-entropy, backward, AdamW update."""
    torch = _torch()
    from .oracle.network import to_torch

    params, state = model.init_params(cfg, seed=0)
    rng = onp.random.default_rng(1)
    x = rng.standard_normal((n, *cfg.image_size, cfg.in_channels)).astype(onp.float32)
    labels = rng.integers(0, cfg.num_classes, n)
    net = to_torch(params, state, cfg).train()
    x_t, labels_t = _nchw(torch, x), torch.from_numpy(labels)
    optimizer = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)

    def loss(p):
        logits, _ = model.forward(p, state, x, cfg, train=True, check=False)
        return cross_entropy(logits, labels)

    current = {"params": params, "opt": adamw_init(params)}

    def numpy_step():
        _, grads = value_and_grad(loss)(current["params"])
        current["params"], current["opt"] = adamw_update(
            current["params"], grads, current["opt"], LR, weight_decay=WEIGHT_DECAY, mask=None
        )

    def torch_step():
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(x_t), labels_t).backward()
        optimizer.step()

    h, w = cfg.image_size
    return Item(
        name or f"train step {cfg.name}", f"batch {n}, {h}x{w}x{cfg.in_channels}",
        2.0 * model.count_flops(cfg) * n, {"step": numpy_step}, {"step": torch_step},
        rebuild=("step_item", (cfg, n)),
    )


def _rss_in_this_process(builder, args, framework, mode):
    """Build the item afresh, run it once to warm up, and return one run's peak RSS growth."""
    item = globals()[builder](*args)
    fn = getattr(item, framework)[mode]
    fn()  # one-off allocations: optimiser state, caches, the torch twin's first-call setup
    return peak_rss_mb(fn)


def peak_rss_mb_fresh_process(item, framework, mode):
    """``peak_rss_mb`` of ``item``'s ``framework`` run, measured in a new Python process.

    In the bench's own process the heap is shaped by everything run before (the other
    framework's steps above all): freed blocks that do not fit the next allocation pattern
    stay resident, and the RSS growth then overstates what the step itself needs. A spawned
    process has only this item, built the same way (``item.rebuild``).
    """
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(_rss_in_this_process, *item.rebuild, framework, mode).result()


# ----------------------------------------------------------------------------------------
# Running the items
# ----------------------------------------------------------------------------------------


def measure(item, mode, repeats, warmup, memory=True, budget_s=20.0, fresh_rss=True,
            settle_s=0.25, with_readable=False):
    """Time (and optionally the peak memory of) one item in one mode, in both frameworks.

    ``fresh_rss``: measure the RSS of an item that can be rebuilt (a training step) in a
    fresh process per framework; False keeps it in this process (quicker, less faithful).
    ``with_readable``: also time NumPy with the readable implementation (``readable_ms``).
    """
    np_fn, torch_fn = item.numpy[mode], item.torch[mode]
    fns = (np_fn, torch_fn, readable(np_fn)) if with_readable else (np_fn, torch_fn)
    times, samples = time_blocks(fns, repeats, warmup, budget_s, settle_s=settle_s)
    numpy_ms, torch_ms = times[:2]
    row = {
        "name": item.name,
        "mode": mode,
        "shape": item.shape,
        "numpy_ms": numpy_ms,
        "torch_ms": torch_ms,
        "ratio": numpy_ms / torch_ms,
        "samples": samples,
        "flops": item.flops * (1 if mode == "fwd" else 3),
    }
    if with_readable:
        row["readable_ms"] = times[2]
    if memory:
        row["numpy_peak_mb_tracemalloc"] = peak_tracemalloc_mb(np_fn)
        for fw, fn in (("numpy", np_fn), ("torch", torch_fn)):
            if fresh_rss and item.rebuild is not None:
                row[f"{fw}_peak_mb_rss"] = peak_rss_mb_fresh_process(item, fw, mode)
            else:
                row[f"{fw}_peak_mb_rss"] = peak_rss_mb(fn)
        row["rss_in_fresh_process"] = fresh_rss and item.rebuild is not None
    return row


def _add_gflops(row, peak):
    if row["flops"]:
        for fw in ("numpy", "torch"):
            rate = row["flops"] / (row[f"{fw}_ms"] * 1e-3) / 1e9
            row[f"{fw}_gflops"] = rate
            row[f"{fw}_pct_of_matmul_peak"] = 100.0 * rate / peak[fw]
    return row


def hot_items(quick):
    """The op rows: shapes as they occur in coatnet-cifar at batch 32 (tiny for --quick)."""
    cfg = preset(PRESET)
    if quick:
        n, small = 2, preset(PRESET, mbconv_expand=2, ffn_expand=2)
        return [
            depthwise_item(n, 8, 16),
            conv2d_item(n, 8, 8, 8),
            attention_item(n, 4, 64, 2, "pre"),
            attention_item(n, 4, 64, 2, "post"),
            mbconv_item(n, 8, 16, small),
            transformer_item(n, 4, 64, small),
        ]
    n = 32
    return [
        depthwise_item(n, 16, 64 * cfg.mbconv_expand),  # S1's expanded depthwise
        conv2d_item(n, 32, 32, 32),  # the stem's second convolution
        attention_item(n, 4, 192, 192 // cfg.head_dim, "pre"),  # S3
        attention_item(n, 4, 192, 192 // cfg.head_dim, "post"),
        mbconv_item(n, 16, 64, cfg),  # S1, second block
        transformer_item(n, 4, 192, cfg),  # S3, second block
    ]


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


# ----------------------------------------------------------------------------------------
# Reporting
# ----------------------------------------------------------------------------------------


def machine_info():
    """What the numbers were measured on: CPU, cores, memory, versions, threads."""
    torch = _torch()
    info = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_count": os.cpu_count(),
        "cpu_model": None,
        "ram_gb": None,
        "numpy": onp.__version__,
        "torch": torch.__version__,
        "autograd": _version("autograd"),
        "scipy": _version("scipy"),
        "torch_threads": torch.get_num_threads(),
        "numpy_blas": _blas_name(),
        "numpy_blas_threads": _numpy_blas_threads(),
        "numpy_blas_kernels": _numpy_blas_kernels(),
        "thread_env": {k: v for k, v in os.environ.items() if k.endswith("_NUM_THREADS")},
        "load_average_at_start": _load_average(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            models = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        info["cpu_model"] = models[0] if models else None
        info["ram_gb"] = round(_meminfo_kb("MemTotal") / 2**20, 1)
    except OSError:
        pass
    return info


def _load_average():
    """1-minute load average: above 0 other processes shared the cores (torch's threads then
    wait for each other and slow down far more than NumPy's single-threaded ufuncs)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _version(name):
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _meminfo_kb(field):
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(field)


def _blas_name():
    try:
        blas = onp.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{blas.get('name')} {blas.get('version')}"
    except Exception:  # the layout of show_config is not a stable API
        return "unknown"


def _numpy_openblas():
    """NumPy's OpenBLAS as ``threadpoolctl`` reports it (kernel set, threads), or None."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    for lib in threadpool_info():
        if lib.get("internal_api") == "openblas" and "numpy" in lib.get("filepath", ""):
            return lib
    return None


def _numpy_blas_threads():
    lib = _numpy_openblas()
    return lib["num_threads"] if lib else "unknown"


def _numpy_blas_kernels():
    """OpenBLAS's kernel set and who chose it: "SkylakeX (detected)", or "Haswell (forced by
    OPENBLAS_CORETYPE=Haswell)" when the environment overrides the detection."""
    lib = _numpy_openblas()
    if not lib:
        return "unknown"
    forced = os.environ.get("OPENBLAS_CORETYPE")
    how = f"forced by OPENBLAS_CORETYPE={forced}" if forced else "detected"
    return f"{lib.get('architecture')} ({how})"


def _fmt(value, spec=".1f"):
    return "-" if value is None else format(value, spec)


def _rate(row, fw):
    if f"{fw}_gflops" not in row:
        return "-"
    return f"{row[f'{fw}_gflops']:.1f} ({row[f'{fw}_pct_of_matmul_peak']:.0f}%)"


def format_table(rows):
    """The main table as Markdown (``readable ms``: NumPy without the kernels, if measured)."""
    lines = [
        "| name | mode | shape | numpy ms | torch ms | numpy/torch | readable ms | readable/fast "
        "| numpy MB (tracemalloc) | numpy MB (RSS) | torch MB (RSS) | numpy GFLOP/s (% peak) "
        "| torch GFLOP/s (% peak) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        readable_ms = r.get("readable_ms")
        speedup = None if readable_ms is None else readable_ms / r["numpy_ms"]
        lines.append(
            f"| {r['name']} | {r['mode']} | {r['shape']} | {r['numpy_ms']:.2f} | "
            f"{r['torch_ms']:.2f} | {r['ratio']:.2f} | {_fmt(readable_ms, '.2f')} | "
            f"{_fmt(speedup, '.2f')} | {_fmt(r.get('numpy_peak_mb_tracemalloc'))} "
            f"| {_fmt(r.get('numpy_peak_mb_rss'))} | {_fmt(r.get('torch_peak_mb_rss'))} | "
            f"{_rate(r, 'numpy')} | {_rate(r, 'torch')} |"
        )
    return "\n".join(lines)


def format_scaling(scaling):
    """The scaling tables as Markdown."""
    out = []
    for axis, label in (("batch", "batch size"), ("image", "image size"), ("depth", "depths")):
        rows = scaling[axis]
        if not rows:
            continue
        first = rows[0]
        out += [
            f"\nTraining step of {PRESET} against {label}"
            + ("" if axis == "batch" else f" (batch {first['batch_size']})") + ":\n",
            f"| {label} | params | numpy ms | torch ms | numpy/torch | numpy ms / first "
            "| numpy MB (tracemalloc) | numpy MB (RSS) | torch MB (RSS) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            out.append(
                f"| {r[axis]} | {r['params']:,} | {r['numpy_ms']:.1f} | {r['torch_ms']:.1f} | "
                f"{r['ratio']:.2f} | {r['numpy_ms'] / first['numpy_ms']:.2f} | "
                f"{_fmt(r.get('numpy_peak_mb_tracemalloc'))} | {_fmt(r.get('numpy_peak_mb_rss'))} "
                f"| {_fmt(r.get('torch_peak_mb_rss'))} |"
            )
    rows = scaling["attention"]
    if rows:
        first = rows[0]
        out += [
            f"\nrelative_attention (pre) forward+backward against the grid ({first['batch_size']} "
            f"images, C = D = {first['channels']}, {first['heads']} heads):\n",
            "| grid | tokens T | T^2 / first | T^2 share of FLOPs | numpy ms | numpy ms / first "
            "| torch ms | torch ms / first | numpy/torch | numpy MB (tracemalloc) "
            "| torch MB (RSS) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            out.append(
                f"| {r['grid']}x{r['grid']} | {r['tokens']} | "
                f"{(r['tokens'] / first['tokens']) ** 2:.0f} | "
                f"{100 * r['quadratic_flop_share']:.0f}% | {r['numpy_ms']:.2f} | "
                f"{r['numpy_ms'] / first['numpy_ms']:.1f} | {r['torch_ms']:.2f} | "
                f"{r['torch_ms'] / first['torch_ms']:.1f} | {r['ratio']:.2f} | "
                f"{_fmt(r.get('numpy_peak_mb_tracemalloc'))} | {_fmt(r.get('torch_peak_mb_rss'))} |"
            )
    return "\n".join(out)


def format_header(info, peak):
    return (
        f"minicoat bench, {info['date']}: {info['cpu_model']}, {info['nproc']} cores, "
        f"{info['ram_gb']} GB RAM; numpy {info['numpy']} ({info['numpy_blas']}, "
        f"{info.get('numpy_blas_kernels', 'unknown')} kernels, BLAS threads "
        f"{info['numpy_blas_threads']}), torch {info['torch']} (threads "
        f"{info['torch_threads']}), float32; load average {info['load_average_at_start']} at "
        f"the start, {info.get('load_average_at_end')} at the end.\n"
        f"Median of repeated runs after a warm-up; torch is the NCHW twin with the same weights. "
        f"Matmul peak (1024x1024 float32): numpy {peak['numpy']:.1f} GFLOP/s, "
        f"torch {peak['torch']:.1f} GFLOP/s. Peak RSS growth of a training step: each "
        f"framework in a fresh process of its own; of an op: in this process. "
        f"Allocator: glibc's defaults for both.\n"
    )


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


if __name__ == "__main__":
    sys.exit(main())
