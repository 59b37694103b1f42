"""The blocks and the whole network against the PyTorch twin, finite differences, and counts.

Tolerances (float64): forward and every parameter gradient within 1e-10 normwise of the twin
(measured: ~1e-14); finite differences within 1e-6 (measured: ~1e-9).
"""

import itertools

import numpy as onp
import pytest
import torch
from autograd import grad
from helpers import assert_trees_close

import minicoat as mc
from minicoat import blocks
from minicoat.model import init_from_spec, init_state
from minicoat.oracle.network import (
    MBConv,
    TorchCoAtNet,
    Transformer,
    copy_into,
    from_torch,
    to_torch,
    torch_grads_as_params,
)
from minicoat.plans import make_block
from minicoat.testing import gradcheck
from minicoat.tree import flatten

ORACLE_TOL = 1e-10
FD_TOL = 1e-6
IMPLS = ["readable", "fast"]  # the traced one agrees with both: test_implementations.py


@pytest.fixture(autouse=True)
def _restore_implementation():
    with mc.implementation(mc.implementation()):
        yield


def _perturbed(tree, rng, scale=0.1):
    """Random offsets on every leaf, so zero biases and unit scales do not hide mistakes."""
    return {
        k: _perturbed(v, rng, scale)
        if isinstance(v, dict)
        else v + scale * rng.standard_normal(v.shape)
        for k, v in tree.items()
    }


def assert_grads_match(ours, theirs, context=""):
    """Every leaf within ORACLE_TOL normwise (zero gradients: see ``helpers.tree_errors``)."""
    assert_trees_close(ours, theirs, ORACLE_TOL, f"{context} gradient", theirs_name="torch")


def _tiny_config(**overrides):
    base = dict(
        depths=(2, 2, 1, 2, 1),
        channels=(8, 16, 32, 32, 64),
        strides=(1, 2, 2, 1, 2),
        image_size=16,
        in_channels=2,
        num_classes=5,
        head_dim=16,
        head_hidden=6,
    )
    return mc.CoAtNetConfig(**{**base, **overrides})


def _network_case(config, train, seed=0):
    rng = onp.random.default_rng(seed)
    params, state = mc.init_params(config, seed, dtype=onp.float64)
    params = _perturbed(params, rng)
    x = rng.standard_normal((3, *config.image_size, config.in_channels))
    labels = onp.array([0, 3, 4])
    return params, state, x, labels


CASES = [
    (layout, variant, pool, stride_at)
    for layout, variant, pool, stride_at in itertools.product(
        ("CCCC", "CCCT", "CCTT", "CTTT", "VIT_REL"),
        ("pre", "post"),
        ("max", "avg"),
        ("expand", "depthwise"),
    )
    if not (layout == "VIT_REL" and stride_at == "depthwise")  # no MBConv in VIT_REL
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("layout,variant,pool,stride_at", CASES)
def test_network_matches_torch_twin(layout, variant, pool, stride_at, train, impl):
    mc.implementation(impl)  # the autouse fixture restores the default afterwards
    config = _tiny_config(layout=layout, variant=variant, pool=pool, stride_at=stride_at)
    params, state, x, labels = _network_case(config, train)
    twin = to_torch(params, state, config).train(train)
    x_torch = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    logits_torch = twin(x_torch)
    torch.nn.functional.cross_entropy(logits_torch, torch.from_numpy(labels)).backward()

    logits, new_state = mc.forward(params, state, x, config, train=train)
    err = mc.rel_error(logits, logits_torch.detach().numpy())
    assert err <= ORACLE_TOL, f"logits: ours vs torch error {err:.2e}"

    def loss(p):
        return mc.cross_entropy(mc.forward(p, state, x, config, train=train)[0], labels)

    assert_grads_match(grad(loss)(params), torch_grads_as_params(twin, params), config.layout)

    _, twin_state = from_torch(twin)  # running statistics after the twin's forward
    for key, value in flatten(new_state).items():
        err = mc.rel_error(value, flatten(twin_state)[key])
        assert err <= ORACLE_TOL, f"running statistic {key}: ours vs torch error {err:.2e}"
    assert mc.count_params(params) == sum(p.numel() for p in twin.parameters())


def test_weight_transfer_round_trip_is_exact():
    config = _tiny_config(layout="CCTT")
    params, state, _, _ = _network_case(config, train=True)
    params_back, state_back = from_torch(to_torch(params, state, config))
    for ours, back in ((params, params_back), (state, state_back)):
        for key, value in flatten(ours).items():
            assert onp.array_equal(value, flatten(back)[key]), key


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("stride_at", ["expand", "depthwise"])
def test_mbconv_block_matches_twin(stride, stride_at, train, impl):
    mc.implementation(impl)
    config = _tiny_config(stride_at=stride_at, pool="max")
    rng = onp.random.default_rng(1)
    c_in, c_out = (8, 16) if stride == 2 else (16, 16)
    block = make_block(config, "C", c_in, c_out, stride, (6, 5))
    params = _perturbed(init_from_spec(blocks.mbconv_spec(block), rng, onp.float64), rng)
    state = init_state(blocks.mbconv_state(block), onp.float64)
    x = rng.standard_normal((2, 6, 5, c_in))  # odd width: the pool's ceil rule is exercised
    upstream = rng.standard_normal((2, 6 // stride, -(-5 // stride), c_out))

    twin = copy_into(MBConv(block, config).double(), params, state).train(train)
    x_torch = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    y_torch = twin(x_torch)
    y_torch.backward(torch.from_numpy(upstream.transpose(0, 3, 1, 2).copy()))

    y, _ = blocks.mbconv_forward(params, state, x, block, config, train)
    err = mc.rel_error(y, y_torch.detach().numpy().transpose(0, 2, 3, 1))
    assert err <= ORACLE_TOL, f"MBConv forward: ours vs torch error {err:.2e}"

    def objective(p):
        return onp.sum(blocks.mbconv_forward(p, state, x, block, config, train)[0] * upstream)

    assert_grads_match(grad(objective)(params), torch_grads_as_params(twin, params), "MBConv")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("variant", ["pre", "post"])
@pytest.mark.parametrize("stride,pool", [(1, "max"), (2, "max"), (2, "avg")])
def test_transformer_block_matches_twin(variant, stride, pool, impl):
    mc.implementation(impl)
    config = _tiny_config(variant=variant, pool=pool)
    rng = onp.random.default_rng(2)
    c_in, c_out = (16, 32) if stride == 2 else (32, 32)
    grid_in = (5, 7) if stride == 2 else (5, 4)
    block = make_block(config, "T", c_in, c_out, stride, grid_in)
    params = _perturbed(init_from_spec(blocks.transformer_spec(block), rng, onp.float64), rng)
    x = rng.standard_normal((2, *grid_in, c_in))
    upstream = rng.standard_normal((2, *block.grid_out, c_out))

    twin = copy_into(Transformer(block, config).double(), params)
    x_torch = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    y_torch = twin(x_torch)
    y_torch.backward(torch.from_numpy(upstream.transpose(0, 3, 1, 2).copy()))

    y = blocks.transformer_forward(params, x, block, config)
    err = mc.rel_error(y, y_torch.detach().numpy().transpose(0, 2, 3, 1))
    assert err <= ORACLE_TOL, f"Transformer forward: ours vs torch error {err:.2e}"

    def objective(p):
        return onp.sum(blocks.transformer_forward(p, x, block, config) * upstream)

    assert_grads_match(grad(objective)(params), torch_grads_as_params(twin, params), "Transformer")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("layout", ["CCTT", "VIT_REL"])
def test_network_gradient_matches_finite_differences(layout, impl):
    """Directional derivatives of the loss along random directions of the whole tree, then
    element by element on a small leaf of every kind of block (``minicoat.testing``: each
    probe within its error budget, ~1e-9 here)."""
    mc.implementation(impl)
    config = _tiny_config(layout=layout, depths=(2, 1, 1, 1, 1), channels=(4, 8, 16, 16, 16))
    params, state, x, labels = _network_case(config, train=True)

    def loss(p):
        return mc.cross_entropy(mc.forward(p, state, x, config, train=True)[0], labels)

    gradcheck(loss, params, directions=4, seed=3)
    rel_bias = "s4.block0.attn.rel_bias" if layout == "CCTT" else "s3.block0.attn.rel_bias"
    report = gradcheck(loss, params, mode="elementwise", leaves=["head.b", rel_bias])
    for leaf in report.leaves:
        assert leaf.rel_error <= FD_TOL, f"{leaf.name}: autograd vs finite differences\n{report}"


PAPER = {  # table 3-5: params (M), FLOPs (B) at 224 and 384
    "coatnet-0": (25, 4.2, 13.4),
    "coatnet-1": (42, 8.4, 27.4),
    "coatnet-2": (75, 15.7, 49.8),
    "coatnet-3": (168, 34.7, 107.4),
    "coatnet-4": (275, None, 189.5),
}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_parameter_and_flop_counts(name):
    params_m, flops_224, flops_384 = PAPER[name]
    config = mc.config(name)
    count = mc.count_params(config) / 1e6
    assert abs(count / params_m - 1) <= 0.02, f"{name}: {count:.2f}M params vs paper {params_m}M"
    if flops_224 is not None:
        flops = mc.count_flops(config) / 1e9
        assert abs(flops / flops_224 - 1) <= 0.05, f"{name}@224: {flops:.2f}B vs {flops_224}B"
    flops = mc.count_flops(config.replace(image_size=384)) / 1e9
    assert abs(flops / flops_384 - 1) <= 0.05, f"{name}@384: {flops:.2f}B vs {flops_384}B"


def test_coatnet0_twin_has_the_same_parameter_count():
    config = mc.config("coatnet-0")
    twin = TorchCoAtNet(config)
    assert mc.count_params(config) == sum(p.numel() for p in twin.parameters())


def test_count_params_of_tree_equals_count_of_config():
    config = mc.config("coatnet-digits")
    params, _ = mc.init_params(config)
    assert mc.count_params(params) == mc.count_params(config)


@pytest.mark.parametrize("name", ["coatnet-digits", "coatnet-mnist", "coatnet-shapes"])
def test_small_presets_run_at_their_input_size(name):
    config = mc.config(name)
    params, state = mc.init_params(config)
    x = onp.zeros((2, *config.image_size, config.in_channels), onp.float32)
    logits, _ = mc.forward(params, state, x, config)
    assert logits.shape == (2, config.num_classes) and logits.dtype == onp.float32


def test_non_paper_input_size_works():
    config = mc.config(
        "coatnet-0",
        image_size=64,
        depths=(1, 1, 1, 1, 1),
        channels=(8, 16, 32, 32, 64),
        head_hidden=0,
    )
    params, state = mc.init_params(config)
    logits, _ = mc.forward(params, state, onp.zeros((1, 64, 64, 3), onp.float32), config)
    assert logits.shape == (1, 1000)


# -- bad input ----------------------------------------------------------------------------


def test_image_size_the_strides_cannot_divide():
    with pytest.raises(ValueError, match=r"divisible by the product of the strides"):
        mc.config("coatnet-0", image_size=100)


def test_channels_the_heads_cannot_split():
    with pytest.raises(ValueError, match=r"head_dim=32 must divide"):
        mc.config("coatnet-0", channels=(64, 96, 192, 380, 768))


def test_unknown_layout_and_preset():
    with pytest.raises(ValueError, match=r"layout must be one of"):
        mc.config("coatnet-0", layout="CCXT")
    with pytest.raises(ValueError, match=r"unknown preset 'coatnet-9'"):
        mc.config("coatnet-9")


def test_params_from_another_config_are_refused():
    params, state = mc.init_params(mc.config("coatnet-digits"))
    other = mc.config("coatnet-digits", layout="CCCC")
    x = onp.zeros((1, 8, 8, 1), onp.float32)
    with pytest.raises(ValueError, match=r"do not fit config"):
        mc.forward(params, state, x, other)


def test_wrong_input_shape_names_the_expected_one():
    config = mc.config("coatnet-digits")
    params, state = mc.init_params(config)
    with pytest.raises(ValueError, match=r"\(N, 8, 8, 1\)"):
        mc.forward(params, state, onp.zeros((1, 28, 28, 1), onp.float32), config)
    with pytest.raises(TypeError, match=r"float32 or float64"):
        mc.forward(params, state, onp.zeros((1, 8, 8, 1), onp.int64), config)


def test_training_stays_float32_end_to_end():
    config = mc.config("coatnet-digits")
    params, state = mc.init_params(config)
    x = onp.random.default_rng(0).standard_normal((4, 8, 8, 1)).astype(onp.float32)

    def loss(p):
        return mc.cross_entropy(mc.forward(p, state, x, config, train=True)[0], onp.arange(4))

    grads = grad(loss)(params)
    dtypes = {k: v.dtype for k, v in flatten(grads).items()}
    assert set(dtypes.values()) == {onp.dtype(onp.float32)}, dtypes
    _, new_state = mc.forward(params, state, x, config, train=True)
    assert {v.dtype for v in flatten(new_state).values()} == {onp.dtype(onp.float32)}


def test_flops_follow_the_stride_placement():
    """With the stride in the depthwise conv, each downsampling MBConv expands at the input
    resolution: 4x the pixels of the first 1x1 convolution."""
    paper = mc.config("coatnet-0")
    timm_style = paper.replace(stride_at="depthwise")
    extra = 0
    for stage, (c_in, c_out) in ((1, (64, 96)), (2, (96, 192))):
        h, w = paper.grid(stage)
        extra += 3 * h * w * c_in * c_out * paper.mbconv_expand  # (4 - 1) x output pixels
    assert mc.count_flops(timm_style) - mc.count_flops(paper) == extra


def test_plan_follows_the_papers_rules_block_by_block():
    """The twin reads the same plan, so a structural mistake there would be shared: pin the
    plan of CoAtNet-0 to the rules written out by hand (table 3, appendix A.1: expansion 4 of
    the output width, SE 0.25 of the input width, heads = width / 32, stride 2 first)."""
    blocks_ = {block.name: block for block in mc.plan(mc.config("coatnet-0"))}
    assert len(blocks_) == 2 + 2 + 3 + 5 + 2
    expected = {  # name: (kind, c_in, c_out, stride, grid_in, grid_out, expanded, se, heads)
        "stem.conv0": ("stem", 3, 64, 2, (224, 224), (112, 112), 0, 0, 0),
        "stem.conv1": ("stem", 64, 64, 1, (112, 112), (112, 112), 0, 0, 0),
        "s1.block0": ("C", 64, 96, 2, (112, 112), (56, 56), 384, 16, 0),
        "s1.block1": ("C", 96, 96, 1, (56, 56), (56, 56), 384, 24, 0),
        "s2.block0": ("C", 96, 192, 2, (56, 56), (28, 28), 768, 24, 0),
        "s2.block2": ("C", 192, 192, 1, (28, 28), (28, 28), 768, 48, 0),
        "s3.block0": ("T", 192, 384, 2, (28, 28), (14, 14), 1536, 0, 12),
        "s3.block4": ("T", 384, 384, 1, (14, 14), (14, 14), 1536, 0, 12),
        "s4.block0": ("T", 384, 768, 2, (14, 14), (7, 7), 3072, 0, 24),
        "s4.block1": ("T", 768, 768, 1, (7, 7), (7, 7), 3072, 0, 24),
    }
    for name, fields in expected.items():
        assert tuple(blocks_[name])[3:12] == fields, f"{name}: plan {blocks_[name]} != {fields}"
        # a shortcut projection exactly where the block downsamples or widens
        block = blocks_[name]
        assert block.proj == (block.kind != "stem" and block.stride == 2), name
    assert mc.count_params(mc.config("coatnet-0")) == 24_993_844  # timm, SE of C_out: 25.04M
