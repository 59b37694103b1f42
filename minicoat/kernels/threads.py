"""A small thread pool for the kernel tier: big elementwise passes on every core.

NumPy's ufuncs run on one core, while torch's elementwise kernels use all of them. NumPy
releases the GIL inside a ufunc's loop, so Python threads that each run the same NumPy
passes on their own slice of an array do run in parallel; ``parallel_map`` does that for the
kernels, on a pool created once. On small arrays the hand-off costs more than it saves, so a
caller splits only work of at least ``MIN_PARALLEL`` elements (``parallel_slices``).

How many threads: ``MINICOAT_NUM_THREADS`` if set, else 1: the pool is off and the kernels run
on the calling thread. On the 2-core Intel Xeon of ``docs/performance.md`` two threads made
the depthwise forward 0.29 of main's time instead of 0.40, but the whole training step 1.02-1.03
times slower than one (likely because OpenBLAS's own two threads hold both cores around every
matrix product), so the default is the one that measured faster on the step; set
``MINICOAT_NUM_THREADS=2`` (or the cores you have) to try it on your machine.
``set_num_threads`` changes it at run time (the tests use it to
run every kernel both ways). The results are the same either way: each thread writes its own
slice, and no slice's values depend on how the array was split. What it buys:
``docs/performance.md``.
"""

import os
import threading
from concurrent.futures import ThreadPoolExecutor

MIN_PARALLEL = 1 << 17  # elements below which a pass stays on one thread (512 KiB float32)


def _default_threads():
    env = os.environ.get("MINICOAT_NUM_THREADS")
    if env is not None:
        try:
            n = int(env)
        except ValueError:
            raise ValueError(
                f"MINICOAT_NUM_THREADS must be a positive integer, got {env!r}"
            ) from None
        if n < 1:
            raise ValueError(f"MINICOAT_NUM_THREADS must be a positive integer, got {env!r}")
        return n
    return 1  # measured faster on the whole step than one thread per core (see above)


_state = {"threads": _default_threads(), "pool": None}
_lock = threading.Lock()


def num_threads():
    """The number of threads the kernels split large passes over (1: no pool)."""
    return _state["threads"]


def set_num_threads(n):
    """Use ``n`` threads (an int >= 1) from now on; returns the previous number."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"the number of kernel threads must be an int >= 1, got {n!r}")
    with _lock:
        previous = _state["threads"]
        if n != previous and _state["pool"] is not None:
            _state["pool"].shutdown(wait=True)
            _state["pool"] = None
        _state["threads"] = n
    return previous


def _pool():
    with _lock:
        if _state["pool"] is None:
            # the calling thread takes one share itself: threads - 1 workers
            _state["pool"] = ThreadPoolExecutor(
                max_workers=_state["threads"] - 1, thread_name_prefix="minicoat-kernel"
            )
        return _state["pool"]


def in_worker():
    """True on one of the pool's worker threads (where no nested split is made)."""
    return threading.current_thread().name.startswith("minicoat-kernel")


def parallel_map(f, items):
    """``[f(item) for item in items]``, the items shared among the kernel threads.

    The calling thread runs the first item itself, the pool the others; with one thread, one
    item, or when called from a worker thread, everything runs in the calling thread. ``f``
    must not write where another item's call reads or writes. Exceptions propagate.
    """
    items = list(items)
    if len(items) <= 1 or _state["threads"] == 1 or in_worker():
        return [f(item) for item in items]
    futures = [_pool().submit(f, item) for item in items[1:]]
    first = f(items[0])
    return [first] + [future.result() for future in futures]


def parallel_slices(length, elements):
    """Split ``range(length)`` (rows, or images) into one contiguous slice per thread.

    ``elements`` is the total size of the work; below ``MIN_PARALLEL`` (or with one thread)
    it is one slice. Never more slices than ``length``.
    """
    threads = _state["threads"]
    if threads == 1 or elements < MIN_PARALLEL or length <= 1 or in_worker():
        return [slice(0, length)]
    parts = min(threads, length)
    bounds = [length * i // parts for i in range(parts + 1)]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
