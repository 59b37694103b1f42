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
# # 08 · Checking gradients of your own code
#
# You wrote a layer and its backward pass, or a loss, or a whole network: is the gradient
# right? This notebook uses `minicoat.testing`, the checks minicoat's own tests use:
#
# 1. a hand-written VJP checked with `vjpcheck`, and what its failure says;
# 2. the **error budget** of a centred difference, measured against the step `eps`;
# 3. a whole network, `coatnet-digits`, checked along random directions in seconds;
# 4. how likely a random direction is to miss a mistake, and five mistakes it catches;
# 5. your own autograd primitive against its traced forward (`primitivecheck`).
#
# Source: [`minicoat/testing/`](../minicoat/testing/); the page
# [docs/testing.md](../docs/testing.md) is the reference.

# %%
import time

import autograd
import autograd.numpy as anp  # traced by autograd: for functions we differentiate
import matplotlib.pyplot as plt
import numpy as np  # plain NumPy for everything else

import minicoat as mc
from minicoat.ops import conv as conv_ops
from minicoat.testing import (
    SAFETY,
    GradcheckError,
    gradcheck,
    miss_probability,
    primitivecheck,
    vjpcheck,
)
from minicoat.tree import flatten, unflatten

rng = np.random.default_rng(0)

# %% [markdown]
# ## 1. A layer and its VJP
#
# RMSNorm, `y = x / r * gamma` with `r = sqrt(mean(x^2) + eps)` over the last axis, is not in
# minicoat; here is its forward and a backward pass derived by hand. With
# `xh = x / r` and `dxh = g * gamma`: `dgamma = sum(g * xh)` over the rows, and
# `dx = (dxh - xh * mean(dxh * xh)) / r`. The VJP follows the teaching tier's convention:
# `vjp(upstream, *args)` returns one cotangent per argument.

# %%
def rms_norm(x, gamma, eps=1e-6):
    """(..., C), (C,) -> (..., C)."""
    r = anp.sqrt(anp.mean(x**2, axis=-1, keepdims=True) + eps)
    return x / r * gamma


def rms_norm_vjp(g, x, gamma, eps=1e-6):
    r = np.sqrt(np.mean(x**2, axis=-1, keepdims=True) + eps)
    xh = x / r
    dxh = g * gamma
    dx = (dxh - xh * np.mean(dxh * xh, axis=-1, keepdims=True)) / r
    return dx, np.sum(g * xh, axis=tuple(range(x.ndim - 1)))


x, gamma = rng.standard_normal((4, 5, 8)), rng.standard_normal(8)
report = vjpcheck(rms_norm, rms_norm_vjp, x, gamma)
print(report)
assert report.passed

# %% [markdown]
# The check drew a random upstream cotangent `g`, and compared `<our VJP, d>` with the
# centred difference of `sum(rms_norm(x, gamma) * g)` along three random unit directions `d`
# of the pair `(x, gamma)`: four calls of the function per direction (and one at `x`),
# however large `x` is.
# Each row reports the largest error, the budget's two terms and the tolerance (explained in
# section 2). Entry by entry, `mode="elementwise"`, costs four calls per entry instead:

# %%
report = vjpcheck(rms_norm, rms_norm_vjp, x, gamma, mode="elementwise")
print(report)
assert report.passed and report["args[1]"].rel_error < 1e-8

# %% [markdown]
# Now the mistake everybody makes once: forgetting that `r` depends on `x` too (the second
# term of `dx`). The check fails, as an `AssertionError` (pytest shows it), and the message
# names the argument, the probe, ours against the numeric value, and what was allowed:

# %%
def rms_norm_vjp_wrong(g, x, gamma, eps=1e-6):
    r = np.sqrt(np.mean(x**2, axis=-1, keepdims=True) + eps)
    return g * gamma / r, np.sum(g * x / r, axis=tuple(range(x.ndim - 1)))


try:
    vjpcheck(rms_norm, rms_norm_vjp_wrong, x, gamma)
    raise RuntimeError("the mistake was not caught")
except GradcheckError as error:
    print(error)
    caught = error
assert "args[0] direction" in str(caught) and isinstance(caught, AssertionError)

# %% [markdown]
# ## 2. The error budget
#
# Along a unit direction `d`, let `phi(t) = f(x + t d)`. The centred difference expands as
#
# $$
# D(\varepsilon) = \frac{\varphi(\varepsilon) - \varphi(-\varepsilon)}{2\varepsilon}
#   = \varphi'(0) + \frac{\varepsilon^2}{6}\varphi'''(0) + O(\varepsilon^4)
# $$
#
# so it misses the derivative by the **truncation** error $\varepsilon^2|\varphi'''|/6$, and
# each value of `f` carries a rounding error of about $u|f|$ ($u$ = 2.2e-16, float64) that
# the difference divides by $\varepsilon$: the **round-off** error $u|f|/\varepsilon$. The first
# falls with $\varepsilon$, the second grows. Measured on a smooth function whose third
# derivative autograd gives exactly, as the root mean square over 100 random directions (one
# direction alone is a noisy sample of the rounding):

# %%
budget_rng = np.random.default_rng(8)
c, x0 = budget_rng.standard_normal(20), budget_rng.standard_normal(20)
directions = budget_rng.standard_normal((100, 20))
directions /= np.linalg.norm(directions, axis=1, keepdims=True)


def f(x):
    return anp.sum(c * anp.tanh(2 * x))


def rms(a):
    return float(np.sqrt(np.mean(np.square(a))))


steps = 10.0 ** -np.arange(1, 11, 0.5)
errors, thirds = [], []
for d in directions:
    def phi(t, d=d):
        return f(x0 + t * d)
    exact = autograd.grad(phi)(0.0)
    thirds.append(autograd.grad(autograd.grad(autograd.grad(phi)))(0.0))
    errors.append([(phi(e) - phi(-e)) / (2 * e) - exact for e in steps])
measured = np.array([rms(column) for column in np.array(errors).T])
u = np.finfo(np.float64).eps
truncation = steps**2 * rms(thirds) / 6
round_off = u * abs(f(x0)) / steps
scale = np.sum(np.abs(c * np.tanh(2 * x0)))  # the size of the terms that f adds up
round_off_terms = u * scale / steps
print(f"|f| = {abs(f(x0)):.3f}, sum of |terms| = {scale:.2f}, rms |phi'''| = {rms(thirds):.3f}")
print(f"{'eps':>7} {'measured':>9} {'eps^2|phi3|/6':>14} {'u|f|/eps':>9} {'u sum|t|/eps':>12}")
for row in zip(steps, measured, truncation, round_off, round_off_terms, strict=True):
    print(f"{row[0]:7.0e} " + " ".join(f"{v:9.1e}" for v in row[1:]))

# %%
plt.figure(figsize=(6, 4))
plt.loglog(steps, measured, "o-", label="measured |D(eps) - phi'(0)|")
plt.loglog(steps, truncation, "--", label="truncation eps^2 |phi'''| / 6")
plt.loglog(steps, round_off, ":", label="round-off u |f| / eps")
plt.loglog(steps, round_off_terms, "-.", label="round-off u sum|terms| / eps")
plt.xlabel("step eps")
plt.ylabel("error of the centred difference")
plt.legend(fontsize=8)
plt.title("the error budget of a centred difference")
plt.show()

# %% [markdown]
# What the table shows, asserted below: for large steps the error *is* the truncation term
# (slope 2, within 2% down to 1e-4); for small ones it grows as $1/\varepsilon$, at about
# half of $u|f|/\varepsilon$; the best step is near 1e-5; at the default `eps = 1e-6` the
# truncation term is ~1e-13 (with $|\varphi'''| \approx 1$: $10^{-12}/6$), far below round-off.

# %%
large = steps >= 1e-4
assert np.all(abs(measured[large] / truncation[large] - 1) < 0.02)
best = steps[np.argmin(measured)]
assert 1e-6 < best < 1e-4, best
at_default = np.argmin(abs(steps - 1e-6))
assert truncation[at_default] < 1e-12 and measured[at_default] > 100 * truncation[at_default]
assert 0.1 < measured[at_default] / round_off[at_default] < 2
report = gradcheck(f, x0)
print(report)

# %% [markdown]
# Round-off is set by the size of the numbers `f` adds up, though, not by `|f|`. Subtract the
# loss's own value, `f(x) - f(x0)`: the same rounding, the same derivative, but
# $u|f|/\varepsilon$ drops to zero. So the checks also *measure* the rounding noise of `f`,
# from the five values `f(0)`, `f(±eps)`, `f(±h)` they compute anyway (the even part
# `(phi(t) + phi(-t))/2 - phi(0)` is `phi'' t^2/2` plus rounding; its value at `eps` less
# `eps^2/h^2` times its value at `h` leaves the rounding alone), and take the larger of the two:

# %%
offset = float(f(x0))


def f_shifted(x):
    return f(x) - offset


report = gradcheck(f_shifted, x0)
print(report)
assert f_shifted(x0) == 0.0 and report.leaves[0].round_off.min() > 1e-12

# %% [markdown]
# The tolerance of every probe is `SAFETY` (10) times that budget, truncation (estimated from
# the wider step `h = sqrt(eps)`) plus round-off. float32 has $u$ = 1.2e-7, so its round-off
# at `eps = 1e-6` is ~0.1|f|: as large as the derivative. The checks refuse float32, saying
# so, unless asked to upcast:

# %%
try:
    gradcheck(f, x0.astype(np.float32))
except TypeError as error:
    print(error)
    assert "float64" in str(error) and "upcast=True" in str(error)

# %% [markdown]
# ## 3. A whole network
#
# `gradcheck` takes pytrees, such as a params dict. In directional mode the cost does not
# depend on the number of parameters: four calls of the loss per direction, one at the
# parameters and one gradient.
# Here `coatnet-digits` (~290K parameters) in float64, training mode, parameters nudged off
# their initial values so that zero biases and unit scales hide nothing:

# %%
config = mc.config("coatnet-digits")
params, state = mc.init_params(config, seed=0, dtype=np.float64)
params = unflatten({k: v + 0.1 * rng.standard_normal(v.shape) for k, v in flatten(params).items()})
images = rng.standard_normal((3, 8, 8, 1))
labels = np.array([0, 3, 4])


def loss(p):
    return mc.cross_entropy(mc.forward(p, state, images, config, train=True)[0], labels)


start = time.perf_counter()
report = gradcheck(loss, params)
seconds = time.perf_counter() - start
print(report)
whole = report.leaves[0]
budget = whole.truncation + whole.round_off
print(f"{mc.count_params(params)} parameters, {seconds:.1f} s; error / budget "
      f"{np.round(whole.errors / budget, 2)} (tolerance: {SAFETY:g} x budget)")
assert report.passed and np.all(whole.errors < budget * SAFETY)

# %% [markdown]
# The errors sit inside the unscaled budget, and the budget is round-off (the truncation
# term is ~1e-6 of it). `per_leaf=True` probes each leaf on its own too (four calls per leaf
# and direction); a failing direction does that by itself for its worst direction, to name
# the leaf. Entry by entry, on a few leaves of the same network:

# %%
report = gradcheck(loss, params, mode="elementwise", leaves=["head.b", "s1.block0.se.b_reduce"])
print(report)
print({leaf.name: f"{leaf.rel_error:.1e}" for leaf in report.leaves})
assert report.passed and max(leaf.rel_error for leaf in report.leaves) < 1e-6

# %% [markdown]
# ## 4. What a random direction misses
#
# Let `e` be the error of our gradient over `n` numbers. Along a uniformly random unit
# direction the check sees `<e, d> = |e| t`, where `t` is one coordinate of a random unit
# vector ($t^2 \sim \mathrm{Beta}(1/2, (n-1)/2)$). A wrong gradient passes only if
# $|t| \le s = \tau / |e|$ for the tolerance $\tau$; with `k` independent directions
#
# $$
# P(\text{miss}) = I_{s^2}\!\left(\tfrac12, \tfrac{n-1}2\right)^k
#   \approx \left(s\sqrt{2n/\pi}\right)^k .
# $$
#
# The wrong RMSNorm VJP of section 1, with the default three directions:

# %%
upstream = np.random.default_rng(0).standard_normal(x.shape)  # vjpcheck's default (seed 0)
dx_right, _ = rms_norm_vjp(upstream, x, gamma)
dx_wrong, _ = rms_norm_vjp_wrong(upstream, x, gamma)
error = np.linalg.norm(dx_wrong - dx_right)
tau = vjpcheck(rms_norm, rms_norm_vjp, x, gamma).leaves[0].tolerance.max()
p_miss = miss_probability(error, tau, x.size + gamma.size, directions=3)
print(f"|e| = {error:.2e}, tolerance {tau:.1e}, n = {x.size + gamma.size}: P(miss) = {p_miss:.0e}")
assert p_miss < 1e-18

# %% [markdown]
# Five classic mistakes in real VJPs of minicoat, each checked with 20 seeds (20 different
# sets of directions); `tests/test_testing.py` does the same and also checks the formula
# against miss rates observed on errors sized to be caught half the time.

# %%
def depthwise(seed):
    r = np.random.default_rng(seed)
    return mc.depthwise_conv2d, (r.standard_normal((2, 5, 4, 3)), r.standard_normal((3, 3, 3)), 1)


def with_mistake(change):
    def vjp(g, x, w, stride):
        dx, dw, _ = conv_ops.depthwise_conv2d_backward(g, x, w, stride)
        return change(dx.copy(), dw.copy())
    return vjp


def drop_last(a):
    a.reshape(-1)[-1] = 0.0
    return a


mistakes = {
    "flipped sign of dw": with_mistake(lambda dx, dw: (dx, -dw, None)),
    "a factor 2 missing in dx": with_mistake(lambda dx, dw: (dx / 2, dw, None)),
    "dw's spatial axes transposed": with_mistake(lambda dx, dw: (dx, dw.transpose(1, 0, 2), None)),
    "the last element of dx dropped": with_mistake(lambda dx, dw: (drop_last(dx), dw, None)),
}
f_conv, args = depthwise(1)
rates = {}
for name, vjp in mistakes.items():
    caught = sum(not vjpcheck(f_conv, vjp, *args, seed=seed, raises=False).passed
                 for seed in range(20))
    rates[name] = caught / 20
    print(f"{name:32s} caught {caught} / 20")
assert all(rate == 1.0 for rate in rates.values())

# %% [markdown]
# ## 5. Your own primitive
#
# For speed you may replace a traced function by an autograd `@primitive` with a
# hand-written `defvjp`. `primitivecheck` holds it to the plain forward it stands for, traced
# by autograd: the same value and the same VJP, to 1e-12 (`implementationcheck` does the same
# for minicoat's three implementations of a function of its ops).

# %%
@autograd.extend.primitive
def softplus(x):
    return np.logaddexp(0.0, x)


autograd.extend.defvjp(softplus, lambda y, x: lambda g: g / (1 + np.exp(-x)))


def softplus_traced(x):
    return anp.logaddexp(0.0, x)


report = primitivecheck(softplus, softplus_traced, rng.standard_normal((3, 4)))
print(report)
assert report.passed and report.errors[report.worst] < 1e-15

# %% [markdown]
# ## Summary
#
# | check | what it compares | calls of `f` |
# |---|---|---|
# | `gradcheck(f, params)` | autograd's gradient of a scalar `f`, 3 random directions | 13 |
# | `gradcheck(..., mode="elementwise")` | every entry (or `leaves=[...]`) | 4 per entry |
# | `vjpcheck(f, vjp, *args)` | a hand-written `vjp(g, *args)`, via `sum(f * g)` | as above |
# | `primitivecheck(p, traced, *args)` | value and VJP vs the traced forward, 1e-12 | 2 |
#
# Tolerances: `SAFETY` x (truncation + round-off) per probe, or `atol` / `rtol` of your own.
# float64 only. Failures raise `GradcheckError` naming the leaf, the probe, ours vs numeric
# and the budget.
