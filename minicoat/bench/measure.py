"""How ``minicoat bench`` measures: interleaved timing blocks, peak RSS and tracemalloc.

``time_blocks`` alternates the frameworks in blocks of runs after a settling time;
``peak_rss_mb`` reads the kernel's high-water mark, in this process or (for training steps)
in a fresh one; ``measure`` turns one item and mode into a row of the table.
"""

import ctypes
import gc
import itertools
import multiprocessing
import statistics
import time
import tracemalloc
from concurrent.futures import ProcessPoolExecutor

from ..ops import implementation


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


def _rss_in_this_process(builder, args, framework, mode):
    """Build the item afresh, run it once to warm up, and return one run's peak RSS growth."""
    from . import rows

    item = getattr(rows, builder)(*args)
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

