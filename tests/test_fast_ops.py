"""The fast paths behind the ops (``docs/performance.md``) against their readable references.

Every primitive with a hand-written VJP is checked in float64 against its traced
``*_reference`` version, forward and every gradient, to 1e-12 (expected ~1e-16), and against
centred finite differences to 1e-6. Shapes are chosen to cross the block boundaries of the
blocked implementations (several blocks, a ragged last block), plus odd sizes and stride 2.
The float32-only erf approximation is checked against float64 to float32 accuracy.
"""

import warnings

import autograd
import autograd.numpy as anp
import numpy as np
import pytest
import scipy.special

import minicoat as mc
from minicoat import activations, conv, norm, pooling

REFERENCE_TOL = 1e-12
FD_TOL = 1e-6


def _vjps(f, inputs, seed=0):
    """``f(*inputs)`` and its VJPs w.r.t. every input for one random upstream gradient."""
    vjp, y = autograd.make_vjp(lambda args: f(*args))(tuple(inputs))
    upstream = np.random.default_rng(seed).standard_normal(np.shape(y))
    return y, vjp(upstream), upstream


def assert_matches_reference(fast, reference, inputs):
    y_fast, g_fast, _ = _vjps(fast, inputs)
    y_ref, g_ref, _ = _vjps(reference, inputs)
    assert mc.rel_error(y_fast, y_ref) <= REFERENCE_TOL
    for i, (a, b) in enumerate(zip(g_fast, g_ref, strict=True)):
        assert mc.rel_error(a, b) <= REFERENCE_TOL, f"gradient of input {i}"


def assert_matches_finite_differences(f, inputs):
    _, grads, upstream = _vjps(f, inputs)
    for i, grad in enumerate(grads):
        def of_one(value, i=i):
            return f(*inputs[:i], value, *inputs[i + 1:])

        numeric = mc.numerical_vjp(of_one, inputs[i], upstream)
        assert mc.rel_error(grad, numeric) <= FD_TOL, f"gradient of input {i}"


def normal(rng, *shape):
    return rng.standard_normal(shape)


# -- GELU --------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:overflow encountered in cosh")  # the traced tanh reference
def test_gelu_matches_reference_across_blocks_zero_and_tails():
    rng = np.random.default_rng(0)
    x = 3.0 * normal(rng, 3 * activations.BLOCK + 7)  # several blocks and a ragged one
    x[:5] = [0.0, -0.0, 1e-300, -1e-40, -40.0]  # Phi read back as y / x needs these guarded
    for approximate in ("none", "tanh"):
        assert_matches_reference(
            lambda x, a=approximate: mc.gelu(x, a),
            lambda x, a=approximate: activations.gelu_reference(x, a),
            [x],
        )


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_matches_finite_differences(approximate):
    x = np.array([-3.0, -0.7, 0.0, 1e-8, 0.4, 2.5])
    assert_matches_finite_differences(lambda x: mc.gelu(x, approximate), [x])


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


def test_blockwise_equals_one_call():
    rng = np.random.default_rng(1)
    x = normal(rng, 5, 3, activations.BLOCK // 4 + 3).astype(np.float32)
    g = normal(rng, *x.shape).astype(np.float32)

    def f(a, b):
        return a * b + anp.tanh(a)

    np.testing.assert_array_equal(activations.blockwise(f, x, g), f(x, g))


@pytest.mark.parametrize("rows", [7, activations.BLOCK // 16 * 3 + 5])  # one block; several
def test_blockwise_channels_are_the_broadcast_vectors(rows):
    rng = np.random.default_rng(2)
    x = normal(rng, rows, 16).astype(np.float32)
    mean, scale = normal(rng, 16).astype(np.float32), normal(rng, 16).astype(np.float32)

    def f(x, mean, scale):
        assert mean.shape == scale.shape == x.shape  # written out over the block's rows
        return (x - mean) * scale

    np.testing.assert_array_equal(
        activations.blockwise(f, x, channels=(mean, scale)), (x - mean) * scale
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 3), (300, 32), (4096, 7)])
def test_column_sums_and_dots_equal_numpy(shape, dtype):
    rng = np.random.default_rng(3)
    a, b = normal(rng, *shape).astype(dtype), normal(rng, *shape).astype(dtype)
    sums, dots = activations.column_sums(a), activations.column_dots(a, b)
    assert sums.dtype == dots.dtype == dtype and sums.shape == dots.shape == shape[1:]
    tol = 1e-5 if dtype == np.float32 else 1e-12  # both add in the array's dtype
    exact_sums = a.astype(np.float64).sum(axis=0)
    exact_dots = (a.astype(np.float64) * b).sum(axis=0)
    np.testing.assert_allclose(sums, exact_sums, rtol=tol, atol=tol * np.sqrt(shape[0]))
    np.testing.assert_allclose(dots, exact_dots, rtol=tol, atol=tol * np.sqrt(shape[0]))
    buffer = np.empty_like(a)
    np.testing.assert_array_equal(activations.column_dots(a, b, buffer=buffer), dots)


# -- convolutions -----------------------------------------------------------------------


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_depthwise_matches_reference_across_image_blocks(k, stride):
    rng = np.random.default_rng(2)
    # 9 x 9 x 2000 = 162K elements per image: one image per block, 3 blocks.
    assert len(list(conv._image_blocks(3, 9 * 9 * 2000))) == 3
    x, w = normal(rng, 3, 9, 9, 2000), normal(rng, k, k, 2000)
    assert_matches_reference(
        lambda x, w: mc.depthwise_conv2d(x, w, stride),
        lambda x, w: conv.depthwise_conv2d_reference(x, w, stride),
        [x, w],
    )


@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_matches_finite_differences(stride):
    rng = np.random.default_rng(3)
    x, w = normal(rng, 2, 5, 4, 3), normal(rng, 3, 3, 3)
    assert_matches_finite_differences(lambda x, w: mc.depthwise_conv2d(x, w, stride), [x, w])


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("k", [1, 3])
def test_conv2d_matches_reference_across_image_blocks(k, stride):
    rng = np.random.default_rng(4)
    # 7 x 7 x 3000 = 147K elements per image: one image per block (also for k = 1), 3 blocks.
    assert len(list(conv._image_blocks(3, 7 * 7 * 3000))) == 3
    x, w = normal(rng, 3, 7, 7, 3000), 0.02 * normal(rng, k, k, 3000, 5)
    assert_matches_reference(
        lambda x, w: mc.conv2d(x, w, stride=stride),
        lambda x, w: conv.conv2d_reference(x, w, stride),
        [x, w],
    )


@pytest.mark.parametrize("stride", [1, 2])
def test_conv2d_matches_finite_differences(stride):
    rng = np.random.default_rng(5)
    x, w = normal(rng, 2, 5, 4, 3), normal(rng, 3, 3, 3, 2)
    assert_matches_finite_differences(lambda x, w: mc.conv2d(x, w, stride=stride), [x, w])


def test_matmul_last_matches_a_traced_product():
    rng = np.random.default_rng(6)
    for shape in [(4,), (3, 4), (2, 3, 4), (2, 3, 5, 4)]:
        x, w = normal(rng, *shape), normal(rng, 4, 6)
        assert_matches_reference(conv.matmul_last, lambda x, w: x @ w, [x, w])
    x, w = normal(rng, 2, 3, 4), normal(rng, 4, 2)
    assert_matches_finite_differences(conv.matmul_last, [x, w])


def test_matmul_last_with_bias_matches_a_traced_product():
    rng = np.random.default_rng(16)
    for shape in [(4,), (3, 4), (2, 3, 5, 4)]:
        x, w, b = normal(rng, *shape), normal(rng, 4, 6), normal(rng, 6)
        assert_matches_reference(conv.matmul_last, lambda x, w, b: x @ w + b, [x, w, b])
    x, w, b = normal(rng, 2, 3, 4), normal(rng, 4, 2), normal(rng, 2)
    assert_matches_finite_differences(conv.matmul_last, [x, w, b])


# -- norms --------------------------------------------------------------------------------


def _running(c):
    return {"mean": np.zeros(c), "var": np.ones(c)}


@pytest.mark.parametrize("shape", [(4, 5, 3, 6), (7, 6), (6, 1, 1, 3)])
def test_batch_norm_train_matches_reference(shape):
    rng = np.random.default_rng(7)
    c = shape[-1]
    x = 2.0 + 3.0 * normal(rng, *shape)
    gamma, beta = normal(rng, c), normal(rng, c)
    assert_matches_reference(
        lambda x, g, b: mc.batch_norm(x, g, b, _running(c), True)[0],
        lambda x, g, b: norm.batch_norm_reference(x, g, b, _running(c), True)[0],
        [x, gamma, beta],
    )
    _, fast = mc.batch_norm(x, gamma, beta, _running(c), True)
    _, ref = norm.batch_norm_reference(x, gamma, beta, _running(c), True)
    for key in ("mean", "var"):
        assert mc.rel_error(fast[key], ref[key]) <= REFERENCE_TOL


def test_batch_norm_matches_finite_differences():
    rng = np.random.default_rng(8)
    x, gamma, beta = normal(rng, 3, 2, 2, 4), normal(rng, 4), normal(rng, 4)
    for train in (True, False):
        assert_matches_finite_differences(
            lambda x, g, b, train=train: mc.batch_norm(x, g, b, _running(4), train)[0],
            [x, gamma, beta],
        )


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("train", [True, False])
def test_batch_norm_gelu_matches_the_two_ops_across_blocks(approximate, train):
    """The fused op equals gelu(batch_norm(x)), forward, gradients and running statistics,
    on a map of several blocks (and a ragged one) as on a small one."""
    rng = np.random.default_rng(17)
    for shape in [(3, 2, 2, 5), (8, 61, 67, 7)]:  # 32,696 rows: 3 blocks of 9,362 + a ragged one
        c = shape[-1]
        running = {"mean": normal(rng, c), "var": 1.0 + rng.random(c)}
        x, gamma, beta = 1.0 + 2.0 * normal(rng, *shape), normal(rng, c), normal(rng, c)

        def fused(x, g, b, running=running):
            return mc.batch_norm_gelu(x, g, b, running, train, approximate)[0]

        def two_ops(x, g, b, running=running):
            return mc.gelu(norm.batch_norm_reference(x, g, b, running, train)[0], approximate)

        assert_matches_reference(fused, two_ops, [x, gamma, beta])
        _, fused_running = mc.batch_norm_gelu(x, gamma, beta, running, train, approximate)
        _, plain_running = mc.batch_norm(x, gamma, beta, running, train)
        for key in ("mean", "var"):
            assert mc.rel_error(fused_running[key], plain_running[key]) <= REFERENCE_TOL


def test_batch_norm_gelu_matches_finite_differences():
    rng = np.random.default_rng(18)
    x, gamma, beta = 1.0 + normal(rng, 3, 2, 2, 4), normal(rng, 4), normal(rng, 4)
    for train in (True, False):
        for approximate in ("none", "tanh"):
            assert_matches_finite_differences(
                lambda x, g, b, t=train, a=approximate: mc.batch_norm_gelu(
                    x, g, b, _running(4), t, a
                )[0],
                [x, gamma, beta],
            )


def test_batch_norm_gelu_rejects_an_unknown_gelu():
    x = np.ones((2, 1, 1, 3))
    with pytest.raises(ValueError, match="approximate must be 'none' or 'tanh'"):
        mc.batch_norm_gelu(x, np.ones(3), np.zeros(3), _running(3), True, "erf")


@pytest.mark.parametrize("shape", [(5,), (3, 7), (2, 4, 6), (2, 3, 3, 5)])
def test_layer_norm_matches_reference(shape):
    rng = np.random.default_rng(9)
    c = shape[-1]
    x, gamma, beta = 1.0 + normal(rng, *shape), normal(rng, c), normal(rng, c)
    assert_matches_reference(mc.layer_norm, norm.layer_norm_reference, [x, gamma, beta])


def test_layer_norm_matches_finite_differences():
    rng = np.random.default_rng(10)
    x, gamma, beta = normal(rng, 2, 3, 4), normal(rng, 4), normal(rng, 4)
    assert_matches_finite_differences(mc.layer_norm, [x, gamma, beta])


# -- pooling ------------------------------------------------------------------------------


@pytest.mark.parametrize("h, w", [(4, 6), (5, 3), (1, 1)])
def test_max_pool_matches_reference_without_ties(h, w):
    rng = np.random.default_rng(11)
    x = 0.1 * rng.permutation(2 * h * w * 3).reshape(2, h, w, 3).astype(np.float64)
    assert_matches_reference(mc.max_pool2d, pooling.max_pool2d_reference, [x])
    assert_matches_finite_differences(mc.max_pool2d, [x])


def test_max_pool_gives_a_tied_window_gradient_to_its_first_maximum():
    x = np.zeros((1, 2, 2, 1))
    _, (grad,), _ = _vjps(mc.max_pool2d, [x])
    assert np.count_nonzero(grad) == 1 and grad[0, 0, 0, 0] != 0.0


# -- dtype --------------------------------------------------------------------------------


def test_fast_paths_keep_float32():
    rng = np.random.default_rng(12)
    f32 = np.float32
    x = normal(rng, 2, 6, 6, 4).astype(f32)
    c = np.ones(4, f32)
    running = {"mean": np.zeros(4, f32), "var": np.ones(4, f32)}
    ops = {
        "gelu": (lambda x: mc.gelu(x), [x]),
        "depthwise": (mc.depthwise_conv2d, [x, normal(rng, 3, 3, 4).astype(f32)]),
        "conv2d": (mc.conv2d, [x, normal(rng, 3, 3, 4, 5).astype(f32)]),
        "batch_norm": (lambda x, g, b: mc.batch_norm(x, g, b, running, True)[0], [x, c, c]),
        "batch_norm_gelu": (
            lambda x, g, b: mc.batch_norm_gelu(x, g, b, running, True)[0], [x, c, c]
        ),
        "matmul_last": (conv.matmul_last, [x, normal(rng, 4, 3).astype(f32), np.ones(3, f32)]),
        "layer_norm": (mc.layer_norm, [x, c, c]),
        "max_pool": (mc.max_pool2d, [x]),
    }
    for name, (f, inputs) in ops.items():
        vjp, y = autograd.make_vjp(lambda args, f=f: f(*args))(tuple(inputs))
        grads = vjp(np.ones(np.shape(y), f32))
        assert y.dtype == f32, name
        assert all(g.dtype == f32 for g in grads), name
