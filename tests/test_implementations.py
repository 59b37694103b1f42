"""The three implementations of every op, and of the whole network, agree (float64, <= 1e-12).

``traced`` (autograd differentiating the plain forward) is the reference; ``readable`` (the
hand-written VJPs of ``minicoat/ops``) and ``fast`` (the kernels of ``minicoat/kernels``) must
give the same value and the same gradient for every input, normwise within 1e-12 (measured:
~1e-16, the same arithmetic in another order). Checked on random small shapes (hypothesis, the
cases of ``op_cases.py``), on large shapes that cross the kernels' block boundaries, and on
whole networks: every layout, pre and post, train and eval, and every preset. Plus the switch
itself, and that a readable or traced training step never enters the kernel tier.
"""

import cProfile
import pathlib
import pstats

import autograd
import numpy as np
import pytest
from helpers import assert_trees_close
from hypothesis import given, settings
from hypothesis import strategies as st
from op_cases import CASES, Gen

import minicoat as mc
from minicoat.configs import PRESETS
from minicoat.kernels import autodiff, blocking
from minicoat.ops.switch import implementations_of, ops

TOL = 1e-12
SETTINGS = settings(max_examples=15, deadline=None, derandomize=True, database=None)
KERNELS = pathlib.Path(mc.__file__).parent / "kernels"


def value_and_grads(fn, inputs, impl, seed=12345):
    """``fn(**inputs)`` and its VJP for every input (one random upstream), in ``impl``."""
    with mc.implementation(impl):
        vjp, y = autograd.make_vjp(lambda values: fn(**values))(dict(inputs))
        upstream = np.random.default_rng(seed).standard_normal(np.shape(y))
        return y, vjp(upstream)


def assert_three_agree(fn, inputs, what):
    y_traced, g_traced = value_and_grads(fn, inputs, "traced")
    for impl in ("readable", "fast"):
        y, g = value_and_grads(fn, inputs, impl)
        assert_trees_close(y, y_traced, TOL, f"{what} value", impl, "traced")
        assert_trees_close(g, g_traced, TOL, f"{what} gradient", impl, "traced")


# -- every op, small random shapes ------------------------------------------------------------


@pytest.mark.parametrize("op", list(CASES))
@SETTINGS
@given(data=st.data())
def test_three_implementations_agree_on_every_op(op, data):
    case = CASES[op](Gen(data, max_size=5))
    if op == "max_pool2d":  # traced autograd splits a tied window's gradient: no ties here
        assert len(np.unique(case.inputs["x"])) == case.inputs["x"].size
    assert_three_agree(case.ours, case.inputs, op)


# -- large shapes: several blocks of the kernels, and a ragged last one -------------------------


def _normal(*shape, seed=0, scale=1.0):
    return scale * np.random.default_rng(seed).standard_normal(shape)


def _running(c, seed=1):
    rng = np.random.default_rng(seed)
    return {"mean": rng.standard_normal(c), "var": 1.0 + rng.random(c)}


def _large_cases():
    gelu_x = _normal(3 * blocking.BLOCK + 7, scale=3.0)
    gelu_x[:5] = [0.0, -0.0, 1e-300, -1e-40, -40.0]  # Phi read back as y / x needs these guarded
    cases = {f"gelu[{a}] 3 blocks": (lambda x, a=a: mc.gelu(x, a), {"x": gelu_x})
             for a in ("none", "tanh")}
    # 9 x 9 x 2000 = 162K elements per image: one image per block of the convolutions, 3 blocks
    assert len(list(blocking.image_blocks(3, 9 * 9 * 2000))) == 3
    for k in (1, 3, 5):
        for stride in (1, 2):
            cases[f"depthwise k{k} s{stride} 3 blocks"] = (
                lambda x, w, s=stride: mc.depthwise_conv2d(x, w, s),
                {"x": _normal(3, 9, 9, 2000), "w": _normal(k, k, 2000, seed=1)},
            )
    for k in (1, 3):
        for stride in (1, 2):
            cases[f"conv2d k{k} s{stride} 3 blocks"] = (
                lambda x, w, b, s=stride: mc.conv2d(x, w, b, s),
                {"x": _normal(3, 7, 7, 3000), "w": _normal(k, k, 3000, 5, seed=1, scale=0.02),
                 "b": _normal(5, seed=2)},
            )
    # 8 x 61 x 67 = 32,696 rows of 7 channels: 3 blocks of 9,362 rows and a ragged one
    bn_shape = (8, 61, 67, 7)
    for train in (True, False):
        for approximate in ("none", "tanh"):
            cases[f"batch_norm_gelu[{train}, {approximate}] 4 blocks"] = (
                lambda x, gamma, beta, t=train, a=approximate: mc.batch_norm_gelu(
                    x, gamma, beta, _running(7), t, a
                )[0],
                {"x": 1.0 + _normal(*bn_shape, scale=2.0), "gamma": _normal(7, seed=3),
                 "beta": _normal(7, seed=4)},
            )
        cases[f"batch_norm[{train}] 4 blocks"] = (
            lambda x, gamma, beta, t=train: mc.batch_norm(x, gamma, beta, _running(7), t)[0],
            {"x": 1.0 + _normal(*bn_shape, scale=2.0), "gamma": _normal(7, seed=3),
             "beta": _normal(7, seed=4)},
        )
    for shape in [(5,), (3, 7), (2, 4, 6), (2, 3, 3, 5), (300, 200, 8)]:
        c = shape[-1]
        cases[f"layer_norm {shape}"] = (mc.layer_norm, {
            "x": 1.0 + _normal(*shape), "gamma": _normal(c, seed=1), "beta": _normal(c, seed=2)})
    for shape in [(4,), (3, 4), (2, 3, 5, 4)]:
        cases[f"linear {shape}"] = (mc.linear, {
            "x": _normal(*shape), "w": _normal(4, 6, seed=1), "b": _normal(6, seed=2)})
    for h, w in [(4, 6), (5, 3), (1, 1), (33, 35)]:
        x = 0.1 * np.random.default_rng(5).permutation(2 * h * w * 3).reshape(2, h, w, 3)
        cases[f"max_pool2d {h}x{w}"] = (mc.max_pool2d, {"x": x})
    return cases


LARGE = _large_cases()


@pytest.mark.filterwarnings("ignore:overflow encountered in cosh")  # traced tanh at x = -40
@pytest.mark.parametrize("name", list(LARGE))
def test_three_implementations_agree_across_kernel_blocks(name):
    fn, inputs = LARGE[name]
    assert_three_agree(fn, inputs, name)


def test_batch_norm_running_statistics_agree():
    x, gamma, beta = 1.0 + _normal(8, 61, 67, 7, scale=2.0), _normal(7), _normal(7, seed=2)
    results = {}
    for impl in mc.ops.IMPLEMENTATIONS:
        with mc.implementation(impl):
            results[impl] = (mc.batch_norm(x, gamma, beta, _running(7), True)[1],
                             mc.batch_norm_gelu(x, gamma, beta, _running(7), True)[1])
    for impl in ("readable", "fast"):
        assert_trees_close(results[impl][0], results["traced"][0], TOL, "batch_norm running")
        assert_trees_close(results[impl][1], results["traced"][0], TOL, "batch_norm_gelu running")


# -- whole networks -----------------------------------------------------------------------------


def _tiny_config(**overrides):
    base = dict(depths=(2, 2, 1, 2, 1), channels=(8, 16, 32, 32, 64), strides=(1, 2, 2, 1, 2),
                image_size=(16, 24), in_channels=2, num_classes=5, head_dim=16, head_hidden=6)
    return mc.CoAtNetConfig(**{**base, **overrides})


def _perturbed(tree, rng):
    """Random offsets on every leaf, so zero biases and unit scales do not hide mistakes."""
    if isinstance(tree, dict):
        return {k: _perturbed(v, rng) for k, v in tree.items()}
    return tree + 0.1 * rng.standard_normal(tree.shape)


def assert_network_agrees(config, train, batch=3, seed=0, value_and_grad=mc.value_and_grad):
    """Logits, new BatchNorm state and the gradients w.r.t. every parameter and the input.

    ``value_and_grad`` is the implementation's own (autograd's under traced and readable) unless
    told otherwise: for the paper-size networks the kernels' backward-pass driver, which differs
    from autograd's only in bookkeeping (bit-identical gradients: test_autodiff.py), saves the
    ~15 s per step that autograd's spends on a tree of 275M parameters.
    """
    rng = np.random.default_rng(seed)
    params, state = mc.init_params(config, seed, dtype=np.float64)
    if mc.count_params(config) < 1e6:  # (drawing offsets for 275M parameters takes long)
        params = _perturbed(params, rng)
    state = {k: _perturbed(v, rng) if k != "stem" else v for k, v in state.items()}
    x = rng.standard_normal((batch, *config.image_size, config.in_channels))
    labels = rng.integers(0, config.num_classes, batch)
    results = {}
    for impl in mc.ops.IMPLEMENTATIONS:
        with mc.implementation(impl):
            side = {}

            def loss(p, x, side=side):
                logits, side["state"] = mc.forward(p, state, x, config, train=train)
                side["logits"] = autograd.tracer.getval(logits)
                return mc.cross_entropy(logits, labels)

            value, grads = value_and_grad(lambda args: loss(*args))((params, x))
            results[impl] = (side["logits"], side["state"], grads)
    what = f"{config.name} {config.layout} {config.variant} {'train' if train else 'eval'}"
    for impl in ("readable", "fast"):
        logits, new_state, grads = results[impl]
        assert_trees_close(logits, results["traced"][0], TOL, f"{what} logits", impl, "traced")
        assert_trees_close(new_state, results["traced"][1], TOL, f"{what} state", impl, "traced")
        assert_trees_close(grads[0], results["traced"][2][0], TOL, f"{what} d/dparams", impl,
                           "traced")
        assert_trees_close(grads[1], results["traced"][2][1], TOL, f"{what} d/dx", impl, "traced")


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("variant", ["pre", "post"])
@pytest.mark.parametrize("layout", ["CCCC", "CCCT", "CCTT", "CTTT", "VIT_REL"])
def test_three_implementations_agree_on_every_layout(layout, variant, train):
    assert_network_agrees(_tiny_config(layout=layout, variant=variant, pool="avg",
                                       stride_at="depthwise"), train)


SMALL_PRESETS = [name for name in PRESETS if not name.startswith("coatnet-") or
                 not name[len("coatnet-"):].isdigit()]
PAPER_PRESETS = sorted(set(PRESETS) - set(SMALL_PRESETS))


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", SMALL_PRESETS)
def test_three_implementations_agree_on_every_small_preset(name, train):
    assert_network_agrees(mc.config(name), train, batch=2)


@pytest.mark.slow
@pytest.mark.parametrize("name", PAPER_PRESETS)
def test_three_implementations_agree_on_every_paper_preset(name):
    """The paper's CoAtNet-0..4, every block and width as in table 3, on one 32x32 image in
    train mode (grids 16, 8, 4, 2, 1; at 224 the traced implementation would take minutes)."""
    assert_network_agrees(mc.config(name, image_size=32), train=True, batch=1,
                          value_and_grad=autodiff.value_and_grad)


# -- the switch ---------------------------------------------------------------------------------


def test_switch_sets_restores_and_refuses_nonsense():
    assert mc.implementation() == "fast"  # the default
    with mc.implementation("readable"):
        assert mc.implementation() == "readable"
        with mc.implementation("traced"):
            assert mc.implementation() == "traced"
        assert mc.implementation() == "readable"
    assert mc.implementation() == "fast"
    try:
        mc.implementation("traced")  # without `with`: holds globally
        assert mc.implementation() == "traced"
    finally:
        mc.implementation("fast")
    with pytest.raises(ValueError, match="implementation must be one of"):
        mc.implementation("quick")


def test_every_kernel_belongs_to_an_op_and_fast_falls_back_to_readable():
    names, kernels = ops()
    assert set(kernels) <= set(names)
    assert {"depthwise_conv2d", "conv2d", "linear", "batch_norm", "batch_norm_gelu",
            "layer_norm", "gelu", "max_pool2d", "gather_rel_bias", "attention_core",
            "value_and_grad"} <= set(kernels)
    for name in names:
        found = implementations_of(name)
        if name not in kernels:
            assert found["fast"] is found["readable"], name
        else:
            kernel = getattr(found["fast"], "fun", found["fast"])  # an autograd primitive's own
            assert pathlib.Path(kernel.__code__.co_filename).parent == KERNELS, name


def _functions_entered(impl):
    """(kernel functions, teaching-tier ``*_backward`` functions) that a training step calls."""
    config = mc.config("coatnet-digits", layout="CTTT")
    params, state = mc.init_params(config, 0)
    x = np.random.default_rng(0).standard_normal((4, 8, 8, 1)).astype(np.float32)
    labels = np.arange(4)
    from minicoat.train import TrainConfig, build_optimizer, train_step

    hp = TrainConfig(epochs=1, batch_size=4)
    optimizer = build_optimizer(hp)
    profile = cProfile.Profile()
    with mc.implementation(impl):
        profile.enable()
        train_step(params, state, optimizer.init(params), x, labels, 1e-3, config, hp, optimizer)
        mc.forward(params, state, x, config, train=False)
        profile.disable()
    entered = pstats.Stats(profile).stats
    kernels = {name for (path, _, name) in entered if pathlib.Path(path).is_relative_to(KERNELS)}
    backward = {name for (path, _, name) in entered
                if pathlib.Path(path).is_relative_to(KERNELS.parent / "ops")
                and name.endswith("_backward")}
    return sorted(kernels), sorted(backward)


def test_each_implementation_runs_its_own_code_and_no_other():
    """A traced step runs neither the kernels nor the hand-written backward functions; a
    readable one runs the backward functions of every kind of op and no kernel; a fast one
    runs the kernels (and the backward functions of the ops that have no kernel)."""
    kernels, backward = _functions_entered("traced")
    assert kernels == [] and backward == [], (kernels, backward)
    kernels, backward = _functions_entered("readable")
    assert kernels == [], f"a readable step entered the kernel tier: {kernels}"
    assert {"depthwise_conv2d_backward", "conv2d_backward", "linear_backward",
            "batch_norm_train_backward", "layer_norm_backward", "gelu_backward",
            "attention_core_backward", "gather_rel_bias_backward", "max_pool2d_backward",
            "cross_entropy_backward"} <= set(backward), backward
    kernels, backward = _functions_entered("fast")
    assert len(kernels) > 5 and "depthwise_conv2d_backward" not in backward, (kernels, backward)
