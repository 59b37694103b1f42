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
# # 04 · The Transformer block: the "T" of C-C-T-T
#
# Notebook [03](03_relative_attention.ipynb) built relative attention as one layer. Stages S3
# and S4 of CoAtNet wrap that layer into a **Transformer block** (paper, appendix A.1):
# LayerNorm, attention and a feed-forward network (FFN), each on a pre-norm residual path, and,
# in the first block of a stage, a downsampling form that halves the grid.
#
# **Learning objectives.** After this notebook you can
#
# 1. write LayerNorm's forward pass and derive its backward pass (the Jacobian and the VJP);
# 2. explain the pre-norm residual $x \leftarrow x + \mathrm{Module}(\mathrm{Norm}(x))$ and
#    why the block is the identity when a branch's last layer is zero;
# 3. assemble the attention half, its downsampling form
#    $x \leftarrow \mathrm{Proj}(\mathrm{Pool}(x)) +
#    \mathrm{Attention}(\mathrm{Pool}(\mathrm{Norm}(x)))$, and the FFN half from the public
#    ops, and check each against PyTorch and finite differences;
# 4. read the attention maps and the relative-bias tables of a network trained on real digits.
#
# **Prerequisites.** Notebook 03 (relative attention, the bias tables); notebook 02's
# BatchNorm section (its backward pass has the same structure); the chain rule for
# vector-valued functions (Jacobians, vector-Jacobian products).
#
# **Time.** About 60 minutes to read and run (the cells run in well under a minute), plus
# 30-60 minutes for the exercises at the end.
#
# Source: [`minicoat/blocks.py`](../minicoat/blocks.py) (`transformer_forward`),
# [`minicoat/ops/norm.py`](../minicoat/ops/norm.py) (LayerNorm),
# [`minicoat/oracle/network.py`](../minicoat/oracle/network.py) (the PyTorch `Transformer`).

# %%
import inspect
import math
import os
import time

import autograd.numpy as anp  # NumPy traced by autograd: for functions we differentiate
import matplotlib.pyplot as plt
import numpy as np
import torch
from autograd import grad, make_vjp
from IPython.display import Code

import minicoat as mc
from minicoat import blocks
from minicoat.datasets import load_dataset
from minicoat.ops import norm as norm_ops  # the teaching tier's LayerNorm and its VJP
from minicoat.oracle import ops as oracle
from minicoat.oracle.network import Transformer, copy_into, torch_grads_as_params
from minicoat.plans import make_block
from minicoat.train import TrainConfig, train
from minicoat.tree import flatten

FULL = os.environ.get("MINICOAT_FULL", "0") == "1"  # the quick configuration unless set


def show(function):
    """The source of one of minicoat's functions, as the package has it."""
    return Code(inspect.getsource(function), language="python")


torch.set_num_threads(1)  # tiny tensors: one thread is fastest, and immune to a busy machine
rng = np.random.default_rng(0)

# %% [markdown]
# ## 1. LayerNorm, forward
#
# A Transformer block normalises each **token** on its own, over its $C$ channels (BatchNorm,
# in MBConv, normalises each channel over the batch). For one token $x \in \mathbb{R}^C$:
#
# $$
# \mu = \frac1C \sum_c x_c, \qquad \sigma^2 = \frac1C \sum_c (x_c - \mu)^2, \qquad
# \hat x = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}}, \qquad y = \gamma \odot \hat x + \beta ,
# $$
#
# with the biased variance and $\epsilon = 10^{-5}$ (PyTorch's default). Channels-last makes it
# a reduction over the last axis, whatever the leading axes are (tokens `(N, T, C)` or a map
# `(N, H, W, C)`). Written out in plain NumPy, against the package's `mc.layer_norm` (same
# formula, expected ~$10^{-16}$, required $\le 10^{-12}$):


# %%
def layer_norm_by_hand(x, gamma, beta, eps=1e-5):
    """(..., C) -> (..., C): each row normalised over its C channels, then scaled and shifted."""
    mean = x.mean(axis=-1, keepdims=True)  # (..., 1)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)  # (..., 1), biased
    x_hat = (x - mean) / np.sqrt(var + eps)  # (..., C)
    return gamma * x_hat + beta


C = 6
x = rng.standard_normal((2, 3, 4, C)) * 2.0 + 1.0  # (N, H, W, C), mean 1, std 2
gamma, beta = 1.0 + 0.3 * rng.standard_normal(C), 0.1 * rng.standard_normal(C)
y = mc.layer_norm(x, gamma, beta)
err = mc.rel_error(layer_norm_by_hand(x, gamma, beta), y)
print(f"by hand vs mc.layer_norm: {err:.1e}")
assert err <= 1e-12, f"by hand {layer_norm_by_hand(x, gamma, beta).ravel()[:3]} vs {y.ravel()[:3]}"

# %% [markdown]
# Two properties follow from the definition and are checked here:
#
# * with $\gamma = 1, \beta = 0$ every token comes out with mean 0 and variance
#   $\sigma^2 / (\sigma^2 + \epsilon)$, just below 1;
# * nothing depends on the other tokens or images of the batch, so LayerNorm has no running
#   statistics and no training/evaluation mode: one image alone gets exactly the output it
#   gets inside a batch.

# %%
x_hat = mc.layer_norm(x, np.ones(C), np.zeros(C))
token_var = x.var(axis=-1)
print("token means: max |mean|", f"{np.abs(x_hat.mean(axis=-1)).max():.1e}")
print("token variances:", x_hat.var(axis=-1).ravel()[:4].round(8), "...")
assert np.abs(x_hat.mean(axis=-1)).max() <= 1e-12
assert np.allclose(x_hat.var(axis=-1), token_var / (token_var + 1e-5), rtol=0, atol=1e-12)
assert np.all(x_hat.var(axis=-1) < 1)
alone = mc.layer_norm(x[1:2], gamma, beta)  # image 1 on its own
assert np.array_equal(alone, y[1:2]), "LayerNorm of one image depends on the batch"
print("image 1 alone == image 1 in the batch: True")

# %% [markdown]
# The PyTorch oracle, `F.layer_norm(x, (C,))` (`minicoat.oracle.ops.layer_norm`), on the same
# inputs: the output and the gradients of $x$, $\gamma$ and $\beta$ for one random upstream
# gradient. Expected ~$10^{-16}$, required $\le 10^{-10}$.

# %%
inputs = {"x": x, "gamma": gamma, "beta": beta}
for implementation in ("traced", "readable", "fast"):
    with mc.implementation(implementation):
        result = oracle.compare(mc.layer_norm, oracle.layer_norm, inputs)
    print(f"{implementation:8s}: output {result.forward:.1e}, gradients "
          + ", ".join(f"{name} {e:.1e}" for name, e in result.grads.items()))
    assert result.worst <= 1e-10, f"{implementation}: ours vs torch {result}"

# %% [markdown]
# ## 2. LayerNorm, backward: derived, then checked three ways
#
# Let $g = \partial L / \partial y$ for one token. The affine part is immediate:
# $\partial L / \partial \beta = \sum_{\text{tokens}} g$ and
# $\partial L / \partial \gamma = \sum_{\text{tokens}} g \odot \hat x$. For the input, write
# $d = g \odot \gamma = \partial L / \partial \hat x$ and $s = (\sigma^2 + \epsilon)^{-1/2}$.
# The mean and the variance both depend on every $x_k$:
#
# $$
# \frac{\partial \mu}{\partial x_k} = \frac1C, \qquad
# \frac{\partial \sigma^2}{\partial x_k} = \frac2C (x_k - \mu), \qquad
# \frac{\partial s}{\partial x_k} = -\frac12 s^3 \frac{\partial \sigma^2}{\partial x_k}
#   = -\frac{s^3}{C}(x_k - \mu),
# $$
#
# so, for $\hat x_c = (x_c - \mu)\, s$,
#
# $$
# J_{ck} = \frac{\partial \hat x_c}{\partial x_k}
#   = s\Big(\delta_{ck} - \frac1C\Big) - (x_c - \mu)\frac{s^3}{C}(x_k - \mu)
#   = \frac{s}{C}\big(C\,\delta_{ck} - 1 - \hat x_c \hat x_k\big),
# \qquad J = \frac{s}{C}\big(C I - \mathbf{1}\mathbf{1}^\top - \hat x \hat x^\top\big).
# $$
#
# $J$ is symmetric, and the VJP is $J^\top d$, which needs no $C \times C$ matrix:
#
# $$
# \frac{\partial L}{\partial x} = J^\top d
#   = s\Big(d - \overline{d} - \hat x\, \overline{d \odot \hat x}\Big),
# \qquad \overline{v} = \frac1C \sum_c v_c .
# $$
#
# The same three terms appear in BatchNorm's backward pass (notebook 02), with the means taken
# over the batch instead of over the channels. First the Jacobian itself, built from the formula
# for one token and compared with autograd's `jacobian` of the forward pass (expected
# ~$10^{-16}$, required $\le 10^{-12}$):

# %%
from autograd import jacobian  # noqa: E402

token = x[0, 0, 0]  # (C,)
mean, var = token.mean(), token.var()
s = 1.0 / np.sqrt(var + 1e-5)
t_hat = (token - mean) * s
J = s / C * (C * np.eye(C) - np.ones((C, C)) - np.outer(t_hat, t_hat))  # (C, C)
J_autograd = jacobian(lambda t: norm_ops.layer_norm_traced(t, np.ones(C), np.zeros(C)))(token)
err = mc.rel_error(J, J_autograd)
print(f"formula vs autograd's Jacobian: {err:.1e}")
assert err <= 1e-12, f"formula\n{J[:2, :3]}\nvs autograd\n{J_autograd[:2, :3]}"
assert np.allclose(J, J.T, rtol=0, atol=1e-15), "J is symmetric"

# %% [markdown]
# What $J$ does: $J\mathbf{1} = 0$ exactly (adding a constant to a token changes nothing, the
# mean removes it), and $J\hat x = s\,\frac{\epsilon}{\sigma^2 + \epsilon}\, \hat x$, almost 0
# (scaling a token changes nothing but the $\epsilon$ term). The gradient $\partial L/\partial x$
# of every token therefore sums to zero over its channels, and is nearly orthogonal to $\hat x$:

# %%
print(f"|J 1| = {np.linalg.norm(J @ np.ones(C)):.1e}")
scale_direction = J @ t_hat
expected = s * 1e-5 / (var + 1e-5) * t_hat
print(f"|J x_hat| = {np.linalg.norm(scale_direction):.1e} "
      f"(= s eps / (var + eps) |x_hat| = {np.linalg.norm(expected):.1e})")
assert np.linalg.norm(J @ np.ones(C)) <= 1e-14
assert mc.rel_error(scale_direction, expected) <= 1e-8

# %% [markdown]
# The package's readable VJP, `minicoat.ops.norm.layer_norm_backward`, is that formula,
# vectorised over every token:

# %%
show(norm_ops.layer_norm_backward)

# %% [markdown]
# Checked three ways, on the whole `(2, 3, 4, 6)` input with random $\gamma, \beta$:
#
# 1. against the VJP built from our Jacobian $J$, token by token (expected ~$10^{-16}$,
#    required $\le 10^{-12}$);
# 2. against centred finite differences of the forward pass, `mc.numerical_vjp` (expected
#    ~$10^{-10}$ to $10^{-9}$, required $\le 10^{-6}$);
# 3. against PyTorch's autograd (section 1 did it for every implementation; here the readable
#    VJP called directly, expected ~$10^{-16}$, required $\le 10^{-10}$).

# %%
g = rng.standard_normal(x.shape)
dx, dgamma, dbeta, _ = norm_ops.layer_norm_backward(g, x, gamma, beta)

# 1. J^T (g * gamma), one token at a time
dx_jacobian = np.zeros_like(x)
for index in np.ndindex(x.shape[:-1]):
    t = x[index]
    s_t = 1.0 / np.sqrt(t.var() + 1e-5)
    t_hat = (t - t.mean()) * s_t
    J_t = s_t / C * (C * np.eye(C) - np.ones((C, C)) - np.outer(t_hat, t_hat))
    dx_jacobian[index] = J_t.T @ (g[index] * gamma)
err_jacobian = mc.rel_error(dx, dx_jacobian)

# 2. finite differences, for x, gamma and beta
err_fd = {
    "x": mc.rel_error(dx, mc.numerical_vjp(lambda x_: mc.layer_norm(x_, gamma, beta), x, g)),
    "gamma": mc.rel_error(
        dgamma, mc.numerical_vjp(lambda g_: mc.layer_norm(x, g_, beta), gamma, g)),
    "beta": mc.rel_error(
        dbeta, mc.numerical_vjp(lambda b_: mc.layer_norm(x, gamma, b_), beta, g)),
}

# 3. torch
xt, gt, bt = (oracle.to_torch(a).requires_grad_() for a in (x, gamma, beta))
oracle.layer_norm(xt, gt, bt).backward(oracle.to_torch(g))
err_torch = {name: mc.rel_error(ours, oracle.to_numpy(t.grad))
             for name, ours, t in (("x", dx, xt), ("gamma", dgamma, gt), ("beta", dbeta, bt))}

print(f"1. readable VJP vs J^T d:              {err_jacobian:.1e}")
print("2. readable VJP vs finite differences: "
      + ", ".join(f"{k} {v:.1e}" for k, v in err_fd.items()))
print("3. readable VJP vs torch:              "
      + ", ".join(f"{k} {v:.1e}" for k, v in err_torch.items()))
assert err_jacobian <= 1e-12, f"VJP {dx.ravel()[:3]} vs J^T d {dx_jacobian.ravel()[:3]}"
assert max(err_fd.values()) <= 1e-6, f"finite differences: {err_fd}"
assert max(err_torch.values()) <= 1e-10, f"torch: {err_torch}"
assert np.abs(dx.sum(axis=-1)).max() <= 1e-12, "every token's gradient sums to zero"

# %% [markdown]
# ## 3. The attention half and its downsampling form
#
# The paper writes every block in **pre-norm** (pre-activation) form,
# $x \leftarrow x + \mathrm{Module}(\mathrm{Norm}(x))$. For the Transformer's first half the
# module is relative attention (notebook 03) and the norm is LayerNorm:
#
# $$
# x \leftarrow x + \mathrm{Attention}(\mathrm{LN}(x)) .
# $$
#
# The first block of S3 and of S4 halves the grid and widens the channels. The identity
# shortcut no longer fits, so both paths are pooled (stride-2 max pool in the paper, average
# pool in timm) and the shortcut is projected by a $1 \times 1$ convolution:
#
# $$
# x \leftarrow \mathrm{Proj}(\mathrm{Pool}(x)) + \mathrm{Attention}(\mathrm{Pool}(\mathrm{LN}(x))) .
# $$
#
# Pooling *before* attention means the attention runs on the small grid: a quarter of the
# tokens and a sixteenth of the $T \times T$ attention matrix. The code, with the public ops
# (`block` is the record `make_block` gives: widths, stride, grids, heads):


# %%
def attention_half(p, x, block, cfg):
    """(N, H, W, C_in) -> (N, H', W', C_out): x + Attention(LN(x)), or, with stride 2,
    Proj(Pool(x)) + Attention(Pool(LN(x)))."""
    pool = mc.max_pool2d if cfg.pool == "max" else mc.avg_pool2d
    h = mc.layer_norm(x, p["norm1"]["gamma"], p["norm1"]["beta"])  # (N, H, W, C_in)
    shortcut = x
    if block.stride == 2:
        h, shortcut = pool(h), pool(x)  # (N, H/2, W/2, C_in) each
    if "proj" in p:  # the width or the grid changes
        shortcut = mc.conv1x1(shortcut, p["proj"]["w"], p["proj"]["b"])  # (N, H', W', C_out)
    return shortcut + mc.relative_attention(h, p["attn"], block.heads, cfg.variant)


# %% [markdown]
# ## 4. The FFN half
#
# The second half is a two-layer MLP applied to every token on its own, expansion 4, GELU,
# again on a pre-norm residual path:
#
# $$
# x \leftarrow x + \mathrm{FFN}(\mathrm{LN}(x)), \qquad
# \mathrm{FFN}(z) = \mathrm{GELU}(z W_1 + b_1)\, W_2 + b_2,
# \quad W_1 \in \mathbb{R}^{C \times 4C},\ W_2 \in \mathbb{R}^{4C \times C} .
# $$


# %%
def ffn_half(p, x, cfg):
    """(N, H, W, C) -> (N, H, W, C): x + FFN(LN(x)), token by token."""
    h = mc.layer_norm(x, p["norm2"]["gamma"], p["norm2"]["beta"])
    h = mc.gelu(mc.linear(h, p["ffn"]["fc1"]["w"], p["ffn"]["fc1"]["b"]), cfg.gelu)  # (.., 4C)
    return x + mc.linear(h, p["ffn"]["fc2"]["w"], p["ffn"]["fc2"]["b"])  # (N, H, W, C)


def block_by_hand(p, x, block, cfg):
    """The whole Transformer block: the attention half, then the FFN half."""
    return ffn_half(p, attention_half(p, x, block, cfg), cfg)


# %% [markdown]
# Two blocks to test with: one that keeps the grid and the width (like every block of S3 after
# the first) and a downsampling one, $4 \times 4 \times 8 \to 2 \times 2 \times 16$ (like the
# first block of S4). Head size 4 keeps them small: 2 and 4 heads. The parameters are drawn
# from the package's initialisation and then perturbed, so that zero biases and unit
# LayerNorm scales cannot hide a mistake. The notebook's block must give exactly what the
# package's `blocks.transformer_forward` gives (same ops in the same order: required
# $\le 10^{-12}$):

# %%
cfg = mc.config("coatnet-digits").replace(head_dim=4)
same = make_block(cfg, "T", 8, 8, 1, grid_in=(4, 4), stage=3, index=1)  # as S3's 2nd block
down = make_block(cfg, "T", 8, 16, 2, grid_in=(4, 4), stage=4, index=0)  # as S4's 1st
for block in (same, down):
    print(f"{block.name}: {block.c_in} -> {block.c_out} channels, grid {block.grid_in} -> "
          f"{block.grid_out}, {block.heads} heads, FFN width {block.expanded}")


def init_block(block, seed):
    """Parameters of one block from its spec, float64, moved away from the initial values."""
    r = np.random.default_rng(seed)

    def draw(spec):
        if isinstance(spec, dict):
            return {k: draw(v) for k, v in spec.items()}
        kind, shape, *std = spec
        base = {"normal": lambda: std[0] * r.standard_normal(shape),
                "zeros": lambda: np.zeros(shape), "ones": lambda: np.ones(shape)}[kind]()
        return base + 0.1 * r.standard_normal(shape)

    return draw(blocks.transformer_spec(block))


params = {"same": init_block(same, 1), "down": init_block(down, 2)}
x_block = rng.standard_normal((2, 4, 4, 8))  # (N, H, W, C_in)
for name, block in (("same", same), ("down", down)):
    ours = block_by_hand(params[name], x_block, block, cfg)
    package = blocks.transformer_forward(params[name], x_block, block, cfg)
    err = mc.rel_error(ours, package)
    print(f"{name}: {x_block.shape} -> {ours.shape}; by hand vs blocks.transformer_forward "
          f"{err:.1e}")
    assert ours.shape == (2, *block.grid_out, block.c_out)
    assert err <= 1e-12, f"{name}: by hand {ours.ravel()[:3]} vs package {package.ravel()[:3]}"

# %% [markdown]
# Why pool the *normalised* map and not normalise the pooled one? LayerNorm and max pooling do
# not commute: $\mathrm{Pool}(\mathrm{LN}(x)) \ne \mathrm{LN}(\mathrm{Pool}(x))$, because the
# maximum of each channel over a window is taken from different tokens, each normalised with
# its own mean and variance. The order is the paper's, and the oracle's; swapping it changes
# the output by a lot:

# %%
p_down = params["down"]
h_paper = mc.max_pool2d(mc.layer_norm(x_block, **p_down["norm1"]))
h_swapped = mc.layer_norm(mc.max_pool2d(x_block), **p_down["norm1"])
swap = mc.rel_error(h_paper, h_swapped)
tokens_before, tokens_after = 4 * 4, 2 * 2
print(f"Pool(LN(x)) vs LN(Pool(x)): relative difference {swap:.2f}")
print(f"attention matrix: {tokens_before}x{tokens_before} on the full grid, "
      f"{tokens_after}x{tokens_after} on the pooled one ({tokens_before**2 // tokens_after**2}x "
      "fewer entries)")
assert swap > 0.1, f"the two orders agree to {swap:.1e}: the example does not show the point"
assert tokens_before**2 // tokens_after**2 == 16

# %% [markdown]
# ## 5. Each half against PyTorch
#
# The oracle's halves are written with torch's own functions in NCHW (`F.layer_norm` on the
# channel axis moved last, `F.max_pool2d`, `F.conv2d`, the oracle's relative attention,
# `F.linear`, `F.gelu`). `oracle.compare` runs both on the same inputs and pulls one random
# upstream gradient back through both; we compare the output and the gradient of every input
# and parameter. Expected ~$10^{-15}$, required $\le 10^{-10}$.


# %%
def ln_nchw(x, gamma, beta):
    """LayerNorm over the channels of an NCHW map: move them last, normalise, move back."""
    return oracle.layer_norm(x.permute(0, 2, 3, 1), gamma, beta).permute(0, 3, 1, 2)


def attention_half_torch(x, block, cfg, **p):
    pool = oracle.max_pool2d if cfg.pool == "max" else oracle.avg_pool2d
    h, shortcut = ln_nchw(x, p["norm1.gamma"], p["norm1.beta"]), x
    if block.stride == 2:
        h, shortcut = pool(h), pool(x)
    if "proj.w" in p:
        shortcut = oracle.conv1x1(shortcut, p["proj.w"], p["proj.b"])
    attn = {k.split(".", 1)[1]: v for k, v in p.items() if k.startswith("attn.")}
    return shortcut + oracle.relative_attention(h, attn, block.heads, cfg.variant)


def ffn_half_torch(x, cfg, **p):
    h = x.permute(0, 2, 3, 1)  # (N, H, W, C): the FFN works token by token
    z = oracle.layer_norm(h, p["norm2.gamma"], p["norm2.beta"])
    z = oracle.gelu(oracle.linear(z, p["ffn.fc1.w"], p["ffn.fc1.b"]), cfg.gelu)
    return x + oracle.linear(z, p["ffn.fc2.w"], p["ffn.fc2.b"]).permute(0, 3, 1, 2)


def layouts_of(flat):
    """The torch layout of each input: maps NCHW, linear weights (out, in), 1x1 kernels."""
    layouts = {"x": oracle.FEATURE_MAP}
    for key in flat:
        if key == "proj.w":
            layouts[key] = oracle.POINTWISE_KERNEL
        elif key.endswith(".w") or key in ("attn.w_qkv", "attn.w_out"):
            layouts[key] = oracle.LINEAR_WEIGHT
    return layouts


def compare_half(half, p, x, block):
    keep = ("norm1", "attn", "proj") if half == "attention" else ("norm2", "ffn")
    flat = {k: v for k, v in flatten(p).items() if k.split(".")[0] in keep}

    def ours(x, **f):
        tree = {}
        for key, value in f.items():  # dotted keys back into a tree
            node = tree
            *path, leaf = key.split(".")
            for part in path:
                node = node.setdefault(part, {})
            node[leaf] = value
        if half == "attention":
            return attention_half(tree, x, block, cfg)
        return ffn_half(tree, x, cfg)

    def theirs(x, **f):
        if half == "attention":
            return attention_half_torch(x, block, cfg, **f)
        return ffn_half_torch(x, cfg, **f)

    return oracle.compare(ours, theirs, {"x": x, **flat}, layouts_of(flat), oracle.FEATURE_MAP)


for name, block in (("same", same), ("down", down)):
    for half in ("attention", "ffn"):
        x_in = x_block if half == "attention" else rng.standard_normal((2, *block.grid_out,
                                                                         block.c_out))
        result = compare_half(half, params[name], x_in, block)
        worst = max(result.grads, key=result.grads.get)
        print(f"{name:4s} {half:9s}: output {result.forward:.1e}, worst of "
              f"{len(result.grads)} gradients {result.grads[worst]:.1e} ({worst})")
        assert result.worst <= 1e-10, f"{name} {half}: ours vs torch {result}"

# %% [markdown]
# ## 6. The whole block: the PyTorch `Transformer` and finite differences
#
# `minicoat.oracle.network.Transformer` is the block as a PyTorch user writes it, with
# `nn.LayerNorm`, `nn.Linear` and `nn.MaxPool2d`; `copy_into` loads our parameters into it
# and `torch_grads_as_params` reads its gradients back into our tree. Both pools and both
# attention variants, every parameter's gradient and the input's. Expected ~$10^{-15}$,
# required $\le 10^{-10}$.


# %%
def check_block_against_torch(block, p, x, block_cfg):
    twin = copy_into(Transformer(block, block_cfg).double(), p)
    xt = oracle.nhwc_to_nchw(x).requires_grad_()
    y_torch = twin(xt)
    upstream = rng.standard_normal((x.shape[0], *block.grid_out, block.c_out))
    y_torch.backward(oracle.nhwc_to_nchw(upstream))

    def objective(q, x_):
        return anp.sum(blocks.transformer_forward(q, x_, block, block_cfg) * upstream)

    grads_p, grad_x = grad(objective, argnum=(0, 1))(p, x)
    theirs = flatten(torch_grads_as_params(twin, p))
    errors = {k: mc.rel_error(v, theirs[k]) for k, v in flatten(grads_p).items()}
    errors["x"] = mc.rel_error(grad_x, oracle.nchw_to_nhwc(xt.grad))
    errors["forward"] = mc.rel_error(blocks.transformer_forward(p, x, block, block_cfg),
                                     oracle.nchw_to_nhwc(y_torch))
    return errors


for name, block in (("same", same), ("down", down)):
    for pool in ("max", "avg"):
        for variant in ("pre", "post"):
            if name == "same" and pool == "avg":
                continue  # no pool in a stride-1 block
            errors = check_block_against_torch(block, params[name], x_block,
                                               cfg.replace(pool=pool, variant=variant))
            worst = max(errors, key=errors.get)
            print(f"{name:4s} pool={pool} {variant:4s}: worst of {len(errors)} errors "
                  f"{errors[worst]:.1e} ({worst})")
            assert errors[worst] <= 1e-10, f"{name} {pool} {variant}: {errors}"

# %% [markdown]
# And finite differences, which use nothing but the forward pass: the VJP of the whole block
# with respect to its input, and with respect to both LayerNorms' $\gamma$ (the derivation of
# section 2, inside the block), against centred differences. Expected ~$10^{-9}$, required
# $\le 10^{-6}$.

# %%
x_small = rng.standard_normal((1, 4, 4, 8))
for name, block in (("same", same), ("down", down)):
    p = params[name]
    upstream = rng.standard_normal((1, *block.grid_out, block.c_out))
    vjp, _ = make_vjp(lambda x_, p=p, block=block: blocks.transformer_forward(p, x_, block, cfg))(
        x_small)
    errors = {"x": mc.rel_error(
        vjp(upstream),
        mc.numerical_vjp(lambda x_, p=p, block=block: blocks.transformer_forward(p, x_, block, cfg),
                         x_small, upstream))}
    for norm in ("norm1", "norm2"):
        def of_gamma(gm, p=p, block=block, norm=norm):
            return blocks.transformer_forward({**p, norm: {**p[norm], "gamma": gm}}, x_small,
                                              block, cfg)

        vjp_g, _ = make_vjp(of_gamma)(p[norm]["gamma"])
        errors[f"{norm}.gamma"] = mc.rel_error(
            vjp_g(upstream), mc.numerical_vjp(of_gamma, p[norm]["gamma"], upstream))
    print(f"{name}: VJP vs finite differences: "
          + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))
    assert max(errors.values()) <= 1e-6, f"{name}: {errors}"

# %% [markdown]
# ## 7. The pre-norm residual
#
# In $x \leftarrow x + F(\mathrm{LN}(x))$ the input reaches the output untouched by the norm:
# the branch only *adds* to it. Two consequences, checked exactly:
#
# * with the last layer of each branch zero ($W_{\text{out}}, b_{\text{out}}$ of attention,
#   $W_2, b_2$ of the FFN) a stride-1 block is the **identity**, whatever else its
#   parameters are;
# * its backward pass is then the identity too: $\partial L / \partial x = g$. In general
#   $\partial L / \partial x = g + J_F^\top g$, so the upstream gradient always passes
#   through a stack of blocks unchanged, plus what the branches add.
#
# (A post-norm block, $x \leftarrow \mathrm{LN}(x + F(x))$ as in the original Transformer,
# normalises the sum: it is not the identity even with $F = 0$.)

# %%
p_zero = {**params["same"]}
p_zero["attn"] = {**p_zero["attn"], "w_out": np.zeros((8, 8)), "b_out": np.zeros(8)}
p_zero["ffn"] = {**p_zero["ffn"], "fc2": {"w": np.zeros((32, 8)), "b": np.zeros(8)}}
y_zero = blocks.transformer_forward(p_zero, x_block, same, cfg)
vjp, _ = make_vjp(lambda x_: blocks.transformer_forward(p_zero, x_, same, cfg))(x_block)
g = rng.standard_normal(x_block.shape)
post_norm = mc.layer_norm(x_block + 0.0, np.ones(8), np.zeros(8))  # LN(x + F(x)) with F = 0
print("zero last layers: block(x) == x:", np.array_equal(y_zero, x_block),
      "| dL/dx == g:", np.array_equal(vjp(g), g),
      f"| post-norm LN(x + 0) vs x: {mc.rel_error(post_norm, x_block):.2f}")
assert np.array_equal(y_zero, x_block) and np.array_equal(vjp(g), g)
assert mc.rel_error(post_norm, x_block) > 0.1

# %% [markdown]
# ## 8. A trained block: attention maps and relative-bias tables on real digits
#
# Now the blocks of a real network: the `coatnet-digits` preset (C-C-T-T on the $8 \times 8$
# UCI digits that ship with the package; S3 is one Transformer block on a $4 \times 4$ grid
# with 2 heads, S4 one downsampling block to $2 \times 2$ with 4 heads), trained with the
# package's loop. CI trains briefly (3 epochs on 512 images); `MINICOAT_FULL=1` trains the full
# 15 epochs on all 1,294 training images (`minicoat train`'s default).

# %%
net_cfg = mc.config("coatnet-digits")
data = load_dataset("digits") if FULL else load_dataset("digits", train_subset=512)
hp = TrainConfig(epochs=15 if FULL else 3, batch_size=32, lr=2e-3, seed=0)
initial, _ = mc.init_params(net_cfg, seed=0)  # train() starts from the same seed
start = time.perf_counter()
result = train(net_cfg, data, hp, progress=False, log=lambda *a: None)
trained, trained_state = result["params"], result["state"]
print(f"{hp.epochs} epochs on {len(data.x_train)} images in {time.perf_counter() - start:.1f} s:"
      f" test accuracy {result['test_accuracy']:.4f}")
assert result["test_accuracy"] > (0.97 if FULL else 0.5), result["test_accuracy"]

# %% [markdown]
# To look inside, we run the network up to the input of a block, in evaluation mode, with the
# same functions `mc.forward` uses; running it to the end and applying the head must give
# `mc.forward`'s logits (required $\le 10^{-6}$ in float32):


# %%
def run_until(params, state, x, config, stop=None):
    """The feature map entering block ``stop`` (e.g. "s3.block0"), evaluation mode; with
    ``stop=None`` the logits."""
    h = x
    for block in mc.plan(config):
        if block.name == stop:
            return h
        stage, key = block.keys
        if block.kind == "stem":
            conv, norm = params["stem"][key], key.replace("conv", "norm")
            h = mc.conv2d(h, conv["w"], conv.get("b"), stride=block.stride)
            if norm in params["stem"]:
                h, _ = mc.batch_norm_gelu(h, **params["stem"][norm], running=state["stem"][norm],
                                          train=False, approximate=config.gelu)
        elif block.kind == "C":
            h, _ = blocks.mbconv_forward(params[stage][key], state[stage][key], h, block,
                                         config, train=False)
        else:
            h = blocks.transformer_forward(params[stage][key], h, block, config)
    head = params["head"]
    features = mc.layer_norm(mc.global_avg_pool(h), **head["norm"])
    return mc.linear(features, head["w"], head["b"])


images = data.x_test[:64]
logits, _ = mc.forward(trained, trained_state, images, net_cfg)
err = mc.rel_error(run_until(trained, trained_state, images, net_cfg), logits)
print(f"run_until(..., stop=None) vs mc.forward: {err:.1e}")
assert err <= 1e-6, err


# %%
def attention_maps(p, x, block, config):
    """Attention weights A (N, heads, T, T) of a trained block for its input x, and the
    content logits q k^T / sqrt(d) and the bias B that enter the softmax."""
    h = mc.layer_norm(x, **p["norm1"])
    if block.stride == 2:
        h = mc.max_pool2d(h) if config.pool == "max" else mc.avg_pool2d(h)
    n, gh, gw, c = h.shape
    qkv = mc.linear(h.reshape(n, gh * gw, c), p["attn"]["w_qkv"], p["attn"]["b_qkv"])
    q, k, _ = (t.reshape(n, gh * gw, block.heads, -1).transpose(0, 2, 1, 3)  # (N, heads, T, d)
               for t in np.split(qkv, 3, axis=-1))
    content = q @ k.transpose(0, 1, 3, 2) / math.sqrt(q.shape[-1])  # (N, heads, T, T)
    bias = p["attn"]["rel_bias"][:, mc.relative_position_index(gh, gw)]  # (heads, T, T)
    return mc.softmax(content + bias, axis=-1), content, bias


s3 = next(b for b in mc.plan(net_cfg) if b.name == "s3.block0")
s4 = next(b for b in mc.plan(net_cfg) if b.name == "s4.block0")
x_s3 = run_until(trained, trained_state, images, net_cfg, "s3.block0")  # (64, 4, 4, 64)
A3, content3, bias3 = attention_maps(trained["s3"]["block0"], x_s3, s3, net_cfg)
print("S3 attention:", A3.shape, "rows sum to 1:", np.allclose(A3.sum(-1), 1, atol=1e-5))
assert np.allclose(A3.sum(-1), 1, atol=1e-5)

# %% [markdown]
# The attention of S3 for one test digit: for four query tokens (the diagonal of the
# $4 \times 4$ grid, marked +), where each head looks, laid back onto the grid. Each map sums
# to 1.

# %%
digit = 0
queries = [(0, 0), (1, 1), (2, 2), (3, 3)]
fig, axes = plt.subplots(s3.heads, len(queries) + 1, figsize=(13, 5.2))
raw = data.x_test[digit, :, :, 0] * data.std[0] + data.mean[0]  # undo the normalisation
for row in range(s3.heads):
    axes[row, 0].imshow(raw, cmap="Greys")
    axes[row, 0].set_title(f"test digit {data.y_test[digit]} (8x8)", fontsize=9)
    for col, (qy, qx) in enumerate(queries, start=1):
        ax = axes[row, col]
        weights = A3[digit, row, qy * 4 + qx].reshape(4, 4)
        image = ax.imshow(weights, cmap="magma", vmin=0)
        ax.scatter([qx], [qy], marker="+", color="c", s=120)
        ax.set_title(f"head {row}, query {(qy, qx)}", fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.046)
plt.tight_layout()
plt.show()

# %% [markdown]
# The learned relative-bias tables, before and after training: S3's two $7 \times 7$ tables
# (offsets $y_i - y_j$ and $x_i - x_j$ from $-3$ to $3$) and S4's four $3 \times 3$ tables. The
# initial tables are $\mathcal{N}(0, 0.02^2)$ noise.

# %%
tables = {"s3": (s3, 7), "s4": (s4, 3)}
fig, axes = plt.subplots(2, 6, figsize=(16, 5.5))
for row, (which, params_) in enumerate((("initial", initial), ("learned", trained))):
    col = 0
    for stage, (block, side) in tables.items():
        table = params_[stage]["block0"]["attn"]["rel_bias"]
        for head in range(block.heads):
            ax = axes[row, col]
            half = side // 2
            image = ax.imshow(table[head].reshape(side, side), cmap="RdBu_r", vmin=-0.1,
                              vmax=0.1, extent=(-half - 0.5, half + 0.5, half + 0.5, -half - 0.5))
            ax.set_title(f"{which}: {stage} head {head}", fontsize=9)
            col += 1
fig.colorbar(image, ax=axes, fraction=0.02)
plt.show()

# %% [markdown]
# What the numbers say about these tables. The position bias enters the softmax next to the
# content logits $q k^\top / \sqrt{d}$; comparing their spreads over the test digits says
# which one decides where the heads look in this network:

# %%
x_s4 = run_until(trained, trained_state, images, net_cfg, "s4.block0")
A4, content4, bias4 = attention_maps(trained["s4"]["block0"], x_s4, s4, net_cfg)
moved = {}
for stage, content, bias in (("s3", content3, bias3), ("s4", content4, bias4)):
    table, table0 = (p_[stage]["block0"]["attn"]["rel_bias"] for p_ in (trained, initial))
    moved[stage] = np.abs(table - table0).max()
    ratio = bias.std() / content.std()
    print(f"{stage}: bias tables moved by at most {moved[stage]:.3f} from initialisation; "
          f"std of the bias {bias.std():.3f} vs std of the content logits {content.std():.3f} "
          f"(ratio {ratio:.3f})")
    assert ratio < 0.1, f"{stage}: the bias is not small next to the content ({ratio:.3f})"
assert max(moved.values()) > 0, "training did not touch the tables"

# %% [markdown]
# In this network, after this training, the relative-bias tables are small next to the content
# logits (the ratios printed above, asserted below 0.1): on a $4 \times 4$ and a $2 \times 2$
# grid, the heads decide where to look mostly from content. The tables did move (they are
# trained, asserted above), but little. Two likely reasons, not tested here: AdamW moves an
# entry by about the learning rate per step at most, and a table entry collects the gradients
# of many token pairs and images, which need not agree in sign. Written question 3 asks for an
# experiment that tells such reasons apart; exercise 4 counts how many token pairs train each
# entry.
#
# ## Summary
#
# | check | compared | expected | required |
# |---|---|---|---|
# | LayerNorm forward | by hand vs `mc.layer_norm`; vs torch (3 tiers) | ~1e-16 | 1e-12; 1e-10 |
# | LayerNorm Jacobian | the formula for $J$ vs autograd's `jacobian` | ~1e-16 | 1e-12 |
# | LayerNorm VJP | readable vs $J^\top d$; FD; torch | ~1e-16; ~1e-9; ~1e-16 | 1e-12; 1e-6; 1e-10 |
# | block by hand | notebook's halves vs `blocks.transformer_forward` | 0 | 1e-12 |
# | halves vs torch | attention half (both forms), FFN half, all gradients | ~1e-15 | 1e-10 |
# | block vs torch | `Transformer` twin, both pools, pre and post, all gradients | ~1e-15 | 1e-10 |
# | finite differences | the block's VJP for $x$ and both $\gamma$ | ~1e-9 | 1e-6 |
# | pre-norm | zero last layers: identity forward and backward | exact | exact |
# | trained network | `run_until` + head vs `mc.forward` | 0 | 1e-6 |
#
# ## Exercises
#
# Solutions are hidden below each exercise (click to open); try first.
#
# **1. RMSNorm.** Many recent Transformers replace LayerNorm by RMSNorm,
# $y = \gamma \odot x\, r$ with $r = (\overline{x^2} + \epsilon)^{-1/2}$ (no mean, no $\beta$).
# Derive its VJP for $x$ the way section 2 did, write it in NumPy, and check it against
# `autograd.grad` and `mc.numerical_vjp`.
#
# <details><summary>Solution (hidden)</summary>
#
# With $d = g \odot \gamma$ and $\hat x = x\, r$: $\partial r / \partial x_k = -r^3 x_k / C$, so
# $\partial L/\partial x = r\,(d - \hat x\, \overline{d \odot \hat x})$: the LayerNorm formula
# without the $\overline{d}$ term. In code:
# `r = 1 / np.sqrt((x**2).mean(-1, keepdims=True) + eps); x_hat = x * r;`
# `dx = r * (d - x_hat * (d * x_hat).mean(-1, keepdims=True))`.
#
# </details>
#
# **2. Count the parameters** of the downsampling block `down` ($8 \to 16$ channels, 4 heads,
# $4 \times 4 \to 2 \times 2$, FFN width 64) by hand, leaf by leaf, and check your total with
# `mc.count_params(params["down"])`.
#
# <details><summary>Solution (hidden)</summary>
#
# norm1 16; `w_qkv` 8·48 = 384 and `b_qkv` 48; `w_out` 16·16 = 256 and `b_out` 16;
# `rel_bias` 4 heads · 3·3 = 36 (the table is sized for the *pooled* 2×2 grid); norm2 32;
# fc1 16·64 + 64 = 1,088; fc2 64·16 + 16 = 1,040; `proj` 8·16 + 16 = 144. Total 3,060.
#
# </details>
#
# **3. Post-norm.** Write the post-norm block $x \leftarrow \mathrm{LN}(x + \mathrm{Attention}(x))$,
# $x \leftarrow \mathrm{LN}(x + \mathrm{FFN}(x))$ from the public ops. With the branches' last
# layers zero, compute $\partial L / \partial x$ for a random upstream $g$: how does it differ
# from $g$, and why?
#
# <details><summary>Solution (hidden)</summary>
#
# With zero branches the block is $\mathrm{LN}(\mathrm{LN}(x))$, so $\partial L/\partial x$ is
# $g$ pulled through two LayerNorm Jacobians: each token's gradient loses its mean and its
# component along $\hat x$ and is scaled by $s$ (the inverse of the token's standard deviation).
# The pre-norm block passes $g$ unchanged.
#
# </details>
#
# **4. Who trains a table entry?** On an $H \times W$ grid, how many token pairs $(i, j)$ use
# the entry of offset $(\Delta y, \Delta x)$? Check your formula with
# `np.bincount(mc.relative_position_index(4, 4).ravel())`.
#
# <details><summary>Solution (hidden)</summary>
#
# $(H - |\Delta y|)(W - |\Delta x|)$: 16 pairs for the centre of a 4×4 grid, 1 for each corner
# offset $(\pm 3, \pm 3)$. The corner entries get the gradient of one pair per head and image.
#
# </details>
#
# ## Written questions
#
# Answer in a few sentences each (in a markdown cell below each question).
#
# 1. LayerNorm has no running statistics and behaves the same in training and evaluation;
#    BatchNorm does not. Explain why from the two definitions.
# 2. In the downsampling block, why is the attention applied to $\mathrm{Pool}(\mathrm{LN}(x))$
#    rather than to $\mathrm{LN}(x)$ followed by pooling its output? Give the cost of each for a
#    $14 \times 14$ grid.
# 3. The learned tables of section 8 stay small next to the content logits. Name two reasons
#    for it in this setting, and one experiment that would tell them apart.
#
# Next: [05 · CoAtNet](05_coatnet.ipynb) stacks MBConv and Transformer blocks into the network.
