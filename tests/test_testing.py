"""``minicoat.testing``: the checks catch what matters, pass what is right, and say why.

1. Deliberate mistakes in real VJPs (a flipped sign, a missing factor, a transposed axis, a
   single wrong element, a wrong gradient for one leaf of a pytree) are caught in directional
   mode with the default three directions, for every one of 20 seeds; the chance of a miss,
   ``miss_probability`` from the error's size and the tolerance, is below 1e-12 for each.
2. That probability is right: on errors sized to be missed about half the time, the miss
   rate over 400 seeds matches ``I_{s^2}(1/2, (n-1)/2) ** k`` within four standard deviations.
3. Correct gradients pass: every small preset network directionally (float64, training mode),
   a tiny network entry by entry, and the budget is what the check uses.
4. The API: float32 refused with the reason, pytrees, argnums, the report and the error text.
"""

import math
import re

import autograd
import autograd.numpy as anp
import numpy as onp
import pytest
from scipy.special import betaincinv

import minicoat as mc
from minicoat.ops import attention as attention_ops
from minicoat.ops import conv as conv_ops
from minicoat.ops import norm as norm_ops
from minicoat.testing import (
    GradcheckError,
    gradcheck,
    implementationcheck,
    miss_probability,
    primitivecheck,
    vjpcheck,
)
from minicoat.tree import flatten, unflatten

SEEDS = range(20)


def _normal(rng, *shape):
    return rng.standard_normal(shape)


def _perturbed(tree, rng, scale=0.1):
    """Random offsets on every leaf, so zero biases and unit scales do not hide mistakes."""
    flat = flatten(tree)
    return unflatten({k: v + scale * rng.standard_normal(v.shape) for k, v in flat.items()})


def _network(config, batch=2, seed=0):
    """A float64 training-mode loss of ``config`` and perturbed parameters to check it at."""
    rng = onp.random.default_rng(seed)
    params, state = mc.init_params(config, seed, dtype=onp.float64)
    params = _perturbed(params, rng)
    x = rng.standard_normal((batch, *config.image_size, config.in_channels))
    labels = rng.integers(0, config.num_classes, batch)

    def loss(p):
        return mc.cross_entropy(mc.forward(p, state, x, config, train=True)[0], labels)

    return loss, params


TINY = dict(depths=(1, 1, 1, 1, 1), channels=(2, 2, 2, 2, 2), strides=(1, 1, 2, 1, 1),
            image_size=4, in_channels=1, num_classes=3, head_dim=2, head_hidden=0)


# -- 1. deliberate mistakes ------------------------------------------------------------------


def _depthwise_case(rng):
    x, w = _normal(rng, 2, 5, 4, 3), _normal(rng, 3, 3, 3)
    return mc.depthwise_conv2d, (x, w, 1)


def _flipped_sign(g, x, w, stride):
    dx, dw, _ = conv_ops.depthwise_conv2d_backward(g, x, w, stride)
    return dx, -dw, None


def _transposed_kernel(g, x, w, stride):
    dx, dw, _ = conv_ops.depthwise_conv2d_backward(g, x, w, stride)
    return dx, dw.transpose(1, 0, 2), None  # (kw, kh, C): the taps' two axes swapped


def _last_element_dropped(g, x, w, stride):
    dx, dw, _ = conv_ops.depthwise_conv2d_backward(g, x, w, stride)
    dx = dx.copy()
    dx.reshape(-1)[-1] = 0.0  # a loop that stops one short
    return dx, dw, None


def _attention_case(rng):
    q, k, v = (_normal(rng, 2, 2, 5, 4) for _ in range(3))
    return mc.attention_core, (q, k, v, _normal(rng, 2, 5, 5), "pre")


def _missing_scale(g, q, k, v, bias, variant):
    d_q, d_k, d_v, d_bias, _ = attention_ops.attention_core_backward(g, q, k, v, bias, variant)
    return d_q * math.sqrt(q.shape[-1]), d_k, d_v, d_bias, None  # the 1/sqrt(d) forgotten


def _mlp(p, x):
    """A two-layer perceptron: ``x`` (N, 4) -> (N, 2); ``p`` a pytree of four leaves."""
    hidden = anp.tanh(x @ p["hidden"]["w"] + p["hidden"]["b"])
    return anp.tanh(hidden @ p["out"]["w"] + p["out"]["b"])


def _mlp_case(rng):
    params = {"hidden": {"w": _normal(rng, 4, 6), "b": _normal(rng, 6)},
              "out": {"w": _normal(rng, 6, 2), "b": _normal(rng, 2)}}
    return _mlp, (params, _normal(rng, 5, 4))


def _one_leaf_doubled(g, p, x):
    """Autograd's cotangent with one leaf counted twice (a shared parameter added twice)."""
    grads = autograd.make_vjp(lambda p_: _mlp(p_, x))(p)[0](g)
    grads["hidden"]["b"] = 2 * grads["hidden"]["b"]
    return grads, None


def _right_vjp(f, argnums):
    """Autograd's VJP of ``f`` in the teaching tier's convention, for ``argnums``."""

    def vjp(g, *args):
        def of_checked(chosen):
            full = list(args)
            for i, value in zip(argnums, chosen, strict=True):
                full[i] = value
            return f(*full)

        grads = autograd.make_vjp(of_checked)(tuple(args[i] for i in argnums))[0](g)
        return tuple(grads)

    return vjp


def _leaves(cotangents):
    return [leaf for c in cotangents if c is not None
            for leaf in (flatten(c).values() if isinstance(c, dict) else [c])]


MISTAKES = {  # name: (case, the checked argnums, wrong vjp, the leaf the error must name)
    "flipped sign (dw)": (_depthwise_case, (0, 1), _flipped_sign, "args[1]"),
    "missing factor (1/sqrt(d) in dq)": (_attention_case, (0, 1, 2, 3), _missing_scale, "args[0]"),
    "transposed axis (dw's kh, kw)": (_depthwise_case, (0, 1), _transposed_kernel, "args[1]"),
    "single wrong element (dx)": (_depthwise_case, (0, 1), _last_element_dropped, "args[0]"),
    "one leaf of a pytree (2x)": (_mlp_case, (0,), _one_leaf_doubled, "args[0].hidden.b"),
}


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_directional_mode_catches_the_mistake_for_every_seed(mistake):
    case, argnums, wrong, leaf = MISTAKES[mistake]
    f, args = case(onp.random.default_rng(0))
    right = _right_vjp(f, argnums)
    caught, worst_miss = 0, 0.0
    for seed in SEEDS:
        report = vjpcheck(f, wrong, *args, argnums=argnums, seed=seed, raises=False)
        caught += not report.passed
        assert report.worst.name == leaf, f"{mistake}: blamed {report.worst.name}\n{report}"
        # the chance of a miss, from the error's norm and the tolerance of the right VJP
        whole = vjpcheck(f, right, *args, argnums=argnums, seed=seed).leaves[0]
        upstream = onp.random.default_rng(seed).standard_normal(onp.shape(f(*args)))
        ours, theirs = _leaves(wrong(upstream, *args)), _leaves(right(upstream, *args))
        error = math.sqrt(sum(onp.sum((a - b) ** 2) for a, b in zip(ours, theirs, strict=True)))
        worst_miss = max(worst_miss, miss_probability(error, whole.tolerance.max(),
                                                      whole.shape[0]))
    assert caught == len(SEEDS), f"{mistake}: caught {caught} of {len(SEEDS)}"
    assert worst_miss < 1e-12, f"{mistake}: miss probability {worst_miss:.1e}"
    print(f"{mistake}: caught {caught}/{len(SEEDS)}, miss probability <= {worst_miss:.0e}")
    with pytest.raises(GradcheckError, match=re.escape(leaf) + r" direction \d: ours"):
        vjpcheck(f, wrong, *args, argnums=argnums)


def test_a_wrong_leaf_of_a_network_is_named():
    """A whole network's gradient with one leaf wrong (its rel_bias doubled): the check fails
    along the tree's directions and, leaf by leaf along the worst one, names that leaf."""
    loss, params = _network(mc.CoAtNetConfig(**TINY, layout="CCTT"))
    right = mc.value_and_grad(loss)(params)[1]
    wrong = unflatten({k: 2 * v if k == "s3.block0.attn.rel_bias" else v
                       for k, v in flatten(right).items()})
    with pytest.raises(GradcheckError, match=r"s3\.block0\.attn\.rel_bias direction \d: ours"):
        gradcheck(loss, params, gradient=lambda p: wrong)


# -- 2. the miss probability, measured ---------------------------------------------------------


@pytest.mark.parametrize("directions", [1, 3])
def test_miss_rate_matches_the_formula(directions):
    """Errors sized so that one direction misses them half the time (``|t| <= s`` with
    ``P = 0.5``): over 400 seeds the miss rate is ``0.5 ** directions`` within 4 sigma."""
    n, tol, seeds = 50, 1e-6, 400
    s = math.sqrt(betaincinv(0.5, (n - 1) / 2, 0.5))  # I_{s^2}(1/2, (n-1)/2) = 0.5
    rng = onp.random.default_rng(0)
    a, x = rng.standard_normal(n), rng.standard_normal(n)
    e = rng.standard_normal(n)
    e *= tol / s / onp.linalg.norm(e)  # |e| = tol / s
    expected = miss_probability(onp.linalg.norm(e), tol, n, directions)
    assert abs(expected - 0.5**directions) < 1e-12

    def f(x):
        return anp.dot(a, x)

    missed = sum(gradcheck(f, x, gradient=lambda x: a + e, atol=tol, directions=directions,
                           seed=seed, raises=False).passed for seed in range(seeds))
    sigma = math.sqrt(seeds * expected * (1 - expected))
    assert abs(missed - seeds * expected) <= 4 * sigma, (
        f"{missed} of {seeds} missed, expected {seeds * expected:.0f} +- {sigma:.0f}")


def test_miss_probability_edge_cases():
    assert miss_probability(0.0, 1e-9, 10) == 1.0  # no error: nothing to catch
    assert miss_probability(1e-12, 1e-9, 10) == 1.0  # below the tolerance
    assert miss_probability(1.0, 1e-9, 1) == 0.0  # one entry: its only direction sees it all
    small = miss_probability(1.0, 1e-9, 10_000, directions=1)  # ~ s sqrt(2n/pi)
    assert abs(small / (1e-9 * math.sqrt(2 * 10_000 / math.pi)) - 1) < 1e-3


# -- 3. correct gradients pass ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["coatnet-digits", "coatnet-shapes", "coatnet-mnist",
                                  "coatnet-cifar"])
def test_every_small_preset_passes_directionally(name):
    loss, params = _network(mc.config(name))
    report = gradcheck(loss, params)
    whole = report.leaves[0]
    assert whole.name == "(tree)" and len(whole.probes) == 3 and report.evaluations == 1 + 3 * 4
    # round-off dominates the budget at eps = 1e-6: truncation is ~1e-6 of it on the digits,
    # up to a few % on cifar, where a max-pool kink lies within the wide step h = 1e-3
    assert onp.all(whole.truncation < 0.1 * whole.round_off), report


@pytest.mark.parametrize("impl", ["readable", "fast"])
@pytest.mark.parametrize("layout", ["CCTT", "VIT_REL"])
def test_tiny_network_passes_entry_by_entry_and_leaf_by_leaf(layout, impl):
    loss, params = _network(mc.CoAtNetConfig(**TINY, layout=layout))
    with mc.implementation(impl):
        if impl == "readable":  # every entry of every leaf (~2,000 calls of the loss)
            report = gradcheck(loss, params, mode="elementwise")
            assert sum(len(leaf.probes) for leaf in report.leaves) == mc.count_params(params)
        else:  # every leaf on its own, along three directions
            report = gradcheck(loss, params, per_leaf=True)
            assert len(report.leaves) == 1 + len(flatten(params))
    assert max(leaf.ratios.max() for leaf in report.leaves) < 1, report


def test_preset_leaves_pass_entry_by_entry():
    loss, params = _network(mc.config("coatnet-digits"))
    report = gradcheck(loss, params, mode="elementwise", leaves=["head.b", "s1.block0.se.b_reduce"])
    assert [leaf.name for leaf in report.leaves] == ["head.b", "s1.block0.se.b_reduce"]
    assert max(leaf.rel_error for leaf in report.leaves) < 1e-6, report


def test_correct_vjps_of_the_teaching_tier_pass():
    rng = onp.random.default_rng(1)
    for case in (_depthwise_case, _attention_case):
        f, args = case(rng)
        for mode in ("directional", "elementwise"):
            argnums = tuple(i for i, a in enumerate(args) if isinstance(a, onp.ndarray))
            report = vjpcheck(f, _right_vjp(f, argnums), *args, mode=mode, autograd_tol=1e-12)
            assert report.passed and report.agreement.passed, report
    x, gamma, beta = _normal(rng, 3, 4), _normal(rng, 4), _normal(rng, 4)
    vjpcheck(norm_ops.layer_norm_traced, norm_ops.layer_norm_backward, x, gamma, beta,
             mode="elementwise")


def test_primitivecheck_and_implementationcheck():
    rng = onp.random.default_rng(2)
    x, w = _normal(rng, 2, 5, 4, 3), _normal(rng, 3, 3, 3)
    readable = conv_ops.with_vjp(conv_ops.depthwise_conv2d_traced,
                                 conv_ops.depthwise_conv2d_backward)
    report = primitivecheck(readable, conv_ops.depthwise_conv2d_traced, x, w, 2)
    assert set(report.errors) == {"value", "d/dargs[0]", "d/dargs[1]"}
    assert report.errors[report.worst] < 1e-14, report
    broken = conv_ops.with_vjp(conv_ops.depthwise_conv2d_traced, _flipped_sign)
    with pytest.raises(GradcheckError, match=r"d/dargs\[1\]: rel_error\(.*, traced\) = 2"):
        primitivecheck(broken, conv_ops.depthwise_conv2d_traced, x, w, 1)
    report = implementationcheck(lambda x, w: mc.gelu(mc.depthwise_conv2d(x, w)), x, w)
    assert len(report.errors) == 2 * 3 and report.passed, report


# -- 4. the interface ----------------------------------------------------------------------


def test_float32_is_refused_with_the_reason_or_upcast():
    x = onp.ones((2, 3), onp.float32)
    with pytest.raises(TypeError, match=r"float32.*round-off.*eps=1e-6.*upcast=True"):
        gradcheck(lambda x: anp.sum(x**2), x)
    assert gradcheck(lambda x: anp.sum(x**2), x, upcast=True).passed
    with pytest.raises(TypeError, match=r"must be a float64 array.*int64"):
        gradcheck(lambda x: anp.sum(x**2), onp.arange(3))


def test_pytrees_argnums_and_names():
    rng = onp.random.default_rng(3)
    tree = {"a": rng.standard_normal(3), "pair": (rng.standard_normal(2), rng.standard_normal(2))}
    y = rng.standard_normal(3)

    def f(t, y, scale):
        first, second = t["pair"]
        return scale * anp.sum(anp.sin(t["a"] * y)) + anp.sum(first * second)

    report = gradcheck(f, tree, y, 2.0, per_leaf=True)
    assert [leaf.name for leaf in report.leaves] == ["(tree)", "a", "pair[0]", "pair[1]"]
    report = gradcheck(f, tree, y, 2.0, argnums=(0, 1), mode="elementwise")
    assert [leaf.name for leaf in report.leaves] == [
        "args[0].a", "args[0].pair[0]", "args[0].pair[1]", "args[1]"]
    assert report.leaves[0].probes == ["[0]", "[1]", "[2]"]
    text = str(report)
    assert "elementwise" in text and "args[0].pair[1]" in text and "passed" in text


def test_the_error_names_leaf_index_values_and_budget():
    x = onp.random.default_rng(4).standard_normal((2, 3))
    wrong = onp.cos(x)
    wrong[1, 2] *= 1.001
    with pytest.raises(GradcheckError) as info:
        gradcheck(lambda x: anp.sum(anp.sin(x)), x, mode="elementwise", gradient=lambda x: wrong)
    message = str(info.value)
    assert isinstance(info.value, AssertionError)
    assert "args[0] [1, 2]: ours" in message and "vs numeric" in message
    assert "tolerance" in message and "truncation" in message and "round-off" in message
    assert not info.value.report.passed and info.value.report.worst.worst == 5


def test_tolerances_can_be_set():
    x = onp.linspace(-1, 1, 5)
    off = onp.cos(x) * (1 + 1e-7)  # 1e-7 relative: over the budget, under rtol=1e-6
    f = lambda x: anp.sum(anp.sin(x))  # noqa: E731
    assert not gradcheck(f, x, gradient=lambda x: off, raises=False).passed
    assert gradcheck(f, x, gradient=lambda x: off, atol=0.0, rtol=1e-6).passed
    assert not gradcheck(f, x, gradient=lambda x: off, atol=0.0, rtol=1e-8, raises=False).passed


def test_bad_calls_say_what_was_expected():
    x = onp.ones(3)
    with pytest.raises(TypeError, match=r"scalar-valued f.*vjpcheck"):
        gradcheck(lambda x: x * 2, x)
    with pytest.raises(ValueError, match=r"mode must be one of"):
        gradcheck(anp.sum, x, mode="random")
    with pytest.raises(ValueError, match=r"no leaves named \['w'\]"):
        gradcheck(anp.sum, x, leaves=["w"])
    with pytest.raises(ValueError, match=r"argnums 2: f is given 1"):
        gradcheck(anp.sum, x, argnums=2)
    with pytest.raises(ValueError, match=r"vjp returned 3 cotangent\(s\); expected one per"):
        vjpcheck(lambda x, w: x * w, lambda g, x, w: (g, g, g), x, x)
