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
# # A4 · One training step: loss, gradient, AdamW
#
# **Learning objectives.** After this assignment you can
# 1. write AdamW's update with decoupled weight decay and bias correction, and say which
#    parameters are not decayed and why;
# 2. take the gradient of a network's loss with autograd while keeping BatchNorm's new state;
# 3. test training code by overfitting one batch.
#
# **Prerequisites.** A1-A3 (or the notebooks 01-05); gradient descent; nested dicts.
#
# **Time.** About 1.5 hours: 45 min for AdamW, 30 min for the loss and the step, 15 min for
# the questions.
#
# Training CoAtNet (arXiv 2106.04803, section 4) minimises the cross-entropy of the logits
# $f_\theta(x)$ with AdamW (Loshchilov & Hutter). One step on a batch $(x_n, y_n)_{n=1}^N$:
#
# $$L(\theta) = -\frac{1}{N} \sum_{n} \log \mathrm{softmax}(f_\theta(x_n))_{y_n}, \qquad
#   g = \nabla_\theta L$$
#
# then, for every parameter leaf $p$ with gradient $g$, at step $t = 1, 2, \dots$:
#
# $$p \leftarrow p\,(1 - \eta \lambda) \quad \text{(decoupled weight decay: weights only)}$$
# $$m \leftarrow \beta_1 m + (1 - \beta_1) g, \qquad v \leftarrow \beta_2 v + (1 - \beta_2) g^2$$
# $$p \leftarrow p - \eta \, \frac{\hat m}{\sqrt{\hat v} + \epsilon}, \qquad
#   \hat m = \frac{m}{1 - \beta_1^t}, \quad \hat v = \frac{v}{1 - \beta_2^t}$$
#
# with learning rate $\eta$, $\beta = (0.9, 0.999)$, $\epsilon = 10^{-8}$, $\lambda = 0.05$.
# Biases, norm scales and shifts and the relative-position tables are not decayed:
# `decay_mask(params)` says which leaves are. You will write the AdamW update, the loss and
# its gradient with `autograd`, the step that chains them, and a short run on the 8x8 UCI
# digits with the `coatnet-digits` preset. The checks compare you with PyTorch's twin network
# and PyTorch's AdamW, and with minicoat.

# %%
import autograd
import numpy as np

import minicoat as mc
from minicoat.assignments import checks
from minicoat.datasets import load_dataset
from minicoat.optim import decay_mask
from minicoat.tree import flatten, tree_zeros_like, unflatten


def adamw_init(params):
    """AdamW state: the moments m and v (zeros like params) and the step count."""
    return {"m": tree_zeros_like(params), "v": tree_zeros_like(params), "step": 0}


# %% [markdown]
# ## 1. AdamW
#
# Parameters are nested dicts; `flatten` turns one into `{"stem.conv0.w": array, ...}` and
# `unflatten` turns it back. The loop over the leaves is given: complete one leaf's update.

# %%
def adamw_update(params, grads, opt_state, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05):
    """One AdamW step: returns (new_params, new_opt_state); the inputs are not modified."""
    beta1, beta2 = betas
    step = opt_state["step"] + 1
    decay = flatten(decay_mask(params))  # key -> True for weights
    flat_g, flat_m, flat_v = flatten(grads), flatten(opt_state["m"]), flatten(opt_state["v"])
    new_p, new_m, new_v = {}, {}, {}
    for key, p in flatten(params).items():
        g, m, v = flat_g[key], flat_m[key], flat_v[key]
        ### BEGIN SOLUTION
        # HINT: the equations above in order, for this leaf: decay (only if decay[key]),
        # HINT: the two moving averages, their bias correction at this step, the step
        if decay[key]:
            p = p * (1.0 - lr * weight_decay)
        m = beta1 * m + (1.0 - beta1) * g
        v = beta2 * v + (1.0 - beta2) * g * g
        m_hat = m / (1.0 - beta1**step)
        v_hat = v / (1.0 - beta2**step)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
        ### END SOLUTION
        new_p[key], new_m[key], new_v[key] = p, m, v
    return unflatten(new_p), {"m": unflatten(new_m), "v": unflatten(new_v), "step": step}


# %% tags=["check"]
# Expected: every parameter within ~1e-16 of PyTorch's AdamW after each of 3 steps.
print(checks.check_adamw_update(adamw_update))
### BEGIN HIDDEN TESTS
print(checks.check_adamw_update(adamw_update, steps=5, betas=(0.8, 0.99), eps=1e-6,
                                weight_decay=0.1, seed=1))
### END HIDDEN TESTS

# %% [markdown]
# ## 2. The loss and its gradient
#
# `mc.forward(params, state, x, config, train=True)` returns `(logits, new_state)`, the new
# state holding the BatchNorm running statistics (plain arrays, not traced).
# `autograd.value_and_grad(f)(params)` returns `f(params)` and its gradient, a dict shaped
# like `params`; `f` must return the scalar loss only, so keep the new state aside, e.g. in a
# dict that `f` writes into.

# %%
def loss_and_grad(params, state, x, y, config):
    """Mean cross-entropy in training mode: returns (loss, grads, new_state)."""
    ### BEGIN SOLUTION
    # HINT: a function of the parameters alone that returns the loss, keeping the new state
    # HINT: aside as the paragraph above says; then let autograd differentiate it
    saved = {}

    def loss_fn(p):
        logits, saved["state"] = mc.forward(p, state, x, config, train=True)
        return mc.cross_entropy(logits, y)

    loss, grads = autograd.value_and_grad(loss_fn)(params)
    return loss, grads, saved["state"]
    ### END SOLUTION


# %% tags=["check"]
# Expected: loss and every gradient within ~1e-14 of the PyTorch twin network.
print(checks.check_loss_and_grad(loss_and_grad))
### BEGIN HIDDEN TESTS
print(checks.check_loss_and_grad(loss_and_grad, batch=4, seed=1))
### END HIDDEN TESTS

# %% [markdown]
# ## 3. The training step
#
# Chain the two: the loss and gradient of the current parameters, then one AdamW update
# with the default hyper-parameters. Return the loss of the parameters you were given.

# %%
def training_step(params, state, opt_state, x, y, config, lr):
    """One step: returns (params, state, opt_state, loss)."""
    ### BEGIN SOLUTION
    # HINT: your two functions, in order
    loss, grads, state = loss_and_grad(params, state, x, y, config)
    params, opt_state = adamw_update(params, grads, opt_state, lr)
    return params, state, opt_state, loss
    ### END SOLUTION


# %% tags=["check"]
print(checks.check_training_step(training_step))

# %% [markdown]
# ## 4. Overfit one batch
#
# A network that cannot drive the loss of one small fixed batch towards zero has a bug: the
# classic first test of any training code. The check takes 16 digits and fresh float32
# parameters and runs 10 steps of your `training_step` with `lr=3e-3`; the loss must fall
# below half its first value. The cell below runs the same loop, to see the losses.

# %%
config = mc.config("coatnet-digits")
digits = load_dataset("digits")  # normalised float32 images (N, 8, 8, 1), integer labels
x_batch, y_batch = digits.x_train[:16], digits.y_train[:16]
params, state = mc.init_params(config, seed=0)  # float32
opt_state = adamw_init(params)
losses = []
for _ in range(10):
    params, state, opt_state, loss = training_step(params, state, opt_state, x_batch, y_batch,
                                                   config, lr=3e-3)
    losses.append(float(loss))
print("losses:", np.round(losses, 3))

# %% tags=["check"]
print(checks.check_overfit(training_step))

# %% [markdown]
# ## Exercises (not graded)
#
# **E1.** Run 10 steps of plain SGD (`p - lr * g`, no momentum) on the same batch with the
# largest learning rate that does not diverge you can find, and compare its last loss with
# AdamW's above.

# %%
### BEGIN SOLUTION
params_e, state_e = mc.init_params(config, seed=0)
sgd_losses = []
for _ in range(10):
    loss_e, grads_e, state_e = loss_and_grad(params_e, state_e, x_batch, y_batch, config)
    params_e = unflatten({k: p - 0.3 * flatten(grads_e)[k] for k, p in flatten(params_e).items()})
    sgd_losses.append(float(loss_e))
print("SGD, lr 0.3:", np.round(sgd_losses, 3), "AdamW:", np.round(losses, 3))
### END SOLUTION

# %% [markdown]
# ## Written questions
#
# **Q1.** Why are biases, normalisation scales and shifts and the relative-position tables
# not decayed? What would decaying a LayerNorm's $\gamma$ towards zero do?

# %% [markdown] tags=["answer"]
# Weight decay is a prior that prefers small weights, which limits a layer's capacity
# because its output scales with its weights. Biases and shifts only move outputs, the
# relative-position tables are additive logit offsets, and norm scales set the size of a
# normalised signal: shrinking them does not regularise the function in that sense. Decaying
# $\gamma$ to zero would switch the normalised branch off (its output tends to $\beta$),
# fighting the gradient for no benefit.

# %% [markdown]
# **Q2.** What does AdamW's bias correction fix in the first steps, and what would the first
# update be without it (with $\beta_1 = 0.9$, $\beta_2 = 0.999$)?

# %% [markdown] tags=["answer"]
# The moments start at zero, so at step 1 $m = 0.1 g$ and $v = 0.001 g^2$: both are biased
# towards zero. Corrected, $\hat m = g$ and $\hat v = g^2$ and the first step is
# $\eta\,\mathrm{sign}(g)$. Uncorrected it is $\eta \cdot 0.1 g / (\sqrt{0.001}|g|) \approx
# 3.16\,\eta\,\mathrm{sign}(g)$: about three times too large, and the ratio only decays to
# one over thousands of steps (the $v$ term).
