"""Wrong input fails at the call that caused it, with a message naming what was expected and
what was given: ValueError for shapes and values, TypeError for dtypes."""

import re

import numpy as np
import pytest

import minicoat as mc
from minicoat import oracle


def msg(*parts):
    """A ``match`` pattern: the literal ``parts`` in this order, anything in between."""
    return ".*".join(re.escape(part) for part in parts)


def f64(*shape):
    return np.ones(shape)


def f32(*shape):
    return np.ones(shape, dtype=np.float32)


def attention_params(c=4, dim=6, heads=2, h=3, w=2, c_out=5, dtype=np.float64):
    return {
        "w_qkv": np.ones((c, 3 * dim), dtype),
        "b_qkv": np.ones(3 * dim, dtype),
        "w_out": np.ones((dim, c_out), dtype),
        "b_out": np.ones(c_out, dtype),
        "rel_bias": np.ones((heads, (2 * h - 1) * (2 * w - 1)), dtype),
    }


MAP = f64(1, 5, 5, 3)  # a valid (N, H, W, C) feature map with C = 3

# (id, call, expected exception, pattern naming the expected and the given)
# fmt: off
CASES = [
    # ---- wrong rank ------------------------------------------------------------------------
    ("depthwise x rank 3", lambda: mc.depthwise_conv2d(f64(5, 5, 3), f64(3, 3, 3)),
     ValueError, msg("x must have shape (N, H, W, C) (4 axes)", "got shape (5, 5, 3)")),
    ("depthwise w rank 4", lambda: mc.depthwise_conv2d(MAP, f64(3, 3, 3, 1)),
     ValueError, msg("w must have shape (k, k, C) (3 axes)", "got shape (3, 3, 3, 1)")),
    ("conv2d w rank 3", lambda: mc.conv2d(MAP, f64(3, 3, 3)),
     ValueError, msg("w must have shape (k, k, C_in, C_out) (4 axes)", "got shape (3, 3, 3)")),
    ("conv1x1 w rank 4", lambda: mc.conv1x1(MAP, f64(1, 1, 3, 2)),
     ValueError, msg("w must have shape (C_in, C_out) (2 axes)", "got shape (1, 1, 3, 2)")),
    ("max_pool2d x rank 3", lambda: mc.max_pool2d(f64(4, 4, 3)),
     ValueError, msg("x must have shape (N, H, W, C)", "got shape (4, 4, 3)")),
    ("avg_pool2d x rank 5", lambda: mc.avg_pool2d(f64(1, 1, 4, 4, 3)),
     ValueError, msg("x must have shape (N, H, W, C)", "got shape (1, 1, 4, 4, 3)")),
    ("global_avg_pool x rank 2", lambda: mc.global_avg_pool(f64(4, 3)),
     ValueError, msg("x must have shape (N, H, W, C)", "got shape (4, 3)")),
    ("batch_norm x rank 3", lambda: mc.batch_norm(f64(2, 4, 3), f64(3), f64(3), None, True),
     ValueError, msg("x must have shape (N, H, W, C) or (N, C)", "got shape (2, 4, 3)")),
    ("attention x rank 3", lambda: mc.relative_attention(f64(1, 6, 4), attention_params(), 2),
     ValueError, msg("x must have shape (N, H, W, C)", "got shape (1, 6, 4)")),
    ("cross_entropy logits rank 1", lambda: mc.cross_entropy(f64(5), np.array([0])),
     ValueError, msg("logits must have shape (N, K)", "got (5,)")),
    # ---- channels of x and of the kernel / parameters disagree -----------------------------
    ("depthwise channels", lambda: mc.depthwise_conv2d(MAP, f64(3, 3, 4)),
     ValueError, msg("w must have shape (k, k, C) with C_in = 3", "x of shape (1, 5, 5, 3)",
                     "got w of shape (3, 3, 4)")),
    ("conv2d channels", lambda: mc.conv2d(MAP, f64(3, 3, 2, 8)),
     ValueError, msg("(k, k, C_in, C_out) with C_in = 3", "got w of shape (3, 3, 2, 8)")),
    ("conv1x1 channels", lambda: mc.conv1x1(MAP, f64(4, 8)),
     ValueError, msg("(C_in, C_out) with C_in = 3", "got w of shape (4, 8)")),
    ("conv2d bias shape", lambda: mc.conv2d(MAP, f64(3, 3, 3, 8), f64(3)),
     ValueError, msg("b must have shape (C_out,) = (8,)", "got (3,)")),
    ("linear channels", lambda: mc.linear(f64(2, 5), f64(4, 3)),
     ValueError, msg("(C_in, C_out) with C_in = 5", "x of shape (2, 5)", "got w of shape (4, 3)")),
    ("linear bias shape", lambda: mc.linear(f64(2, 5), f64(5, 3), f64(5)),
     ValueError, msg("b must have shape (C_out,) = (3,)", "got (5,)")),
    ("layer_norm gamma", lambda: mc.layer_norm(MAP, f64(4), f64(3)),
     ValueError, msg("gamma must have shape (C,) = (3,)", "got (4,)")),
    ("batch_norm beta", lambda: mc.batch_norm(MAP, f64(3), f64(2), None, True),
     ValueError, msg("beta must have shape (C,) = (3,)", "got (2,)")),
    ("attention w_qkv channels", lambda: mc.relative_attention(MAP, attention_params(c=4), 2),
     ValueError, msg("p['w_qkv'] must have shape (C, 3*D) with C = 3", "got (4, 18)")),
    # ---- even or non-square kernels --------------------------------------------------------
    ("depthwise even kernel", lambda: mc.depthwise_conv2d(MAP, f64(2, 2, 3)),
     ValueError, msg("square kernel of odd size", "got spatial size (2, 2)")),
    ("conv2d even kernel", lambda: mc.conv2d(MAP, f64(4, 4, 3, 2)),
     ValueError, msg("square kernel of odd size", "got spatial size (4, 4)")),
    ("conv2d non-square kernel", lambda: mc.conv2d(MAP, f64(3, 5, 3, 2)),
     ValueError, msg("square kernel of odd size", "got spatial size (3, 5)")),
    # ---- strides ---------------------------------------------------------------------------
    ("depthwise stride 3", lambda: mc.depthwise_conv2d(MAP, f64(3, 3, 3), stride=3),
     ValueError, msg("stride must be 1 or 2, got 3")),
    ("conv2d stride 3", lambda: mc.conv2d(MAP, f64(3, 3, 3, 2), stride=3),
     ValueError, msg("stride must be 1 or 2, got 3")),
    ("conv1x1 stride 0", lambda: mc.conv1x1(MAP, f64(3, 2), stride=0),
     ValueError, msg("stride must be 1 or 2, got 0")),
    # ---- integer dtypes --------------------------------------------------------------------
    ("depthwise int x", lambda: mc.depthwise_conv2d(np.ones((1, 5, 5, 3), int), f64(3, 3, 3)),
     TypeError, msg("x must be a float32 or float64 array, got dtype int64")),
    ("conv2d int w", lambda: mc.conv2d(MAP, np.ones((3, 3, 3, 2), np.int32)),
     TypeError, msg("w must be a float32 or float64 array, got dtype int32")),
    ("gelu int", lambda: mc.gelu(np.arange(3)),
     TypeError, msg("x must be a float32 or float64 array, got dtype int64")),
    ("softmax int", lambda: mc.softmax(np.arange(3)),
     TypeError, msg("x must be a float32 or float64 array, got dtype int64")),
    ("max_pool2d int", lambda: mc.max_pool2d(np.ones((1, 4, 4, 1), np.uint8)),
     TypeError, msg("x must be a float32 or float64 array, got dtype uint8")),
    ("layer_norm int", lambda: mc.layer_norm(np.ones((2, 3), int), f64(3), f64(3)),
     TypeError, msg("x must be a float32 or float64 array, got dtype int64")),
    ("cross_entropy int logits", lambda: mc.cross_entropy(np.ones((2, 3), int), np.array([0, 1])),
     TypeError, msg("logits must be a float32 or float64 array, got dtype int64")),
    ("attention int x",
     lambda: mc.relative_attention(np.ones((1, 3, 2, 4), int), attention_params(), 2),
     TypeError, msg("x must be a float32 or float64 array, got dtype int64")),
    # ---- mixed float32 / float64 -----------------------------------------------------------
    ("depthwise mixed", lambda: mc.depthwise_conv2d(f32(1, 5, 5, 3), f64(3, 3, 3)),
     TypeError, msg("arrays must share one dtype, got x: float32, w: float64")),
    ("conv2d mixed bias", lambda: mc.conv2d(MAP, f64(3, 3, 3, 2), f32(2)),
     TypeError, msg("arrays must share one dtype, got x: float64, b: float32")),
    ("conv1x1 mixed", lambda: mc.conv1x1(MAP, f32(3, 2)),
     TypeError, msg("arrays must share one dtype, got x: float64, w: float32")),
    ("linear mixed", lambda: mc.linear(f32(2, 5), f64(5, 3)),
     TypeError, msg("arrays must share one dtype, got x: float32, w: float64")),
    ("layer_norm mixed", lambda: mc.layer_norm(MAP, f32(3), f64(3)),
     TypeError, msg("arrays must share one dtype, got x: float64, gamma: float32")),
    ("attention mixed rel_bias",
     lambda: mc.relative_attention(
         f32(1, 3, 2, 4), {**attention_params(dtype=np.float32), "rel_bias": f64(2, 15)}, 2),
     TypeError, msg("arrays must share one dtype", "x: float32", "rel_bias: float64")),
    # ---- relative attention ----------------------------------------------------------------
    ("rel_bias shape",
     lambda: mc.relative_attention(
         f64(1, 3, 2, 4), {**attention_params(), "rel_bias": f64(2, 9)}, 2),
     ValueError, msg("p['rel_bias'] must have shape (heads, (2H-1)*(2W-1)) = (2, 15)",
                     "3x2 grid and 2 heads", "got (2, 9)")),
    ("heads do not divide D", lambda: mc.relative_attention(f64(1, 3, 2, 4), attention_params(), 4),
     ValueError, msg("heads must be a positive integer dividing the attention width D = 6",
                     "got 4")),
    ("heads zero", lambda: mc.relative_attention(f64(1, 3, 2, 4), attention_params(), 0),
     ValueError, msg("dividing the attention width D = 6", "got 0")),
    ("bad variant",
     lambda: mc.relative_attention(f64(1, 3, 2, 4), attention_params(), 2, variant="mid"),
     ValueError, msg("variant must be 'pre' or 'post', got 'mid'")),
    ("grid size", lambda: mc.relative_position_index(0, 3),
     ValueError, msg("grid size must be two positive integers, got (0, 3)")),
    # ---- cross-entropy labels --------------------------------------------------------------
    ("label too large", lambda: mc.cross_entropy(f64(2, 3), np.array([0, 3])),
     ValueError, msg("labels must lie in [0, 3), got range [0, 3]")),
    ("label negative", lambda: mc.cross_entropy(f64(2, 3), np.array([-1, 2])),
     ValueError, msg("labels must lie in [0, 3), got range [-1, 2]")),
    ("float labels", lambda: mc.cross_entropy(f64(2, 3), np.array([0.0, 1.0])),
     ValueError, msg("labels must be integers of shape (N,) = (2,), got float64 (2,)")),
    ("labels shape", lambda: mc.cross_entropy(f64(2, 3), np.array([0, 1, 2])),
     ValueError, msg("labels must be integers of shape (N,) = (2,), got int64 (3,)")),
    # ---- other options ---------------------------------------------------------------------
    ("gelu approximate", lambda: mc.gelu(f64(3), approximate="fast"),
     ValueError, msg("approximate must be 'none' or 'tanh', got 'fast'")),
    ("batch_norm one value per channel",
     lambda: mc.batch_norm(f64(1, 1, 1, 3), f64(3), f64(3), {"mean": f64(3), "var": f64(3)}, True),
     ValueError, msg("needs more than one value per channel", "shape (1, 1, 1, 3)")),
    ("batch_norm_gelu gamma", lambda: mc.batch_norm_gelu(MAP, f64(2), f64(3), None, True),
     ValueError, msg("gamma must have shape (C,) = (3,)", "got (2,)")),
    ("batch_norm_gelu approximate",
     lambda: mc.batch_norm_gelu(MAP, f64(3), f64(3), {"mean": f64(3), "var": f64(3)}, True, "fast"),
     ValueError, msg("approximate must be 'none' or 'tanh', got 'fast'")),
    ("batch_norm_gelu one value per channel",
     lambda: mc.batch_norm_gelu(f64(1, 1, 1, 3), f64(3), f64(3),
                                {"mean": f64(3), "var": f64(3)}, True),
     ValueError, msg("needs more than one value per channel", "shape (1, 1, 1, 3)")),
    # ---- the oracle's converters -----------------------------------------------------------
    ("oracle nhwc_to_nchw rank", lambda: oracle.nhwc_to_nchw(f64(5, 5, 3)),
     ValueError, msg("x must have shape (N, H, W, C), got shape (5, 5, 3)")),
    ("oracle conv kernel rank", lambda: oracle.conv_kernel_to_torch(f64(3, 3, 3)),
     ValueError, msg("w must have shape (k, k, C_in, C_out), got shape (3, 3, 3)")),
    ("oracle compare layouts", lambda: oracle.compare(mc.gelu, oracle.gelu, {"x": f64(3)},
                                                      {"y": oracle.PLAIN}),
     ValueError, msg("layouts names inputs that do not exist: ['y']")),
]
# fmt: on


@pytest.mark.parametrize(
    "call, exception, pattern", [case[1:] for case in CASES], ids=[case[0] for case in CASES]
)
def test_bad_input_raises_a_clear_error(call, exception, pattern):
    with pytest.raises(exception, match=pattern):
        call()


# -- gaps found while writing the oracle tests --------------------------------------------


def test_batch_norm_refuses_running_statistics_of_another_shape_or_dtype():
    x = np.zeros((2, 3, 3, 2), np.float32)
    gamma, beta = np.ones(2, np.float32), np.zeros(2, np.float32)
    with pytest.raises(ValueError, match=r"running\['mean'\] must have shape \(C,\) = \(2,\)"):
        mc.batch_norm(x, gamma, beta, {"mean": np.zeros(1, np.float32),
                                       "var": np.ones(1, np.float32)}, False)
    with pytest.raises(ValueError, match=r"dtype of x \(float32\), got shape \(2,\) and dtype "
                                         r"float64"):
        mc.batch_norm(x, gamma, beta, {"mean": np.zeros(2), "var": np.ones(2)}, True)


def test_float_stride_is_refused_clearly():
    with pytest.raises(ValueError, match=r"stride must be 1 or 2, got 2.0"):
        mc.depthwise_conv2d(np.zeros((1, 4, 4, 2)), np.zeros((3, 3, 2)), stride=2.0)


def test_cross_entropy_checks_smoothing_and_empty_batches():
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\], got 1.5"):
        mc.cross_entropy(np.zeros((2, 3)), np.array([0, 1]), 1.5)
    with pytest.raises(ValueError, match=r"at least one example"):
        mc.cross_entropy(np.zeros((0, 3)), np.zeros(0, int))


def test_numpy_integer_heads_are_accepted():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 2, 2, 4))
    p = {"w_qkv": rng.standard_normal((4, 12)), "b_qkv": np.zeros(12),
         "w_out": rng.standard_normal((4, 4)), "b_out": np.zeros(4),
         "rel_bias": np.zeros((2, 9))}
    assert mc.relative_attention(x, p, np.int64(2)).shape == (1, 2, 2, 4)
