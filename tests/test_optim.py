"""Optimizers, clipping and schedules against PyTorch (the oracle), in float64.

The torch side uses two parameter groups, decayed and not, which is what a mask means.
"""

import math

import numpy as np
import pytest
import torch

from minicoat.optim import (
    adamw_init,
    adamw_update,
    clip_grad_norm,
    decay_mask,
    make_optimizer,
    sgd_init,
    sgd_update,
)
from minicoat.schedule import constant, get_schedule, warmup_cosine
from minicoat.tree import flatten, tree_map, unflatten

STEPS = 5
LRS = [0.1, 0.05, 0.02, 0.08, 0.03]  # changing per step, as a schedule does


def make_params(dtype=np.float64, seed=0):
    """A small pytree with every kind of leaf: weights, biases, norms, a rel_bias table."""
    rng = np.random.default_rng(seed)
    shapes = {
        "stem": {"conv0": {"w": (3, 3, 1, 4), "b": (4,)}, "norm0": {"gamma": (4,), "beta": (4,)}},
        "s3": {"block0": {"attn": {"w_qkv": (4, 6), "b_qkv": (6,), "rel_bias": (2, 9)},
                          "mbconv": {"w_dw": (3, 3, 4)}}},
        "head": {"w": (4, 3), "b": (3,)},
    }
    return tree_map(lambda s: rng.standard_normal(s).astype(dtype), shapes)


def make_grads(params, seed):
    rng = np.random.default_rng(100 + seed)
    return tree_map(lambda p: rng.standard_normal(p.shape).astype(p.dtype), params)


def rel_error(a, b):
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300)


def torch_groups(params, mask, weight_decay):
    """Torch tensors by dotted key and param groups: decayed (mask True) vs not."""
    tensors = {k: torch.tensor(v, requires_grad=True) for k, v in flatten(params).items()}
    flat_mask = flatten(mask)
    groups = [
        {"params": [t for k, t in tensors.items() if flat_mask[k]], "weight_decay": weight_decay},
        {"params": [t for k, t in tensors.items() if not flat_mask[k]], "weight_decay": 0.0},
    ]
    return tensors, [g for g in groups if g["params"]]


def run_against_torch(make_torch, init, update, mask, weight_decay, **hyper):
    """Run STEPS steps in minicoat and torch; return the worst relative error per step."""
    params = make_params()
    tensors, groups = torch_groups(params, mask, weight_decay)
    torch_opt = make_torch(groups, lr=LRS[0], **hyper)
    state = init(params)
    errors = []
    for step in range(STEPS):
        grads = make_grads(params, step)
        for key, g in flatten(grads).items():
            tensors[key].grad = torch.tensor(g)
        for group in torch_opt.param_groups:
            group["lr"] = LRS[step]
        torch_opt.step()
        params, state = update(params, grads, state, LRS[step], weight_decay=weight_decay,
                               mask=mask, **hyper)
        errors.append(max(rel_error(p, tensors[k].detach().numpy())
                          for k, p in flatten(params).items()))
    assert state["step"] == STEPS and isinstance(state["step"], int)
    return errors


def test_decay_mask_selects_weights_only():
    mask = flatten(decay_mask(make_params()))
    assert {k for k, v in mask.items() if v} == {
        "stem.conv0.w", "s3.block0.attn.w_qkv", "s3.block0.mbconv.w_dw", "head.w"}


@pytest.mark.parametrize("use_mask", [True, False])
@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_adamw_matches_torch(use_mask, weight_decay):
    params = make_params()
    mask = decay_mask(params) if use_mask else tree_map(lambda p: True, params)
    errors = run_against_torch(torch.optim.AdamW, adamw_init, adamw_update, mask, weight_decay,
                               betas=(0.9, 0.98), eps=1e-8)
    assert max(errors) < 1e-12, errors


def test_adamw_mask_none_decays_everything():
    """mask=None is torch's default single group: every leaf decays."""
    params, grads = make_params(), make_grads(make_params(), 0)
    all_true = tree_map(lambda p: True, params)
    a, _ = adamw_update(params, grads, adamw_init(params), 0.1, weight_decay=0.1)
    b, _ = adamw_update(params, grads, adamw_init(params), 0.1, weight_decay=0.1, mask=all_true)
    for k, v in flatten(a).items():
        np.testing.assert_array_equal(v, flatten(b)[k])


@pytest.mark.parametrize(
    "momentum, nesterov, weight_decay, use_mask",
    [
        (0.0, False, 0.0, False),
        (0.0, False, 1e-2, True),
        (0.9, False, 0.0, False),
        (0.9, False, 1e-2, True),
        (0.9, False, 1e-2, False),
        (0.9, True, 0.0, False),
        (0.9, True, 1e-2, True),
    ],
)
def test_sgd_matches_torch(momentum, nesterov, weight_decay, use_mask):
    params = make_params()
    mask = decay_mask(params) if use_mask else tree_map(lambda p: True, params)
    errors = run_against_torch(torch.optim.SGD, sgd_init, sgd_update, mask, weight_decay,
                               momentum=momentum, nesterov=nesterov)
    assert max(errors) < 1e-12, errors


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_float32_stays_float32_and_inputs_are_not_modified(name):
    opt = make_optimizer(name, weight_decay=0.01)
    params = make_params(np.float32)
    state = opt.init(params)
    before = tree_map(np.copy, params)
    for step in range(3):
        # float64 gradients and a NumPy float64 learning rate: neither may promote.
        grads = make_grads(make_params(np.float64), step)
        new_params, new_state = opt.update(params, grads, state, np.float64(LRS[step]))
        for k, v in flatten(params).items():
            np.testing.assert_array_equal(v, flatten(before)[k])  # input untouched
        params, state, before = new_params, new_state, tree_map(np.copy, new_params)
    for key, leaf in {**flatten(params), **flatten(state)}.items():
        if key == "step":
            assert leaf == 3 and isinstance(leaf, int)
        else:
            assert leaf.dtype == np.float32, key


def test_float32_adamw_tracks_float64():
    """The float32 path is the same algorithm: it agrees with float64 to float32 precision."""
    p32, p64 = make_params(np.float32), make_params(np.float64)
    s32, s64 = adamw_init(p32), adamw_init(p64)
    for step in range(STEPS):
        g = make_grads(p64, step)
        p32, s32 = adamw_update(p32, tree_map(lambda x: x.astype(np.float32), g), s32, 0.01)
        p64, s64 = adamw_update(p64, g, s64, 0.01)
    for k, v in flatten(p64).items():
        assert rel_error(flatten(p32)[k].astype(np.float64), v) < 1e-6


def test_make_optimizer_validates():
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer("adam")
    with pytest.raises(ValueError, match="momentun"):
        make_optimizer("sgd", momentun=0.9)
    with pytest.raises(ValueError, match="lr"):
        make_optimizer("adamw", lr=0.1)
    with pytest.raises(ValueError, match="nesterov"):
        sgd_update({"w": np.ones(2)}, {"w": np.ones(2)}, sgd_init({"w": np.ones(2)}), 0.1,
                   momentum=0.0, nesterov=True)
    with pytest.raises(ValueError, match="structure"):
        adamw_update({"w": np.ones(2)}, {"v": np.ones(2)}, adamw_init({"w": np.ones(2)}), 0.1)


def test_make_optimizer_default_mask_is_decay_mask():
    params, grads = make_params(), make_grads(make_params(), 0)
    opt = make_optimizer("adamw", weight_decay=0.1)
    a, _ = opt.update(params, grads, opt.init(params), 0.1)
    b, _ = adamw_update(params, grads, adamw_init(params), 0.1, weight_decay=0.1,
                        mask=decay_mask(params))
    for k, v in flatten(a).items():
        np.testing.assert_array_equal(v, flatten(b)[k])


@pytest.mark.parametrize("max_norm", [0.5, 2.0, 1e6])
def test_clip_grad_norm_matches_torch(max_norm):
    grads = make_grads(make_params(), 0)
    tensors = {k: torch.zeros(v.shape, dtype=torch.float64, requires_grad=True)
               for k, v in flatten(grads).items()}
    for k, g in flatten(grads).items():
        tensors[k].grad = torch.tensor(g)
    torch_total = torch.nn.utils.clip_grad_norm_(list(tensors.values()), max_norm)
    clipped, total = clip_grad_norm(grads, max_norm)
    assert isinstance(total, float)
    assert abs(total - torch_total.item()) <= 1e-12 * total
    for k, g in flatten(clipped).items():
        assert rel_error(g, tensors[k].grad.numpy()) < 1e-12
    if max_norm < total:
        norm_after = math.sqrt(sum(np.sum(g**2) for g in flatten(clipped).values()))
        assert norm_after == pytest.approx(max_norm, rel=1e-5)
    else:
        assert clipped is grads  # nothing to do: no copy


def test_clip_grad_norm_keeps_float32():
    grads = make_grads(make_params(np.float32), 0)
    clipped, _ = clip_grad_norm(grads, 0.1)
    assert all(g.dtype == np.float32 for g in flatten(clipped).values())


def test_warmup_cosine_values():
    base, total, warm, low = 1e-3, 100, 10, 1e-5
    lr = lambda s: warmup_cosine(s, total, base, warm, min_lr=low)  # noqa: E731
    assert lr(0) == pytest.approx(base / warm)  # (0 + 1) / warmup: never exactly 0
    assert lr(warm // 2 - 1) == pytest.approx(base * 0.5)
    assert lr(warm - 1) == pytest.approx(base)  # end of warm-up
    assert lr(warm) == pytest.approx(base)  # start of the cosine
    mid = warm + (total - warm) // 2
    assert lr(mid) == pytest.approx((base + low) / 2)  # cos(pi/2) = 0: halfway
    assert lr(total) == pytest.approx(low)
    assert lr(total + 50) == pytest.approx(low)  # clamped past the end
    values = [lr(s) for s in range(warm, total + 1)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))  # monotone decay
    assert isinstance(lr(3), float)


def test_warmup_cosine_without_warmup_and_constant():
    assert warmup_cosine(0, 10, 0.5) == 0.5
    assert warmup_cosine(10, 10, 0.5) == pytest.approx(0.0, abs=1e-15)
    assert constant(0, 10, 0.5) == 0.5 and constant(9, 10, 0.5) == 0.5
    assert constant(1, 10, 0.5, warmup_steps=4) == pytest.approx(0.25)
    assert get_schedule("cosine") is warmup_cosine
    with pytest.raises(ValueError, match="warmup_steps"):
        warmup_cosine(0, 10, 0.5, warmup_steps=11)
    with pytest.raises(ValueError, match="unknown schedule"):
        get_schedule("linear")


def test_tree_helpers_round_trip():
    params = make_params()
    flat = flatten(params)
    assert list(flat) == sorted(flat)
    assert "s3.block0.attn.rel_bias" in flat
    assert flatten(unflatten(flat)).keys() == flat.keys()
    with pytest.raises(ValueError, match="'.'"):
        flatten({"a.b": 1})
