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
# # A2 · Relative attention, pre- and post-softmax
#
# **Learning objectives.** After this assignment you can
# 1. index a table of relative-position biases for every pair of tokens on a 2-D grid;
# 2. write multi-head attention with an additive bias, pre and post softmax, with
#    `autograd.numpy` so that autograd differentiates it;
# 3. compare the two variants with a convolution.
#
# **Prerequisites.** A1; batched matrix products; the softmax.
#
# **Time.** About 1.5 hours: 30 min for the index, 45 min for the core, 15 min for the
# questions.
#
# Self-attention weighs token $j$ for token $i$ by how well their contents match: adaptive
# and global, but blind to *where* $j$ is. A depthwise convolution weighs by the relative
# offset $i - j$ alone: static, local, translation-equivariant. CoAtNet (arXiv 2106.04803,
# section 2.1, eq. 3) adds a learned scalar $w_{i-j}$ per head and relative offset to the
# attention logits. With $q, k, v$ linear projections of the tokens, $d$ the head size and
# $B[i, j] = w_{i-j}$:
#
# * **pre** (sum, then softmax; the paper's choice):
#   $\; A = \mathrm{softmax}\!\left(q k^\top / \sqrt{d} + B\right)$
# * **post** (softmax, then sum): $\; A = \mathrm{softmax}\!\left(q k^\top / \sqrt{d}\right) + B$
#
# and $y = A v$, the softmax over the keys $j$ (the last axis). On an $H \times W$ grid with
# tokens numbered row-major, $i = (y_i, x_i)$, offsets take $(2H - 1)(2W - 1)$ values, so each
# head owns a table `rel_bias[h]` of that length, indexed by
#
# $$\mathrm{index}(i, j) = (y_i - y_j + H - 1)(2W - 1) + (x_i - x_j + W - 1).$$
#
# You will write the index and the attention core; the layer around them is given. The
# checks compare your layer's output and its gradients (autograd differentiates your code)
# with PyTorch and with `mc.relative_attention`.

# %%
import autograd.numpy as np
import numpy as onp

import minicoat as mc
from minicoat.assignments import checks

# %% [markdown]
# ## 1. The relative position index
#
# Return an integer array of shape `(h*w, h*w)`. No loops needed: the row and column of
# every token come from `onp.divmod(onp.arange(h * w), w)`, and broadcasting a column
# vector against a row vector gives all pairs at once.

# %%
def relative_position_index(h, w):
    """(h*w, h*w) ints: index[i, j] = (yi - yj + h - 1) * (2w - 1) + (xi - xj + w - 1)."""
    ### BEGIN SOLUTION
    # HINT: the row and column of every token first; then all pairs at once by broadcasting
    ys, xs = onp.divmod(onp.arange(h * w), w)  # (T,), (T,): row and column of each token
    dy = ys[:, None] - ys[None, :] + h - 1  # (T, T) in [0, 2h - 2]
    dx = xs[:, None] - xs[None, :] + w - 1  # (T, T) in [0, 2w - 2]
    return dy * (2 * w - 1) + dx
    ### END SOLUTION


# %% tags=["check"]
print(checks.check_relative_position_index(relative_position_index))
### BEGIN HIDDEN TESTS
print(checks.check_relative_position_index(relative_position_index, 1, 4))
print(checks.check_relative_position_index(relative_position_index, 3, 3))
print(checks.check_relative_position_index(relative_position_index, 4, 2))
### END HIDDEN TESTS

# %% [markdown]
# ## 2. The attention core
#
# `q, k, v` are `(N, heads, T, d)`; `bias` is `(heads, T, T)` and broadcasts over `N`. Write
# it with `autograd.numpy` (imported as `np`) so that autograd can differentiate it:
# `np.swapaxes(k, -1, -2)` transposes the last two axes, `@` multiplies matching batches, and
# `mc.softmax(s, axis=-1)` is a numerically stable softmax.

# %%
def attention_core(q, k, v, bias, variant):
    """Multi-head attention with an additive relative bias -> (N, heads, T, d)."""
    ### BEGIN SOLUTION
    # HINT: scaled dot products of queries and keys; the two variants differ only in where
    # HINT: the bias is added
    d = q.shape[-1]
    logits = q @ np.swapaxes(k, -1, -2) * d**-0.5  # (N, heads, T, T)
    if variant == "pre":
        weights = mc.softmax(logits + bias, axis=-1)
    else:
        weights = mc.softmax(logits, axis=-1) + bias
    return weights @ v  # (N, heads, T, d)
    ### END SOLUTION


# %% [markdown]
# The layer (given): project the tokens, split the heads, gather the bias table into a
# `(heads, T, T)` matrix with your index, attend, merge the heads, project out.

# %%
def split_heads(t, heads):
    """(N, T, heads * d) -> (N, heads, T, d)."""
    n, tokens, dim = t.shape
    return np.transpose(np.reshape(t, (n, tokens, heads, dim // heads)), (0, 2, 1, 3))


def merge_heads(t):
    """(N, heads, T, d) -> (N, T, heads * d)."""
    n, heads, tokens, d = t.shape
    return np.reshape(np.transpose(t, (0, 2, 1, 3)), (n, tokens, heads * d))


def relative_attention(x, p, heads, variant="pre"):
    """2-D relative self-attention: (N, H, W, C) -> (N, H, W, C_out) (paper eq. 3)."""
    n, h, w, c = x.shape
    tokens = np.reshape(x, (n, h * w, c))  # (N, T, C), row-major
    qkv = tokens @ p["w_qkv"] + p["b_qkv"]  # (N, T, 3D): columns [q | k | v]
    q, k, v = (split_heads(t, heads) for t in np.split(qkv, 3, axis=-1))  # (N, heads, T, d)
    bias = p["rel_bias"][:, relative_position_index(h, w)]  # (heads, T, T)
    out = merge_heads(attention_core(q, k, v, bias, variant))  # (N, T, D)
    y = out @ p["w_out"] + p["b_out"]  # (N, T, C_out)
    return np.reshape(y, (n, h, w, -1))


# %% relative attention pre tags=["check"]
# Expected: output and every gradient within ~1e-15 of PyTorch (pass mark 1e-10).
print(checks.check_relative_attention(relative_attention, "pre"))
### BEGIN HIDDEN TESTS
print(checks.check_relative_attention(relative_attention, "pre", shape=(1, 4, 3, 12), heads=3,
                                      dim=12, c_out=5, seed=1))
print(checks.check_relative_attention(relative_attention, "pre", shape=(2, 1, 5, 4), heads=1,
                                      dim=4, c_out=4, seed=2))
### END HIDDEN TESTS

# %% relative attention post tags=["check"]
print(checks.check_relative_attention(relative_attention, "post"))
### BEGIN HIDDEN TESTS
print(checks.check_relative_attention(relative_attention, "post", shape=(1, 4, 3, 12), heads=3,
                                      dim=12, c_out=5, seed=1))
### END HIDDEN TESTS

# %% [markdown]
# ## Exercises (not graded)
#
# **E1.** Count the distinct values of your index for an $h \times w$ grid and check that it
# is $(2h - 1)(2w - 1)$ for a few grids; which offset does the largest value stand for?

# %%
### BEGIN SOLUTION
for h_e, w_e in ((2, 3), (3, 3), (4, 1)):
    distinct = len(onp.unique(relative_position_index(h_e, w_e)))
    print(f"{h_e}x{w_e}: {distinct} offsets, expected {(2 * h_e - 1) * (2 * w_e - 1)}")
    assert distinct == (2 * h_e - 1) * (2 * w_e - 1)
### END SOLUTION

# %% [markdown]
# ## Written questions
#
# **Q1.** In the *post* variant the weights of a row no longer sum to one and can be
# negative. What does the layer compute when every logit is equal (all $q = 0$)? Compare it
# with a depthwise convolution.

# %% [markdown] tags=["answer"]
# With equal logits the softmax is uniform, $1/T$: the weights are $1/T + B[i, j]$, so
# $y_i = \bar v + \sum_j w_{i-j} v_j$: a global average plus a convolution of the values
# with a kernel as large as the grid, the same for every position (translation-equivariant),
# one kernel per head shared by the head's channels. Unlike a depthwise convolution the
# kernel is not local, and the same scalar weights every channel of a head.

# %% [markdown]
# **Q2.** Why does CoAtNet scale the logits by $1/\sqrt{d}$? What happens to the softmax, and
# to its gradient, without it as $d$ grows?

# %% [markdown] tags=["answer"]
# With entries of q and k of unit variance, $q \cdot k$ has variance $d$: without the scale the
# logits grow like $\sqrt d$, the softmax saturates to nearly one-hot rows, and its
# Jacobian $\mathrm{diag}(P) - P P^\top$ goes to zero, so almost no gradient reaches q and k.
