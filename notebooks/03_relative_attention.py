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
# # 03 · Relative attention: the "At" in CoAtNet
#
# [Notebook 01](01_depthwise_convolution.ipynb) ended with the depthwise convolution's weight
# $w_{i-j}$: static, local, dependent on the offset only. Self-attention weighs positions by
# $\mathrm{softmax}_j(x_i^\top x_j)$: input-adaptive and global, but blind to where $j$ is. The
# paper's section 2.1 merges the two by adding a learned scalar per **relative offset** to the
# attention. This notebook:
#
# 1. writes plain self-attention (eq. 2) and shows it is blind to position;
# 2. draws the relative position index as a picture;
# 3. compares the **pre** (eq. 3, sum-then-softmax) and **post** (softmax-then-sum) variants,
#    with their bias tables and attention maps as heat maps;
# 4. demonstrates translation equivariance, exactly where it holds;
# 5. checks the layer against the PyTorch oracle, and the hand-written VJP against autograd's
#    traced one and finite differences.
#
# Source: [`minicoat/ops/attention.py`](../minicoat/ops/attention.py).
#
# **Learning objectives.** After this notebook you can
#
# 1. write self-attention and show that it is blind to position (permutation equivariant);
# 2. build the relative position index and the bias matrix $B$ from a per-head table;
# 3. tell the pre (sum, then softmax) and post (softmax, then sum) variants apart;
# 4. state exactly where translation equivariance holds, and why;
# 5. check the layer and its hand-written VJP against PyTorch and finite differences.
#
# **Prerequisites.** Notebook 01 (the weighted-sum view of convolution, checking a VJP); the
# softmax and its gradient; matrix products with batch axes.
#
# **Time.** About 60 minutes to read and run, plus 30-60 minutes for the exercises at the end.

# %%
import inspect
import math

import autograd.numpy as anp  # NumPy traced by autograd: for functions we differentiate
import matplotlib.pyplot as plt
import numpy as np
import torch
from autograd import grad, make_vjp
from IPython.display import Code

import minicoat as mc
from minicoat.ops import attention as attention_ops  # the teaching tier's attention
from minicoat.oracle import ops as oracle


def show(function):
    """The source of one of minicoat's functions, as the package has it."""
    return Code(inspect.getsource(function), language="python")

torch.set_num_threads(1)  # tiny tensors: one thread is fastest, and immune to a busy machine
rng = np.random.default_rng(0)

# %% [markdown]
# ## 1. Plain self-attention
#
# Flatten an $H \times W$ feature map row by row into $T = HW$ tokens $x_1, \dots, x_T$. The
# paper's equation (2) is
#
# $$
# y_i = \sum_{j \in \mathcal{G}} \frac{\exp(x_i^\top x_j)}{\sum_{k \in \mathcal{G}}
#   \exp(x_i^\top x_k)}\, x_j = \sum_{j} A_{ij}\, x_j , \qquad (2)
# $$
#
# with $\mathcal{G}$ the whole grid: every token looks at every token, with weights
# $A_{ij} = \mathrm{softmax}_j(x_i^\top x_j)$ computed from the input itself.


# %%
def plain_attention(tokens):
    """Eq. (2): (T, C) -> (T, C) and the (T, T) attention weights."""
    weights = mc.softmax(tokens @ tokens.T, axis=-1)  # (T, T), every row sums to 1
    return weights @ tokens, weights


tokens = rng.standard_normal((12, 4)) * 0.7  # 12 tokens (a 3x4 grid), 4 channels
y, weights = plain_attention(tokens)
print("rows of A sum to", weights.sum(axis=1).round(12)[:4], "...")

# %% [markdown]
# Nothing in eq. (2) knows where a token sits on the grid. If we shuffle the tokens, the
# outputs are shuffled the same way and otherwise unchanged (**permutation equivariance**):
# plain attention sees a *set* of tokens, not an image. (Expected error ~$10^{-16}$, required
# $\le 10^{-12}$.)

# %%
perm = rng.permutation(12)
y_perm, _ = plain_attention(tokens[perm])
err = mc.rel_error(y_perm, y[perm])
print(f"attention(shuffled tokens) vs shuffled attention(tokens): {err:.1e}")
assert err <= 1e-12, f"shuffled: {y_perm[0]} vs {y[perm][0]}, error {err:.2e}"

# %% [markdown]
# In practice (and in minicoat) the tokens are first projected to queries, keys and values,
# $[q \,|\, k \,|\, v] = x W_{qkv} + b_{qkv}$, the $D$ channels of each are split into
# `heads` groups of $d = D / \text{heads}$ (32 in CoAtNet), and each head computes
# $\mathrm{softmax}(q k^\top / \sqrt{d})\, v$ on its own; the heads' outputs are concatenated
# and projected by $W_{\text{out}}$. The projections do not change the argument above: still
# no notion of position.
#
# ## 2. The relative position index
#
# CoAtNet adds a learned scalar $w_{i-j}$ per head to the attention, shared by all token pairs
# with the same **offset** $i - j$. On an $H \times W$ grid the offsets
# $(y_i - y_j,\ x_i - x_j)$ range over $(2H-1) \times (2W-1)$ values, so each head has a
# table `rel_bias[h]` of that many entries, and `mc.relative_position_index(H, W)` says which
# entry each pair $(i, j)$ uses. With tokens numbered row-major, $i = y_i W + x_i$:
#
# $$
# \mathrm{index}(i, j) = (y_i - y_j + H - 1)(2W - 1) + (x_i - x_j + W - 1) .
# $$
#
# The $+H-1$ and $+W-1$ shift the offsets to start at 0; the result is the row-major position
# of the offset in a $(2H-1) \times (2W-1)$ table.

# %%
H, W = 4, 5
index = mc.relative_position_index(H, W)  # (T, T) = (20, 20), values in [0, 7 * 9)
print(
    index.shape, "values", index.min(), "..", index.max(), "table size", (2 * H - 1) * (2 * W - 1)
)

# the formula, one pair at a time
for i in range(H * W):
    for j in range(H * W):
        (yi, xi), (yj, xj) = divmod(i, W), divmod(j, W)
        assert index[i, j] == (yi - yj + H - 1) * (2 * W - 1) + (xi - xj + W - 1), (i, j)
# and the torch oracle's independent construction (Swin / timm style)
theirs = oracle.to_numpy(oracle.relative_position_index(H, W))
assert np.array_equal(index, theirs), f"ours\n{index[:3, :6]}\nvs torch\n{theirs[:3, :6]}"

# %% [markdown]
# As a picture: on the left the whole $20 \times 20$ index (row $i$ = query token, column $j$
# = key token); on the right one row, for the query token $i = (1, 2)$, laid back onto the
# $4 \times 5$ grid: each key token is labelled by the table entry it uses. Equal offsets share
# an entry, so the left picture is constant along diagonals of each $5 \times 5$ block
# (a "block Toeplitz" matrix).

# %%
query = (1, 2)
i_query = query[0] * W + query[1]
fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
image = axes[0].imshow(index, cmap="viridis")
axes[0].set_xlabel("key token j")
axes[0].set_ylabel("query token i")
axes[0].set_title("relative_position_index(4, 5)")
axes[0].set_xticks(range(0, H * W, W))  # a tick at the start of every grid row
axes[0].set_yticks(range(0, H * W, W))
fig.colorbar(image, ax=axes[0])
row = index[i_query].reshape(H, W)  # (H, W): the entry used by every key token
axes[1].imshow(row, cmap="viridis", vmin=index.min(), vmax=index.max())
for yy in range(H):
    for xx in range(W):
        axes[1].text(xx, yy, row[yy, xx], ha="center", va="center", color="w")
axes[1].scatter([query[1]], [query[0]], s=900, facecolors="none", edgecolors="r", linewidths=2)
axes[1].set_xticks(range(W))
axes[1].set_yticks(range(H))
axes[1].set_xlabel("column x_j")
axes[1].set_ylabel("row y_j")
axes[1].set_title(f"row of token i = {query}, on the grid (circled: i itself)")
plt.tight_layout()
plt.show()

# %% [markdown]
# The centre entry of the table, $(H-1)(2W-1) + (W-1) = 31$, is offset $(0, 0)$: a token with
# itself. Moving the key one column right lowers the index by 1, one row down by $2W-1 = 9$.
#
# ## 3. Pre vs post: where the bias goes
#
# The paper considers two places to add $w_{i-j}$ (section 2.1):
#
# $$
# y_i^{\text{pre}} = \sum_{j} \frac{\exp(x_i^\top x_j + w_{i-j})}{\sum_{k} \exp(x_i^\top x_k +
#   w_{i-k})}\, x_j \qquad (3)
# \qquad\qquad
# y_i^{\text{post}} = \sum_{j} \Big(\frac{\exp(x_i^\top x_j)}{\sum_{k} \exp(x_i^\top x_k)} +
#   w_{i-j}\Big)\, x_j
# $$
#
# * **pre** (sum, then softmax) is the paper's choice: the bias competes with the content
#   scores inside the softmax, and the weights still form a probability distribution;
# * **post** (softmax, then sum) adds a convolution-like kernel $w_{i-j}$ to the attention
#   weights afterwards: the weights no longer sum to 1, and the bias term
#   $\sum_j w_{i-j} x_j$ is exactly a convolution of the values with a grid-sized kernel (one
#   kernel per head, shared by the head's channels).
#
# With queries, keys and values, per head $h$ and with
# $B_{ij} = \mathrm{rel\_bias}[h, \mathrm{index}(i, j)]$:
# pre is $A = \mathrm{softmax}(q k^\top / \sqrt{d} + B)$,
# post is $A = \mathrm{softmax}(q k^\top / \sqrt{d}) + B$, and $y = A v$ in both.
#
# To see the difference, we hand-craft the two heads' tables on a $7 \times 7$ grid
# (a trained network learns them): head 0 prefers **nearby** tokens (a bump around offset 0),
# head 1 prefers the token **two columns to the left** ($x_i - x_j = 2$).

# %%
H, W, C, heads, d = 7, 7, 16, 2, 8
D = heads * d
index = mc.relative_position_index(H, W)  # (49, 49)
dy, dx = np.meshgrid(np.arange(-(H - 1), H), np.arange(-(W - 1), W), indexing="ij")  # offsets i - j
table_local = 1.5 * np.exp(-(dy**2 + dx**2) / 2.0)  # (2H-1, 2W-1): a bump at offset (0, 0)
table_left = 3.0 * ((dy == 0) & (dx == 2))  # i - j = (0, 2): j is two columns left of i
rel_bias = np.stack([table_local.ravel(), table_left.ravel()])  # (heads, (2H-1)*(2W-1))

params = {
    "w_qkv": rng.standard_normal((C, 3 * D)) / math.sqrt(C),  # (C, 3D): [q | k | v]
    "b_qkv": np.zeros(3 * D),
    "w_out": rng.standard_normal((D, C)) / math.sqrt(D),  # (D, C_out)
    "b_out": np.zeros(C),
    "rel_bias": rel_bias,
}
x = rng.standard_normal((1, H, W, C))  # (N, H, W, C)

# %% [markdown]
# To look at the weights $A$ we recompute them in the notebook with the public ops (the layer
# itself returns only $y$), and check that they reproduce `mc.relative_attention` (expected
# ~$10^{-16}$, required $\le 10^{-12}$):


# %%
def attention_weights(x, p, heads, variant):
    """The weights A (N, heads, T, T) and the values v (N, heads, T, d) of the layer."""
    n, h, w, c = x.shape
    tokens = x.reshape(n, h * w, c)  # (N, T, C), row-major
    qkv = mc.linear(tokens, p["w_qkv"], p["b_qkv"])  # (N, T, 3D)
    q, k, v = (
        t.reshape(n, h * w, heads, -1).transpose(0, 2, 1, 3)  # (N, heads, T, d)
        for t in np.split(qkv, 3, axis=-1)
    )
    bias = p["rel_bias"][:, mc.relative_position_index(h, w)]  # (heads, T, T): B[h, i, j]
    logits = q @ k.transpose(0, 1, 3, 2) / math.sqrt(q.shape[-1])  # (N, heads, T, T)
    if variant == "pre":
        return mc.softmax(logits + bias, axis=-1), v  # eq. (3)
    return mc.softmax(logits, axis=-1) + bias, v  # post


for variant in ("pre", "post"):
    A, v = attention_weights(x, params, heads, variant)
    out = (A @ v).transpose(0, 2, 1, 3).reshape(1, H * W, D) @ params["w_out"] + params["b_out"]
    y = mc.relative_attention(x, params, heads, variant)  # (1, H, W, C)
    err = mc.rel_error(out.reshape(y.shape), y)
    print(f"{variant}: weights @ values vs mc.relative_attention: {err:.1e}")
    assert err <= 1e-12, f"{variant}: notebook {out.ravel()[:3]} vs layer {y.ravel()[:3]}"

# %% [markdown]
# Now the pictures. For each head: its bias table (offset $i - j$ on the axes), the bias for
# the centre query token laid onto the grid (row $i$ of $B$), and the pre and post attention
# weights of that query, also on the grid.

# %%
centre = (H // 2) * W + W // 2  # token (3, 3)
A_pre, _ = attention_weights(x, params, heads, "pre")
A_post, _ = attention_weights(x, params, heads, "post")
A_plain, _ = attention_weights(x, {**params, "rel_bias": np.zeros_like(rel_bias)}, heads, "pre")
fig, axes = plt.subplots(heads, 5, figsize=(17, 6.5))
for h in range(heads):
    panels = [
        (
            rel_bias[h].reshape(2 * H - 1, 2 * W - 1),
            "bias table rel_bias[h]\n(rows: yi-yj, cols: xi-xj)",
        ),
        (rel_bias[h][index[centre]].reshape(H, W), "B[centre, :] on the grid"),
        (A_plain[0, h, centre].reshape(H, W), "no bias: softmax(qk/√d)"),
        (A_pre[0, h, centre].reshape(H, W), "pre: softmax(qk/√d + B)"),
        (A_post[0, h, centre].reshape(H, W), "post: softmax(qk/√d) + B"),
    ]
    for col, (picture, title) in enumerate(panels):
        ax = axes[h, col]
        if col == 0:
            extent = (-(W - 1) - 0.5, W - 0.5, H - 0.5, -(H - 1) - 0.5)  # label axes by offset
            image = ax.imshow(picture, cmap="magma", extent=extent)
        else:
            image = ax.imshow(picture, cmap="magma")
            ax.scatter([W // 2], [H // 2], marker="+", color="c", s=80)  # the query token
        fig.colorbar(image, ax=ax, fraction=0.046)
        ax.set_title(f"head {h}: {title}", fontsize=9)
plt.tight_layout()
plt.show()

# %% [markdown]
# Reading the pictures:
#
# * the second column is the first one flipped around its centre: key token $j$ sits at
#   $i - (\text{offset})$, so head 1's entry at offset $x_i - x_j = +2$ lights up the token two
#   columns to the *left* of the query;
# * without the bias, the weights depend on content only and are spread over the whole grid;
# * **pre**: the bias reshapes the distribution. Head 0 concentrates around the query like a
#   soft convolution window; head 1 puts most of its weight two columns to the left. The
#   content scores still modulate the weights;
# * **post**: the bias is *added* to the content weights, so the picture is the content
#   weights plus the bias pattern, and each row now sums to $1 + \sum_j B_{ij}$ instead of 1.
#   That sum depends on how many offsets fit on the grid around $i$, so it changes near the
#   edges:

# %%
for variant, A in (("pre", A_pre), ("post", A_post)):
    sums = A[0, 0].sum(axis=-1).reshape(H, W)  # head 0: row sums on the grid
    print(
        f"{variant:4s}: row sums of head 0: corner token {sums[0, 0]:.3f}, "
        f"edge {sums[0, 3]:.3f}, centre {sums[3, 3]:.3f}"
    )
bias_rows = 1 + rel_bias[0][index].sum(axis=-1)  # (T,): 1 + sum_j B_ij for head 0
assert np.allclose(A_pre[0, 0].sum(axis=-1), 1, rtol=0, atol=1e-12), "pre: rows sum to 1"
assert np.allclose(A_post[0, 0].sum(axis=-1), bias_rows, rtol=0, atol=1e-12), "post: 1 + sum B"
assert bias_rows[0] < bias_rows[3] < bias_rows[24], "fewer offsets fit near the edges"

# %% [markdown]
# The $T \times T$ bias matrix $B$ of head 0 itself shows the structure of section 2: each
# $7 \times 7$ block is constant along its diagonals, because $B_{ij}$ depends on $i - j$ only.

# %%
plt.figure(figsize=(4.5, 4))
plt.imshow(rel_bias[0][index], cmap="magma")
plt.title("B = rel_bias[0][index], (T, T)")
plt.xlabel("key token j")
plt.ylabel("query token i")
plt.colorbar()
plt.show()

# %% [markdown]
# ## 4. Translation equivariance
#
# **The bias.** $B_{ij}$ depends only on the offset, so moving both tokens by the same shift
# $s$ leaves it unchanged: $B[i, j] = B[i + s, j + s]$ whenever both shifted tokens are still on
# the grid. We check this for every pair and every shift (exact integer equality of the
# index):

# %%
coords = np.stack(np.divmod(np.arange(H * W), W), axis=1)  # (T, 2): (row, col) of each token
pairs_checked = 0
for sy in range(-(H - 1), H):
    for sx in range(-(W - 1), W):
        moved = coords + (sy, sx)  # (T, 2)
        on_grid = np.flatnonzero((moved >= 0).all(axis=1) & (moved < (H, W)).all(axis=1))
        target = moved[on_grid, 0] * W + moved[on_grid, 1]  # token number after the shift
        same = index[np.ix_(on_grid, on_grid)] == index[np.ix_(target, target)]
        assert same.all(), f"shift {(sy, sx)}: index changes under the shift"
        pairs_checked += same.size
print(f"B[i, j] == B[i + s, j + s] for all {pairs_checked} (pair, shift) combinations")

# %% [markdown]
# **The whole layer.** Does shifting the *content* of the grid shift the output? Place an
# object (a $2 \times 3$ patch of random tokens) on a background of zero tokens, then move it
# by $s = (2, 1)$. Take the post variant with $b_{qkv} = 0$. Then a background token has
# $q = k = v = 0$, and for every query $i$:
#
# * the softmax over $j$ sees logit $q_i^\top k_j = 0$ for every background token; how many
#   there are does not change when the object moves, so the denominator moves with the object;
# * the background contributes nothing to $\sum_j A_{ij} v_j$ because its $v_j = 0$;
# * the bias term $\sum_j w_{i-j} v_j$ only involves the object's tokens and depends on
#   offsets only.
#
# So the output moves exactly with the object, wherever the grid holds both copies
# (the rows and columns that enter at the edge have no counterpart). Expected ~$10^{-16}$,
# required $\le 10^{-12}$.
#
# The **pre** variant is only approximately equivariant here: a background token $j$ gets the
# logit $0 + w_{i-j}$, so the softmax denominator includes
# $\sum_{j \in \text{background}} e^{w_{i-j}}$, and which offsets lead to the background
# depends on where the edges of the grid are. With a zero bias table that term is the same
# everywhere and pre is exact too.

# %%
params_eq = params  # the hand-crafted tables; b_qkv = 0 (and b_out = 0, which does not matter)
obj = rng.standard_normal((2, 3, C))
x_a = np.zeros((1, H, W, C))
x_a[0, 1:3, 1:4] = obj  # the object at rows 1-2, columns 1-3
x_b = np.zeros((1, H, W, C))
x_b[0, 3:5, 2:5] = obj  # the same object moved by s = (2, 1)


def shift_error(p, variant):
    y_a = mc.relative_attention(x_a, p, heads, variant)
    y_b = mc.relative_attention(x_b, p, heads, variant)
    return mc.rel_error(y_b[0, 2:, 1:], y_a[0, : H - 2, : W - 1]), y_a, y_b  # overlap only


err_post, y_a, y_b = shift_error(params_eq, "post")
err_pre, _, _ = shift_error(params_eq, "pre")
err_pre_no_bias, _, _ = shift_error({**params_eq, "rel_bias": np.zeros_like(rel_bias)}, "pre")
print(f"post:           output(shifted input) vs shifted output: {err_post:.1e}")
print(f"pre:            {err_pre:.1e}  (not equivariant: the bias on background tokens)")
print(f"pre, zero bias: {err_pre_no_bias:.1e}")
assert err_post <= 1e-12, f"post variant: shifted output differs, error {err_post:.2e}"
assert err_pre_no_bias <= 1e-12, f"pre variant without bias: error {err_pre_no_bias:.2e}"

# %%
fig, axes = plt.subplots(1, 4, figsize=(13, 3.2))
norm_in, norm_out = np.linalg.norm(x_a, axis=-1).max(), np.linalg.norm(y_a, axis=-1).max()
for ax, picture, vmax, title in (
    (axes[0], x_a, norm_in, "input: an object"),
    (axes[1], x_b, norm_in, "input: the object moved by (2, 1)"),
    (axes[2], y_a, norm_out, "post output"),
    (axes[3], y_b, norm_out, "post output of the moved input"),
):
    ax.imshow(np.linalg.norm(picture[0], axis=-1), cmap="viridis", vmin=0, vmax=vmax)
    ax.set_title(title + "\n(norm of each token)", fontsize=9)
axes[3].add_patch(plt.Rectangle((0.5, 1.5), W - 1, H - 2, fill=False, ec="w", ls="--"))
axes[3].text(0.6, 1.4, "compared region", color="w", fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# Away from the object the output is not zero: a background query has $q = 0$, so its
# softmax is uniform and returns the average of the object's values, plus the bias term
# $\sum_j w_{i-j} v_j$ (head 0's bump blurs the object, head 1 copies it two columns to the
# right). All of it moves with the object.
#
# ## 5. Checks
#
# ### The oracle: PyTorch
#
# `minicoat.oracle.ops.relative_attention` is written from the definition with torch's own
# functions (`F.linear`, `torch.softmax`, advanced indexing of the table), on an NCHW map with
# `nn.Linear`-layout weights `(out, in)`. `oracle.compare` converts the inputs, runs both, pulls
# one random upstream gradient back through both, and reports the relative errors of the
# output and of the gradient of every input, the table `rel_bias` included. An odd-sized grid
# ($3 \times 5$) catches row/column mix-ups. Expected ~$10^{-15}$, required $\le 10^{-10}$.

# %%
h_small, w_small, c_small, heads_small, c_out = 3, 5, 6, 2, 5
inputs = {
    "x": rng.standard_normal((2, h_small, w_small, c_small)),
    "w_qkv": rng.standard_normal((c_small, 3 * 8)) / math.sqrt(c_small),  # D = 8, d = 4
    "b_qkv": 0.1 * rng.standard_normal(3 * 8),
    "w_out": rng.standard_normal((8, c_out)) / math.sqrt(8),
    "b_out": 0.1 * rng.standard_normal(c_out),
    "rel_bias": 0.5 * rng.standard_normal((heads_small, (2 * h_small - 1) * (2 * w_small - 1))),
}
layouts = {"x": oracle.FEATURE_MAP, "w_qkv": oracle.LINEAR_WEIGHT, "w_out": oracle.LINEAR_WEIGHT}


def compare_with_torch(variant):
    def ours(x, **p):
        return mc.relative_attention(x, p, heads_small, variant)

    def theirs(x, **p):
        return oracle.relative_attention(x, p, heads_small, variant)

    return oracle.compare(ours, theirs, inputs, layouts, output=oracle.FEATURE_MAP)


for implementation in ("readable", "fast"):
    for variant in ("pre", "post"):
        with mc.implementation(implementation):
            result = compare_with_torch(variant)
        print(
            f"{implementation:8s} {variant:4s}: output {result.forward:.1e}, gradients "
            + ", ".join(f"{name} {err:.1e}" for name, err in result.grads.items())
        )
        assert result.worst <= 1e-10, f"{implementation} {variant}: ours vs torch {result}"

# %% [markdown]
# ### The hand-written VJP
#
# The layer's core is $A v$ with $A$ from $q, k, B$. With $g = \partial L / \partial y$ per head
# and $P$ the softmax output:
#
# $$
# \partial A = g\, v^\top, \quad \partial v = A^\top g, \quad
# \partial S = P \odot \big(\partial P - \textstyle\sum_j (\partial P \odot P)_{:,j}\big), \quad
# \partial q = \partial S\, k / \sqrt{d}, \quad \partial k = \partial S^\top q / \sqrt{d},
# $$
#
# where $S$ is the softmax's input and $\partial P = \partial A$ (for pre the bias sits inside
# $S$, so $\partial B = \sum_n \partial S$; for post it is added to $A$, so
# $\partial B = \sum_n \partial A$). This is the readable implementation, beside the traced
# forward in `minicoat/ops/attention.py`:

# %%
show(attention_ops.attention_core_backward)

# %% [markdown]
# The gather $B_{ij} = \mathrm{rel\_bias}[h, \mathrm{index}(i, j)]$ has its own VJP: the
# gradients of all pairs that share an offset are summed into their table entry
# (`np.add.at`, which adds repeated indices one by one; the fast kernel does one
# `np.bincount` per head):

# %%
show(attention_ops.gather_rel_bias_backward)

# %% [markdown]
# Under `mc.implementation("traced")` autograd differentiates the plain forward instead; under
# `"fast"` the kernels run. Same math, different order of operations: expected ~$10^{-16}$,
# required $\le 10^{-12}$ for the gradient of every input.


# %%
def all_gradients(variant, implementation):
    def objective(inputs, upstream):
        x, p = inputs["x"], {k: v for k, v in inputs.items() if k != "x"}
        y = mc.relative_attention(x, p, heads_small, variant)
        return anp.sum(y * upstream)

    upstream = np.random.default_rng(1).standard_normal((2, h_small, w_small, c_out))
    with mc.implementation(implementation):
        return grad(objective)(inputs, upstream)


for variant in ("pre", "post"):
    traced = all_gradients(variant, "traced")
    for implementation in ("readable", "fast"):
        ours = all_gradients(variant, implementation)
        errors = {name: mc.rel_error(ours[name], traced[name]) for name in inputs}
        print(f"{variant}: {implementation} vs traced, worst {max(errors.values()):.1e}")
        assert max(errors.values()) <= 1e-12, f"{variant} {implementation}: errors {errors}"

# %% [markdown]
# ### Finite differences on the bias table
#
# And a check that uses nothing but the forward pass: the VJP with respect to `rel_bias`
# against centred differences (`mc.numerical_vjp`, 90 entries, 180 forward passes). Expected
# ~$10^{-9}$, required $\le 10^{-6}$.

# %%
for variant in ("pre", "post"):
    upstream = rng.standard_normal((2, h_small, w_small, c_out))
    p_rest = {k: v for k, v in inputs.items() if k not in ("x", "rel_bias")}

    def layer_of_table(table, variant=variant, p_rest=p_rest):
        return mc.relative_attention(
            inputs["x"], {**p_rest, "rel_bias": table}, heads_small, variant
        )

    vjp, _ = make_vjp(layer_of_table)(inputs["rel_bias"])
    exact = vjp(upstream)
    numeric = mc.numerical_vjp(layer_of_table, inputs["rel_bias"], upstream)
    err = mc.rel_error(exact, numeric)
    print(f"{variant}: d rel_bias, hand VJP vs finite differences {err:.1e}")
    assert err <= 1e-6, (
        f"{variant}: ours {exact.ravel()[:3]} vs finite differences {numeric.ravel()[:3]}"
    )

# %% [markdown]
# ## Summary
#
# | check | compared | expected | required |
# |---|---|---|---|
# | permutation equivariance | plain attention of shuffled tokens | ~1e-16 | 1e-12 |
# | index | formula, pair by pair; torch's construction | exact | exact |
# | weights | notebook's $A v$ vs `mc.relative_attention` | ~1e-16 | 1e-12 |
# | bias equivariance | $B[i, j] = B[i+s, j+s]$ | exact | exact |
# | layer equivariance | post, zero background, $b_{qkv} = 0$ | ~1e-16 | 1e-12 |
# | oracle | output and all gradients vs torch, pre and post, readable and fast | ~1e-15 | 1e-10 |
# | hand VJP | readable and fast vs traced, all inputs | ~1e-16 | 1e-12 |
# | finite differences | d `rel_bias` | ~1e-9 | 1e-6 |
#
#
# ## Exercises
#
# Solutions are hidden below each exercise (click to open); try first.
#
# **1. The index by hand.** For a $3 \times 5$ grid, how many entries has each head's table?
# Which entry holds offset $(0, 0)$, and which offset $(y_i - y_j, x_i - x_j) = (-2, 4)$? Check
# with `mc.relative_position_index(3, 5)`.
#
# <details><summary>Solution (hidden)</summary>
#
# $(2 \cdot 3 - 1)(2 \cdot 5 - 1) = 45$ entries; $(0, 0)$ is $(0 + 2) \cdot 9 + (0 + 4) = 22$;
# $(-2, 4)$ is $0 \cdot 9 + 8 = 8$.
#
# </details>
#
# **2. Post's row sums.** For the hand-crafted head 0, compute $1 + \sum_j B_{ij}$ for the
# corner, edge and centre tokens and compare with the row sums the notebook printed.
#
# <details><summary>Solution (hidden)</summary>
#
# `1 + rel_bias[0][index].sum(axis=1)` at tokens 0, 3 and 24 gives the printed post sums: the
# softmax part sums to 1, the bias adds its row of $B$, and fewer offsets fit near an edge.
#
# </details>
#
# **3. Attention's size.** CoAtNet-0's S3 runs on a $14 \times 14$ grid at width 384 (12 heads
# of 32) for a 224×224 image. How many attention weights does one block compute per image?
#
# <details><summary>Solution (hidden)</summary>
#
# $T = 196$ tokens, $T^2 = 38{,}416$ weights per head, 460,992 for 12 heads.
#
# </details>
#
# ## Written questions
#
# Answer in a few sentences each (in a markdown cell below each question).
#
# 1. Why is the pre variant only approximately translation equivariant when the table is not
#    zero, in the experiment of section 4?
# 2. What would an absolute position embedding, added to the tokens, change about the
#    equivariance?
# 3. In the post variant, $\sum_j w_{i-j} v_j$ is a convolution of the values. What is its
#    kernel size on an $H \times W$ grid, and how does that compare with MBConv's 3×3?
#
# Next: [04 · the Transformer block](04_transformer_block.ipynb) wraps this layer in LayerNorm,
# the FFN and the pre-norm residual.
