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
from autograd.tracer import getval

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
    axes = tuple(range(len(shape) - 1))
    if train:
        n = int(onp.prod(shape[:-1]))
        if n < 2:
            raise ValueError(
                f"batch_norm in training mode needs more than one value per channel, got x of "
                f"shape {shape}; use a larger batch or train=False"
            )
        mean = np.sum(x, axis=axes) * (1.0 / n)  # (C,)
        centered = x - mean
        var = np.sum(centered * centered, axis=axes) * (1.0 / n)  # biased, (C,)
        new_running = {
            "mean": (1.0 - momentum) * running["mean"] + momentum * getval(mean),
            "var": (1.0 - momentum) * running["var"] + momentum * getval(var) * (n / (n - 1)),
        }
    else:
        centered = x - running["mean"]
        var = running["var"]
        new_running = running
    scale = gamma / np.sqrt(var + eps)  # (C,): fold gamma into one multiply
    return centered * scale + beta, new_running


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
    check_float("x", x)
    c = onp.shape(getval(x))[-1]
    _check_affine("gamma", gamma, c, x)
    _check_affine("beta", beta, c, x)
    mean = np.sum(x, axis=-1, keepdims=True) * (1.0 / c)  # (..., 1)
    centered = x - mean
    var = np.sum(centered * centered, axis=-1, keepdims=True) * (1.0 / c)  # (..., 1)
    return centered / np.sqrt(var + eps) * gamma + beta
