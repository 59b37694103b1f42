# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # A3 · The MBConv block, and BatchNorm backward by hand
#
# **Learning objectives.** After this assignment you can
# 1. build CoAtNet's pre-activation MBConv block from its ops, including the downsampling
#    shortcut `Proj(Pool(x))` and the two places the stride may sit;
# 2. carry BatchNorm's running statistics through a block without mutating them;
# 3. derive BatchNorm's backward pass in training mode, where the batch statistics depend on
#    every input.
#
# **Prerequisites.** A1 (depthwise convolution, a VJP by hand); BatchNorm's forward pass;
# nested dicts of parameters.
#
# **Time.** About 2 hours: 45 min for the block, 45 min for the BatchNorm derivation, 30 min
# for the exercise and questions.
#
# The "C" stages of CoAtNet are MBConv blocks (the inverted bottleneck of MobileNetV2 and
# EfficientNet), written pre-activation (arXiv 2106.04803, appendix A.1):
#
# $$x \leftarrow \mathrm{Proj}(\mathrm{Pool}(x)) + \mathrm{Conv1x1}(\mathrm{SE}(
#   \mathrm{DepthConv}(\mathrm{Conv1x1}(\mathrm{BN}(x)))))$$
#
# In detail, with GELU activations, BatchNorm (BN) after the expansion and after the
# depthwise convolution, and squeeze-excitation (SE) on the expanded features:
#
# 1. `h = BN(x)`, the pre-norm;
# 2. `h = GELU(BN(Conv1x1(h)))`, expanding the width 4x (`C_out * 4` channels);
# 3. `h = GELU(BN(DepthConv3x3(h)))`;
# 4. `h = SE(h)`, a per-channel gate computed from the mean over H and W;
# 5. `h = Conv1x1(h)`, projecting down to `C_out` (no activation);
# 6. `y = shortcut(x) + h`.
#
# The **shortcut** is the identity unless the block downsamples (stride 2) or changes the
# width; then it is `Proj(Pool(x))`: a 2x2 stride-2 pool (max in the paper, average in timm;
# only when stride 2) followed by a 1x1 convolution `p["proj"]`. The **stride** sits in the
# first 1x1 convolution (`cfg.stride_at == "expand"`, the paper) or in the depthwise
# convolution (`"depthwise"`, as timm does).
#
# BatchNorm has *state*, the running statistics. minicoat's functions never mutate it:
# `mc.batch_norm(x, gamma, beta, running, train)` returns `(y, new_running)`, and your block
# returns the new state of its three norms. Use the ops of minicoat: `mc.batch_norm`,
# `mc.conv1x1`, `mc.depthwise_conv2d`, `mc.gelu`, `mc.squeeze_excitation`, `mc.max_pool2d`,
# `mc.avg_pool2d`. The checks compare your block's output, state and gradients with PyTorch
# (`nn.Conv2d(groups=C)`, `nn.BatchNorm2d`, ...) and with `minicoat.blocks.mbconv_forward`.

# %%
import numpy as np

import minicoat as mc
from minicoat.assignments import checks
from minicoat.blocks import mbconv_spec, mbconv_state
from minicoat.model import init_from_spec, init_state
from minicoat.plans import make_block

# %% [markdown]
# The parameters are a nested dict (`mbconv_spec` lists the shapes of a block from 8 to 16
# channels with stride 2 on a 6x6 map; `make_block` gives its widths, as the network's plan does):

# %%
cfg = mc.config("coatnet-digits")  # GELU "none", pool "max", stride_at "expand" (the paper)
block = make_block(cfg, "C", c_in=8, c_out=16, stride=2, grid_in=(6, 6))
params = init_from_spec(mbconv_spec(block), np.random.default_rng(0), np.float64)
state = init_state(mbconv_state(block), np.float64)
for group, leaves in params.items():
    print(f"{group:9s}", {name: value.shape for name, value in leaves.items()})
print("state    ", {name: list(running) for name, running in state.items()})

# %% [markdown]
# ## 1. The shortcut

# %%
def shortcut(p, x, stride, pool):
    """Identity, or Proj(Pool(x)): (N, H, W, C_in) -> (N, H / stride, W / stride, C_out)."""
    ### BEGIN SOLUTION
    # HINT: the pool belongs to downsampling blocks only, the projection to blocks whose
    # HINT: parameters have one; read the paragraph on the shortcut again
    if stride == 2:
        x = mc.max_pool2d(x) if pool == "max" else mc.avg_pool2d(x)
    if "proj" in p:
        x = mc.conv1x1(x, p["proj"]["w"], p["proj"]["b"])
    return x
    ### END SOLUTION


# %% [markdown]
# ## 2. The block

# %%
def mbconv_forward(p, state, x, stride, cfg, train):
    """MBConv block: (N, H, W, C_in) -> ((N, H', W', C_out), new_state)."""
    expand_stride = stride if cfg.stride_at == "expand" else 1
    dw_stride = stride if cfg.stride_at == "depthwise" else 1
    new_state = {}
    ### BEGIN SOLUTION
    # HINT: follow steps 1-6, one op per line; every BatchNorm returns its new running
    # HINT: statistics, to keep in new_state under the norm's own name
    h, new_state["pre_norm"] = mc.batch_norm(
        x, **p["pre_norm"], running=state["pre_norm"], train=train
    )
    h = mc.conv1x1(h, p["expand"]["w"], stride=expand_stride)  # (N, H', W', 4 C_out)
    h, new_state["norm1"] = mc.batch_norm(h, **p["norm1"], running=state["norm1"], train=train)
    h = mc.gelu(h, cfg.gelu)
    h = mc.depthwise_conv2d(h, p["dw"]["w"], stride=dw_stride)
    h, new_state["norm2"] = mc.batch_norm(h, **p["norm2"], running=state["norm2"], train=train)
    h = mc.gelu(h, cfg.gelu)
    h = mc.squeeze_excitation(h, p["se"], cfg.gelu)
    h = mc.conv1x1(h, p["project"]["w"], p["project"]["b"])  # (N, H', W', C_out)
    return shortcut(p, x, stride, cfg.pool) + h, new_state
    ### END SOLUTION


# %% mbconv tags=["check"]
# Expected: output, running statistics and every gradient within ~1e-15 of PyTorch.
print(checks.check_mbconv(mbconv_forward))
### BEGIN HIDDEN TESTS
print(checks.check_mbconv(mbconv_forward, train=False, seed=1))
### END HIDDEN TESTS

# %% mbconv downsampling tags=["check"]
# A downsampling block: stride 2 and a wider output, so the shortcut is Proj(Pool(x)).
print(checks.check_mbconv(mbconv_forward, stride=2, c_out=16))
### BEGIN HIDDEN TESTS
print(checks.check_mbconv(mbconv_forward, stride=2, c_out=16, stride_at="depthwise", pool="avg",
                          shape=(2, 5, 5), seed=2))
print(checks.check_mbconv(mbconv_forward, stride=2, c_in=4, c_out=8, train=False, pool="avg",
                          seed=3))
print(checks.check_mbconv(mbconv_forward, stride=1, c_in=4, c_out=8, seed=4))
### END HIDDEN TESTS

# %% [markdown]
# ## 3. BatchNorm backward, by hand
#
# In training mode BatchNorm normalises each channel with the statistics of the batch, over
# $M = N H W$ positions: $\mu = \frac1M \sum x$, $\sigma^2 = \frac1M \sum (x-\mu)^2$,
# $\hat x = (x - \mu)/\sqrt{\sigma^2 + \epsilon}$, $y = \gamma \hat x + \beta$ (per channel).
# It is LayerNorm's computation over other axes: every output of a channel depends on every
# input of that channel, through $\mu$ and $\sigma^2$. Derive $\partial L/\partial x$ from
# $\partial \mu / \partial x$ and $\partial \sigma^2 / \partial x$ (the chain rule through the
# three paths by which $x$ reaches $\hat x$), and write it in plain NumPy without loops;
# $\epsilon = 10^{-5}$.

# %%
def batch_norm_vjp(x, gamma, g):
    """Training-mode BatchNorm: gradients of ``sum(y * g)`` -> (dx, dgamma, dbeta).

    Args:
        x, g: (N, H, W, C); gamma: (C,).
    """
    axes = (0, 1, 2)  # the statistics are over every axis but the channels
    ### BEGIN SOLUTION
    # HINT: recompute x_hat and 1/sigma; dx has a direct term and one term for each of the
    # HINT: two statistics, each a mean over `axes`
    mean = x.mean(axis=axes)
    inv_std = 1.0 / np.sqrt(x.var(axis=axes) + 1e-5)
    x_hat = (x - mean) * inv_std
    d_hat = g * gamma
    dx = inv_std * (d_hat - d_hat.mean(axis=axes) - x_hat * (d_hat * x_hat).mean(axis=axes))
    return dx, np.sum(g * x_hat, axis=axes), np.sum(g, axis=axes)
    ### END SOLUTION


# %% tags=["check"]
# Expected: ~1e-16 against autograd of mc.batch_norm, ~1e-10 against finite differences.
print(checks.check_batch_norm_vjp(batch_norm_vjp))
### BEGIN HIDDEN TESTS
print(checks.check_batch_norm_vjp(batch_norm_vjp, shape=(2, 4, 3, 3), seed=1))
### END HIDDEN TESTS

# %% [markdown]
# ## Exercises (not graded)
#
# **E1.** In evaluation mode BatchNorm uses the running statistics, constants. Write its
# backward `batch_norm_eval_vjp(x, gamma, mean, var, g)` and compare `dx` with the training
# mode's on the same batch: which terms disappear, and by how much do the two differ?

# %%
rng = np.random.default_rng(0)
x_e, g_e = rng.standard_normal((4, 3, 3, 5)), rng.standard_normal((4, 3, 3, 5))
gamma_e = 1.0 + 0.3 * rng.standard_normal(5)
### BEGIN SOLUTION
def batch_norm_eval_vjp(x, gamma, mean, var, g):
    inv_std = 1.0 / np.sqrt(var + 1e-5)
    return g * gamma * inv_std, np.sum(g * (x - mean) * inv_std, axis=(0, 1, 2)), np.sum(
        g, axis=(0, 1, 2))


eval_dx = batch_norm_eval_vjp(x_e, gamma_e, x_e.mean((0, 1, 2)), x_e.var((0, 1, 2)), g_e)[0]
train_dx = batch_norm_vjp(x_e, gamma_e, g_e)[0]
print("training vs evaluation dx, relative difference:", mc.rel_error(train_dx, eval_dx))
### END SOLUTION

# %% [markdown]
# ## Written questions
#
# **Q1.** Why does the training-mode `dx` of one image depend on the other images of the
# batch? What happens to BatchNorm's gradient, and to its statistics, with a batch of one
# image of size 1x1?

# %% [markdown] tags=["answer"]
# The batch mean and variance are functions of every image in the batch, so each output
# depends on all inputs of its channel, and the chain rule through $\mu$ and $\sigma^2$ adds
# terms (the means over the batch) that mix the images. With $M = 1$ position, $x = \mu$,
# $\sigma^2 = 0$, $\hat x = 0$: the output is $\beta$ whatever the input, and $dx = 0$. No
# signal passes through the layer, and the running variance learns 0.

# %% [markdown]
# **Q2.** The shortcut of a downsampling MBConv block is `Proj(Pool(x))`. Why is a projection
# needed there, and why is the pool applied before the 1x1 projection rather than after?

# %% [markdown] tags=["answer"]
# The main path changes the width (C_in -> C_out) and the resolution, so the identity cannot
# be added to it: the 1x1 projection matches the channels and the pool the resolution.
# Pooling first is cheaper (the 1x1 convolution then runs on a quarter of the positions),
# and for average pooling the two commute anyway (both are linear); for max pooling the
# order changes the result, and the paper pools the input's own features.
