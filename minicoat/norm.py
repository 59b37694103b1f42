"""Normalisation layers, channels-last: BatchNorm (MBConv blocks) and LayerNorm (attention, FFN).

CoAtNet blocks are pre-activation, ``x <- x + Module(Norm(x))`` (paper, appendix A.1):
BatchNorm before every MBConv, LayerNorm before attention and the FFN.

BatchNorm has *state*: the running mean and variance used at evaluation time. minicoat never
mutates it behind your back; ``batch_norm`` takes the running statistics and returns the updated
ones, exactly like PyTorch's ``BatchNorm2d`` updates its buffers (momentum 0.1, the unbiased
batch variance in the running estimate, the biased one for normalising).
"""

import autograd.numpy as np
import numpy as onp
from autograd.extend import defvjp_argnums, primitive
from autograd.tracer import getval

from .activations import (
    blockwise,
    channel_blocks,
    check_approximate,
    column_dots,
    column_sums,
    gelu,
    gelu_derivative,
    gelu_values,
)
from .checks import check_float, check_same_dtype

BN_EPS = 1e-5  # PyTorch's default for both norms
LN_EPS = 1e-5
BN_MOMENTUM = 0.1


def _check_affine(name, a, c, x):
    check_float(name, a)
    if onp.shape(a) != (c,):
        raise ValueError(f"{name} must have shape (C,) = ({c},) to match x, got {onp.shape(a)}")
    check_same_dtype(x=x, **{name: a})


def init_bn_state(c, dtype=onp.float32):
    """Fresh running statistics for a BatchNorm over ``c`` channels: mean 0, variance 1."""
    return {"mean": onp.zeros(c, dtype), "var": onp.ones(c, dtype)}


def _check_batch_norm_args(x, gamma, beta, running, train):
    """Validate ``batch_norm``'s arguments; returns (axes reduced over, values per channel)."""
    check_float("x", x)
    shape = onp.shape(getval(x))
    if len(shape) not in (2, 4):
        raise ValueError(f"x must have shape (N, H, W, C) or (N, C), got shape {shape}")
    c = shape[-1]
    _check_affine("gamma", gamma, c, x)
    _check_affine("beta", beta, c, x)
    for name in ("mean", "var"):
        stat = running[name]
        if onp.shape(stat) != (c,) or onp.asarray(stat).dtype != getval(x).dtype:
            raise ValueError(
                f"running['{name}'] must have shape (C,) = ({c},) and the dtype of x "
                f"({getval(x).dtype}), got shape {onp.shape(stat)} and dtype "
                f"{onp.asarray(stat).dtype}"
            )
    n = int(onp.prod(shape[:-1]))
    if train and n < 2:
        raise ValueError(
            f"batch_norm in training mode needs more than one value per channel, got x of "
            f"shape {shape}; use a larger batch or train=False"
        )
    return tuple(range(len(shape) - 1)), n


def _updated_running(running, mean, var, n, momentum):
    """PyTorch's update: ``(1 - momentum) running + momentum batch``, unbiased variance."""
    return {
        "mean": (1.0 - momentum) * running["mean"] + momentum * mean,
        "var": (1.0 - momentum) * running["var"] + momentum * var * (n / (n - 1)),
    }


def batch_norm_reference(x, gamma, beta, running, train, momentum=BN_MOMENTUM, eps=BN_EPS):
    """Readable, autograd-traced batch normalisation (see ``batch_norm``)."""
    axes, n = _check_batch_norm_args(x, gamma, beta, running, train)
    if train:
        mean = np.sum(x, axis=axes) * (1.0 / n)  # (C,)
        centered = x - mean
        var = np.sum(centered * centered, axis=axes) * (1.0 / n)  # biased, (C,)
        new_running = _updated_running(running, getval(mean), getval(var), n, momentum)
    else:
        centered = x - running["mean"]
        var = running["var"]
        new_running = running
    scale = gamma / np.sqrt(var + eps)  # (C,): fold gamma into one multiply
    return centered * scale + beta, new_running


def _channel_moments(x):
    """Per-channel mean and biased variance of ``x`` over all axes but the last (plain NumPy).

    The centred values are formed block by block (``channel_blocks``), never as a full array.
    """
    rows = x.reshape(-1, x.shape[-1])  # (M, C)
    mean = column_sums(rows) * (1.0 / len(rows))
    var = onp.zeros_like(mean)
    for part, mean_rows in channel_blocks(rows, mean):
        centered = rows[part] - mean_rows
        var += column_dots(centered, centered, buffer=centered)
    return mean, var * (1.0 / len(rows))


@primitive
def _batch_norm_train(x, gamma, beta, mean, var, eps):
    """Training-mode BatchNorm ``(x - mean) / sqrt(var + eps) * gamma + beta``, hand VJP below.

    ``mean`` and ``var`` must be x's own batch statistics (``_channel_moments(x)``): the caller
    computes them once, as it also needs them for the running statistics, and the VJP
    differentiates through them as the functions of ``x`` that they are.
    """
    return blockwise(_normalize, x, channels=(mean, gamma / onp.sqrt(var + eps), beta))


def _normalize(x, mean, scale, beta):
    """``(x - mean) * scale + beta`` on a block, the per-channel vectors as ``(rows, C)``."""
    z = x - mean
    z *= scale
    z += beta
    return z


def _gradient_sums(x_rows, g_rows, mean):
    """Per channel, ``(sum g, sum g (x - mean))`` over the rows ``(M, C)``, block by block."""
    g_sum = column_sums(g_rows)
    g_dot_centered = onp.zeros_like(g_sum)
    for part, mean_rows in channel_blocks(x_rows, mean):
        centered = x_rows[part] - mean_rows
        g_dot_centered += column_dots(g_rows[part], centered, buffer=centered)
    return g_sum, g_dot_centered


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


def _input_gradient(x, g, scale, mean, centered_coef, shift):
    """``d_x = g * scale - (x - mean) * centered_coef - shift`` on a block (``blockwise``)."""
    d_x = g * scale
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


def batch_norm(x, gamma, beta, running, train, momentum=BN_MOMENTUM, eps=BN_EPS):
    """Batch normalisation over (N, H, W) for each channel.

    ``y = (x - mean) / sqrt(var + eps) * gamma + beta``; in training mode ``mean`` and ``var``
    are the batch statistics (biased variance) and the running statistics are updated as
    ``running <- (1 - momentum) * running + momentum * batch`` (unbiased variance, as PyTorch);
    in evaluation mode the running statistics are used and returned unchanged.

    Training mode runs a primitive with a hand-written VJP (``batch_norm_reference`` is the
    traced version it is tested against); evaluation mode is a traced affine map.

    Args:
        x: ``(N, H, W, C)`` (or ``(N, C)``), float32 or float64.
        gamma, beta: ``(C,)`` scale and shift.
        running: ``{"mean": (C,), "var": (C,)}`` running statistics.
        train: True to normalise with batch statistics and update ``running``.

    Returns:
        ``(y, new_running)``: ``y`` has the shape of ``x``; ``new_running`` is a new dict.
    """
    _, n = _check_batch_norm_args(x, gamma, beta, running, train)
    if not train:
        scale = gamma / np.sqrt(running["var"] + eps)  # (C,)
        return (x - running["mean"]) * scale + beta, running
    mean, var = _channel_moments(onp.asarray(getval(x)))
    y = _batch_norm_train(x, gamma, beta, mean, var, eps)
    return y, _updated_running(running, mean, var, n, momentum)


# -- BatchNorm followed by GELU, in one primitive -----------------------------------------


@primitive
def _batch_norm_gelu_train(x, gamma, beta, mean, var, eps, approximate):
    """``GELU(BatchNorm(x))`` in training mode; ``mean``, ``var`` as in ``_batch_norm_train``."""
    return blockwise(
        lambda *block: gelu_values(_normalize(*block), approximate),
        x, channels=(mean, gamma / onp.sqrt(var + eps), beta),
    )


def _batch_norm_gelu_train_vjp(argnums, y, args, kwargs):
    x, gamma, beta, mean, var, eps, approximate = args

    def vjp(g):
        x_value = onp.asarray(x)
        c = x_value.shape[-1]
        scale = gamma / onp.sqrt(var + eps)
        x_rows, y_rows, g_rows = (a.reshape(-1, c) for a in (x_value, y, g))
        g_z = onp.empty_like(g_rows)  # the gradient w.r.t. z = BatchNorm(x), the GELU's input
        g_sum, g_dot_centered = onp.zeros(c, g_z.dtype), onp.zeros(c, g_z.dtype)
        for part, mean_rows, scale_rows, beta_rows in channel_blocks(x_rows, mean, scale, beta):
            # z was not stored: recompute it from x, then g_z = g GELU'(z), GELU'(z) reading
            # Phi(z) back from the output y (as activations.gelu does) ...
            centered = x_rows[part] - mean_rows
            z = centered * scale_rows
            z += beta_rows
            onp.multiply(g_rows[part], gelu_derivative(z, y_rows[part], approximate), out=g_z[part])
            # ... and, while the block is in the cache, BatchNorm's two sums over it
            g_sum += column_sums(g_z[part])
            g_dot_centered += column_dots(g_z[part], centered, buffer=centered)
        g_z = g_z.reshape(x_value.shape)
        grads = _batch_norm_backward(  # d_x overwrites g_z, a full-size array fewer
            x_value, g_z, gamma, mean, var, eps, sums=(g_sum, g_dot_centered), out=g_z
        )
        grads = dict(enumerate(grads))
        return tuple(grads[i] for i in argnums)

    return vjp


defvjp_argnums(_batch_norm_gelu_train, _batch_norm_gelu_train_vjp)


def batch_norm_gelu(
    x, gamma, beta, running, train, approximate="none", momentum=BN_MOMENTUM, eps=BN_EPS
):
    """``GELU(BatchNorm(x))``, the pair that follows every convolution inside MBConv and the stem.

    The same values as ``gelu(batch_norm(x, ...)[0], approximate)``, with less memory: the
    separate ops keep three arrays of x's size for the backward pass (BatchNorm's input, the
    GELU's input and its output), this one keeps two (x and the output) and recomputes the
    normalised ``z`` from x when the gradient is needed, one cheap elementwise pass. (timm's
    ``BatchNormAct2d`` pairs the two layers the same way; torch's autograd stores all three.)

    Args:
        x: ``(N, H, W, C)`` (or ``(N, C)``); gamma, beta: ``(C,)``; running: as ``batch_norm``.
        train: batch statistics and updated ``running`` if True, else the running statistics.
        approximate: the GELU's, ``"none"`` (exact) or ``"tanh"``.

    Returns:
        ``(y, new_running)``: ``y`` has the shape of ``x``; ``new_running`` is a new dict.
    """
    check_approximate(approximate)
    if not train:  # batch_norm checks the arguments
        y, running = batch_norm(x, gamma, beta, running, train=False, eps=eps)
        return gelu(y, approximate), running
    _, n = _check_batch_norm_args(x, gamma, beta, running, train)
    mean, var = _channel_moments(onp.asarray(getval(x)))
    y = _batch_norm_gelu_train(x, gamma, beta, mean, var, eps, approximate)
    return y, _updated_running(running, mean, var, n, momentum)


def _check_layer_norm_args(x, gamma, beta):
    check_float("x", x)
    c = onp.shape(getval(x))[-1]
    _check_affine("gamma", gamma, c, x)
    _check_affine("beta", beta, c, x)


def layer_norm_reference(x, gamma, beta, eps=LN_EPS):
    """Readable, autograd-traced layer normalisation (see ``layer_norm``)."""
    _check_layer_norm_args(x, gamma, beta)
    c = onp.shape(getval(x))[-1]
    mean = np.sum(x, axis=-1, keepdims=True) * (1.0 / c)  # (..., 1)
    centered = x - mean
    var = np.sum(centered * centered, axis=-1, keepdims=True) * (1.0 / c)  # (..., 1)
    return centered / np.sqrt(var + eps) * gamma + beta


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
    """LayerNorm over the last axis with a hand-written VJP (``layer_norm_reference`` traced)."""
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


def layer_norm(x, gamma, beta, eps=LN_EPS):
    """Layer normalisation over the last (channel) axis.

    ``y = (x - mean) / sqrt(var + eps) * gamma + beta`` with mean and biased variance taken
    over the last axis of each token / pixel (PyTorch: ``F.layer_norm(x, (C,))``). A primitive
    with a hand-written VJP; ``layer_norm_reference`` is the traced version.

    Args:
        x: ``(..., C)``, e.g. tokens ``(N, T, C)`` or a feature map ``(N, H, W, C)``.
        gamma, beta: ``(C,)``.

    Returns:
        Same shape and dtype as ``x``.
    """
    _check_layer_norm_args(x, gamma, beta)
    return _layer_norm(x, gamma, beta, eps)
