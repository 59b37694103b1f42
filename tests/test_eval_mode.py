"""Evaluation mode: ``predict``, ``evaluate`` and ``forward(train=False)`` use the running
statistics, checked against the PyTorch twin in ``eval()`` mode.

BatchNorm is the only layer whose two modes differ. The running statistics here are made far
from the batch's own (random means, variances between ~0.5 and ~2), so that a function that
normalised with the batch statistics instead, or mixed the two, gives other logits at once.
``predict`` and ``evaluate`` are tested in several batch sizes: with running statistics an
image's logits do not depend on the other images of its batch.

Mutation check (done when this file was written): switching ``predict`` to ``train=True``
makes ``test_predict_matches_twin_in_eval_mode``, ``test_evaluate_matches_twin_in_eval_mode``,
``test_predict_does_not_depend_on_the_batch`` and ``test_predict_is_not_batch_statistics``
fail (6 of 15); making the teaching tier's ``batch_norm`` ignore ``train=False`` fails the
forward, predict and evaluate tests of the traced and readable implementations.
"""

import numpy as onp
import pytest
import torch
import torch.nn.functional as F

import minicoat as mc
from minicoat.oracle.network import to_torch
from minicoat.train import evaluate, predict
from minicoat.tree import flatten, unflatten

ORACLE_TOL = 1e-10


@pytest.fixture(autouse=True)
def _restore_implementation():
    with mc.implementation(mc.implementation()):
        yield


def _config(layout="CCTT"):
    return mc.CoAtNetConfig(
        depths=(2, 1, 1, 1, 1), channels=(8, 16, 16, 32, 32), strides=(1, 2, 1, 2, 1),
        image_size=8, in_channels=2, num_classes=5, head_dim=16, layout=layout,
    )


def _case(layout="CCTT", seed=0, n=7):
    """float64 parameters, running statistics far from any batch's, images and labels."""
    config = _config(layout)
    rng = onp.random.default_rng(seed)
    params, state = mc.init_params(config, seed, dtype=onp.float64)
    params = unflatten({k: v + 0.1 * rng.standard_normal(v.shape)
                        for k, v in flatten(params).items()})
    state = unflatten({
        k: (0.5 * rng.standard_normal(v.shape) if k.endswith(".mean")
            else onp.exp(0.4 * rng.standard_normal(v.shape)))
        for k, v in flatten(state).items()
    })
    x = rng.standard_normal((n, *config.image_size, config.in_channels))
    labels = rng.integers(0, config.num_classes, n)
    return config, params, state, x, labels


def _twin_logits(params, state, x, config, train=False):
    twin = to_torch(params, state, config).train(train)
    with torch.no_grad():
        return twin(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()


@pytest.mark.parametrize("impl", ["traced", "readable", "fast"])
@pytest.mark.parametrize("layout", ["CCTT", "CCCC", "VIT_REL"])
def test_forward_eval_matches_twin_in_eval_mode(layout, impl):
    mc.implementation(impl)
    config, params, state, x, _ = _case(layout)
    logits, new_state = mc.forward(params, state, x, config, train=False)
    err = mc.rel_error(logits, _twin_logits(params, state, x, config))
    assert err <= ORACLE_TOL, f"forward(train=False) vs twin.eval(): error {err:.2e}"
    for key, value in flatten(state).items():  # evaluation leaves the statistics alone
        assert onp.array_equal(flatten(new_state)[key], value), f"{key} changed in eval mode"


@pytest.mark.parametrize("impl", ["readable", "fast"])
def test_predict_matches_twin_in_eval_mode(impl):
    mc.implementation(impl)
    config, params, state, x, _ = _case()
    expected = _twin_logits(params, state, x, config)
    for batch_size in (256, 3):  # one chunk; chunks of 3, 3 and 1
        err = mc.rel_error(predict(params, state, x, config, batch_size=batch_size), expected)
        assert err <= ORACLE_TOL, f"predict(batch_size={batch_size}) vs twin.eval(): {err:.2e}"


@pytest.mark.parametrize("impl", ["readable", "fast"])
def test_evaluate_matches_twin_in_eval_mode(impl):
    mc.implementation(impl)
    config, params, state, x, labels = _case()
    logits = _twin_logits(params, state, x, config)
    expected_loss = float(F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels)))
    for batch_size in (256, 2):
        loss, accuracy, predictions = evaluate(params, state, x, labels, config, batch_size)
        assert abs(loss - expected_loss) <= ORACLE_TOL * abs(expected_loss), (
            f"evaluate(batch_size={batch_size}) loss {loss!r} vs torch {expected_loss!r}")
        assert onp.array_equal(predictions, logits.argmax(axis=1)), "predictions"
        assert accuracy == onp.mean(logits.argmax(axis=1) == labels), "accuracy"


def test_predict_does_not_depend_on_the_batch():
    """Each image alone gets the logits it gets in the batch (running statistics only)."""
    config, params, state, x, _ = _case()
    together = predict(params, state, x, config)
    alone = onp.concatenate([predict(params, state, x[i:i + 1], config) for i in range(len(x))])
    err = mc.rel_error(alone, together)
    assert err <= 1e-12, f"one image at a time vs the whole batch: {err:.2e}"


def test_predict_is_not_batch_statistics():
    """The two modes differ on this case, so the tests above can tell them apart."""
    config, params, state, x, _ = _case()
    batch_stats = _twin_logits(params, state, x, config, train=True)
    err = mc.rel_error(predict(params, state, x, config), batch_stats)
    assert err > 1e-2, f"predict agrees with the twin in training mode ({err:.1e})"
