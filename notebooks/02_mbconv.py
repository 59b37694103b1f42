# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 · The MBConv block
#
# CoAtNet's first two stages (S1, S2) are made of **MBConv** blocks: the "inverted bottleneck"
# of MobileNetV2 and EfficientNet, built around the depthwise convolution of
# [notebook 01](01_depthwise_convolution.ipynb). This notebook builds one block piece by piece:
#
# 1. the block's structure and its parameters;
# 2. BatchNorm with **explicit state** (train vs eval mode), and its backward pass;
# 3. the block written out step by step, checked against `minicoat.blocks.mbconv_forward`;
# 4. the squeeze-excitation gate, plotted;
# 5. the downsampling form `Proj(Pool(x)) + ...`, and where to put the stride;
# 6. a check of the whole block, forward and every gradient, against a PyTorch twin.
#
# Source: [`minicoat/blocks.py`](../minicoat/blocks.py),
# [`minicoat/ops/norm.py`](../minicoat/ops/norm.py),
# [`minicoat/ops/layers.py`](../minicoat/ops/layers.py).
#
# **Learning objectives.** After this notebook you can
#
# 1. build the inverted bottleneck (expand, depthwise, squeeze-excitation, project) from the
#    ops and count its parameters;
# 2. use BatchNorm with explicit state: batch statistics in training, running statistics in
#    evaluation, and PyTorch's update of the running ones;
# 3. derive BatchNorm's backward pass and check it;
# 4. write the downsampling form and explain where the stride can go;
# 5. test a whole block against a PyTorch twin, including gradients that are truly zero.
#
# **Prerequisites.** Notebook 01 (depthwise convolution, checking a VJP); what BatchNorm does;
# the sigmoid and GELU activations.
#
# **Time.** About 60 minutes to read and run, plus 30-60 minutes for the exercises at the end.

# %%
import inspect

import autograd.numpy as anp  # NumPy traced by autograd: for functions we differentiate
import matplotlib.pyplot as plt
import numpy as np
import torch
from autograd import grad, make_vjp
from IPython.display import Code

import minicoat as mc
from minicoat import blocks
from minicoat.model import init_from_spec, init_state
from minicoat.ops import norm as norm_ops  # the teaching tier's norms
from minicoat.oracle import ops as oracle
from minicoat.oracle.network import MBConv, copy_into, torch_grads_as_params
from minicoat.plans import make_block
from minicoat.tree import flatten


def show(function):
    """The source of one of minicoat's functions, as the package has it."""
    return Code(inspect.getsource(function), language="python")

torch.set_num_threads(1)  # tiny tensors: one thread is fastest, and immune to a busy machine

# %% [markdown]
# ## 1. Structure
#
# CoAtNet's blocks are **pre-activation** residual blocks (paper, appendix A.1):
# $x \leftarrow x + \mathrm{Module}(\mathrm{Norm}(x))$. For MBConv, Norm is BatchNorm and the
# module is the inverted bottleneck:
#
# $$
# \mathrm{MBConv}(x) = x + \underbrace{\mathrm{Conv}_{1\times1}}_{\text{project}}
#   \Big(\mathrm{SE}\big(\mathrm{GELU}(\mathrm{BN}(
#   \underbrace{\mathrm{DWConv}_{3\times3}}_{\text{eq. (1)}}
#   (\mathrm{GELU}(\mathrm{BN}(\underbrace{\mathrm{Conv}_{1\times1}}_{\text{expand}}
#   (\mathrm{BN}(x))))))\big)\Big)
# $$
#
# * **expand**: a 1x1 convolution widens $C_{\text{out}}$ to $4 C_{\text{out}}$ channels
#   (expansion 4). It is "inverted" because the wide part sits *inside* the block, where the
#   cheap depthwise convolution works, and the residual stream between blocks stays narrow;
# * **depthwise** $3 \times 3$ convolution: the only spatial mixing;
# * **SE**, squeeze-excitation with ratio 0.25: a per-channel gate computed from the whole image;
# * **project**: a 1x1 convolution back to $C_{\text{out}}$, linear (no activation after it).
#
# BatchNorm + GELU follow the expansion and the depthwise convolution, as in MobileNetV2,
# EfficientNet and timm's CoAtNet. The expansion has no bias: the BatchNorm right after it
# would remove any constant shift anyway.
#
# In a network, every block's widths come from the network's plan (`mc.plan(config)`, one
# record per block; notebook 05); `make_block` makes the record of a block on its own.
# `blocks.mbconv_spec(block)` lists the parameters (a shape and an initialiser per leaf), and
# `init_from_spec` draws them. We take a block that **downsamples**: 16 channels on an $8\times8$
# grid in, 24 channels on a $4\times4$ grid out (the first block of a stage looks like this).

# %%
cfg = mc.CoAtNetConfig()  # the paper's defaults: expansion 4, SE 0.25, max pool, stride in expand
c_in, c_out, stride = 16, 24, 2
block = make_block(cfg, "C", c_in, c_out, stride, grid_in=(8, 8))
print(block)
rng = np.random.default_rng(0)
params = init_from_spec(blocks.mbconv_spec(block), rng, np.float64)
state = init_state(blocks.mbconv_state(block), np.float64)
for key, value in flatten(params).items():
    print(f"{key:16s} {str(value.shape):14s}")
print("parameters:", mc.count_params(params))
print("BatchNorm state:", {key: value.shape for key, value in flatten(state).items()})

# %% [markdown]
# The middle width is `block.expanded` $= 4 \times 24 = 96$ (the expansion is of the *output*
# width, as in timm); the SE bottleneck has `block.se` $= \lfloor 0.25 \times 16 \rfloor = 4$
# units (a quarter of the *input* width, as in EfficientNet). `proj` is the shortcut's
# projection, present because this block changes the width and the resolution (section 5).
#
# ## 2. BatchNorm with explicit state
#
# BatchNorm normalises every channel over the batch and the spatial positions:
#
# $$
# \mathrm{BN}(x)_{c} = \gamma_c\, \frac{x_{c} - \mu_c}{\sqrt{\sigma_c^2 + \epsilon}} + \beta_c,
# \qquad \epsilon = 10^{-5} .
# $$
#
# * **training**: $\mu, \sigma^2$ are the mean and (biased) variance of the current batch, and
#   the *running* statistics move towards them:
#   $\mu_{\text{run}} \leftarrow 0.9\, \mu_{\text{run}} + 0.1\, \mu$,
#   $\sigma^2_{\text{run}} \leftarrow 0.9\, \sigma^2_{\text{run}} + 0.1\, \frac{n}{n-1}\sigma^2$
#   (unbiased variance, $n$ values per channel), exactly as PyTorch;
# * **evaluation**: $\mu, \sigma^2$ are the running statistics, so one image's output does not
#   depend on the other images in its batch.
#
# PyTorch keeps the running statistics as buffers inside the module and updates them in place.
# minicoat's functions are pure: `mc.batch_norm(x, gamma, beta, running, train)` takes the
# running statistics as an argument and **returns** the updated ones, `(y, new_running)`.
# Nothing is mutated behind your back.

# %%
c = 3
gamma, beta = np.ones(c), np.zeros(c)
running = {"mean": np.zeros(c), "var": np.ones(c)}  # fresh statistics: mean 0, variance 1
x_bn = 3.0 + 2.0 * rng.standard_normal((8, 5, 5, c))  # data with mean 3, std 2 per channel

y_train, new_running = mc.batch_norm(x_bn, gamma, beta, running, train=True)
y_eval, same_running = mc.batch_norm(x_bn, gamma, beta, running, train=False)
print(
    "train: output mean",
    y_train.mean(axis=(0, 1, 2)).round(3),
    "std",
    y_train.std(axis=(0, 1, 2)).round(3),
)
print("       running mean moved 0 ->", new_running["mean"].round(3))
print(
    "eval:  output mean",
    y_eval.mean(axis=(0, 1, 2)).round(3),
    "(fresh running statistics do not normalise)",
)
print("the input dict is untouched:", running)

# %% [markdown]
# **Check against PyTorch.** `F.batch_norm` in training mode must give the same output and
# the same updated running statistics (expected ~$10^{-16}$, required $\le 10^{-10}$):

# %%
y_torch, running_torch = oracle.batch_norm(
    oracle.nhwc_to_nchw(x_bn),
    oracle.to_torch(gamma),
    oracle.to_torch(beta),
    {key: oracle.to_torch(value) for key, value in running.items()},
    train=True,
)
errors = {
    "y": mc.rel_error(y_train, oracle.nchw_to_nhwc(y_torch)),
    "mean": mc.rel_error(new_running["mean"], oracle.to_numpy(running_torch["mean"])),
    "var": mc.rel_error(new_running["var"], oracle.to_numpy(running_torch["var"])),
}
print(errors)
assert max(errors.values()) <= 1e-10, (
    f"BatchNorm ours vs torch: {errors}; running var ours {new_running['var']} "
    f"vs torch {oracle.to_numpy(running_torch['var'])}"
)

# %% [markdown]
# Training threads the state through every step: `running = new_running`. After a few dozen
# batches the running statistics approach the data's (mean 3, variance 4), with the error
# shrinking like $0.9^t$, and evaluation mode then normalises too:

# %%
history = []
for _ in range(60):
    batch = 3.0 + 2.0 * rng.standard_normal((8, 5, 5, c))
    _, running = mc.batch_norm(batch, gamma, beta, running, train=True)  # thread the state
    history.append((running["mean"][0], running["var"][0]))
y_eval, _ = mc.batch_norm(x_bn, gamma, beta, running, train=False)
print(
    "eval after 60 batches: output mean",
    y_eval.mean(axis=(0, 1, 2)).round(2),
    "std",
    y_eval.std(axis=(0, 1, 2)).round(2),
)

history = np.array(history)
plt.figure(figsize=(5, 3))
plt.plot(history[:, 0], label="running mean (channel 0)")
plt.plot(history[:, 1], label="running variance (channel 0)")
plt.axhline(3.0, color="C0", ls=":")
plt.axhline(4.0, color="C1", ls=":")
plt.xlabel("training batch")
plt.legend()
plt.show()

# %% [markdown]
# ### BatchNorm's backward pass
#
# In training mode the mean and the variance are functions of $x$ too, so the gradient has
# three paths to every input: through $\hat x$ directly, through $\mu$ and through
# $\sigma^2$. With $m$ values per channel, $\hat x = (x - \mu)/\sqrt{\sigma^2 + \epsilon}$
# and $d\hat x = g\,\gamma$, collecting the three gives the classic formula
#
# $$
# dx = \frac{1}{\sqrt{\sigma^2 + \epsilon}}\Big(d\hat x - \operatorname{mean}(d\hat x)
#   - \hat x \operatorname{mean}(d\hat x \odot \hat x)\Big),
# \qquad d\gamma = \sum g \odot \hat x, \qquad d\beta = \sum g,
# $$
#
# means and sums per channel over $(N, H, W)$: the two subtracted terms are what the mean and
# the variance contribute. This is minicoat's readable implementation, beside the traced
# forward in `minicoat/ops/norm.py`:

# %%
show(norm_ops.batch_norm_train_backward)

# %% [markdown]
# **Check.** Against autograd differentiating the traced forward (the three paths reversed
# step by step; expected ~$10^{-16}$, required $\le 10^{-12}$) and against finite differences
# (expected ~$10^{-9}$, required $\le 10^{-6}$), for one random upstream gradient:

# %%
gamma_r, beta_r = rng.standard_normal(c), rng.standard_normal(c)
g_bn = rng.standard_normal(x_bn.shape)
dx, dgamma, dbeta, _ = norm_ops.batch_norm_train_backward(g_bn, x_bn, gamma_r, beta_r, 1e-5)
vjp, _ = make_vjp(lambda *a: norm_ops.batch_norm_train_traced(*a, 1e-5), argnum=(0, 1, 2))(
    x_bn, gamma_r, beta_r
)
traced = vjp(g_bn)
numeric = mc.numerical_vjp(lambda x_: norm_ops.batch_norm_train_traced(x_, gamma_r, beta_r, 1e-5),
                           x_bn, g_bn)
errors = {name: mc.rel_error(ours, theirs)
          for name, ours, theirs in zip(("dx", "dgamma", "dbeta"), (dx, dgamma, dbeta), traced,
                                        strict=True)}
errors["dx vs finite differences"] = mc.rel_error(dx, numeric)
print({name: f"{err:.1e}" for name, err in errors.items()})
assert max(errors["dx"], errors["dgamma"], errors["dbeta"]) <= 1e-12, errors
assert errors["dx vs finite differences"] <= 1e-6, errors

# %% [markdown]
# ## 3. The block, step by step
#
# Here is the whole block written out with the public ops (every line has its shape). The SE
# gate is spelled out too so that we can look at it in section 4:
#
# $$
# s = \frac{1}{HW}\sum_{h,w} x_{:,h,w,:}, \qquad
# \mathrm{gate} = \sigma\big(\mathrm{GELU}(s W_{\text{reduce}} + b_{\text{reduce}})\,
#   W_{\text{expand}} + b_{\text{expand}}\big), \qquad
# \mathrm{SE}(x) = x \odot \mathrm{gate}
# $$
#
# with $\sigma$ the logistic sigmoid and the gate broadcast over $H$ and $W$.


# %%
def mbconv_by_hand(p, state, x, stride, cfg, train):
    """Returns (y, new_state, gate); the same computation as blocks.mbconv_forward."""
    expand_stride = stride if cfg.stride_at == "expand" else 1  # the paper's choice
    dw_stride = stride if cfg.stride_at == "depthwise" else 1  # timm's choice
    new_state = {}
    # residual branch: (N, H, W, C_in) -> (N, H', W', C_out)
    h, new_state["pre_norm"] = mc.batch_norm(
        x, **p["pre_norm"], running=state["pre_norm"], train=train
    )
    h = mc.conv1x1(h, p["expand"]["w"], stride=expand_stride)  # (N, H', W', 4 C_out)
    h, new_state["norm1"] = mc.batch_norm(h, **p["norm1"], running=state["norm1"], train=train)
    h = mc.gelu(h)
    h = mc.depthwise_conv2d(h, p["dw"]["w"], stride=dw_stride)  # (N, H', W', 4 C_out)
    h, new_state["norm2"] = mc.batch_norm(h, **p["norm2"], running=state["norm2"], train=train)
    h = mc.gelu(h)
    se = p["se"]
    squeezed = mc.global_avg_pool(h)  # (N, 4 C_out)
    hidden = mc.gelu(mc.linear(squeezed, se["w_reduce"], se["b_reduce"]))  # (N, C_in / 4)
    gate = mc.sigmoid(mc.linear(hidden, se["w_expand"], se["b_expand"]))  # (N, 4 C_out)
    h = h * gate[:, None, None, :]  # (N, H', W', 4 C_out)
    h = mc.conv1x1(h, p["project"]["w"], p["project"]["b"])  # (N, H', W', C_out)
    # shortcut: identity, or Proj(Pool(x)) when the block changes resolution or width
    shortcut = x
    if stride == 2:
        shortcut = mc.max_pool2d(shortcut) if cfg.pool == "max" else mc.avg_pool2d(shortcut)
    if "proj" in p:
        shortcut = mc.conv1x1(shortcut, p["proj"]["w"], p["proj"]["b"])  # (N, H', W', C_out)
    return shortcut + h, new_state, gate


# %% [markdown]
# It must reproduce `blocks.mbconv_forward` exactly: the same operations in the same order
# (expected error 0, required $\le 10^{-12}$), in both modes, including the new state.
# The library writes each `batch_norm` + `gelu` pair as one call, `mc.batch_norm_gelu`: the
# same numbers, computed in one blocked pass, whose forward also writes the GELU's slope
# $\mathrm{GELU}'(z)$ for the backward pass to reuse (`docs/performance.md`, item 35).

# %%
x = rng.standard_normal((6, 8, 8, c_in))  # (N, H, W, C_in)
for train in (True, False):
    y_ours, state_ours, gate = mbconv_by_hand(params, state, x, stride, cfg, train)
    y_lib, state_lib = blocks.mbconv_forward(params, state, x, block, cfg, train)
    err = mc.rel_error(y_ours, y_lib)
    err_state = max(mc.rel_error(a, flatten(state_lib)[k]) for k, a in flatten(state_ours).items())
    print(f"train={train}: {x.shape} -> {y_lib.shape}, error {err:.1e}, state {err_state:.1e}")
    assert err <= 1e-12 and err_state <= 1e-12, (
        f"train={train}: notebook {y_ours.ravel()[:3]} vs library {y_lib.ravel()[:3]}; "
        f"errors {err:.2e}, state {err_state:.2e}"
    )

# %% [markdown]
# ## 4. The squeeze-excitation gate
#
# The depthwise convolution only sees a $3 \times 3$ window. SE gives the block a global view
# at almost no cost: it squeezes each channel to one number (its spatial mean), passes the
# vector through a small bottleneck MLP and turns the result into a gate in $(0, 1)$ per
# channel *and per image*, which rescales that channel everywhere.
#
# At initialisation the gate's logits are small ($b_{\text{expand}} = 0$ and the weights are
# scaled by $1/\sqrt{\text{fan-in}}$), so the gates sit around $\sigma(0) = 0.5$ and vary more
# from channel to channel than from image to image; training is what makes them selective.

# %%
_, _, gate = mbconv_by_hand(params, state, x, stride, cfg, train=True)  # (N, 96)
fig, axes = plt.subplots(1, 2, figsize=(13, 3), gridspec_kw={"width_ratios": [3, 1]})
image = axes[0].imshow(gate, aspect="auto", cmap="viridis", vmin=0, vmax=1)
axes[0].set_xlabel("channel (of the 96 expanded channels)")
axes[0].set_ylabel("image in the batch")
axes[0].set_title("SE gate per image and channel")
fig.colorbar(image, ax=axes[0])
axes[1].hist(gate.ravel(), bins=30, range=(0, 1))
axes[1].set_xlabel("gate value")
axes[1].set_title("all gates")
plt.tight_layout()
plt.show()

# %% [markdown]
# How far a gate moves from 0.5 depends on the size of the four hidden SE activations: an
# image whose hidden activations happen to be small gets gates near 0.5 in every channel (a
# row of nearly uniform colour above). The gate is one number per image and channel, constant
# over the spatial positions.
#
# ## 5. Downsampling: the shortcut and the stride
#
# The first block of a stage halves the resolution and changes the width, so $x$ can no
# longer be added as it is. The paper (appendix A.1) uses
#
# $$
# x \leftarrow \mathrm{Proj}(\mathrm{Pool}(x)) +
#   \mathrm{Conv}_{1\times1}\big(\mathrm{DWConv}(\mathrm{Conv}_{1\times1}(\mathrm{Norm}(x),
#   \text{stride}=2))\big)
# $$
#
# * **Pool**: $2\times2$ max pooling with stride 2 (the paper; `cfg.pool="avg"` gives timm's
#   average pooling). Odd sizes round up: a window hanging over the edge pools the pixels that
#   exist.
# * **Proj**: a 1x1 convolution (with bias) to the new width.
#
# The residual branch needs a stride 2 somewhere. The paper puts it in the **expansion** 1x1
# convolution; timm puts it in the **depthwise** 3x3 (`cfg.stride_at="depthwise"`). A strided
# 1x1 convolution simply *drops* three pixels out of four (`conv1x1(x, w, stride=2)` is
# `x[:, ::2, ::2] @ w`): cheaper, because the expansion then runs on a quarter of the pixels,
# but the branch never sees the odd rows and columns. The footprint of one output pixel on
# the input shows the difference. We take the branch's convolutions alone (one channel, all
# weights 1) and ask autograd which input pixels output pixel $(1, 1)$ depends on:


# %%
def footprint(stride_at, out_pixel=(1, 1), size=8):
    """|d y[out_pixel] / d x| for expand 1x1 -> depthwise 3x3, stride 2 in one of them."""
    ones_1x1, ones_3x3 = np.ones((1, 1)), np.ones((3, 3, 1))
    s_expand, s_dw = (2, 1) if stride_at == "expand" else (1, 2)

    def branch_pixel(x):
        h = mc.conv1x1(x, ones_1x1, stride=s_expand)
        h = mc.depthwise_conv2d(h, ones_3x3, stride=s_dw)  # (1, 4, 4, 1)
        return h[0, out_pixel[0], out_pixel[1], 0]

    return np.abs(grad(branch_pixel)(np.zeros((1, size, size, 1))))[0, :, :, 0]


fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
pool_window = np.zeros((8, 8))
pool_window[2:4, 2:4] = 1  # the max pool's window for output pixel (1, 1)
for ax, picture, title in (
    (axes[0], footprint("expand"), "stride in the expansion (paper)"),
    (axes[1], footprint("depthwise"), "stride in the depthwise conv (timm)"),
    (axes[2], pool_window, "shortcut: 2x2 pool window"),
):
    ax.imshow(picture, cmap="Greys", vmin=0)
    ax.set_title(title, fontsize=9)
    ax.set_xticks(range(8))
    ax.set_yticks(range(8))
plt.suptitle("input pixels that output pixel (1, 1) of an 8x8 -> 4x4 block depends on")
plt.tight_layout()
plt.show()

# %% [markdown]
# With the stride in the expansion, the branch sees a $3 \times 3$ grid of every other pixel
# (spread over a $5 \times 5$ area); with the stride in the depthwise convolution it sees a
# dense $3 \times 3$ window. (In the full block the SE gate and, in training mode, BatchNorm's
# batch statistics add a weak dependence on every pixel.)
#
# The price of timm's choice is in the expansion's multiply-adds, which run at the input
# resolution instead of the output one. For the first block of CoAtNet-0's S1
# ($112\times112\times64 \to 56\times56\times96$, middle width $4 \times 96 = 384$):

# %%
h_in, h_out, width_in, mid = 112, 56, 64, 4 * 96
for stride_at, expand_pixels in (("expand", h_out * h_out), ("depthwise", h_in * h_in)):
    expand = expand_pixels * width_in * mid  # 1x1 conv: pixels x C_in x C_mid
    depthwise = h_out * h_out * 9 * mid  # output pixels x 9 taps x C_mid
    print(
        f"stride in {stride_at:9s}: expansion {expand / 1e6:6.1f}M, "
        f"depthwise {depthwise / 1e6:4.1f}M multiply-adds"
    )

# %% [markdown]
# Both forms compute a valid block and the oracle below checks both. In code, the two blocks
# differ in the `stride=` argument of one call each:

# %%
for stride_at in ("expand", "depthwise"):
    block_cfg = cfg.replace(stride_at=stride_at)
    y, _ = blocks.mbconv_forward(params, state, x, block, block_cfg, train=False)
    print(f"stride_at={stride_at:9s}: {x.shape} -> {y.shape}")

# %% [markdown]
# ## 6. Oracle check: the whole block against PyTorch
#
# `minicoat.oracle.network.MBConv` is the same block written the way a PyTorch user would
# write it: `nn.Conv2d(groups=C)` for the depthwise convolution, `nn.BatchNorm2d`,
# `nn.Linear`, `nn.MaxPool2d(ceil_mode=True)`, in NCHW. `copy_into(module, params, state)`
# copies our parameters into it (converting kernel layouts) and `torch_grads_as_params` reads
# its `.grad`s back into our tree layout.
#
# We pull one random upstream gradient $g$ back through both blocks, i.e. we differentiate
# $\sum g \odot \mathrm{MBConv}(x)$, and compare the output and the gradient of **every
# parameter**. The parameters are first moved away from their initial values (zero biases and
# unit BatchNorm scales could hide a mistake). Expected error ~$10^{-15}$, required
# $\le 10^{-10}$.
#
# **A subtlety.** In training mode, `pre_norm.beta`'s true gradient is **zero**: the
# BatchNorm shift $\beta$ adds a constant per channel, the bias-free expansion turns it into
# another constant per channel, and `norm1` subtracts the batch mean, which removes any
# constant. Both libraries return round-off, ~$10^{-15}$, and the relative error of two
# round-off vectors is meaningless (often ~1). Such a leaf is compared in absolute terms
# against the norm of the whole gradient instead, as `tests/test_network.py` does:


# %%
def grad_errors(ours, theirs):
    """Per-leaf error: normwise relative, or absolute vs the whole gradient's norm for a
    leaf whose true gradient is zero (a leaf of norm < 1e-8 of the total)."""
    ours, theirs = flatten(ours), flatten(theirs)
    total = np.sqrt(sum(np.sum(v**2) for v in ours.values()))
    errors = {}
    for key in ours:
        a, b = ours[key], theirs[key]
        if max(np.linalg.norm(a), np.linalg.norm(b)) < 1e-8 * total:  # a true zero
            errors[key] = np.linalg.norm(a - b) / total
        else:
            errors[key] = mc.rel_error(a, b)
    return errors


def perturbed(tree, rng, scale=0.1):
    return {
        key: perturbed(value, rng, scale)
        if isinstance(value, dict)
        else value + scale * rng.standard_normal(value.shape)
        for key, value in tree.items()
    }


def check_block_against_torch(stride_at, train):
    """Errors of our block vs the torch twin: output, every gradient, running statistics."""
    block_cfg = cfg.replace(stride_at=stride_at)
    p = perturbed(params, rng)
    x = rng.standard_normal((2, 6, 5, c_in))  # odd width: the pool's ceil rule is exercised
    upstream = rng.standard_normal((2, 3, 3, c_out))  # (N, 6/2, ceil(5/2), C_out)

    # theirs: copy the weights in, run forward, pull the upstream gradient back
    twin = copy_into(MBConv(block, block_cfg).double(), p, state).train(train)
    y_torch = twin(oracle.nhwc_to_nchw(x))  # NCHW
    y_torch.backward(oracle.nhwc_to_nchw(upstream))
    grads_torch = torch_grads_as_params(twin, p)  # back in our tree layout

    # ours: the same upstream gradient is the gradient of sum(upstream * y)
    def objective(q):
        y, _ = blocks.mbconv_forward(q, state, x, block, block_cfg, train)
        return anp.sum(y * upstream)

    grads = grad(objective)(p)
    y, new_state = blocks.mbconv_forward(p, state, x, block, block_cfg, train)

    errors = grad_errors(grads, grads_torch)
    errors["forward"] = mc.rel_error(y, oracle.nchw_to_nhwc(y_torch))
    for name in ("pre_norm", "norm1", "norm2"):  # running statistics after the forward pass
        for stat, buffer in (("mean", "running_mean"), ("var", "running_var")):
            theirs = oracle.to_numpy(getattr(getattr(twin, name), buffer))
            errors[f"{name}.{stat} (state)"] = mc.rel_error(new_state[name][stat], theirs)
    naive = mc.rel_error(grads["pre_norm"]["beta"], grads_torch["pre_norm"]["beta"])
    return errors, np.linalg.norm(grads["pre_norm"]["beta"]), naive


for stride_at in ("expand", "depthwise"):
    for train in (True, False):
        errors, beta_norm, naive = check_block_against_torch(stride_at, train)
        worst = max(errors, key=errors.get)
        print(
            f"stride_at={stride_at:9s} train={train!s:5s}: worst of {len(errors)} errors "
            f"{errors[worst]:.1e} ({worst}); |grad pre_norm.beta| {beta_norm:.1e}, "
            f"its naive rel_error {naive:.1e}"
        )
        assert errors[worst] <= 1e-10, (
            f"stride_at={stride_at}, train={train}: ours vs torch {errors}"
        )

# %% [markdown]
# In training mode `|grad pre_norm.beta|` is round-off (~$10^{-15}$) while the other
# gradients are of order 1, and the naive relative error between the two libraries' round-off
# is large although both are right. In evaluation mode BatchNorm uses fixed statistics,
# nothing removes the shift, and the gradient is an ordinary non-zero one that agrees to
# ~$10^{-16}$.
#
# ## Summary
#
# | check | compared | expected | required |
# |---|---|---|---|
# | BatchNorm | output and running statistics vs `F.batch_norm` | ~1e-16 | 1e-10 |
# | BatchNorm backward | `batch_norm_train_backward` vs traced; vs FD | ~1e-16; ~1e-9 | 1e-12; 1e-6|
# | block by hand | notebook's step-by-step block vs `blocks.mbconv_forward` | 0 | 1e-12 |
# | oracle | output, every gradient, running statistics vs the torch `MBConv` | ~1e-15 | 1e-10 |
#
#
# ## Exercises
#
# Solutions are hidden below each exercise (click to open); try first.
#
# **1. Running statistics.** Starting from mean 0 and variance 1, call `mc.batch_norm` in
# training mode $k$ times on the same batch, whose channel means are $m$. Predict the running
# mean after $k$ calls and check it.
#
# <details><summary>Solution (hidden)</summary>
#
# Each call does $r \leftarrow 0.9\, r + 0.1\, m$, so after $k$ calls $r = m(1 - 0.9^k)$: 0.1 m,
# 0.19 m, 0.271 m, ...
#
# </details>
#
# **2. Count the parameters** of an MBConv block with $C_{in} = C_{out} = 32$, expansion 4
# and SE width 8 (the first block of `coatnet-digits`), leaf by leaf, and check with
# `mc.count_params` of its parameters.
#
# <details><summary>Solution (hidden)</summary>
#
# pre_norm 64; expand 32·128 = 4,096; norm1 256; dw 9·128 = 1,152; norm2 256; SE
# 128·8 + 8 + 8·128 + 128 = 2,184; project 128·32 + 32 = 4,128. Total 12,136.
#
# </details>
#
# **3. Folding BatchNorm.** In evaluation mode BatchNorm is an affine map per channel. Fold
# `norm1` into the expansion convolution before it (a new weight and a bias) and check that
# the block's evaluation-mode output does not change.
#
# <details><summary>Solution (hidden)</summary>
#
# With $s = \gamma / \sqrt{\text{var} + \epsilon}$: $W' = W s$ (column by column) and
# $b' = \beta - s\, \text{mean}$; then `conv1x1(h, W', b')` equals
# `batch_norm(conv1x1(h, W), ..., train=False)` to round-off.
#
# </details>
#
# ## Written questions
#
# Answer in a few sentences each (in a markdown cell below each question).
#
# 1. BatchNorm trains with batch statistics but evaluates with running ones. What would go
#    wrong if it evaluated one image with its own statistics?
# 2. The stride can sit in the first 1×1 convolution (paper) or in the depthwise one (timm).
#    Which of the two lets each output pixel see more of the input, and why?
# 3. Why is the squeeze-excitation gate a sigmoid per channel rather than a softmax over them?
#
# Next: [03 · relative attention](03_relative_attention.ipynb), the other half of CoAtNet.
