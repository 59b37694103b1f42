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
# # A5 · The Transformer block: LayerNorm and attention, backward by hand
#
# **Learning objectives.** After this assignment you can
# 1. derive the backward pass of LayerNorm, including the terms that come from the mean and
#    the variance depending on the input;
# 2. derive the backward pass of softmax attention with a relative bias, and say why the
#    bias gradient sums over the batch;
# 3. assemble CoAtNet's pre-norm Transformer block, in its plain and downsampling forms, and
#    check it against an independent implementation.
#
# **Prerequisites.** A1 (a VJP by hand) and A2 (relative attention); the chain rule for
# functions of vectors; `autograd.numpy`.
#
# **Time.** About 2.5 hours: 45 min for each derivation, 30 min for the block, 30 min for the
# exercises and questions.
#
# The "T" stages of CoAtNet (arXiv 2106.04803, appendix A.1) are pre-norm Transformer blocks:
#
# $$x \leftarrow \mathrm{Proj}(\mathrm{Pool}(x)) + \mathrm{Attention}(\mathrm{Pool}(
#   \mathrm{LN}(x))), \qquad x \leftarrow x + \mathrm{FFN}(\mathrm{LN}(x))$$
#
# with $\mathrm{FFN}(z) = \mathrm{GELU}(z W_1 + b_1) W_2 + b_2$. Without downsampling (stride 1
# and the same width) the first line is $x \leftarrow x + \mathrm{Attention}(\mathrm{LN}(x))$.
# You will write LayerNorm and the attention core's backward passes by hand, in plain NumPy,
# and then the block. The checks compare your gradients with autograd applied to minicoat's
# ops and with finite differences, and your block with PyTorch's twin.

# %%
import autograd.numpy as anp
import numpy as np

import minicoat as mc
from minicoat.assignments import checks

EPS = 1e-5  # LayerNorm's epsilon, as PyTorch's nn.LayerNorm

# %% [markdown]
# ## 1. LayerNorm, forward
#
# For each row $x \in \mathbb{R}^C$ (a token's channels, the last axis):
# $\mu = \frac{1}{C}\sum_c x_c$, $\sigma^2 = \frac{1}{C}\sum_c (x_c - \mu)^2$ (biased),
# $\hat x = (x - \mu)/\sqrt{\sigma^2 + \epsilon}$ and $y = \gamma \odot \hat x + \beta$.

# %%
def layer_norm(x, gamma, beta):
    """LayerNorm over the last axis: (..., C), (C,), (C,) -> (..., C)."""
    ### BEGIN SOLUTION
    # HINT: statistics of each row over the last axis only; keep that axis for broadcasting
    mean = x.mean(axis=-1, keepdims=True)  # (..., 1)
    var = x.var(axis=-1, keepdims=True)  # (..., 1), biased
    return (x - mean) / np.sqrt(var + EPS) * gamma + beta
    ### END SOLUTION


# %% tags=["check"]
print(checks.check_layer_norm(layer_norm))
### BEGIN HIDDEN TESTS
print(checks.check_layer_norm(layer_norm, shape=(3, 2, 2, 6), seed=1))
### END HIDDEN TESTS

# %% [markdown]
# ## 2. LayerNorm, backward by hand
#
# Given $g = \partial L / \partial y$, the parameter gradients are sums over every row:
# $\partial L/\partial \beta = \sum_{rows} g$ and
# $\partial L/\partial \gamma = \sum_{rows} g \odot \hat x$. For $x$, write
# $\delta = g \odot \gamma$ (the gradient w.r.t. $\hat x$) and $r = 1/\sqrt{\sigma^2+\epsilon}$.
# Within a row, $\hat x$ depends on $x$ directly and through $\mu$ and $\sigma^2$:
#
# $$\frac{\partial \mu}{\partial x_j} = \frac{1}{C}, \qquad
#   \frac{\partial \sigma^2}{\partial x_j} = \frac{2}{C}(x_j - \mu).$$
#
# Derive $\partial \hat x_i / \partial x_j$, contract it with $\delta$, and simplify: the
# result has three terms, each a multiple of $r$. Write it with row means
# (`mean(axis=-1, keepdims=True)`): no loop over rows.

# %%
def layer_norm_vjp(x, gamma, beta, g):
    """Gradients of ``sum(layer_norm(x, gamma, beta) * g)``: (dx, dgamma, dbeta).

    Args:
        x: (..., C); gamma, beta: (C,); g: (..., C), the upstream gradient.
    """
    rows = tuple(range(x.ndim - 1))  # every axis but the channels
    ### BEGIN SOLUTION
    # HINT: recompute x_hat and r; the direct term, minus the mean's term, minus the
    # HINT: variance's term (which is along x_hat); parameters: sums over `rows`
    mean = x.mean(axis=-1, keepdims=True)
    r = 1.0 / np.sqrt(x.var(axis=-1, keepdims=True) + EPS)
    x_hat = (x - mean) * r
    delta = g * gamma
    dx = r * (delta - delta.mean(axis=-1, keepdims=True)
              - x_hat * (delta * x_hat).mean(axis=-1, keepdims=True))
    return dx, np.sum(g * x_hat, axis=rows), np.sum(g, axis=rows)
    ### END SOLUTION


# %% tags=["check"]
# Expected: ~1e-16 against autograd of mc.layer_norm, ~1e-10 against finite differences.
print(checks.check_layer_norm_vjp(layer_norm_vjp))
### BEGIN HIDDEN TESTS
print(checks.check_layer_norm_vjp(layer_norm_vjp, shape=(2, 2, 3, 7), seed=1))
print(checks.check_layer_norm_vjp(layer_norm_vjp, shape=(4, 3), seed=2))
### END HIDDEN TESTS

# %% [markdown]
# ## 3. The attention core, backward by hand
#
# The core of A2, "pre" variant, for `q, k, v` of shape `(N, heads, T, d)` and `bias`
# `(heads, T, T)`:
#
# $$S = q k^\top / \sqrt{d} + B, \qquad P = \mathrm{softmax}(S) \text{ (over the keys)},
#   \qquad y = P v.$$
#
# Go backwards one line at a time. Matrix products first: for $y = P v$, the gradients w.r.t.
# $P$ and $v$ are products of $g$ with the *other* factor, transposed where the shapes say
# so. Softmax, row by row: with $\dot P = \partial L/\partial P$, differentiate
# $P_j = e^{S_j} / \sum_l e^{S_l}$ and show that
# $\partial L/\partial S_j = P_j (\dot P_j - \sum_l \dot P_l P_l)$. Then $q$, $k$ and the bias
# (one bias matrix per head, shared by the images of the batch). `mc.softmax` may give you
# $P$; the backward is yours.

# %%
def attention_core_vjp(q, k, v, bias, g):
    """Gradients of ``sum(softmax(q k^T / sqrt(d) + bias) v * g)``: (dq, dk, dv, dbias)."""
    d = q.shape[-1]
    ### BEGIN SOLUTION
    # HINT: recompute P; then dP and dv from y = P v, dS from the softmax rule above,
    # HINT: and dq, dk from S = q k^T / sqrt(d); the bias sees dS, summed over the batch
    scale = 1.0 / np.sqrt(d)
    probs = mc.softmax(q @ np.swapaxes(k, -1, -2) * scale + bias, axis=-1)  # P: (N, h, T, T)
    d_probs = g @ np.swapaxes(v, -1, -2)  # (N, h, T, T)
    dv = np.swapaxes(probs, -1, -2) @ g  # (N, h, T, d)
    d_logits = probs * (d_probs - np.sum(d_probs * probs, axis=-1, keepdims=True))
    dq = d_logits @ k * scale
    dk = np.swapaxes(d_logits, -1, -2) @ q * scale
    return dq, dk, dv, np.sum(d_logits, axis=0)
    ### END SOLUTION


# %% tags=["check"]
print(checks.check_attention_core_vjp(attention_core_vjp))
### BEGIN HIDDEN TESTS
print(checks.check_attention_core_vjp(attention_core_vjp, shape=(1, 3, 4, 2), seed=1))
### END HIDDEN TESTS

# %% [markdown]
# ## 4. The block
#
# Now assemble the block with minicoat's ops (differentiated by autograd, so write it with
# `autograd.numpy`): `mc.layer_norm`, `mc.relative_attention(h, p["attn"], heads,
# cfg.variant)`, `mc.linear`, `mc.gelu(h, cfg.gelu)`, `mc.max_pool2d` / `mc.avg_pool2d`
# (by `cfg.pool`) and `mc.conv1x1` for the projection `p["proj"]`, present when the block
# downsamples or changes the width. The parameters are `norm1`, `attn`, `norm2`,
# `ffn.fc1`, `ffn.fc2` and maybe `proj`, each a dict of arrays.

# %%
def transformer_block(p, x, stride, heads, cfg):
    """Pre-norm Transformer block: (N, H, W, C_in) -> (N, H / stride, W / stride, C_out)."""
    ### BEGIN SOLUTION
    # HINT: the two lines of the equation at the top; the pool goes on both branches of the
    # HINT: first line when stride is 2, the projection only on the shortcut
    def pool(t):
        return mc.max_pool2d(t) if cfg.pool == "max" else mc.avg_pool2d(t)

    h = mc.layer_norm(x, **p["norm1"])
    shortcut = x
    if stride == 2:
        h, shortcut = pool(h), pool(x)
    if "proj" in p:
        shortcut = mc.conv1x1(shortcut, p["proj"]["w"], p["proj"]["b"])
    x = shortcut + mc.relative_attention(h, p["attn"], heads, cfg.variant)
    h = mc.layer_norm(x, **p["norm2"])
    h = mc.gelu(mc.linear(h, p["ffn"]["fc1"]["w"], p["ffn"]["fc1"]["b"]), cfg.gelu)
    return x + mc.linear(h, p["ffn"]["fc2"]["w"], p["ffn"]["fc2"]["b"])
    ### END SOLUTION


# %% transformer block tags=["check"]
print(checks.check_transformer_block(transformer_block))
### BEGIN HIDDEN TESTS
print(checks.check_transformer_block(transformer_block, variant="post", seed=1))
### END HIDDEN TESTS

# %% transformer downsampling tags=["check"]
# The downsampling form: stride 2 and a wider output, x <- Proj(Pool(x)) + Attention(Pool(LN(x))).
print(checks.check_transformer_block(transformer_block, stride=2, c_out=16))
### BEGIN HIDDEN TESTS
print(checks.check_transformer_block(transformer_block, stride=2, c_in=8, c_out=16, pool="avg",
                                     shape=(1, 5, 5), seed=2))
### END HIDDEN TESTS

# %% [markdown]
# ## Exercises (not graded)
#
# **E1.** Check two properties of your LayerNorm backward numerically: within each row, `dx`
# sums to zero, and it is orthogonal to $\hat x$ up to a term of the order of $\epsilon$
# (exactly when $\epsilon = 0$). Compute the largest `|row sum|` and `|row dot|` over a
# random batch, with `EPS` and with `EPS = 0`.

# %%
rng = np.random.default_rng(0)
x_e, g_e = rng.standard_normal((4, 6)), rng.standard_normal((4, 6))
### BEGIN SOLUTION
for eps in (EPS, 0.0):
    EPS, saved = eps, EPS  # layer_norm_vjp reads the global EPS
    dx_e = layer_norm_vjp(x_e, np.ones(6), np.zeros(6), g_e)[0]
    x_hat_e = (x_e - x_e.mean(-1, keepdims=True)) / np.sqrt(x_e.var(-1, keepdims=True) + EPS)
    row_sum, row_dot = np.abs(dx_e.sum(-1)).max(), np.abs((dx_e * x_hat_e).sum(-1)).max()
    print(f"eps {eps:g}: largest |row sum| {row_sum:.1e}, largest |row dot| {row_dot:.1e}")
    assert row_sum < 1e-12 and row_dot < (1e-12 if eps == 0 else 1e-3)
    EPS = saved
### END SOLUTION

# %% [markdown]
# **E2.** Derive and write the backward pass of the *post* variant,
# $y = (\mathrm{softmax}(q k^\top/\sqrt d) + B) v$, and compare it with autograd of
# `mc.attention_core(q, k, v, bias, "post")` using `mc.rel_error`.

# %%
### BEGIN SOLUTION
def attention_core_post_vjp(q, k, v, bias, g):
    scale = 1.0 / np.sqrt(q.shape[-1])
    probs = mc.softmax(q @ np.swapaxes(k, -1, -2) * scale, axis=-1)
    d_weights = g @ np.swapaxes(v, -1, -2)  # the bias is added to the weights: it sees dA
    dv = np.swapaxes(probs + bias, -1, -2) @ g
    d_logits = probs * (d_weights - np.sum(d_weights * probs, axis=-1, keepdims=True))
    return (d_logits @ k * scale, np.swapaxes(d_logits, -1, -2) @ q * scale, dv,
            np.sum(d_weights, axis=0))


import autograd  # noqa: E402

q_e, k_e, v_e = (rng.standard_normal((2, 2, 3, 4)) for _ in range(3))
b_e, g_e = rng.standard_normal((2, 3, 3)), rng.standard_normal((2, 2, 3, 4))
exact = autograd.grad(lambda a: anp.sum(mc.attention_core(*a, "post") * g_e))(
    (q_e, k_e, v_e, b_e))
ours = attention_core_post_vjp(q_e, k_e, v_e, b_e, g_e)
errors = [mc.rel_error(a, b) for a, b in zip(ours, exact, strict=True)]
print("post variant, relative errors:", [f"{e:.0e}" for e in errors])
assert max(errors) < 1e-12
### END SOLUTION

# %% [markdown]
# ## Written questions
#
# **Q1.** Your LayerNorm `dx` sums to zero over each row and, for $\epsilon \to 0$, has no
# component along $\hat x$ (E1). Explain why from the forward pass, and say what it means
# for what a gradient step can change about a token's features.

# %% [markdown] tags=["answer"]
# LayerNorm's output does not change when a row is shifted ($x + a\mathbf{1}$) or scaled
# ($s x$, up to $\epsilon$): $\hat x$ is invariant to both. A directional derivative along
# $\mathbf 1$ or along $x - \mu$ is therefore zero, and $dx$, the gradient, is orthogonal to
# both directions ($\mathbf 1$, and $\hat x$ which is $x - \mu$ rescaled). A gradient step on
# the input can change the *pattern* of a token's features, never its mean or overall scale;
# those are set by $\gamma$ and $\beta$.

# %% [markdown]
# **Q2.** In a pre-norm block $x \leftarrow x + F(\mathrm{LN}(x))$, what is the Jacobian of
# the output with respect to $x$, and why does that help when many blocks are stacked,
# compared with post-norm $x \leftarrow \mathrm{LN}(x + F(x))$?

# %% [markdown] tags=["answer"]
# $\partial\,\mathrm{out}/\partial x = I + J_F J_{LN}$: the identity passes the gradient from
# the loss to every block unchanged, whatever the branches do, so a deep stack does not
# shrink or blow up the gradient through the residual path. In post-norm every block's
# output goes through LayerNorm's Jacobian ($r$ times a projection), so the gradient to the
# early blocks is a product of such factors, which is why post-norm needs warm-up and care.

# %% [markdown]
# **Q3.** Why is the relative-bias gradient summed over the batch but kept separate per head
# and per pair $(i, j)$ (before it is scattered back into the table `rel_bias`)?

# %% [markdown] tags=["answer"]
# One bias matrix $B_h$ is added to the logits of every image for head $h$: the same
# parameter is used $N$ times, so its gradient is the sum of the $N$ uses (the multivariate
# chain rule over shared parameters). Heads have their own tables, and each pair $(i, j)$ is
# a separate entry of $B_h$; the gather from `rel_bias` then sums the pairs that share an
# offset.
