"""Every op as a test case: random inputs (shapes drawn by hypothesis) and its PyTorch twin.

``CASES[name](Gen(data))`` gives a ``Case``: minicoat's op of keyword inputs, the torch twin
(torch layouts), the inputs, and the layouts where torch's differ. ``test_ops.py`` checks each
against finite differences and torch; ``test_implementations.py`` checks that the three
implementations agree on it. Shapes cover odd sizes, size 1, stride 2, batch 1 and one channel.
"""

from math import prod
from typing import Callable, NamedTuple

import autograd
import numpy as np
from hypothesis import strategies as st

import minicoat as mc
from minicoat import oracle
from minicoat.ops.attention import gather_rel_bias
from minicoat.oracle import (
    CONV_KERNEL,
    DEPTHWISE_KERNEL,
    FEATURE_MAP,
    LINEAR_WEIGHT,
    PLAIN,
    POINTWISE_KERNEL,
)


class Gen:
    """Shapes drawn by hypothesis, array values from a NumPy generator seeded by hypothesis."""

    def __init__(self, data, dtype=np.float64, max_size=4):
        self.draw = data.draw
        self.dtype = dtype
        self.max_size = max_size
        self.rng = np.random.default_rng(self.draw(st.integers(0, 2**32 - 1), label="seed"))

    def size(self, high=None):  # a spatial size, odd and even, down to 1
        return self.draw(st.integers(1, min(high or self.max_size, self.max_size)))

    def batch(self):
        return self.draw(st.integers(1, 2))

    def channels(self):
        return self.draw(st.integers(1, 3))

    def one_of(self, *options):
        return self.draw(st.sampled_from(options))

    def stride(self):
        return self.one_of(1, 2)

    def kernel(self):  # odd kernel size; 5 may exceed the map
        return self.one_of(1, 3, 5)

    def normal(self, *shape, scale=1.0):
        return (scale * self.rng.standard_normal(shape)).astype(self.dtype)

    def positive(self, *shape):
        return self.rng.uniform(0.5, 2.0, shape).astype(self.dtype)

    def distinct(self, *shape):
        """Values 0.1 apart in random order: no ties, so max pooling is differentiable."""
        return (0.1 * self.rng.permutation(prod(shape)).reshape(shape)).astype(self.dtype)


class Case(NamedTuple):
    """One op on one set of inputs, in the form ``oracle.compare`` takes."""

    ours: Callable  # minicoat op of the keyword inputs
    theirs: Callable  # its torch twin (torch layouts)
    inputs: dict  # name -> NumPy array
    layouts: dict = {}  # name -> oracle.Layout where torch's layout differs
    output: oracle.Layout = PLAIN


def autograd_vjp(fn, inputs, seed=0):
    """``fn(**inputs)``, its gradients w.r.t. every input for a random upstream, the upstream."""
    vjp, y = autograd.make_vjp(lambda values: fn(**values))(dict(inputs))
    y = np.asarray(y)
    upstream = np.random.default_rng(seed).standard_normal(y.shape).astype(y.dtype)
    return y, vjp(upstream), upstream


def partial_in(fn, inputs, name):
    """``fn`` as a function of the one input ``name``, the others fixed."""
    return lambda value: fn(**{**inputs, name: value})


# ----------------------------------------------------------------------------------------
# The ops, each a builder Gen -> Case
# ----------------------------------------------------------------------------------------

CASES = {}  # op name -> builder


def case(name):
    def register(builder):
        CASES[name] = builder
        return builder

    return register


@case("depthwise_conv2d")
def _depthwise_conv2d(g):
    n, h, wd, c, k, stride = g.batch(), g.size(), g.size(), g.channels(), g.kernel(), g.stride()
    return Case(
        lambda x, w: mc.depthwise_conv2d(x, w, stride),
        lambda x, w: oracle.depthwise_conv2d(x, w, stride),
        {"x": g.normal(n, h, wd, c), "w": g.normal(k, k, c)},
        {"x": FEATURE_MAP, "w": DEPTHWISE_KERNEL},
        FEATURE_MAP,
    )


@case("conv2d")
def _conv2d(g):
    n, h, wd, ci, k, stride = g.batch(), g.size(), g.size(), g.channels(), g.kernel(), g.stride()
    co = g.channels()
    inputs = {"x": g.normal(n, h, wd, ci), "w": g.normal(k, k, ci, co)}
    if g.one_of(True, False):
        inputs["b"] = g.normal(co)
    return Case(
        lambda x, w, b=None: mc.conv2d(x, w, b, stride),
        lambda x, w, b=None: oracle.conv2d(x, w, b, stride),
        inputs,
        {"x": FEATURE_MAP, "w": CONV_KERNEL},
        FEATURE_MAP,
    )


@case("conv1x1")
def _conv1x1(g):
    n, h, wd, ci, co, stride = g.batch(), g.size(), g.size(), g.channels(), g.channels(), g.stride()
    inputs = {"x": g.normal(n, h, wd, ci), "w": g.normal(ci, co)}
    if g.one_of(True, False):
        inputs["b"] = g.normal(co)
    return Case(
        lambda x, w, b=None: mc.conv1x1(x, w, b, stride),
        lambda x, w, b=None: oracle.conv1x1(x, w, b, stride),
        inputs,
        {"x": FEATURE_MAP, "w": POINTWISE_KERNEL},
        FEATURE_MAP,
    )


def _batch_norm(g, train):
    n, c = g.batch(), g.channels()
    is_map = g.one_of(True, False)  # (N, H, W, C) feature map, or (N, C) vectors
    shape = (n, g.size(), g.size(), c) if is_map else (n + 1, c)
    if train and prod(shape[:-1]) < 3:
        # With two values per channel the normalised output is +-1 up to eps, its gradient
        # w.r.t. x only ~1e-6: finite differences' round-off would dominate check (a).
        shape = (3, *shape[1:])
    running = {"mean": g.normal(c), "var": g.positive(c)}
    running_torch = {key: oracle.array_to_torch(value) for key, value in running.items()}
    return Case(
        lambda x, gamma, beta: mc.batch_norm(x, gamma, beta, running, train)[0],
        lambda x, gamma, beta: oracle.batch_norm(x, gamma, beta, running_torch, train)[0],
        {"x": g.normal(*shape, scale=2.0) + 1, "gamma": g.normal(c), "beta": g.normal(c)},
        {"x": FEATURE_MAP} if is_map else {},
        FEATURE_MAP if is_map else PLAIN,
    )


case("batch_norm[train]")(lambda g: _batch_norm(g, train=True))
case("batch_norm[eval]")(lambda g: _batch_norm(g, train=False))


def _batch_norm_gelu(g, train):
    """GELU(BatchNorm(x)) as one op, against torch's two."""
    bn = _batch_norm(g, train)
    approximate = g.one_of("none", "tanh")
    c = bn.inputs["x"].shape[-1]
    running = {"mean": g.normal(c), "var": g.positive(c)}
    running_torch = {key: oracle.array_to_torch(value) for key, value in running.items()}

    return bn._replace(
        ours=lambda x, gamma, beta: mc.batch_norm_gelu(
            x, gamma, beta, running, train, approximate
        )[0],
        theirs=lambda x, gamma, beta: oracle.gelu(
            oracle.batch_norm(x, gamma, beta, running_torch, train)[0], approximate
        ),
    )


case("batch_norm_gelu[train]")(lambda g: _batch_norm_gelu(g, True))
case("batch_norm_gelu[eval]")(lambda g: _batch_norm_gelu(g, False))


@case("layer_norm")
def _layer_norm(g):
    # C >= 3: with C = 1 the output is beta whatever x, with C = 2 it is +-1 up to eps; both
    # leave gradients of round-off size, meaningless to compare normwise.
    c = g.draw(st.integers(3, 4))
    shape = g.one_of((g.batch(), g.size(), c), (g.batch(), g.size(), g.size(), c))
    return Case(
        mc.layer_norm,
        oracle.layer_norm,
        {"x": g.normal(*shape, scale=2.0) + 1, "gamma": g.normal(c), "beta": g.normal(c)},
    )


def _gelu(g, approximate):
    x = g.normal(g.batch(), g.size(), g.channels(), scale=3.0)
    if approximate == "tanh":
        # Below x = -3.5 the approximation's tanh(u) is within 4e-4 of -1, so 1 + tanh(u) loses
        # digits to cancellation, and so does the derivative, whose two terms are computed as
        # 1 - tanh^2 (torch, ours) or 1 / cosh^2 (autograd): one tail element on its own would
        # differ by more than 1e-12 relative between them. Tails: test_implementations' large case.
        x = np.clip(x, -3.5, None)
    return Case(lambda x: mc.gelu(x, approximate), lambda x: oracle.gelu(x, approximate), {"x": x})


case("gelu[none]")(lambda g: _gelu(g, "none"))
case("gelu[tanh]")(lambda g: _gelu(g, "tanh"))


@case("sigmoid")
def _sigmoid(g):
    x = g.normal(g.batch(), g.size(), g.channels(), scale=4.0)
    return Case(mc.sigmoid, oracle.sigmoid, {"x": x})


@case("silu")
def _silu(g):
    x = g.normal(g.batch(), g.size(), g.channels(), scale=4.0)
    return Case(mc.silu, oracle.silu, {"x": x})


def _softmax(g, ours, theirs):
    axis = g.one_of(-1, 0, 1)
    return Case(
        lambda x: ours(x, axis),
        lambda x: theirs(x, axis),
        {"x": g.normal(g.batch(), g.size(), g.size(), scale=3.0)},
    )


case("softmax")(lambda g: _softmax(g, mc.softmax, oracle.softmax))
case("log_softmax")(lambda g: _softmax(g, mc.log_softmax, oracle.log_softmax))


@case("max_pool2d")
def _max_pool2d(g):
    x = g.distinct(g.batch(), g.size(), g.size(), g.channels())
    return Case(mc.max_pool2d, oracle.max_pool2d, {"x": x}, {"x": FEATURE_MAP}, FEATURE_MAP)


@case("avg_pool2d")
def _avg_pool2d(g):
    x = g.normal(g.batch(), g.size(), g.size(), g.channels())
    return Case(mc.avg_pool2d, oracle.avg_pool2d, {"x": x}, {"x": FEATURE_MAP}, FEATURE_MAP)


@case("global_avg_pool")
def _global_avg_pool(g):
    x = g.normal(g.batch(), g.size(), g.size(), g.channels())
    return Case(mc.global_avg_pool, oracle.global_avg_pool, {"x": x}, {"x": FEATURE_MAP})


@case("linear")
def _linear(g):
    ci, co = g.channels(), g.channels()
    inputs = {"x": g.normal(*g.one_of((g.batch(),), (g.batch(), g.size())), ci)}
    inputs["w"] = g.normal(ci, co)
    if g.one_of(True, False):
        inputs["b"] = g.normal(co)
    return Case(
        mc.linear, oracle.linear, inputs, {"w": LINEAR_WEIGHT},
    )


@case("scale_channels")
def _scale_channels(g):
    n, c = g.batch(), g.channels()
    inputs = {"x": g.normal(n, g.size(), g.size(), c), "s": g.normal(n, c)}
    return Case(mc.scale_channels, oracle.scale_channels, inputs, {"x": FEATURE_MAP},
                FEATURE_MAP)


@case("squeeze_excitation")
def _squeeze_excitation(g):
    n, h, wd, c, r = g.batch(), g.size(), g.size(), g.channels(), g.draw(st.integers(1, 2))
    approximate = g.one_of("none", "tanh")
    # Conditioned for finite differences: x averages to ~1, not ~0 (d/dw_reduce is
    # proportional to the mean), and parameters at scale 0.5 keep the GELU out of its
    # negative tail and the gate unsaturated; otherwise some gradients are ~1e-8, below
    # the ~1e-10 absolute resolution of finite differences.
    inputs = {
        "x": g.normal(n, h, wd, c) + 1,
        "w_reduce": g.normal(c, r, scale=0.5),
        "b_reduce": g.normal(r, scale=0.5),
        "w_expand": g.normal(r, c, scale=0.5),
        "b_expand": g.normal(c, scale=0.5),
    }
    return Case(
        lambda x, **p: mc.squeeze_excitation(x, p, approximate),
        lambda x, **p: oracle.squeeze_excitation(x, p, approximate),
        inputs,
        {"x": FEATURE_MAP, "w_reduce": LINEAR_WEIGHT, "w_expand": LINEAR_WEIGHT},
        FEATURE_MAP,
    )


@case("cross_entropy")
def _cross_entropy(g):
    n, k = g.draw(st.integers(1, 4)), g.draw(st.integers(2, 5))
    labels = g.rng.integers(0, k, n)
    smoothing = g.one_of(0.0, 0.1, 0.3)
    return Case(
        lambda logits: mc.cross_entropy(logits, labels, smoothing),
        lambda logits: oracle.cross_entropy(logits, labels, smoothing),
        {"logits": g.normal(n, k, scale=2.0)},
    )


def _relative_attention(g, variant):
    n, h, wd, c = g.batch(), g.size(), g.size(), g.channels()
    heads, head_dim, c_out = g.draw(st.integers(1, 2)), g.draw(st.integers(1, 2)), g.channels()
    dim = heads * head_dim
    inputs = {
        "x": g.normal(n, h, wd, c),
        "w_qkv": g.normal(c, 3 * dim),
        "b_qkv": g.normal(3 * dim),
        "w_out": g.normal(dim, c_out),
        "b_out": g.normal(c_out),
        "rel_bias": g.normal(heads, (2 * h - 1) * (2 * wd - 1)),
    }
    return Case(
        lambda x, **p: mc.relative_attention(x, p, heads, variant),
        lambda x, **p: oracle.relative_attention(x, p, heads, variant),
        inputs,
        {"x": FEATURE_MAP, "w_qkv": LINEAR_WEIGHT, "w_out": LINEAR_WEIGHT},
        FEATURE_MAP,
    )


case("relative_attention[pre]")(lambda g: _relative_attention(g, "pre"))
case("relative_attention[post]")(lambda g: _relative_attention(g, "post"))


def _attention_core(g, variant):
    n, heads, tokens, d = g.batch(), g.draw(st.integers(1, 2)), g.size(), g.draw(st.integers(1, 3))
    inputs = {name: g.normal(n, heads, tokens, d) for name in ("q", "k", "v")}
    inputs["bias"] = g.normal(heads, tokens, tokens)
    return Case(
        lambda q, k, v, bias: mc.attention_core(q, k, v, bias, variant),
        lambda q, k, v, bias: oracle.attention_core(q, k, v, bias, variant),
        inputs,
    )


case("attention_core[pre]")(lambda g: _attention_core(g, "pre"))
case("attention_core[post]")(lambda g: _attention_core(g, "post"))


@case("gather_rel_bias")
def _gather_rel_bias(g):
    h, wd, heads = g.size(), g.size(), g.draw(st.integers(1, 2))
    index = mc.relative_position_index(h, wd)
    return Case(
        lambda rel_bias: gather_rel_bias(rel_bias, index),
        lambda rel_bias: oracle.gather_rel_bias(rel_bias, oracle.relative_position_index(h, wd)),
        {"rel_bias": g.normal(heads, (2 * h - 1) * (2 * wd - 1))},
    )
