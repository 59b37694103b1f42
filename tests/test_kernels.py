"""What is particular to the kernel tier (``minicoat/kernels``, ``docs/performance.md``).

That every kernel equals the traced and readable implementations, on shapes that cross its
block boundaries, is ``test_implementations.py``; against finite differences and torch,
``test_ops.py``. Here: the float32-only erf approximation against float64, to float32
accuracy, in both tails and at the float32 maximum; the blocking helpers against one NumPy call;
which maximum of a tied window gets max pooling's gradient; the kernel thread pool, and the
window convolutions and blocked norms equal to the readable tier with 1, 2 and 3 threads.
"""

import os
import threading
import time
import warnings

import autograd
import autograd.numpy as anp
import numpy as np
import pytest
import scipy.special

import minicoat as mc
from minicoat.kernels import activations, blocking, threads
from minicoat.kernels import conv as conv_kernels


@pytest.fixture(autouse=True)
def _fast():
    with mc.implementation("fast"):
        yield


def _vjps(f, inputs, seed=0):
    """``f(*inputs)`` and its VJPs w.r.t. every input for one random upstream gradient."""
    vjp, y = autograd.make_vjp(lambda args: f(*args))(tuple(inputs))
    upstream = np.random.default_rng(seed).standard_normal(np.shape(y))
    return y, vjp(upstream), upstream


def normal(rng, *shape):
    return rng.standard_normal(shape)


# -- GELU --------------------------------------------------------------------------------


def test_float32_normal_tail_is_accurate_to_float32():
    a = np.linspace(0.0, 12.0, 100_001).astype(np.float32)
    exact = 0.5 * scipy.special.erfc(a.astype(np.float64) / np.sqrt(2.0))  # Phi(-a)
    fast = activations._lower_tail_float32(a)
    assert fast.dtype == np.float32
    assert np.max(np.abs(fast - exact)) <= 3e-7  # A&S 7.1.26: 7.5e-8, plus float32 rounding


def test_float32_gelu_keeps_relative_precision_in_both_tails():
    # max(x, 0) - |x| Phi(-|x|) has no 1 + erf(x) to cancel: far left, GELU(-9) ~ -1e-18 keeps
    # its size to A&S's relative error (1.5% there; 1 + erf in float32 rounds it to 0), and far
    # right it is x to the last bit, up to the float32 maximum.
    x = np.array([-9.0, -6.0, -3.0, 3.0, 6.0, 1e4, 3e38], dtype=np.float32)
    exact = x.astype(np.float64) * 0.5 * scipy.special.erfc(-x.astype(np.float64) / np.sqrt(2.0))
    fast = activations.gelu_float32(x)
    assert fast.dtype == np.float32
    np.testing.assert_allclose(fast[:3], exact[:3], rtol=2e-2)
    np.testing.assert_array_equal(fast[-3:], x[-3:])  # 3e38: no overflow on the way
    assert np.all(fast[:3] < 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # x * x overflows inside; nothing may leak out as inf
        vjp, y = autograd.make_vjp(mc.gelu)(x)
        slope = vjp(np.ones_like(x))
    np.testing.assert_array_equal(y[-3:], x[-3:])
    np.testing.assert_allclose(slope[-3:], 1.0, rtol=1e-6)


def test_float32_gelu_and_gradient_are_close_to_exact():
    x = np.linspace(-10.0, 10.0, 100_001)
    y32, (g32,), _ = _vjps(mc.gelu, [x.astype(np.float32)])
    cdf = 0.5 * scipy.special.erfc(-x / np.sqrt(2.0))
    exact_grad = cdf + x * np.exp(-0.5 * x * x) / np.sqrt(2.0 * np.pi)
    upstream = np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)
    vjp, _ = autograd.make_vjp(mc.gelu)(x.astype(np.float32))
    assert y32.dtype == np.float32 and g32.dtype == np.float32
    assert np.max(np.abs(y32 - x * cdf) / (1.0 + np.abs(x))) <= 3e-7
    assert np.max(np.abs(vjp(upstream) - upstream * exact_grad)) <= 2e-6 * np.max(np.abs(upstream))


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_slope_made_in_the_forward_has_the_bits_of_the_derivative(dtype, approximate):
    # the forward pass's slope (from its own exp(-x^2 / 2) in float32) must be what the
    # derivative computed from x and y would be, to the bit: zeros, tiny values, both tails
    # and (exact GELU) the float32 maximum included
    rng = np.random.default_rng(4)
    big = 3e38 if approximate == "none" else 1e4  # (the tanh form's x^3 overflows beyond 1e12)
    x = np.concatenate([normal(rng, 1000) * 4, [0.0, -0.0, 1e-30, -1e-20, 1e-17, -9.0, big]])
    x = x.astype(dtype)
    slope = np.full_like(x, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = activations.gelu_and_slope(x, approximate, slope_out=slope)
    np.testing.assert_array_equal(y, activations.gelu_values(x, approximate))
    np.testing.assert_array_equal(slope, activations.gelu_derivative(x, y, approximate))
    assert np.all(np.isfinite(slope)) and slope[x.size - 7] == 0.5  # GELU'(0) = 1/2


def test_gelu_keeps_its_slope_only_when_traced():
    x = np.random.default_rng(5).standard_normal((3, 70_000)).astype(np.float32)
    plain = mc.gelu(x)  # untraced: no slope is made
    y, (dx,), upstream = _vjps(mc.gelu, [x])
    np.testing.assert_array_equal(plain, y)
    slope = activations.gelu_derivative(x, plain, "none")
    np.testing.assert_array_equal(dx, (upstream * slope).astype(np.float32))  # as x


@pytest.mark.parametrize("kernel_threads", [1, 2], indirect=True)
def test_float32_batch_norm_gelu_gradients_are_close_to_float64(kernel_threads):
    # the float32 path (A&S erf, the slope made in the forward) against the teaching tier in
    # float64, over several blocks: values and all three gradients to float32 accuracy
    rng = np.random.default_rng(6)
    x = (2.0 * normal(rng, 8, 9, 9, 48) + 0.5).astype(np.float32)
    gamma, beta = 1.0 + normal(rng, 48), normal(rng, 48)

    def f(x, gamma, beta):
        running = {"mean": np.zeros(48, x.dtype), "var": np.ones(48, x.dtype)}
        return mc.batch_norm_gelu(x, gamma, beta, running, True)[0]

    inputs32 = [x, gamma.astype(np.float32), beta.astype(np.float32)]
    y32, grads32, upstream = _vjps(f, inputs32)
    with mc.implementation("readable"):
        y64, grads64, _ = _vjps(f, [a.astype(np.float64) for a in inputs32])
    assert y32.dtype == np.float32 and all(g.dtype == np.float32 for g in grads32)
    np.testing.assert_allclose(y32, y64, rtol=0, atol=2e-6 * np.max(np.abs(y64)))
    for name, g32, g64 in zip(["x", "gamma", "beta"], grads32, grads64, strict=True):
        scale = np.max(np.abs(g64))
        assert np.max(np.abs(g32 - g64)) <= 2e-5 * scale, name


def test_zero_blocks_are_read_only_zeros_of_any_shape():
    for shape, dtype in [((3, 5), np.float32), ((1 << 19,), np.float32), ((2, 2), np.float64)]:
        zeros = activations._ZEROS.like(np.empty(shape, dtype))
        assert zeros.shape == shape and zeros.dtype == dtype and not zeros.any()
        with pytest.raises(ValueError, match="read-only"):
            zeros[...] = 1.0


def test_blockwise_equals_one_call():
    rng = np.random.default_rng(1)
    x = normal(rng, 5, 3, blocking.BLOCK // 4 + 3).astype(np.float32)
    g = normal(rng, *x.shape).astype(np.float32)

    def f(a, b, out=None):  # a new array per block: blockwise copies it into the output
        return a * b + anp.tanh(a)

    def f_in_place(a, b, out):  # the last pass writes into the output's block
        return np.add(a * b, anp.tanh(a), out=out)

    expected = f(x, g)
    np.testing.assert_array_equal(blocking.blockwise(f, x, g), expected)
    np.testing.assert_array_equal(blocking.blockwise(f_in_place, x, g), expected)
    into = np.full_like(x, np.nan)
    assert blocking.blockwise(f_in_place, x, g, out=into) is into
    np.testing.assert_array_equal(into, expected)


@pytest.mark.parametrize("rows", [7, blocking.BLOCK // 16 * 3 + 5])  # one block; several
def test_blockwise_channels_are_the_broadcast_vectors(rows):
    rng = np.random.default_rng(2)
    x = normal(rng, rows, 16).astype(np.float32)
    mean, scale = normal(rng, 16).astype(np.float32), normal(rng, 16).astype(np.float32)

    def f(x, mean, scale, out):
        assert mean.shape == scale.shape == x.shape == out.shape  # written out over the rows
        return (x - mean) * scale

    np.testing.assert_array_equal(
        blocking.blockwise(f, x, channels=(mean, scale)), (x - mean) * scale
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 3), (300, 32), (4096, 7)])
def test_column_sums_and_dots_equal_numpy(shape, dtype):
    rng = np.random.default_rng(3)
    a, b = normal(rng, *shape).astype(dtype), normal(rng, *shape).astype(dtype)
    sums, dots = blocking.column_sums(a), blocking.column_dots(a, b)
    assert sums.dtype == dots.dtype == dtype and sums.shape == dots.shape == shape[1:]
    tol = 1e-5 if dtype == np.float32 else 1e-12  # both add in the array's dtype
    exact_sums = a.astype(np.float64).sum(axis=0)
    exact_dots = (a.astype(np.float64) * b).sum(axis=0)
    np.testing.assert_allclose(sums, exact_sums, rtol=tol, atol=tol * np.sqrt(shape[0]))
    np.testing.assert_allclose(dots, exact_dots, rtol=tol, atol=tol * np.sqrt(shape[0]))
    buffer = np.empty_like(a)
    np.testing.assert_array_equal(blocking.column_dots(a, b, buffer=buffer), dots)


def test_batch_norm_gelu_rejects_an_unknown_gelu():
    x = np.ones((2, 1, 1, 3))
    running = {"mean": np.zeros(3), "var": np.ones(3)}
    with pytest.raises(ValueError, match="approximate must be 'none' or 'tanh'"):
        mc.batch_norm_gelu(x, np.ones(3), np.zeros(3), running, True, "erf")


def test_batch_norm_gelu_recomputes_the_forward_normalisation_to_the_bit():
    # The fused VJP reads Phi(z) back as y / z from a z it recomputes from x; near z = 0 a z
    # that differs from the forward's in its last bits (an offset of 300 standard deviations
    # leaves z with few correct digits) would make y / z wrong by far more than float32's
    # rounding. The composed batch_norm then gelu reads its own stored z: they must agree.
    rng = np.random.default_rng(11)
    x = (300.0 + normal(rng, 64, 4, 4, 8)).astype(np.float32)
    gamma = (1.0 + 0.1 * normal(rng, 8)).astype(np.float32)
    beta = (0.01 * normal(rng, 8)).astype(np.float32)
    running = {"mean": np.zeros(8, np.float32), "var": np.ones(8, np.float32)}
    fused = _vjps(lambda x: mc.batch_norm_gelu(x, gamma, beta, running, True)[0], [x])
    composed = _vjps(lambda x: mc.gelu(mc.batch_norm(x, gamma, beta, running, True)[0]), [x])
    z = mc.batch_norm(x, gamma, beta, running, True)[0]
    assert np.sum(np.abs(z) < 1e-3) >= 5  # the inputs do reach z ~ 0
    np.testing.assert_array_equal(fused[0], composed[0])
    np.testing.assert_allclose(fused[1][0], composed[1][0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("impl", ["readable", "fast"])
def test_max_pool_gives_a_tied_window_gradient_to_its_first_maximum(impl):
    x = np.zeros((1, 2, 2, 1))
    with mc.implementation(impl):
        _, (grad,), _ = _vjps(mc.max_pool2d, [x])
    assert np.count_nonzero(grad) == 1 and grad[0, 0, 0, 0] != 0.0


# -- the kernel thread pool (threads.py) ---------------------------------------------------


@pytest.fixture
def kernel_threads(request, monkeypatch):
    """Run with ``request.param`` kernel threads, splitting even small arrays (MIN_PARALLEL 1)
    and the elementwise passes (ELEMENTWISE)."""
    monkeypatch.setattr(threads, "MIN_PARALLEL", 1)
    monkeypatch.setattr(threads, "ELEMENTWISE", True)
    # the split passes' blocks as small as the others, so that the shapes below cross block
    # boundaries either way (test_split_passes_run_in_bigger_blocks: the real size)
    monkeypatch.setattr(blocking, "SPLIT_BLOCK", blocking.BLOCK)
    # and the convolutions one image per block, so that their threads share several blocks
    monkeypatch.setattr(blocking, "IMAGES_BLOCK", 1)
    monkeypatch.setattr(conv_kernels, "COLS_BLOCK", 1)
    previous = threads.set_num_threads(request.param)
    yield request.param
    threads.set_num_threads(previous)


def test_split_passes_run_in_bigger_blocks(monkeypatch):
    rows = np.zeros((4 * blocking.SPLIT_BLOCK // 8, 8), dtype=np.float32)
    previous = threads.set_num_threads(2)
    try:
        assert threads._numpy_blas() is not None
        assert len(blocking.row_blocks(rows)) == 4 * blocking.SPLIT_BLOCK // blocking.BLOCK
        with threads.owned_cores():
            assert threads.splits_elementwise()
            assert len(blocking.row_blocks(rows)) == 4
        threads.set_num_threads(1)
        with threads.owned_cores():
            assert not threads.splits_elementwise()
            assert len(blocking.row_blocks(rows)) == 4 * blocking.SPLIT_BLOCK // blocking.BLOCK
    finally:
        threads.set_num_threads(previous)


@pytest.fixture(params=["plain", "owned", "no-threadpoolctl"])
def scope(request, kernel_threads, monkeypatch):
    """Run outside ``owned_cores``, inside it, or inside it as if threadpoolctl were missing
    (OpenBLAS then keeps its threads, and no product is split)."""
    if request.param == "no-threadpoolctl":
        monkeypatch.setattr(threads._state, "blas_split", False)
    if request.param == "plain":
        yield request.param
        return
    with threads.owned_cores():
        yield request.param


def _blas_threads():
    return threads._numpy_blas().info()[0]["num_threads"]


def test_owned_cores_holds_numpys_openblas_to_one_thread_and_restores_it(monkeypatch):
    """NumPy's own OpenBLAS (pip's NumPy wheel carries one) is found and held to one thread
    inside the scope, nested scopes included, and given its threads back on the way out,
    also after an error; with one kernel thread or without threadpoolctl nothing changes."""
    assert threads._numpy_blas() is not None, "NumPy's OpenBLAS not found by threadpoolctl"
    previous = threads.set_num_threads(2)
    try:
        with threads._numpy_blas().limit(limits=2):  # whatever the machine has: 2 to start
            with threads.owned_cores():
                assert _blas_threads() == 1 and threads._state.owned == 1
                with threads.owned_cores():
                    assert threads._state.owned == 2
                assert _blas_threads() == 1
            assert _blas_threads() == 2 and threads._state.owned == 0
            with pytest.raises(KeyError), threads.owned_cores():
                raise KeyError("x")
            assert _blas_threads() == 2 and threads._state.owned == 0
            threads.set_num_threads(1)
            with threads.owned_cores():
                assert _blas_threads() == 2 and threads._state.owned == 0
            threads.set_num_threads(2)
            monkeypatch.setattr(threads._state, "blas_split", False)
            with threads.owned_cores():
                assert _blas_threads() == 2 and threads._state.owned == 0
    finally:
        threads.set_num_threads(previous)


def test_per_thread_products_splits_where_it_pays(monkeypatch):
    """Outside ``owned_cores`` only an op worth it ``alone`` is split (with OpenBLAS on one
    thread for the while); inside, every one; small work and no threadpoolctl: one call."""
    monkeypatch.setattr(threads, "MIN_PARALLEL", 10)
    previous = threads.set_num_threads(2)

    def calls(**kwargs):
        return threads.per_thread_products(
            lambda part, n: (part, n, _blas_threads()), 6, 100, **kwargs)

    try:
        with threads._numpy_blas().limit(limits=2):
            assert calls() == [(slice(0, 3), 2, 1), (slice(3, 6), 2, 1)]
            assert _blas_threads() == 2
            assert calls(alone=False) == [(slice(0, 6), 1, 2)]
            assert threads.per_thread_products(lambda p, n: (p, n), 6, 9) == [(slice(0, 6), 1)]
            with threads.owned_cores():
                assert calls(alone=False) == [(slice(0, 3), 2, 1), (slice(3, 6), 2, 1)]
                assert threads.parallel_slices(6, 100, elementwise=True) == [
                    slice(0, 3), slice(3, 6)]  # the elementwise passes are split too
            monkeypatch.setattr(threads._state, "blas_split", False)
            assert calls() == [(slice(0, 6), 1, 2)]
    finally:
        threads.set_num_threads(previous)


def test_parallel_map_keeps_order_and_runs_on_the_pool(monkeypatch):
    previous = threads.set_num_threads(2)
    try:
        names = threads.parallel_map(lambda i: (i, threading.current_thread().name), range(5))
        assert [i for i, _ in names] == list(range(5))
        assert any(name.startswith("minicoat-kernel") for _, name in names)
        monkeypatch.setattr(threads, "MIN_PARALLEL", 100)
        assert threads.parallel_slices(10, 99) == [slice(0, 10)]  # too small to split
        assert threads.parallel_slices(3, 100) == [slice(0, 1), slice(1, 3)]
        assert threads.parallel_slices(1, 10**9) == [slice(0, 1)]
        assert threads.parallel_slices(3, 100, elementwise=True) == [slice(0, 3)]  # off
        monkeypatch.setattr(threads, "ELEMENTWISE", True)
        assert threads.parallel_slices(3, 100, elementwise=True) == [slice(0, 1), slice(1, 3)]
        with pytest.raises(ZeroDivisionError):  # an error in a worker reaches the caller
            threads.parallel_map(lambda i: 1 / i, [1, 0])
        threads.set_num_threads(1)
        assert threads.parallel_slices(10, 10**9) == [slice(0, 10)]
    finally:
        threads.set_num_threads(previous)


def test_parallel_blocks_hands_out_each_index_once_to_whichever_thread_is_free(monkeypatch):
    """Every index runs once, the results come back in index order, a pool thread takes some
    (the calls sleep, so it wakes in time), errors reach the caller, and work too small to
    split, or an elementwise pass outside ``owned_cores``, stays on the calling thread."""
    previous = threads.set_num_threads(2)
    try:
        calls = []

        def call(i):
            calls.append(i)
            time.sleep(0.002)
            return i, threading.current_thread().name

        out = threads.parallel_blocks(call, 20, 10**9)
        assert [i for i, _ in out] == list(range(20)) and sorted(calls) == list(range(20))
        assert any(name.startswith("minicoat-kernel") for _, name in out)
        assert any(not name.startswith("minicoat-kernel") for _, name in out)
        with pytest.raises(ZeroDivisionError):
            threads.parallel_blocks(lambda i: 1 / (i - 7), 20, 10**9)
        for args in [(20, 10), (20, 10**9, True)]:  # small; elementwise, not owned
            out = threads.parallel_blocks(call, *args)
            assert {name for _, name in out} == {threading.current_thread().name}
    finally:
        threads.set_num_threads(previous)


@pytest.mark.parametrize("n_threads", [2, 3])
def test_blockwise_sums_are_the_same_with_any_number_of_threads(n_threads, monkeypatch):
    """The blocks' sums are added in block order, whichever thread made each: the totals
    (BatchNorm's statistics and gradient sums) are bit for bit those of one thread."""
    rows = np.random.default_rng(0).standard_normal((4000, 48)).astype(np.float32)
    f = lambda part, ones: ((rows[part] * ones).sum(axis=0),)  # noqa: E731 (no BLAS)
    for name in ("BLOCK", "SPLIT_BLOCK"):
        monkeypatch.setattr(blocking, name, 1 << 12)  # ~47 blocks, on one thread or more
    previous = threads.set_num_threads(1)
    try:
        (alone,) = blocking.blockwise_sums(f, rows, np.ones(48, np.float32))
        threads.set_num_threads(n_threads)
        with threads.owned_cores():
            assert len(blocking.row_blocks(rows)) > 10
            (shared,) = blocking.blockwise_sums(f, rows, np.ones(48, np.float32))
    finally:
        threads.set_num_threads(previous)
    np.testing.assert_array_equal(shared, alone)


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_num_threads_refuses_nonsense(value, monkeypatch):
    monkeypatch.setenv("MINICOAT_NUM_THREADS", value)
    with pytest.raises(ValueError, match="MINICOAT_NUM_THREADS must be a positive integer"):
        threads._default_threads()
    with pytest.raises(ValueError, match="int >= 1"):
        threads.set_num_threads(0)
    monkeypatch.setenv("MINICOAT_NUM_THREADS", "3")
    assert threads._default_threads() == 3
    monkeypatch.delenv("MINICOAT_NUM_THREADS")
    assert threads._default_threads() == len(os.sched_getaffinity(0))  # one per core


CONV_CASES = [  # (op name, input shape, kernel shape, stride): odd sizes, stride 2, k = 5
    ("depthwise_conv2d", (5, 7, 9, 6), (3, 3, 6), 1),
    ("depthwise_conv2d", (3, 9, 6, 4), (3, 3, 4), 2),
    ("depthwise_conv2d", (2, 5, 5, 3), (5, 5, 3), 1),
    ("conv2d", (5, 7, 9, 3), (3, 3, 3, 4), 1),
    ("conv2d", (3, 9, 6, 5), (3, 3, 5, 2), 2),
    ("conv2d", (2, 6, 7, 2), (5, 5, 2, 3), 1),
]


@pytest.mark.parametrize("kernel_threads", [1, 2, 3], indirect=True)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"{c[0]}-{c[1]}-s{c[3]}")
def test_window_convolutions_equal_readable_with_and_without_threads(case, dtype, scope):
    name, x_shape, w_shape, stride = case
    rng = np.random.default_rng(4)
    x, w = normal(rng, *x_shape).astype(dtype), normal(rng, *w_shape).astype(dtype)
    op = getattr(mc, name)
    f = lambda x, w: op(x, w, stride=stride)  # noqa: E731
    y, grads, upstream = _vjps(f, [x, w])
    with mc.implementation("readable"):
        y_ref, grads_ref, _ = _vjps(f, [x, w])
    tol = 1e-12 if dtype == np.float64 else 2e-5
    assert y.dtype == dtype and all(g.dtype == dtype for g in grads)
    np.testing.assert_allclose(y, y_ref, rtol=tol, atol=tol)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        np.testing.assert_allclose(g, g_ref, rtol=tol, atol=tol * np.abs(g_ref).max())


@pytest.mark.parametrize("kernel_threads", [1, 2, 3], indirect=True)
@pytest.mark.parametrize("shape", [(5, 6, 8, 3), (4, 7, 5, 2)], ids=["even", "odd"])
def test_max_pool_equals_readable_with_and_without_threads(shape, scope):
    """Ties included (values rounded to halves), so the first-maximum rule is exercised."""
    x = np.round(2 * normal(np.random.default_rng(6), *shape)) / 2
    y, (grad,), _ = _vjps(mc.max_pool2d, [x])
    with mc.implementation("readable"):
        y_ref, (grad_ref,), _ = _vjps(mc.max_pool2d, [x])
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(grad, grad_ref)


@pytest.mark.parametrize("kernel_threads", [1, 2], indirect=True)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_blocked_norms_equal_readable_with_and_without_threads(dtype, scope):
    rng = np.random.default_rng(5)
    rows = 3 * blocking.BLOCK // 8 + 5  # several blocks, the last one short
    x = (2.0 * normal(rng, rows // 5, 5, 1, 8) + 0.5).astype(dtype)
    gamma, beta = normal(rng, 8).astype(dtype), normal(rng, 8).astype(dtype)
    running = {"mean": np.zeros(8, dtype), "var": np.ones(8, dtype)}
    tol = 1e-12 if dtype == np.float64 else 2e-4
    for f in (
        lambda x, g, b: mc.batch_norm(x, g, b, running, True)[0],
        lambda x, g, b: mc.batch_norm_gelu(x, g, b, running, True)[0],
        lambda x, g, b: mc.gelu(x * g + b),
    ):
        y, grads, _ = _vjps(f, [x, gamma, beta])
        with mc.implementation("readable"):
            y_ref, grads_ref, _ = _vjps(f, [x, gamma, beta])
        np.testing.assert_allclose(y, y_ref, rtol=tol, atol=tol)
        for g, g_ref in zip(grads, grads_ref, strict=True):
            np.testing.assert_allclose(g, g_ref, rtol=tol, atol=tol * np.abs(g_ref).max())


def test_blockwise_sums_equal_one_sum_with_threads(monkeypatch):
    rng = np.random.default_rng(6)
    rows = normal(rng, 5 * blocking.BLOCK // 4 + 3, 4)
    mean = rows.mean(axis=0)
    monkeypatch.setattr(threads, "MIN_PARALLEL", 1)
    monkeypatch.setattr(threads, "ELEMENTWISE", True)
    previous = threads.set_num_threads(2)
    try:
        sums = blocking.blockwise_sums(
            lambda part, m: ((rows[part] - m).sum(axis=0), ((rows[part] - m) ** 2).sum(axis=0)),
            rows, mean,
        )
    finally:
        threads.set_num_threads(previous)
    np.testing.assert_allclose(sums[0], 0.0, atol=1e-9)
    np.testing.assert_allclose(sums[1], ((rows - mean) ** 2).sum(axis=0), rtol=1e-12)


@pytest.mark.parametrize("kernel_threads", [1, 2], indirect=True)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_linear_with_bias_equals_readable_with_and_without_threads(dtype, scope):
    rng = np.random.default_rng(7)
    x, w, b = normal(rng, 3, 5, 7, 6), normal(rng, 6, 9), normal(rng, 9)
    x, w, b = x.astype(dtype), w.astype(dtype), b.astype(dtype)
    y, grads, _ = _vjps(mc.linear, [x, w, b])
    with mc.implementation("readable"):
        y_ref, grads_ref, _ = _vjps(mc.linear, [x, w, b])
    tol = 1e-12 if dtype == np.float64 else 2e-5
    np.testing.assert_allclose(y, y_ref, rtol=tol, atol=tol)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        np.testing.assert_allclose(g, g_ref, rtol=tol, atol=tol * np.abs(g_ref).max())


def test_the_pool_made_on_first_use_is_no_tampering():
    """The assignments' guard watches module-level dicts; the pool appears while graded code
    runs (on a machine with 2+ cores) and must not read as the library being replaced."""
    from minicoat.assignments.checks.guard import Baseline

    previous = threads.set_num_threads(1)
    try:
        threads.set_num_threads(2)  # no pool yet
        baseline = Baseline()
        assert threads.parallel_map(lambda i: i * i, range(3)) == [0, 1, 4]
        assert threads._state.pool is not None
        assert [c for c in baseline.changes() if "kernels.threads" in c] == []
    finally:
        threads.set_num_threads(previous)
