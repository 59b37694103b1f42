"""Normalisation kernels: BatchNorm and LayerNorm with blocked VJPs; BatchNorm+GELU fused.

They register as the ``fast`` implementations of ``batch_norm``, ``batch_norm_gelu`` and
``layer_norm`` (``minicoat/ops/norm.py``), take the arguments of those, already checked, and are
tested equal to them. Measured reasons: ``docs/performance.md``.
"""

import autograd.numpy as np
import numpy as onp
from autograd.extend import defvjp_argnums, primitive
from autograd.tracer import getval

from ..ops.norm import updated_running
from ..ops.switch import register_kernel
from .activations import gelu, gelu_and_slope, gelu_values, traced
from .blocking import blockwise, blockwise_sums, column_dots, column_sums


def _channel_moments(x):
    """Per-channel mean and biased variance of ``x`` over all axes but the last (plain NumPy).

    The centred values are formed block by block (``channel_blocks``), never as a full array.
    """
    rows = x.reshape(-1, x.shape[-1])  # (M, C)
    mean = column_sums(rows) * (1.0 / len(rows))

    def block_var(part, mean_rows):
        centered = rows[part] - mean_rows
        return (column_dots(centered, centered, buffer=centered),)

    (var,) = blockwise_sums(block_var, rows, mean)
    return mean, var * (1.0 / len(rows))


@primitive
def _batch_norm_train(x, gamma, beta, mean, var, eps):
    """Training-mode BatchNorm ``(x - mean) / sqrt(var + eps) * gamma + beta`` (computed as
    ``x * scale + shift``, ``_scale_and_shift``), hand VJP below.

    ``mean`` and ``var`` must be x's own batch statistics (``_channel_moments(x)``): the caller
    computes them once, as it also needs them for the running statistics, and the VJP
    differentiates through them as the functions of ``x`` that they are.
    """
    return blockwise(_normalize, x, channels=_scale_and_shift(gamma, beta, mean, var, eps))


def _scale_and_shift(gamma, beta, mean, var, eps):
    """BatchNorm as an affine map per channel: ``y = x * scale + shift``, both ``(C,)``.

    ``scale = gamma / sqrt(var + eps)``, ``shift = beta - mean * scale`` (as torch's CPU kernel
    folds them): two passes over ``x`` instead of three (``docs/performance.md``, 29).
    """
    scale = gamma / onp.sqrt(var + eps)
    return scale, beta - mean * scale


def _normalize(x, scale, shift, out=None):
    """``x * scale + shift`` on a block, the per-channel vectors as ``(rows, C)``."""
    z = onp.multiply(x, scale, out=out)
    z += shift
    return z


def _gradient_sums(x_rows, g_rows, mean):
    """Per channel, ``(sum g, sum g (x - mean))`` over the rows ``(M, C)``, block by block
    (both sums of a block while it is in the cache, the blocks shared among the threads)."""

    def block_sums(part, mean_rows):
        centered = x_rows[part] - mean_rows
        return column_sums(g_rows[part]), column_dots(g_rows[part], centered, buffer=centered)

    return blockwise_sums(block_sums, x_rows, mean)


def _batch_norm_backward(x, g, gamma, mean, var, eps, sums=None, out=None):
    """Gradients ``(d_x, d_gamma, d_beta)`` of training-mode BatchNorm (plain NumPy).

    With ``x_hat = (x - mean) / std``: ``d_beta = sum g``, ``d_gamma = sum g x_hat``, and
    ``d_x = gamma / std * (g - mean(g) - x_hat mean(g x_hat))``, the mean and variance's own
    dependence on ``x`` giving the two subtracted terms. Block by block, so that no full-size
    temporary is made besides ``d_x`` itself. ``sums`` are ``_gradient_sums``, when the caller
    has already made them; ``out`` receives ``d_x`` (it may be ``g``, if the caller owns it).
    """
    c = x.shape[-1]
    n = x.size // c
    inv_std = 1.0 / onp.sqrt(var + eps)
    if sums is None:
        sums = _gradient_sums(x.reshape(-1, c), g.reshape(-1, c), mean)
    d_beta, g_dot_centered = sums
    d_gamma = g_dot_centered * inv_std
    scale = gamma * inv_std
    centered_coef = scale * inv_std * d_gamma * (1.0 / n)
    shift = scale * d_beta * (1.0 / n)
    d_x = blockwise(_input_gradient, x, g, channels=(scale, mean, centered_coef, shift), out=out)
    return d_x, d_gamma, d_beta


def _input_gradient(x, g, scale, mean, centered_coef, shift, out=None):
    """``d_x = g * scale - (x - mean) * centered_coef - shift`` on a block (``blockwise``).

    ``out`` may be ``g``'s block: g is read only by the first pass."""
    d_x = onp.multiply(g, scale, out=out)
    centered = x - mean
    centered *= centered_coef
    d_x -= centered
    d_x -= shift
    return d_x


def _batch_norm_train_vjp(argnums, y, args, kwargs):
    x, gamma, beta, mean, var, eps = args

    def vjp(g):
        grads = dict(enumerate(_batch_norm_backward(onp.asarray(x), g, gamma, mean, var, eps)))
        return tuple(grads[i] for i in argnums)

    return vjp


defvjp_argnums(_batch_norm_train, _batch_norm_train_vjp)




@register_kernel("batch_norm")
def batch_norm(x, gamma, beta, running, train, momentum, eps):
    """``batch_norm``: training mode by the primitive above; evaluation mode a traced affine map."""
    if not train:
        scale = gamma / np.sqrt(running["var"] + eps)  # (C,)
        return (x - running["mean"]) * scale + beta, running
    x_value = onp.asarray(getval(x))
    mean, var = _channel_moments(x_value)
    y = _batch_norm_train(x, gamma, beta, mean, var, eps)
    return y, updated_running(running, mean, var, x_value.size // x_value.shape[-1], momentum)


# -- BatchNorm followed by GELU, in one primitive -----------------------------------------

@primitive
def _batch_norm_gelu_train(x, gamma, beta, mean, var, eps, y, slope):
    """``y = GELU(BatchNorm(x))`` in training mode, already computed with the GELU's slope at
    ``z = BatchNorm(x)`` (``batch_norm_gelu``); ``mean``, ``var`` as in ``_batch_norm_train``.
    Hand VJP below."""
    return y


def _batch_norm_gelu_train_vjp(argnums, ans, args, kwargs):
    x, gamma, _, mean, var, eps, _, slope = args

    def vjp(g):
        x_value = onp.asarray(x)
        c = x_value.shape[-1]
        x_rows, slope_rows, g_rows = (a.reshape(-1, c) for a in (x_value, slope, g))
        g_z = onp.empty_like(g_rows)  # the gradient w.r.t. z = BatchNorm(x), the GELU's input

        def block(part, mean_rows):
            # g_z = g GELU'(z), and while the block is in the cache, BatchNorm's two sums over it
            onp.multiply(g_rows[part], slope_rows[part], out=g_z[part])
            centered = x_rows[part] - mean_rows
            return column_sums(g_z[part]), column_dots(g_z[part], centered, buffer=centered)

        g_sum, g_dot_centered = blockwise_sums(block, x_rows, mean)
        g_z = g_z.reshape(x_value.shape)
        grads = _batch_norm_backward(  # d_x overwrites g_z, a full-size array fewer
            x_value, g_z, gamma, mean, var, eps, sums=(g_sum, g_dot_centered), out=g_z
        )
        grads = dict(enumerate(grads))
        return tuple(grads[i] for i in argnums)

    return vjp


defvjp_argnums(_batch_norm_gelu_train, _batch_norm_gelu_train_vjp)


@register_kernel("batch_norm_gelu")
def batch_norm_gelu(x, gamma, beta, running, train, approximate, momentum, eps):
    """``GELU(BatchNorm(x))`` in one blocked pass each way (BatchNorm's sums in the backward's).

    Traced, it keeps two arrays of x's size for the backward pass: x, for BatchNorm's gradient,
    and the GELU's slope at ``z = BatchNorm(x)``, made in the forward pass beside the output
    (``gelu_and_slope``); torch's BatchNorm + GELU keep x and z. Untraced, it writes the output
    alone.
    """
    if not train:
        y, running = batch_norm(x, gamma, beta, running, False, momentum, eps)
        return gelu(y, approximate), running
    x_value = onp.asarray(getval(x))
    mean, var = _channel_moments(x_value)
    scale_shift = _scale_and_shift(getval(gamma), getval(beta), mean, var, eps)
    if traced(x, gamma, beta):
        slope = onp.empty_like(x_value)

        def block(x, slope, scale, shift, out):
            return gelu_and_slope(_normalize(x, scale, shift), approximate, out, slope)

        y = blockwise(block, x_value, slope, channels=scale_shift)
        y = _batch_norm_gelu_train(x, gamma, beta, mean, var, eps, y, slope)
    else:
        y = blockwise(
            lambda x, scale, shift, out: gelu_values(_normalize(x, scale, shift), approximate, out),
            x_value, channels=scale_shift,
        )
    return y, updated_running(running, mean, var, x_value.size // x_value.shape[-1], momentum)


# -- LayerNorm ------------------------------------------------------------------------------

def _normalize_rows(x, eps):
    """``x_hat = (x - mean) / sqrt(var + eps)`` over the last axis, and ``1 / sqrt(var + eps)``."""
    c = x.shape[-1]
    x_hat = x - x.sum(axis=-1, keepdims=True) * (1.0 / c)
    var = onp.einsum("...c,...c->...", x_hat, x_hat)[..., None] * (1.0 / c)  # (..., 1)
    inv_std = 1.0 / onp.sqrt(var + eps)
    x_hat *= inv_std
    return x_hat, inv_std


@primitive
def _layer_norm(x, gamma, beta, eps):
    """LayerNorm over the last axis, with a VJP that recomputes ``x_hat`` instead of storing it."""
    x_hat, _ = _normalize_rows(onp.asarray(x), eps)
    x_hat *= gamma
    x_hat += beta
    return x_hat


def _layer_norm_vjp(argnums, y, args, kwargs):
    x, gamma, beta, eps = args
    x = onp.asarray(x)
    c = x.shape[-1]

    def vjp(g):
        # d_x_hat = g gamma; d_x = (d_x_hat - mean(d_x_hat) - x_hat mean(d_x_hat x_hat)) / std,
        # means over the last axis; d_gamma = sum over rows of g x_hat, d_beta = sum of g.
        x_hat, inv_std = _normalize_rows(x, eps)  # recomputed, not stored
        g_rows = g.reshape(-1, c)
        d_gamma = column_dots(g_rows, x_hat.reshape(-1, c))
        d_beta = column_sums(g_rows)
        d_x_hat = g * gamma
        row_mean = d_x_hat.sum(axis=-1, keepdims=True) * (1.0 / c)
        row_proj = onp.einsum("...c,...c->...", d_x_hat, x_hat)[..., None] * (1.0 / c)
        d_x = x_hat
        d_x *= -row_proj
        d_x += d_x_hat
        d_x -= row_mean
        d_x *= inv_std
        grads = {0: d_x, 1: d_gamma, 2: d_beta}
        return tuple(grads[i] for i in argnums)

    return vjp


defvjp_argnums(_layer_norm, _layer_norm_vjp)


register_kernel("layer_norm")(_layer_norm)
