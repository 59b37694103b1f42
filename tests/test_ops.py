"""Every op checked three independent ways, in float64, on random shapes from hypothesis.

(a) autograd's VJP against centred finite differences (``numerical_vjp``): normwise relative
    error <= 1e-6 for every input and parameter (expected ~1e-9; shapes kept tiny).
(b) forward and every gradient against the PyTorch twin (``minicoat.oracle``): <= 1e-10
    (expected ~1e-15: the same math, summed in a different order).
(c) each hand-written VJP primitive against its traced reference version: <= 1e-12
    (expected ~1e-16); max pooling, which has no reference, against torch with ties.

Plus: float32 in gives float32 out and float32 gradients; BatchNorm's running statistics; the
relative position index. Shapes cover odd sizes, size 1, stride 2, batch 1 and one channel.
"""

from collections import defaultdict
from math import prod
from typing import Callable, NamedTuple

import autograd
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import minicoat as mc
from minicoat import oracle
from minicoat.activations import gelu_reference
from minicoat.attention import (
    attention_core_reference,
    gather_rel_bias,
    gather_rel_bias_reference,
)
from minicoat.conv import conv2d_reference, depthwise_conv2d_reference
from minicoat.norm import batch_norm_reference
from minicoat.oracle import (
    CONV_KERNEL,
    DEPTHWISE_KERNEL,
    FEATURE_MAP,
    LINEAR_WEIGHT,
    PLAIN,
    POINTWISE_KERNEL,
)

FD_TOL = 1e-6  # (a) autograd vs finite differences
TORCH_TOL = 1e-10  # (b) ours vs the PyTorch twin
REFERENCE_TOL = 1e-12  # (c) hand-written VJP vs traced reference

SETTINGS = settings(max_examples=20, deadline=None, derandomize=True, database=None)

# Worst error seen per (check, op), for the summary printed by tools or a curious reader.
WORST = defaultdict(float)


# ----------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------


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
    reference: Callable = None  # traced NumPy version of ``ours``, if it has one


def autograd_vjp(fn, inputs, seed=0):
    """``fn(**inputs)``, its gradients w.r.t. every input for a random upstream, the upstream."""
    vjp, y = autograd.make_vjp(lambda values: fn(**values))(dict(inputs))
    y = np.asarray(y)
    upstream = np.random.default_rng(seed).standard_normal(y.shape).astype(y.dtype)
    return y, vjp(upstream), upstream


def partial_in(fn, inputs, name):
    """``fn`` as a function of the one input ``name``, the others fixed."""
    return lambda value: fn(**{**inputs, name: value})


def check_close(check, op, what, ours, theirs, tol, theirs_name):
    """Assert ``rel_error(ours, theirs) <= tol`` with a message showing both sides."""
    err = mc.rel_error(ours, theirs)
    WORST[check, op] = max(WORST[check, op], err)
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert err <= tol, (
        f"({check}) {op}, {what}: rel_error(ours, {theirs_name}) = {err:.2e} > {tol:.0e}; "
        f"max |ours - {theirs_name}| = {np.max(np.abs(ours - theirs), initial=0):.2e}, "
        f"|ours| = {np.linalg.norm(ours):.3e}, |{theirs_name}| = {np.linalg.norm(theirs):.3e}"
    )


# ----------------------------------------------------------------------------------------
# The ops, each a builder Gen -> Case
# ----------------------------------------------------------------------------------------

CASES = {}  # op name -> builder
TRACED_REFERENCE = []  # ops whose Case has a traced reference, for check (c)


def case(name, traced_reference=False):
    def register(builder):
        CASES[name] = builder
        if traced_reference:
            TRACED_REFERENCE.append(name)
        return builder

    return register


@case("depthwise_conv2d", traced_reference=True)
def _depthwise_conv2d(g):
    n, h, wd, c, k, stride = g.batch(), g.size(), g.size(), g.channels(), g.kernel(), g.stride()
    return Case(
        lambda x, w: mc.depthwise_conv2d(x, w, stride),
        lambda x, w: oracle.depthwise_conv2d(x, w, stride),
        {"x": g.normal(n, h, wd, c), "w": g.normal(k, k, c)},
        {"x": FEATURE_MAP, "w": DEPTHWISE_KERNEL},
        FEATURE_MAP,
        reference=lambda x, w: depthwise_conv2d_reference(x, w, stride),
    )


@case("conv2d", traced_reference=True)
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
        reference=lambda x, w, b=None: conv2d_reference(x, w, stride) + (0.0 if b is None else b),
    )


def _traced_conv1x1(x, w, b=None, stride=1):
    """``x @ w + b`` traced by autograd, what ``matmul_last``'s hand VJP replaces."""
    return x[:, ::stride, ::stride] @ w + (0.0 if b is None else b)


@case("conv1x1", traced_reference=True)
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
        reference=lambda x, w, b=None: _traced_conv1x1(x, w, b, stride),
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
    """GELU(BatchNorm(x)) as one op, against torch's two and minicoat's traced two."""
    bn = _batch_norm(g, train)
    approximate = g.one_of("none", "tanh")
    c = bn.inputs["x"].shape[-1]
    running = {"mean": g.normal(c), "var": g.positive(c)}
    running_torch = {key: oracle.array_to_torch(value) for key, value in running.items()}

    def reference(x, gamma, beta):
        return gelu_reference(batch_norm_reference(x, gamma, beta, running, train)[0], approximate)

    return bn._replace(
        ours=lambda x, gamma, beta: mc.batch_norm_gelu(
            x, gamma, beta, running, train, approximate
        )[0],
        theirs=lambda x, gamma, beta: oracle.gelu(
            oracle.batch_norm(x, gamma, beta, running_torch, train)[0], approximate
        ),
        reference=reference,
    )


case("batch_norm_gelu[train]", traced_reference=True)(lambda g: _batch_norm_gelu(g, True))
case("batch_norm_gelu[eval]", traced_reference=True)(lambda g: _batch_norm_gelu(g, False))


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
    return Case(
        lambda x: mc.gelu(x, approximate),
        lambda x: oracle.gelu(x, approximate),
        {"x": g.normal(g.batch(), g.size(), g.channels(), scale=3.0)},
        reference=lambda x: gelu_reference(x, approximate),
    )


case("gelu[none]", traced_reference=True)(lambda g: _gelu(g, "none"))
case("gelu[tanh]", traced_reference=True)(lambda g: _gelu(g, "tanh"))


@case("sigmoid")
def _sigmoid(g):
    x = g.normal(g.batch(), g.size(), g.channels(), scale=4.0)
    return Case(mc.sigmoid, oracle.sigmoid, {"x": x})


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


@case("linear", traced_reference=True)
def _linear(g):
    ci, co = g.channels(), g.channels()
    inputs = {"x": g.normal(*g.one_of((g.batch(),), (g.batch(), g.size())), ci)}
    inputs["w"] = g.normal(ci, co)
    if g.one_of(True, False):
        inputs["b"] = g.normal(co)
    return Case(
        mc.linear, oracle.linear, inputs, {"w": LINEAR_WEIGHT},
        reference=lambda x, w, b=None: x @ w + (0.0 if b is None else b),
    )


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
        reference=lambda x, **p: mc.relative_attention(x, p, heads, variant, reference=True),
    )


case("relative_attention[pre]", traced_reference=True)(lambda g: _relative_attention(g, "pre"))
case("relative_attention[post]", traced_reference=True)(lambda g: _relative_attention(g, "post"))


def _attention_core(g, variant):
    n, heads, tokens, d = g.batch(), g.draw(st.integers(1, 2)), g.size(), g.draw(st.integers(1, 3))
    inputs = {name: g.normal(n, heads, tokens, d) for name in ("q", "k", "v")}
    inputs["bias"] = g.normal(heads, tokens, tokens)
    return Case(
        lambda q, k, v, bias: mc.attention_core(q, k, v, bias, variant),
        lambda q, k, v, bias: oracle.attention_core(q, k, v, bias, variant),
        inputs,
        reference=lambda q, k, v, bias: attention_core_reference(q, k, v, bias, variant),
    )


case("attention_core[pre]", traced_reference=True)(lambda g: _attention_core(g, "pre"))
case("attention_core[post]", traced_reference=True)(lambda g: _attention_core(g, "post"))


@case("gather_rel_bias", traced_reference=True)
def _gather_rel_bias(g):
    h, wd, heads = g.size(), g.size(), g.draw(st.integers(1, 2))
    index = mc.relative_position_index(h, wd)
    return Case(
        lambda rel_bias: gather_rel_bias(rel_bias, index),
        lambda rel_bias: oracle.gather_rel_bias(rel_bias, oracle.relative_position_index(h, wd)),
        {"rel_bias": g.normal(heads, (2 * h - 1) * (2 * wd - 1))},
        reference=lambda rel_bias: gather_rel_bias_reference(rel_bias, index),
    )


# ----------------------------------------------------------------------------------------
# (a), (b), (c) and dtype, for every op
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("op", list(CASES))
@SETTINGS
@given(data=st.data())
def test_autograd_matches_finite_differences(op, data):
    """(a) every input's autograd VJP vs centred differences, rel error <= 1e-6."""
    case = CASES[op](Gen(data, max_size=4))
    _, grads, upstream = autograd_vjp(case.ours, case.inputs)
    for name, value in case.inputs.items():
        numeric = mc.numerical_vjp(partial_in(case.ours, case.inputs, name), value, upstream)
        check_close("a", op, f"d/d{name}", grads[name], numeric, FD_TOL, "finite differences")


@pytest.mark.parametrize("op", list(CASES))
@SETTINGS
@given(data=st.data())
def test_matches_torch(op, data):
    """(b) forward and every input's gradient vs the PyTorch twin, rel error <= 1e-10."""
    case = CASES[op](Gen(data, max_size=6))
    result = oracle.compare(case.ours, case.theirs, case.inputs, case.layouts, case.output)
    WORST["b", op] = max(WORST["b", op], result.worst)
    grads = ", ".join(f"d/d{name} {err:.2e}" for name, err in result.grads.items())
    assert result.worst <= TORCH_TOL, (
        f"(b) {op}: rel_error(ours, torch) > {TORCH_TOL:.0e}: forward {result.forward:.2e}, {grads}"
    )


@pytest.mark.parametrize("op", TRACED_REFERENCE)
@SETTINGS
@given(data=st.data())
def test_hand_vjp_matches_traced_reference(op, data):
    """(c) a primitive with a hand-written VJP vs its traced reference, rel error <= 1e-12."""
    case = CASES[op](Gen(data, max_size=5))
    y, grads, _ = autograd_vjp(case.ours, case.inputs)
    y_ref, grads_ref, _ = autograd_vjp(case.reference, case.inputs)
    check_close("c", op, "forward", y, y_ref, REFERENCE_TOL, "reference")
    for name in case.inputs:
        check_close("c", op, f"d/d{name}", grads[name], grads_ref[name], REFERENCE_TOL, "reference")


@pytest.mark.parametrize("op", list(CASES))
@settings(SETTINGS, max_examples=3)
@given(data=st.data())
def test_float32_stays_float32(op, data):
    """float32 inputs give a float32 output and float32 gradients for every input."""
    case = CASES[op](Gen(data, dtype=np.float32))
    y, grads, _ = autograd_vjp(case.ours, case.inputs)
    assert y.dtype == np.float32, f"{op}: float32 inputs gave a {y.dtype} output"
    for name in case.inputs:
        dtype = np.asarray(grads[name]).dtype
        assert dtype == np.float32, f"{op}: d/d{name} is {dtype} for float32 inputs"


# ----------------------------------------------------------------------------------------
# Checks particular to one op
# ----------------------------------------------------------------------------------------


@SETTINGS
@given(data=st.data())
def test_max_pool2d_gradient_with_ties_matches_torch(data):
    """(c) for max pooling: with many ties, the gradient goes to the same (first) maximum
    as torch's, rel error <= 1e-12 (finite differences cannot check ties)."""
    g = Gen(data, max_size=7)
    shape = (g.batch(), g.size(), g.size(), g.channels())
    x = g.rng.integers(0, 3, shape).astype(np.float64)  # values 0, 1, 2: ties everywhere
    result = oracle.compare(
        mc.max_pool2d, oracle.max_pool2d, {"x": x}, {"x": FEATURE_MAP}, FEATURE_MAP
    )
    WORST["c", "max_pool2d"] = max(WORST["c", "max_pool2d"], result.worst)
    assert result.worst <= REFERENCE_TOL, (
        f"(c) max_pool2d with ties: rel_error(ours, torch) forward {result.forward:.2e}, "
        f"d/dx {result.grads['x']:.2e} > {REFERENCE_TOL:.0e}"
    )


@SETTINGS
@given(data=st.data(), train=st.booleans())
def test_batch_norm_running_statistics_match_torch(data, train):
    """One call updates the running statistics as torch's F.batch_norm(momentum=0.1) does
    (unbiased variance), in training mode; evaluation mode returns them unchanged. <= 1e-10."""
    g = Gen(data, max_size=5)
    n, h, wd, c = g.batch() + 1, g.size(), g.size(), g.channels()
    x = g.normal(n, h, wd, c, scale=2.0) + 1
    gamma, beta = g.normal(c), g.normal(c)
    running = {"mean": g.normal(c), "var": g.positive(c)}
    _, new_running = mc.batch_norm(x, gamma, beta, running, train)
    _, torch_running = oracle.batch_norm(
        oracle.nhwc_to_nchw(x),
        oracle.array_to_torch(gamma),
        oracle.array_to_torch(beta),
        {key: oracle.array_to_torch(value) for key, value in running.items()},
        train,
    )
    for key in ("mean", "var"):
        theirs = oracle.to_numpy(torch_running[key])
        check_close("b", "batch_norm running", key, new_running[key], theirs, TORCH_TOL, "torch")
        if not train:
            np.testing.assert_array_equal(new_running[key], running[key])
    # float32 state stays float32
    as32 = {key: value.astype(np.float32) for key, value in running.items()}
    _, running32 = mc.batch_norm(*(a.astype(np.float32) for a in (x, gamma, beta)), as32, train)
    dtypes = {key: value.dtype for key, value in running32.items()}
    assert set(dtypes.values()) == {np.dtype(np.float32)}, f"float32 state became {dtypes}"


def _brute_force_index(h, w):
    """The definition, one pair of tokens at a time."""
    tokens = [(y, x) for y in range(h) for x in range(w)]  # row-major
    index = np.empty((h * w, h * w), dtype=np.int64)
    for i, (yi, xi) in enumerate(tokens):
        for j, (yj, xj) in enumerate(tokens):
            index[i, j] = (yi - yj + h - 1) * (2 * w - 1) + (xi - xj + w - 1)
    return index


@pytest.mark.parametrize("h, w", [(1, 1), (1, 4), (3, 1), (2, 3), (4, 4), (3, 5)])
def test_relative_position_index_matches_brute_force_and_torch(h, w):
    ours = mc.relative_position_index(h, w)
    assert ours.shape == (h * w, h * w) and ours.dtype == np.int64, f"{ours.shape} {ours.dtype}"
    brute = _brute_force_index(h, w)
    assert np.array_equal(ours, brute), f"ours:\n{ours}\nbrute force:\n{brute}"
    theirs = oracle.to_numpy(oracle.relative_position_index(h, w))
    assert np.array_equal(ours, theirs), f"ours:\n{ours}\ntorch oracle:\n{theirs}"


@SETTINGS
@given(h=st.integers(1, 7), w=st.integers(1, 7))
def test_relative_position_index_properties(h, w):
    index = mc.relative_position_index(h, w)
    table = (2 * h - 1) * (2 * w - 1)
    # every offset occurs, so the values are exactly 0 .. table-1
    assert np.array_equal(np.unique(index), np.arange(table)), (
        f"values {np.unique(index)} != range({table})"
    )
    # the offset j - i is minus the offset i - j: index[i,j] + index[j,i] == 2 * index[i,i]
    diagonal = np.diag(index)
    assert np.all(diagonal == diagonal[0]), f"diagonal not constant: {diagonal}"
    assert np.array_equal(index + index.T, np.full_like(index, 2 * diagonal[0])), (
        f"index + index.T:\n{index + index.T}\nexpected all {2 * diagonal[0]}"
    )


# ----------------------------------------------------------------------------------------
# The oracle itself
# ----------------------------------------------------------------------------------------

# layout, NumPy shape, torch shape (all axes of distinct sizes), one element on each side
LAYOUTS = {
    "PLAIN": (oracle.PLAIN, (2, 3), (2, 3), (1, 2), (1, 2)),
    "FEATURE_MAP": (oracle.FEATURE_MAP, (2, 3, 4, 5), (2, 5, 3, 4), (1, 2, 3, 4), (1, 4, 2, 3)),
    "DEPTHWISE_KERNEL": (oracle.DEPTHWISE_KERNEL, (3, 2, 4), (4, 1, 3, 2), (2, 1, 3), (3, 0, 2, 1)),
    "CONV_KERNEL": (oracle.CONV_KERNEL, (3, 2, 4, 5), (5, 4, 3, 2), (2, 1, 3, 4), (4, 3, 2, 1)),
    "POINTWISE_KERNEL": (oracle.POINTWISE_KERNEL, (4, 5), (5, 4, 1, 1), (3, 4), (4, 3, 0, 0)),
    "LINEAR_WEIGHT": (oracle.LINEAR_WEIGHT, (4, 5), (5, 4), (3, 4), (4, 3)),
}


@pytest.mark.parametrize("name", list(LAYOUTS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layout_converters(name, dtype):
    """Each converter moves the axes as documented, keeps the dtype, and has an exact inverse."""
    layout, numpy_shape, torch_shape, numpy_index, torch_index = LAYOUTS[name]
    a = np.random.default_rng(0).standard_normal(numpy_shape).astype(dtype)
    t = layout.to_torch(a)
    assert tuple(t.shape) == torch_shape, f"{name}: torch shape {tuple(t.shape)} != {torch_shape}"
    assert t.dtype == torch.from_numpy(a).dtype, f"{name}: {a.dtype} became {t.dtype}"
    assert t[torch_index].item() == a[numpy_index], f"{name}: t{torch_index} != a{numpy_index}"
    back = layout.to_numpy(t)
    assert back.dtype == dtype and np.array_equal(back, a), f"{name}: round trip changed values"


def test_compare_catches_a_wrong_op():
    """The oracle can fail: tanh-GELU is not exact GELU (differs by ~1e-4 relative)."""
    x = np.random.default_rng(0).standard_normal((3, 4))
    result = oracle.compare(lambda x: mc.gelu(x, "tanh"), oracle.gelu, {"x": x})
    assert result.forward > 1e-6 and result.grads["x"] > 1e-6, f"not caught: {result}"
