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
# # A1 · Depthwise convolution and its backward pass
#
# **Learning objectives.** After this assignment you can
# 1. write a strided, padded depthwise convolution as a sum over kernel taps of array
#    slices, without a loop over pixels;
# 2. derive its vector-Jacobian product by hand, and explain the "flip" of convolution
#    backprop;
# 3. make a function with a hand-written VJP differentiable by autograd (`primitive`,
#    `defvjp`).
#
# **Prerequisites.** NumPy slicing and broadcasting; the chain rule; what a gradient of a
# scalar loss with respect to an array means.
#
# **Time.** About 1.5 hours: 30 min forward, 45 min backward, 15 min for the questions.
#
# CoAtNet's convolutional blocks (MBConv) mix information *within* each channel with a
# depthwise convolution (Dai et al. 2021, arXiv 2106.04803, section 2.1, eq. 1):
#
# $$y_i = \sum_{j \in \mathcal{L}(i)} w_{i-j} \odot x_j$$
#
# where $\mathcal{L}(i)$ is the $k \times k$ window around pixel $i$ and every channel has its
# own $k \times k$ kernel: channels never mix. You will write
#
# 1. the forward pass `depthwise_conv2d(x, w, stride)`;
# 2. its backward pass **by hand**, the vector-Jacobian product `depthwise_conv2d_vjp`;
#
# and then plug the two into `autograd`, exactly as `minicoat/conv.py` does. The checks compare
# your code with minicoat, with PyTorch's `F.conv2d(..., groups=C)` and with finite
# differences, in float64: a correct answer agrees to about 1e-15.
#
# **Layout.** Arrays are channels-last: `x` is `(N, H, W, C)`, the kernel `w` is `(k, k, C)`.
# **Padding** is "same": `p = k // 2` zeros on each side of H and W. With stride `s`, the
# output has `H' = (H + 2p - k) // s + 1` rows (`H` for stride 1, `ceil(H / 2)` for stride 2).
#
# Sum over the $k^2$ *taps* $(d_i, d_j)$ of the kernel, with $x_{pad}$ the zero-padded input:
#
# $$y[n, i, j, c] = \sum_{d_i=0}^{k-1} \sum_{d_j=0}^{k-1}
#   w[d_i, d_j, c] \; x_{pad}[n,\, s i + d_i,\, s j + d_j,\, c]$$
#
# For one tap, $x_{pad}[n, s i + d_i, s j + d_j, c]$ over all $(n, i, j, c)$ is a single
# strided slice of `x_pad`, so the whole convolution is $k^2$ slices and multiply-adds over
# whole arrays: no loop over pixels. Like PyTorch, this indexes the kernel by tap (a
# cross-correlation); the paper's $w_{i-j}$ is the same thing with the kernel stored flipped.
# Do not flip the kernel.

# %%
import autograd
import autograd.numpy as anp
import numpy as np
from autograd.extend import defvjp, primitive

import minicoat as mc
from minicoat.assignments import checks


def output_size(n, k, stride):
    """Output length of a "same"-padded k-window with the given stride."""
    return (n + 2 * (k // 2) - k) // stride + 1


def tap_slices(di, dj, ho, wo, stride):
    """(rows, cols): the slices of ``x_pad`` that kernel tap (di, dj) multiplies.

    ``x_pad[:, rows, cols]`` has shape ``(N, ho, wo, C)``: entry ``[n, i, j, c]`` is
    ``x_pad[n, stride * i + di, stride * j + dj, c]``.
    """
    rows = slice(di, di + stride * (ho - 1) + 1, stride)
    cols = slice(dj, dj + stride * (wo - 1) + 1, stride)
    return rows, cols


# %% [markdown]
# ## 1. The forward pass
#
# Complete `depthwise_conv2d`. `np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))` pads H and W;
# `w[di, dj]` is the `(C,)` vector of tap `(di, dj)` and broadcasts over `(N, H', W', C)`.

# %%
def depthwise_conv2d(x, w, stride=1):
    """Depthwise k x k convolution, "same" padding: (N, H, W, C), (k, k, C) -> (N, H', W', C)."""
    n, h, wd, c = x.shape
    k = w.shape[0]
    p = k // 2
    ho, wo = output_size(h, k, stride), output_size(wd, k, stride)
    ### BEGIN SOLUTION
    # HINT: the equation above is a sum over the k*k taps; tap_slices gives each tap's slice
    # HINT: of the padded input
    x_pad = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))  # (N, H + 2p, W + 2p, C)
    y = np.zeros((n, ho, wo, c), dtype=x.dtype)
    for di in range(k):
        for dj in range(k):
            rows, cols = tap_slices(di, dj, ho, wo, stride)
            y += x_pad[:, rows, cols] * w[di, dj]  # (N, H', W', C) * (C,)
    return y
    ### END SOLUTION


# %% tags=["check"]
# Expected: error ~1e-16 against PyTorch and minicoat (pass mark 1e-10).
print(checks.check_depthwise_forward(depthwise_conv2d))
print(checks.check_depthwise_forward(depthwise_conv2d, stride=2))
### BEGIN HIDDEN TESTS
print(checks.check_depthwise_forward(depthwise_conv2d, shape=(1, 7, 4, 2), k=5, stride=2, seed=1))
print(checks.check_depthwise_forward(depthwise_conv2d, shape=(3, 1, 5, 1), k=1, seed=2))
print(checks.check_depthwise_forward(depthwise_conv2d, shape=(2, 4, 4, 5), k=3, stride=2, seed=3))
### END HIDDEN TESTS

# %% [markdown]
# ## 2. The backward pass, by hand
#
# Inside a network, the layer receives the gradient of the loss with respect to its output,
# $g = \partial L / \partial y$ of shape `(N, H', W', C)`, and must return the gradients with
# respect to its inputs: the vector-Jacobian product (VJP). Differentiate the tap sum:
#
# $$\frac{\partial L}{\partial w[d_i, d_j, c]} = \sum_{n, i, j} g[n, i, j, c] \;
#   x_{pad}[n, s i + d_i, s j + d_j, c]$$
#
# $$\frac{\partial L}{\partial x_{pad}}[n, s i + d_i, s j + d_j, c] \mathrel{+}=
#   g[n, i, j, c] \; w[d_i, d_j, c] \quad \text{for every tap}$$
#
# and $\partial L / \partial x$ is $\partial L / \partial x_{pad}$ without its padding. Each tap
# *read* one slice of `x_pad` in the forward pass; in the backward pass it *adds* into that
# same slice. For stride 1 the result is a convolution of $g$ with the kernel flipped,
# `w[::-1, ::-1]`: the famous "flip" of convolution backprop, and a classic bug to forget.
#
# Complete `depthwise_conv2d_vjp` with plain NumPy (no autograd here: that is the point).

# %%
def depthwise_conv2d_vjp(x, w, g, stride=1):
    """Gradients of ``sum(depthwise_conv2d(x, w, stride) * g)``: returns (dx, dw).

    Args:
        x: (N, H, W, C); w: (k, k, C); g: (N, H', W', C), the upstream gradient.

    Returns:
        dx of shape (N, H, W, C) and dw of shape (k, k, C).
    """
    n, h, wd, c = x.shape
    k = w.shape[0]
    p = k // 2
    ho, wo = g.shape[1:3]
    ### BEGIN SOLUTION
    # HINT: loop over the taps as in the forward pass and apply the two equations above;
    # HINT: the padding is not part of x
    x_pad = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))  # (N, H + 2p, W + 2p, C)
    dx_pad = np.zeros_like(x_pad)
    dw = np.zeros_like(w)
    for di in range(k):
        for dj in range(k):
            rows, cols = tap_slices(di, dj, ho, wo, stride)
            dw[di, dj] = np.sum(x_pad[:, rows, cols] * g, axis=(0, 1, 2))  # (C,)
            dx_pad[:, rows, cols] += g * w[di, dj]  # (N, H', W', C)
    dx = dx_pad[:, p : p + h, p : p + wd]  # (N, H, W, C)
    return dx, dw
    ### END SOLUTION


# %% tags=["check"]
# Expected: error ~1e-16 against PyTorch and minicoat, ~1e-9 against finite differences.
print(checks.check_depthwise_vjp(depthwise_conv2d_vjp))
print(checks.check_depthwise_vjp(depthwise_conv2d_vjp, stride=2))
### BEGIN HIDDEN TESTS
print(checks.check_depthwise_vjp(depthwise_conv2d_vjp, shape=(1, 7, 4, 2), k=5, stride=2, seed=1))
print(checks.check_depthwise_vjp(depthwise_conv2d_vjp, shape=(2, 3, 5, 2), k=5, seed=2))
print(checks.check_depthwise_vjp(depthwise_conv2d_vjp, shape=(1, 6, 6, 3), k=3, stride=2, seed=3))
### END HIDDEN TESTS

# %% [markdown]
# ## 3. Your VJP inside autograd
#
# `autograd.extend.primitive` makes a function opaque to autograd and `defvjp` tells autograd
# how to pull a gradient back through it, one VJP per argument. That is how minicoat's fast
# `depthwise_conv2d` is differentiable; here your two functions take its place.

# %%
@primitive
def my_depthwise_conv2d(x, w):
    return depthwise_conv2d(x, w)


defvjp(
    my_depthwise_conv2d,
    lambda y, x, w: lambda g: depthwise_conv2d_vjp(x, w, g)[0],  # d/dx
    lambda y, x, w: lambda g: depthwise_conv2d_vjp(x, w, g)[1],  # d/dw
)

rng = np.random.default_rng(0)
x_demo, w_demo = rng.standard_normal((2, 6, 6, 4)), rng.standard_normal((3, 3, 4))
ours = autograd.grad(lambda w: anp.sum(anp.tanh(my_depthwise_conv2d(x_demo, w))))(w_demo)
minicoat = autograd.grad(lambda w: anp.sum(anp.tanh(mc.depthwise_conv2d(x_demo, w))))(w_demo)
print("d loss / d w, yours vs minicoat's: relative error", mc.rel_error(ours, minicoat))

# %% [markdown]
# ## Exercises (not graded)
#
# **E1.** For stride 1, show that your `dx` equals a depthwise convolution of `g` with the
# kernel flipped in both spatial axes: compute both and print their relative error.

# %%
rng = np.random.default_rng(1)
x_e, w_e = rng.standard_normal((2, 5, 5, 3)), rng.standard_normal((3, 3, 3))
g_e = rng.standard_normal((2, 5, 5, 3))
### BEGIN SOLUTION
dx_e = depthwise_conv2d_vjp(x_e, w_e, g_e)[0]
flipped = depthwise_conv2d(g_e, w_e[::-1, ::-1])
print("dx vs the flipped-kernel convolution of g:", mc.rel_error(dx_e, flipped))
assert mc.rel_error(dx_e, flipped) < 1e-12
### END SOLUTION

# %% [markdown]
# ## Written questions
#
# **Q1.** Why is the backward pass of a stride-1 cross-correlation a convolution with the
# kernel flipped? Why does that stop being a plain convolution for stride 2?

# %% [markdown] tags=["answer"]
# Output $i$ reads input $i + d$ with weight $w[d]$, so input $j$ receives gradient from the
# outputs $i = j - d$, with the same weight: $dx[j] = \sum_d g[j - d] w[d]$, a sum whose index
# runs the other way, i.e. a cross-correlation of $g$ with $w$ flipped. With stride 2 only
# every other input position is read by output $i$ at a given tap, so the gradient is the
# flipped convolution of $g$ *dilated* with zeros between its entries (a transposed
# convolution), not a plain one.

# %% [markdown]
# **Q2.** A depthwise convolution of C channels with a k x k kernel has how many parameters
# and multiply-adds per output position, compared with a full k x k convolution from C to C
# channels? What does CoAtNet give up by using it, and how does the MBConv block make up for
# it?

# %% [markdown] tags=["answer"]
# Depthwise: $k^2 C$ parameters and $k^2 C$ multiply-adds per position; full: $k^2 C^2$ of
# each, C times more. Depthwise never mixes channels; MBConv mixes them with the 1x1
# expansion and projection around it (and squeeze-excitation), which cost $O(C^2)$ per
# position without the $k^2$ factor.
