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
# # 01 · Depthwise convolution: the "Co" in CoAtNet
#
# CoAtNet (Dai et al. 2021, [arXiv 2106.04803](https://arxiv.org/abs/2106.04803)) starts from
# one observation: a **depthwise convolution** and **self-attention** are both weighted sums
# over positions. This notebook takes the convolution half apart:
#
# 1. the paper's equation (1), written as a naive loop over pixels;
# 2. the vectorised "one slice per kernel tap" version in `minicoat`, and the three
#    implementations every op of minicoat has (traced, readable, fast);
# 3. the hand-written backward pass (the vector-Jacobian product, VJP), derived step by step and
#    checked three ways: against autograd's traced gradient, finite differences and PyTorch;
# 4. a timing comparison of the three implementations;
# 5. pictures of kernels *learned* by gradient descent.
#
# Source: [`minicoat/ops/conv.py`](../minicoat/ops/conv.py), the file a student reads; the fast
# kernel is in [`minicoat/kernels/conv.py`](../minicoat/kernels/conv.py). Everything below runs
# in a few seconds.
#
# **Learning objectives.** After this notebook you can
#
# 1. write the paper's eq. (1), a depthwise convolution, as a loop and as nine shifted slices;
# 2. derive its vector-Jacobian product for $x$ and $w$, and check a VJP three ways (autograd's
#    traced gradient, finite differences, PyTorch);
# 3. say what the three implementations (traced, readable, fast) are and why they agree;
# 4. read a learning rate's stability off the curvature (Hessian) of a quadratic loss.
#
# **Prerequisites.** NumPy slicing and broadcasting; convolution as a weighted sum over a
# window; the chain rule. No earlier notebook.
#
# **Time.** About 45 minutes to read and run, plus 30-60 minutes for the exercises at the end.

# %%
import inspect
import time

import autograd.numpy as anp  # NumPy traced by autograd: for functions we differentiate
import matplotlib.pyplot as plt
import numpy as np  # plain NumPy for everything else
import torch
from autograd import grad, make_vjp
from IPython.display import Code

import minicoat as mc
from minicoat.ops import conv as conv_ops  # the teaching tier's convolutions
from minicoat.oracle import ops as oracle


def show(function):
    """The source of one of minicoat's functions, as the package has it."""
    return Code(inspect.getsource(function), language="python")

torch.set_num_threads(1)  # tiny tensors: one thread is fastest, and immune to a busy machine

# %% [markdown]
# ## 1. The equation
#
# Section 2.1 of the paper writes the depthwise convolution at output position $i$ as
#
# $$
# y_i = \sum_{j \in \mathcal{L}(i)} w_{i-j} \odot x_j \qquad (1)
# $$
#
# where $x_j, y_i \in \mathbb{R}^C$ are the feature vectors at positions $j$ and $i$,
# $\mathcal{L}(i)$ is the $k \times k$ neighbourhood of $i$ (here $3 \times 3$), and
# $w_{i-j} \in \mathbb{R}^C$ is a weight vector that depends **only on the offset** $i - j$.
# The product $\odot$ is elementwise: channel $c$ of $y$ only sees channel $c$ of $x$
# ("depthwise": the channels never mix).
#
# Two things to notice, because attention will be compared against them in notebook 03:
#
# * the weight is **static** (it does not depend on the input values) and **local**
#   ($j$ ranges over a small window);
# * it depends on $i - j$ only, so shifting the input shifts the output (away from the
#   image border): **translation equivariance**.
#
# **Arrays.** minicoat is channels-last: `x` is `(N, H, W, C)`, the kernel `w` is `(k, k, C)`.
# The kernel entry `w[a, b]` (a *tap*) is the weight for the input pixel at offset
# $(a - p,\ b - p)$ from the output pixel, with $p = \lfloor k/2 \rfloor$. So the paper's
# $w_{i-j}$ is our `w[p - (i - j)]`: a flip of the index, the usual difference between a
# mathematical convolution and the cross-correlation that deep-learning libraries (and
# PyTorch) compute.
# Because the kernel is learned, the flip changes nothing.
#
# Positions outside the image count as zero ("same" padding of $p$ pixels), and with stride
# $s$ only every $s$-th output position is kept: the output is
# $\lceil H/s \rceil \times \lceil W/s \rceil$.
#
# ## 2. Three implementations that must agree
#
# ### 2a. The naive loop over pixels
#
# Written straight from equation (1): for every output pixel, walk over the window and add
# `w[a, b] * x[input pixel]`. The only vectorisation is over the batch `N` and channels `C`,
# which eq. (1) treats independently anyway.


# %%
def depthwise_naive(x, w, stride=1):
    """Eq. (1) by loops: (N, H, W, C), (k, k, C) -> (N, ceil(H/s), ceil(W/s), C)."""
    n, h, wd, c = x.shape
    k = w.shape[0]
    p = k // 2
    ho, wo = (h - 1) // stride + 1, (wd - 1) // stride + 1  # ceil(H / s), ceil(W / s)
    y = np.zeros((n, ho, wo, c), dtype=x.dtype)
    for i in range(ho):  # output row
        for j in range(wo):  # output column
            for a in range(k):  # kernel row (tap)
                for b in range(k):  # kernel column (tap)
                    row, col = stride * i + a - p, stride * j + b - p  # input pixel under the tap
                    if 0 <= row < h and 0 <= col < wd:  # outside the image: zero padding
                        y[:, i, j, :] += w[a, b, :] * x[:, row, col, :]  # (N, C) * (C,)
    return y


# %% [markdown]
# A small float64 problem with odd sizes, so that the "ceil" rule for stride 2 is exercised.

# %%
rng = np.random.default_rng(0)
x = rng.standard_normal((2, 7, 6, 3))  # (N, H, W, C)
w = rng.standard_normal((3, 3, 3))  # (k, k, C)
for stride in (1, 2):
    print(f"stride {stride}: x {x.shape} -> y {depthwise_naive(x, w, stride).shape}")

# %% [markdown]
# ### 2b. The vectorised tap version (`depthwise_conv2d_traced`)
#
# Swap the loops: instead of "for every pixel, for every tap", do "for every tap, for every
# pixel at once". Tap $(a, b)$ multiplies *every* output pixel by the input pixel at the same
# offset, i.e. by a **shifted copy of the whole (padded) input**. With the input zero-padded
# once, that shifted copy is just a strided slice:
#
# $$
# y = \sum_{a=0}^{k-1} \sum_{b=0}^{k-1} \operatorname{shift}_{a,b}(x_{\text{pad}}) \odot w_{a,b},
# \qquad
# \operatorname{shift}_{a,b}(x_{\text{pad}}) = x_{\text{pad}}[:,\ a : a + s(H'-1)+1 : s,\
#   b : b + s(W'-1)+1 : s,\ :]
# $$
#
# Nine array-wide multiply-adds for a $3 \times 3$ kernel, no Python loop over pixels. In
# minicoat, `tap(x_pad, di, dj, ho, wo, stride)` is that slice, and this is the forward pass,
# written with `autograd.numpy` (`np` in the package) so that autograd can differentiate it by
# tracing every slice and multiply:

# %%
show(conv_ops.depthwise_conv2d_traced)

# %% [markdown]
# ### 2c. Three implementations, one switch
#
# Every op of minicoat exists three times, and `mc.implementation(...)` picks which one runs:
#
# * `"traced"`: the forward above; autograd differentiates it by reversing every traced step;
# * `"readable"`: the same forward with the backward pass written by hand beside it
#   (`depthwise_conv2d_backward`, section 3), in plain NumPy, written to be read;
# * `"fast"` (the default): a kernel from `minicoat/kernels/`, blocked over images and tuned,
#   proven equal to the other two.
#
# **Check.** All compute the same sums, only in a different order, so they should agree with
# the naive loop to float64 round-off: about $10^{-16}$ relative. We require $\le 10^{-12}$.

# %%
for stride in (1, 2):
    y_naive = depthwise_naive(x, w, stride)
    for implementation in ("traced", "readable", "fast"):
        with mc.implementation(implementation):
            y = mc.depthwise_conv2d(x, w, stride)
        err = mc.rel_error(y, y_naive)
        print(f"stride {stride}: {implementation:8s} vs naive {err:.1e}")
        assert err <= 1e-12, (
            f"stride {stride}: naive {y_naive.ravel()[:3]} vs {implementation} {y.ravel()[:3]}; "
            f"error {err:.2e}"
        )

# %% [markdown]
# `mc.rel_error(a, b)` is the **normwise** relative error $\|a - b\| / \max(\|a\|, \|b\|)$:
# one number for the whole array, not thrown off by entries that happen to be near zero (see
# [docs/oracle.md](../docs/oracle.md)).
#
# ## 3. The backward pass, by hand
#
# Inside a network the convolution receives the gradient of the loss with respect to its
# output, $g = \partial L / \partial y$, shape `(N, H', W', C)`, and must return
# $\partial L / \partial x$ and $\partial L / \partial w$. That is a **vector-Jacobian
# product**: $g$ times the Jacobian of $y$, without ever forming the Jacobian.
#
# Take one tap, $y \mathrel{+}= \operatorname{shift}_{a,b}(x_{\text{pad}}) \odot w_{a,b}$, and
# differentiate it piece by piece.
#
# **Step 1, with respect to the shifted input.** The term is an elementwise product with
# $w_{a,b}$ broadcast over pixels, so
# $\partial L / \partial\, \operatorname{shift}_{a,b}(x_{\text{pad}}) = g \odot w_{a,b}$.
#
# **Step 2, through the slice.** A slice *reads* some entries of $x_{\text{pad}}$; its adjoint
# *adds* into the same entries and leaves the others alone:
#
# $$
# dx_{\text{pad}}[\operatorname{slice}_{a,b}] \mathrel{+}= g \odot w_{a,b}.
# $$
#
# "+=" because every input pixel is read by several taps (nine at stride 1) and each
# contributes to the loss: the contributions add up (the multivariable chain rule).
#
# **Step 3, through the padding.** Padding *adds* zeros around $x$; its adjoint *removes* them:
# $dx = dx_{\text{pad}}[:,\ p : p + H,\ p : p + W,\ :]$. The gradient that landed on the padding
# is thrown away, because the padding is a constant, not an input.
#
# **Step 4, with respect to the kernel.** $w_{a,b}[c]$ multiplies every pixel of
# channel $c$ of the shifted input, so its gradient sums over all of them:
#
# $$
# dw_{a,b}[c] = \sum_{n, i, j} \operatorname{shift}_{a,b}(x_{\text{pad}})[n, i, j, c]\;
#   g[n, i, j, c].
# $$
#
# In short: **the backward pass runs the same taps in reverse**, `dx[shift] += g * w` and
# `dw = sum(shift(x) * g)`. Here it is as the package has it, beside the forward in
# `minicoat/ops/conv.py`: the readable implementation is this function, turned into an autograd
# primitive by `with_vjp(depthwise_conv2d_traced, depthwise_conv2d_backward)`.

# %%
show(conv_ops.depthwise_conv2d_backward)

# %% [markdown]
# ### Check 1: the hand-written VJP vs autograd's traced VJP
#
# `make_vjp(f)(x)` returns the VJP function of `f` at `x` and the value `f(x)`. Under
# `"traced"`, autograd builds the VJP by reversing every traced slice, pad and multiply; under
# `"readable"` it calls `depthwise_conv2d_backward`, and under `"fast"` the kernel's. We also
# call `depthwise_conv2d_backward(g, x, w, stride)` directly, the way you would test your own.
# Same arithmetic, possibly in another order: expected error ~$10^{-16}$, required $\le 10^{-12}$.


# %%
def autograd_vjp(implementation, x, w, g, stride):
    """(dx, dw) = g pulled back through the convolution at (x, w), by autograd."""
    with mc.implementation(implementation):
        vjp, _ = make_vjp(lambda x_, w_: mc.depthwise_conv2d(x_, w_, stride), argnum=(0, 1))(x, w)
        return vjp(g)


for stride in (1, 2):
    g = rng.standard_normal(mc.depthwise_conv2d(x, w, stride).shape)  # a random upstream gradient
    traced = autograd_vjp("traced", x, w, g, stride)
    results = {
        "readable": autograd_vjp("readable", x, w, g, stride),
        "fast": autograd_vjp("fast", x, w, g, stride),
        "the function": conv_ops.depthwise_conv2d_backward(g, x, w, stride)[:2],
    }
    for label, (dx, dw) in results.items():
        err_x, err_w = mc.rel_error(dx, traced[0]), mc.rel_error(dw, traced[1])
        print(f"stride {stride}: {label:12s} vs traced: dx {err_x:.1e}, dw {err_w:.1e}")
        assert max(err_x, err_w) <= 1e-12, (
            f"stride {stride} {label}: dx {dx.ravel()[:3]} vs traced {traced[0].ravel()[:3]}, "
            f"dw {dw.ravel()[:3]} vs {traced[1].ravel()[:3]}; errors {err_x:.2e}, {err_w:.2e}"
        )

# %% [markdown]
# ### Check 2: finite differences
#
# Autograd could share a mistake with us (both read the same forward code). Finite
# differences need nothing but the forward pass: `mc.numerical_vjp(f, x, g)` nudges every
# entry of `x` by $\pm\varepsilon = 10^{-6}$ and measures
# $\big(\sum g \odot f(x + \varepsilon e) - \sum g \odot f(x - \varepsilon e)\big) / 2\varepsilon$.
# Its truncation error is $O(\varepsilon^2) \approx 10^{-12}$ (exactly zero here: the
# convolution is linear in $x$ and in $w$) and its round-off $O(10^{-16}/\varepsilon) \approx
# 10^{-10}$ per entry, in float64: expected error ~$10^{-9}$, required $\le 10^{-6}$.


# %%
def finite_difference_vjp(x, w, g, stride):
    """(dx, dw) from the forward pass alone: 2 evaluations per entry of x and of w."""
    dx = mc.numerical_vjp(lambda x_: mc.depthwise_conv2d(x_, w, stride), x, g)
    dw = mc.numerical_vjp(lambda w_: mc.depthwise_conv2d(x, w_, stride), w, g)
    return dx, dw


for stride in (1, 2):
    g = rng.standard_normal(mc.depthwise_conv2d(x, w, stride).shape)
    exact = conv_ops.depthwise_conv2d_backward(g, x, w, stride)[:2]
    numeric = finite_difference_vjp(x, w, g, stride)
    for name, ours, fd in zip(("dx", "dw"), exact, numeric, strict=True):
        err = mc.rel_error(ours, fd)
        print(f"stride {stride} {name}: hand VJP vs finite differences {err:.1e}")
        assert err <= 1e-6, (
            f"stride {stride} {name}: ours {ours.ravel()[:3]} vs finite differences "
            f"{fd.ravel()[:3]}; error {err:.2e}"
        )

# %% [markdown]
# ### Check 3: the PyTorch oracle
#
# Finally an implementation written by someone else: PyTorch's grouped convolution,
# `F.conv2d(x, w, padding=k // 2, groups=C)` with one group per channel. It works in NCHW with
# kernels `(C, 1, k, k)`, so the arrays are converted at the boundary
# (`FEATURE_MAP`, `DEPTHWISE_KERNEL` layouts). `oracle.compare` runs both ops on the same
# inputs, pulls one random upstream gradient back through both (autograd on our side,
# `torch.autograd` on theirs) and returns the relative errors of the output and of every
# input's gradient. Different libraries sum in different orders: expected ~$10^{-15}$,
# required $\le 10^{-10}$. We check the readable and the fast implementation.


# %%
def compare_with_torch(x, w, stride):
    return oracle.compare(
        lambda x, w: mc.depthwise_conv2d(x, w, stride),  # ours, NHWC
        lambda x, w: oracle.depthwise_conv2d(x, w, stride),  # F.conv2d(groups=C), NCHW
        {"x": x, "w": w},
        layouts={"x": oracle.FEATURE_MAP, "w": oracle.DEPTHWISE_KERNEL},
        output=oracle.FEATURE_MAP,
    )


for implementation in ("readable", "fast"):
    for stride in (1, 2):
        with mc.implementation(implementation):
            result = compare_with_torch(x, w, stride)
        print(
            f"{implementation:8s} stride {stride}: output {result.forward:.1e}, "
            f"dx {result.grads['x']:.1e}, dw {result.grads['w']:.1e}"
        )
        assert result.worst <= 1e-10, f"{implementation} stride {stride}: vs torch {result}"

# %% [markdown]
# ## 4. Why three implementations? Timing
#
# The traced implementation is the definition; autograd records every operation (nine slices,
# nine multiplies, nine adds, the pad) and replays each one backwards, allocating a fresh zero
# array for every slice's gradient. The readable one runs the backward above, one loop of
# updates. The fast kernel does the same arithmetic on a few images at a time, so that they
# stay in the cache, and computes the stride-1 input gradient as a convolution with the flipped
# kernel ([docs/performance.md](../docs/performance.md)). A forward plus backward pass at a
# typical training shape, float32 (the numbers depend on the machine; they are printed, not
# checked):

# %%
x_big = rng.standard_normal((8, 32, 32, 64)).astype(np.float32)  # (N, H, W, C)
w_big = rng.standard_normal((3, 3, 64)).astype(np.float32)
g_big = rng.standard_normal(x_big.shape).astype(np.float32)


def forward_and_backward():
    vjp, _ = make_vjp(lambda x_, w_: mc.depthwise_conv2d(x_, w_), argnum=(0, 1))(x_big, w_big)
    return vjp(g_big)  # (dx, dw)


for implementation in ("traced", "readable", "fast"):
    times = []
    with mc.implementation(implementation):
        for _ in range(3):
            start = time.perf_counter()
            forward_and_backward()
            times.append(time.perf_counter() - start)
    print(f"{implementation:8s}: {1000 * min(times):6.1f} ms (best of 3)")

# %% [markdown]
# ## 5. Learned kernels
#
# A depthwise kernel is a tiny image per channel. Here are four classic $3 \times 3$ filters,
# one per channel, and what each does to a picture of a square and a disc:

# %%
sobel_x = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
kernel_names = ["Sobel x (vertical edges)", "Sobel y (horizontal edges)", "Laplacian", "blur"]
w_true = np.stack(
    [
        sobel_x,
        sobel_x.T,
        np.array([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]),
        np.array([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16.0,
    ],
    axis=-1,
)  # (3, 3, 4): channel c holds kernel c

rows, cols = np.mgrid[0:32, 0:32]
picture = ((abs(rows - 10) < 6) & (abs(cols - 10) < 6)) | ((rows - 20) ** 2 + (cols - 21) ** 2 < 49)
picture = np.repeat(picture.astype(float)[None, :, :, None], 4, axis=-1)  # (1, 32, 32, 4)
filtered = mc.depthwise_conv2d(picture, w_true)  # (1, 32, 32, 4)

fig, axes = plt.subplots(1, 5, figsize=(14, 3))
axes[0].imshow(picture[0, :, :, 0], cmap="gray")
axes[0].set_title("input (every channel)")
for c in range(4):
    limit = np.abs(filtered[0, :, :, c]).max()  # symmetric colour scale: white is 0
    axes[c + 1].imshow(filtered[0, :, :, c], cmap="RdBu_r", vmin=-limit, vmax=limit)
    axes[c + 1].set_title(kernel_names[c], fontsize=9)
for ax in axes:
    ax.axis("off")
plt.show()

# %% [markdown]
# Now pretend we do not know the kernels. We see only input/output pairs $(x, y)$ with
# $y = \mathrm{DWConv}(x; w_{\text{true}})$, and fit $w$ by gradient descent on the mean
# squared error
#
# $$
# L(w) = \frac{1}{|y|} \sum \big(\mathrm{DWConv}(x; w) - y\big)^2 .
# $$
#
# The gradient comes from autograd through the hand-written VJP (the fast one, by default). The
# inputs are white noise: every offset of the kernel is then "visible" in the data, the problem
# is a well-conditioned least-squares fit, and the kernel is recovered exactly (up to the
# optimisation's convergence).
#
# How large may the learning rate be? $L$ is quadratic in $w$, so gradient descent
# $w \leftarrow w - \eta \nabla L$ multiplies the error $w - w_{\text{true}}$ by $I - \eta H$
# at every step, with $H$ the Hessian of $L$. It converges if and only if
# $|1 - \eta \lambda| < 1$ for every eigenvalue $\lambda$ of $H$, i.e. $\eta < 2 /
# \lambda_{\max}$, and its worst-case rate is best at $\eta^* = 2 / (\lambda_{\min} +
# \lambda_{\max})$. For unit-variance noise each channel's 9 weights see $N H W$ pixels of
# variance 1, and the $1/|y|$ in $L$ spreads over all $C$ channels: $H \approx \frac{2}{C} I$,
# a little less because the zero padding hides some taps at the border. Since $L$ is
# quadratic, differences of its gradient give $H$ exactly:

# %%
x_train = rng.standard_normal((8, 16, 16, 4))  # (N, H, W, C) white noise
y_train = mc.depthwise_conv2d(x_train, w_true)


def loss(w):
    diff = mc.depthwise_conv2d(x_train, w) - y_train
    return anp.sum(diff * diff) / diff.size


loss_grad = grad(loss)
unit = np.eye(w_true.size).reshape(-1, *w_true.shape)  # (36, 3, 3, 4): one weight at a time
zero = np.zeros_like(w_true)
hessian = np.stack([(loss_grad(e) - loss_grad(zero)).ravel() for e in unit], axis=1)  # (36, 36)
eigenvalues = np.linalg.eigvalsh(hessian)
C_train = x_train.shape[-1]
inside = (3 * 16 - 2) / (3 * 16)  # per axis: the fraction of a 3-tap window inside 16 pixels
lam_min, lam_max = eigenvalues.min(), eigenvalues.max()
print(f"eigenvalues of H: {lam_min:.3f} .. {lam_max:.3f}, mean {eigenvalues.mean():.4f}; "
      f"2/C = {2 / C_train}, 2/C x (taps inside)^2 = {2 / C_train * inside**2:.4f}")
print(f"converges for eta < 2/lambda_max = {2 / lam_max:.2f}; "
      f"fastest worst-case rate at eta* = {2 / (lam_min + lam_max):.2f}")
assert np.abs(hessian - hessian.T).max() <= 1e-12, "a Hessian is symmetric"
assert 0.3 < lam_min and lam_max < 0.6, f"eigenvalues {lam_min:.3f} .. {lam_max:.3f}"
# the sample's x^2 averages 1 only to about 2% (8,192 independent pixels): 5% is 3 sigma
assert abs(eigenvalues.mean() / (2 / C_train * inside**2) - 1) <= 0.05, eigenvalues.mean()


def descend(lr, steps, seed=1):
    """Gradient descent from a random start: the losses after each step."""
    w = 0.1 * np.random.default_rng(seed).standard_normal(w_true.shape)
    history = []
    for _ in range(steps):
        w = w - lr * loss_grad(w)
        history.append(loss(w))
    return history


below, above = descend(0.95 * 2 / lam_max, 40), descend(1.05 * 2 / lam_max, 40)
print(f"eta = 0.95 x 2/lambda_max: loss {below[0]:.2e} -> {below[-1]:.2e} after 40 steps; "
      f"eta = 1.05 x 2/lambda_max: {above[0]:.2e} -> {above[-1]:.2e}")
assert below[-1] < 1e-2 * below[0] and above[-1] > above[0], "the bound 2/lambda_max"
assert 3 < 2 / lam_max < 4 and 1.9 < 2 / (lam_min + lam_max) < 2.4  # the text's numbers

# %% [markdown]
# So every rate below $2 / \lambda_{\max}$, between 3 and 4 here, converges, and about 2 is
# fastest (far above the "below 1" that $H \approx 2I$ would give); we take a cautious
# $\eta = 0.45$, with which the slowest direction shrinks by $1 - 0.45\,\lambda_{\min}$ per
# step.

# %%
w_learned = 0.1 * rng.standard_normal(w_true.shape)  # a random start
snapshots, losses = {0: w_learned}, []
for step in range(1, 101):
    w_learned = w_learned - 0.45 * loss_grad(w_learned)  # gradient descent, learning rate 0.45
    losses.append(loss(w_learned))
    if step in (2, 5, 100):
        snapshots[step] = w_learned
print(f"loss after 100 steps: {losses[-1]:.1e}")

# %% [markdown]
# Rows: the random start, a few steps in, the end, and the truth. Each column is one channel's
# kernel, drawn with a symmetric colour scale (red positive, blue negative).

# %%
fig, axes = plt.subplots(5, 4, figsize=(8, 10))
for r, (label, kernels) in enumerate(
    [(f"step {s}", snapshots[s]) for s in (0, 2, 5, 100)] + [("true", w_true)]
):
    for c in range(4):
        ax = axes[r, c]
        limit = np.abs(w_true[:, :, c]).max()
        ax.imshow(kernels[:, :, c], cmap="RdBu_r", vmin=-limit, vmax=limit)
        ax.set_xticks([])
        ax.set_yticks([])
        if c == 0:
            ax.set_ylabel(label)
        if r == 0:
            ax.set_title(kernel_names[c], fontsize=8)
plt.tight_layout()
plt.show()

plt.figure(figsize=(5, 3))
plt.semilogy(np.arange(1, 101), losses)
plt.xlabel("gradient-descent step")
plt.ylabel("mean squared error")
plt.title("fitting the kernels")
plt.show()

# %% [markdown]
# The error shrinks by a constant factor per step (a straight line on the log scale), as
# gradient descent does on a well-conditioned quadratic: at the end, the loss (the square of
# the error) falls by $(1 - \eta \lambda_{\min})^2$ per step, the slowest direction's factor
# (required within 5%). After 100 steps the learned kernels match the true ones to better than
# $10^{-6}$:

# %%
late_factor, predicted = losses[-1] / losses[-2], (1 - 0.45 * lam_min) ** 2
print(f"loss ratio per step at the end {late_factor:.3f}; "
      f"(1 - 0.45 lambda_min)^2 = {predicted:.3f}")
assert abs(late_factor / predicted - 1) <= 0.05, (late_factor, predicted)
err = np.abs(w_learned - w_true).max()
assert err <= 1e-6, (
    f"learned vs true kernels differ by {err:.2e};\nlearned channel 0:\n{w_learned[:, :, 0]}\n"
    f"true channel 0:\n{w_true[:, :, 0]}"
)
print(f"largest difference learned vs true: {err:.1e}")

# %% [markdown]
# ## Summary
#
# | check | compared | expected | required |
# |---|---|---|---|
# | forward | naive loop vs the traced, readable and fast implementations | ~1e-16 | 1e-12 |
# | hand VJP | readable, fast and `depthwise_conv2d_backward` vs traced | ~1e-16 | 1e-12 |
# | finite differences | `depthwise_conv2d_backward` vs `mc.numerical_vjp` | ~1e-9 | 1e-6 |
# | oracle | readable and fast vs `F.conv2d(groups=C)` in float64 | ~1e-15 | 1e-10 |
#
#
# ## Exercises
#
# Solutions are hidden below each exercise (click to open); try first.
#
# **1. Output size.** With a 3×3 kernel, padding 1 and stride 2, how many output rows does an
# input of 7 rows give? Check with `mc.depthwise_conv2d`.
#
# <details><summary>Solution (hidden)</summary>
#
# $\lfloor (7 + 2 - 3) / 2 \rfloor + 1 = 4$:
# `mc.depthwise_conv2d(np.zeros((1, 7, 7, 1)), np.zeros((3, 3, 1)), 2).shape` is
# `(1, 4, 4, 1)`.
#
# </details>
#
# **2. Cost.** Compare the parameters and multiply-adds of a 3×3 depthwise convolution on an
# $H \times W \times C$ map with those of a dense 3×3 convolution from $C$ to $C$ channels.
#
# <details><summary>Solution (hidden)</summary>
#
# Depthwise: $9C$ weights and $9HWC$ multiply-adds; dense: $9C^2$ and $9HWC^2$. The dense one
# costs $C$ times more of both.
#
# </details>
#
# **3. The fastest rate.** Rerun the kernel fit of section 5 with $\eta^* = 2 / (\lambda_{\min} +
# \lambda_{\max})$ from the measured Hessian and count the steps until the largest kernel error
# is below $10^{-6}$; compare with $\eta = 0.45$.
#
# <details><summary>Solution (hidden)</summary>
#
# The worst-case factor per step is $(\kappa - 1)/(\kappa + 1)$ with
# $\kappa = \lambda_{\max} / \lambda_{\min} \approx 1.35$, about 0.15, against
# $1 - 0.45\,\lambda_{\min} \approx 0.82$ at $\eta = 0.45$: roughly ten steps instead of
# about eighty.
#
# </details>
#
# ## Written questions
#
# Answer in a few sentences each (in a markdown cell below each question).
#
# 1. Why is channels-last convenient for a depthwise convolution in NumPy?
# 2. Why not take $\varepsilon = 10^{-12}$ in the finite differences, in float64?
# 3. A depthwise convolution commutes with shifts of its input. Where does the zero padding
#    break that, and by how many pixels?
#
# Next: [02 · MBConv](02_mbconv.ipynb) wraps this convolution in the inverted bottleneck block
# that makes up CoAtNet's first two stages.
