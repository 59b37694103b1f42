"""``minicoat.autodiff``: autograd's reverse mode, freeing saved arrays during the backward pass."""

import autograd
import autograd.numpy as anp
import numpy as np
import pytest

import minicoat as mc
from minicoat.bench import peak_tracemalloc_mb
from minicoat.kernels import autodiff, blocking, threads
from minicoat.testing import gradcheck
from minicoat.tree import flatten


def _tiny_loss():
    config = mc.config("coatnet-shapes")
    params, state = mc.init_params(config, seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, *config.image_size, config.in_channels)).astype(np.float32)
    labels = rng.integers(0, config.num_classes, len(x))

    def loss(p):
        logits, _ = mc.forward(p, state, x, config, train=True, check=False)
        return mc.cross_entropy(logits, labels)

    return loss, params


@pytest.mark.parametrize("min_parallel", [None, 1], ids=["as-is", "every-sum-blocked"])
def test_value_and_grad_is_autograds_bit_for_bit(min_parallel, monkeypatch):
    """Also with every sum of two gradients added in blocks on the kernel threads."""
    blocked = []
    if min_parallel is not None:
        monkeypatch.setattr(threads, "MIN_PARALLEL", min_parallel)
        monkeypatch.setattr(autodiff, "blockwise", lambda *a, **k: blocked.append(1)
                            or blocking.blockwise(*a, **k))
    loss, params = _tiny_loss()
    value, grads = autodiff.value_and_grad(loss)(params)
    assert len(blocked) >= 5 or min_parallel is None  # 8 sums of two gradients here
    with threads.owned_cores():  # the kernels split their work as inside autodiff's passes
        value_ag, grads_ag = autograd.value_and_grad(loss)(params)
    assert value == value_ag
    ours, theirs = flatten(grads), flatten(grads_ag)
    assert ours.keys() == theirs.keys() and len(ours) > 50
    for key in ours:
        assert ours[key].dtype == np.float32, key
        assert np.array_equal(ours[key], theirs[key]), key


def test_backward_pass_frees_the_saved_activations():
    """Peak memory of a step: the activations are released as the backward pass goes,
    where autograd's own pass holds them all until it ends, and without autograd's per-level
    copies of the gradient tree (measured 21% lower here, 19% and 18% on coatnet-cifar at
    batch 32 and 128)."""
    loss, params = _tiny_loss()
    ours = peak_tracemalloc_mb(lambda: autodiff.value_and_grad(loss)(params))
    theirs = peak_tracemalloc_mb(lambda: autograd.value_and_grad(loss)(params))
    assert ours < 0.92 * theirs, f"peak {ours:.2f} MB vs autograd's {theirs:.2f} MB"


def test_make_vjp_matches_autograd_and_runs_once():
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((2, 3, 3, 4)), rng.standard_normal((3, 3, 4))

    def f(args):
        return mc.gelu(mc.depthwise_conv2d(args[0], args[1]))

    g = rng.standard_normal((2, 3, 3, 4))
    vjp, y = autodiff.make_vjp(f, (x, w))
    vjp_ag, y_ag = autograd.make_vjp(f)((x, w))
    assert np.array_equal(y, y_ag)
    for ours, theirs in zip(vjp(g), vjp_ag(g), strict=True):
        assert np.array_equal(ours, theirs)
    with pytest.raises(RuntimeError, match="already run"):
        vjp(g)


def test_gradient_tree_keeps_the_structure_with_unused_and_repeated_leaves():
    rng = np.random.default_rng(2)
    tree = {
        "a": rng.standard_normal(3),
        "nested": {"b": rng.standard_normal((2, 3)), "unused": np.ones(4, np.float32)},
        "empty": {},
        "pair": (rng.standard_normal(3), rng.standard_normal(3)),
    }

    def fun(t):  # "a" is used three times, "unused" not at all
        first, second = t["pair"]
        head = anp.tanh(t["nested"]["b"] @ t["a"]) * t["a"][:2]
        return anp.sum(head) + anp.sum(first * t["a"])

    value, grads = autodiff.value_and_grad(fun)(tree)
    value_ag, grads_ag = autograd.value_and_grad(fun)(tree)
    assert value == value_ag
    assert grads["empty"] == {} and isinstance(grads["pair"], tuple)
    assert np.array_equal(grads["nested"]["unused"], np.zeros(4, np.float32))
    assert grads["nested"]["unused"].dtype == np.float32
    assert np.array_equal(grads["pair"][1], np.zeros(3))
    for ours, theirs in (
        (grads["a"], grads_ag["a"]),
        (grads["nested"]["b"], grads_ag["nested"]["b"]),
        (grads["pair"][0], grads_ag["pair"][0]),
    ):
        assert np.array_equal(ours, theirs)


def test_gradient_with_unused_and_repeated_leaves_matches_finite_differences():
    """The fast ``value_and_grad`` (what ``gradcheck`` differentiates with by default) on a
    tree with a leaf used three times, one unused and a tuple: every entry within budget."""
    rng = np.random.default_rng(3)
    tree = {"a": rng.standard_normal(3), "nested": {"b": rng.standard_normal((2, 3)),
                                                    "unused": np.ones(4)},
            "pair": (rng.standard_normal(3), rng.standard_normal(3))}

    def fun(t):
        first, _ = t["pair"]
        head = anp.tanh(t["nested"]["b"] @ t["a"]) * t["a"][:2]
        return anp.sum(head) + anp.sum(first * t["a"])

    with mc.implementation("fast"):
        report = gradcheck(fun, tree, mode="elementwise")
    assert [leaf.name for leaf in report.leaves] == [
        "a", "nested.b", "nested.unused", "pair[0]", "pair[1]"]
    assert np.all(report["nested.unused"].ours == 0)


def test_none_leaves_pass_through():
    x, w = np.arange(3.0), np.ones((3, 2))
    vjp, y = autodiff.make_vjp(lambda args: mc.linear(*args), (x, w, None))
    dx, dw, db = vjp(np.ones(2))
    assert db is None
    assert np.array_equal(dx, np.full(3, 2.0))  # d(x @ w)/dx = w 1
    assert np.array_equal(dw, np.outer(x, np.ones(2)))  # d(x @ w)/dw = x 1^T


def test_value_and_grad_needs_a_scalar_and_handles_a_constant():
    with pytest.raises(TypeError, match="scalar loss"):
        autodiff.value_and_grad(lambda x: 2.0 * x)(np.ones(3))
    with pytest.warns(UserWarning, match="independent of input"):
        value, grad = autodiff.value_and_grad(lambda x: 1.0)(np.ones(3))
    assert value == 1.0 and np.array_equal(grad, np.zeros(3))
