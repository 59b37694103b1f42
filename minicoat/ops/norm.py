"""Normalisation, channels-last: BatchNorm (MBConv, the stem) and LayerNorm (attention, FFN).

CoAtNet blocks are pre-activation, ``x <- x + Module(Norm(x))`` (paper, appendix A.1). Both norms
compute, per channel ``c`` (BatchNorm, over N, H, W) or per pixel / token (LayerNorm, over C)::

    x_hat = (x - mean) / sqrt(var + eps),        y = gamma * x_hat + beta

with the biased variance. Differentiating through the mean and variance (they depend on x)
gives the classic backward pass, with ``m`` values per mean and ``dx_hat = g * gamma``::

    dx = (dx_hat - mean(dx_hat) - x_hat * mean(dx_hat * x_hat)) / sqrt(var + eps)

BatchNorm has *state*, the running mean and variance used at evaluation time. minicoat never
mutates it behind your back: ``batch_norm`` takes the running statistics and returns updated
ones, exactly as PyTorch's ``BatchNorm2d`` updates its buffers (momentum 0.1, the unbiased batch
variance in the running estimate, the biased one for normalising).
"""

import math

import autograd.numpy as np
import numpy as onp
from autograd.tracer import getval

from .activations import check_approximate, gelu
from .checks import check_batch_norm_args, check_layer_norm_args
from .switch import dispatch, with_vjp

BN_EPS = 1e-5  # PyTorch's default for both norms
LN_EPS = 1e-5
BN_MOMENTUM = 0.1


def init_bn_state(c, dtype=onp.float32):
    """Fresh running statistics for a BatchNorm over ``c`` channels: mean 0, variance 1."""
    return {"mean": onp.zeros(c, dtype), "var": onp.ones(c, dtype)}


def moments(x, axes):
    """Mean and biased variance of ``x`` over ``axes``, each keeping those axes with length 1
    (so that they broadcast against ``x``)."""
    n = math.prod(onp.shape(x)[a] for a in axes)  # a Python int: 1.0 / n keeps float32
    mean = np.sum(x, axis=axes, keepdims=True) * (1.0 / n)
    centered = x - mean
    return mean, np.sum(centered * centered, axis=axes, keepdims=True) * (1.0 / n)


def updated_running(running, mean, var, n, momentum):
    """PyTorch's update: ``(1 - momentum) running + momentum batch``, unbiased variance."""
    return {
        "mean": (1.0 - momentum) * running["mean"] + momentum * mean,
        "var": (1.0 - momentum) * running["var"] + momentum * var * (n / (n - 1)),
    }


# -- BatchNorm: training mode (batch statistics) and evaluation mode (running statistics) ----


def batch_norm_train_traced(x, gamma, beta, eps):
    """BatchNorm with the batch's own statistics over every axis but the last."""
    mean, var = moments(x, tuple(range(x.ndim - 1)))  # (1, .., 1, C) each
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def batch_norm_train_backward(g, x, gamma, beta, eps):
    """Gradients for ``g`` of x's shape: ``(dx, dgamma, dbeta, None)`` (see the module)."""
    axes = tuple(range(x.ndim - 1))
    mean, var = moments(x, axes)
    inv_std = 1.0 / onp.sqrt(var + eps)
    x_hat = (x - mean) * inv_std
    dx_hat = g * gamma
    dx = (dx_hat - dx_hat.mean(axis=axes) - x_hat * (dx_hat * x_hat).mean(axis=axes)) * inv_std
    return dx, onp.sum(g * x_hat, axis=axes), onp.sum(g, axis=axes), None


def batch_norm_eval_traced(x, gamma, beta, mean, var, eps):
    """BatchNorm with given (running) statistics: an affine map per channel."""
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def batch_norm_eval_backward(g, x, gamma, beta, mean, var, eps):
    """The statistics are constants here: ``dx = g gamma / std``. ``(dx, dgamma, dbeta, ...)``."""
    axes = tuple(range(x.ndim - 1))
    inv_std = 1.0 / onp.sqrt(var + eps)
    x_hat = (x - mean) * inv_std
    d_gamma, d_beta = onp.sum(g * x_hat, axis=axes), onp.sum(g, axis=axes)
    return g * gamma * inv_std, d_gamma, d_beta, None, None, None


def _batch_norm_with(normalize_train, normalize_eval):
    """``batch_norm`` (after its checks) from a training- and an evaluation-mode normalisation."""

    def batch_norm(x, gamma, beta, running, train, momentum, eps):
        if not train:
            return normalize_eval(x, gamma, beta, running["mean"], running["var"], eps), running
        axes = tuple(range(onp.ndim(getval(x)) - 1))
        mean, var = moments(getval(x), axes)  # plain arrays: the running statistics are not trained
        n = onp.size(getval(x)) // onp.shape(getval(x))[-1]
        return normalize_train(x, gamma, beta, eps), updated_running(
            running, mean.ravel(), var.ravel(), n, momentum
        )

    return batch_norm


_batch_norm = dispatch(
    "batch_norm",
    traced=_batch_norm_with(batch_norm_train_traced, batch_norm_eval_traced),
    readable=_batch_norm_with(
        with_vjp(batch_norm_train_traced, batch_norm_train_backward),
        with_vjp(batch_norm_eval_traced, batch_norm_eval_backward),
    ),
)


def batch_norm(x, gamma, beta, running, train, momentum=BN_MOMENTUM, eps=BN_EPS):
    """Batch normalisation over (N, H, W) for each channel.

    ``y = (x - mean) / sqrt(var + eps) * gamma + beta``; in training mode ``mean`` and ``var``
    are the batch statistics (biased variance) and the running statistics are updated as
    ``running <- (1 - momentum) * running + momentum * batch`` (unbiased variance, as PyTorch);
    in evaluation mode the running statistics are used and returned unchanged.

    Args:
        x: ``(N, H, W, C)`` (or ``(N, C)``), float32 or float64.
        gamma, beta: ``(C,)`` scale and shift.
        running: ``{"mean": (C,), "var": (C,)}`` running statistics.
        train: True to normalise with batch statistics and update ``running``.

    Returns:
        ``(y, new_running)``: ``y`` has the shape of ``x``; ``new_running`` is a new dict.
    """
    check_batch_norm_args(x, gamma, beta, running, train)
    return _batch_norm(x, gamma, beta, running, train, momentum, eps)


def _batch_norm_then_gelu(x, gamma, beta, running, train, approximate, momentum, eps):
    y, new_running = batch_norm(x, gamma, beta, running, train, momentum, eps)
    return gelu(y, approximate), new_running


# the kernel tier fuses the two into one op: one blocked pass each way, the GELU's slope
# made in the forward pass (docs/performance.md, 9 and 35)
_batch_norm_gelu = dispatch(
    "batch_norm_gelu", traced=_batch_norm_then_gelu, readable=_batch_norm_then_gelu
)


def batch_norm_gelu(
    x, gamma, beta, running, train, approximate="none", momentum=BN_MOMENTUM, eps=BN_EPS
):
    """``GELU(BatchNorm(x))``, the pair that follows every convolution inside MBConv and the stem.

    The same values as ``gelu(batch_norm(x, ...)[0], approximate)``: that composition is the
    traced and readable implementation; the kernel tier fuses the pair (as timm's
    ``BatchNormAct2d`` pairs the two layers): one blocked pass each way, and the GELU's slope
    made in the forward pass for the backward pass to reuse.

    Args:
        x: ``(N, H, W, C)`` (or ``(N, C)``); gamma, beta: ``(C,)``; running: as ``batch_norm``.
        train: batch statistics and updated ``running`` if True, else the running statistics.
        approximate: the GELU's, ``"none"`` (exact) or ``"tanh"``.

    Returns:
        ``(y, new_running)``: ``y`` has the shape of ``x``; ``new_running`` is a new dict.
    """
    check_approximate(approximate)
    check_batch_norm_args(x, gamma, beta, running, train)
    return _batch_norm_gelu(x, gamma, beta, running, train, approximate, momentum, eps)


# -- LayerNorm ------------------------------------------------------------------------------


def layer_norm_traced(x, gamma, beta, eps=LN_EPS):
    """LayerNorm over the last axis (shapes as ``layer_norm``)."""
    mean, var = moments(x, (x.ndim - 1,))  # (..., 1) each
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def layer_norm_backward(g, x, gamma, beta, eps=LN_EPS):
    """Gradients for ``g`` of x's shape: ``(dx, dgamma, dbeta, None)``; the means in ``dx`` are
    over the channels of each row, the sums for gamma and beta over all rows."""
    mean, var = moments(x, (x.ndim - 1,))
    inv_std = 1.0 / onp.sqrt(var + eps)  # (..., 1)
    x_hat = (x - mean) * inv_std
    dx_hat = g * gamma
    row_mean = dx_hat.mean(axis=-1, keepdims=True)
    row_proj = (dx_hat * x_hat).mean(axis=-1, keepdims=True)
    dx = (dx_hat - row_mean - x_hat * row_proj) * inv_std
    rows = tuple(range(x.ndim - 1))
    return dx, onp.sum(g * x_hat, axis=rows), onp.sum(g, axis=rows), None


_layer_norm = dispatch(
    "layer_norm",
    traced=layer_norm_traced,
    readable=with_vjp(layer_norm_traced, layer_norm_backward),
)


def layer_norm(x, gamma, beta, eps=LN_EPS):
    """Layer normalisation over the last (channel) axis.

    ``y = (x - mean) / sqrt(var + eps) * gamma + beta`` with mean and biased variance taken
    over the last axis of each token / pixel (PyTorch: ``F.layer_norm(x, (C,))``).

    Args:
        x: ``(..., C)``, e.g. tokens ``(N, T, C)`` or a feature map ``(N, H, W, C)``.
        gamma, beta: ``(C,)``.

    Returns:
        Same shape and dtype as ``x``.
    """
    check_layer_norm_args(x, gamma, beta)
    return _layer_norm(x, gamma, beta, eps)
