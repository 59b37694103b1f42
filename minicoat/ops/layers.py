"""Small layers built from the ops: squeeze-excitation and the cross-entropy loss.

Squeeze-excitation (Hu et al. 2018) is the channel gate inside every MBConv block (paper,
appendix A.1, following EfficientNet); cross-entropy with optional label smoothing is the
training loss.
"""

import autograd.numpy as np
import numpy as onp
from autograd.tracer import getval

from .activations import gelu, log_softmax, sigmoid, silu, softmax_traced
from .checks import check_float, check_rank, check_same_dtype
from .conv import linear
from .pooling import global_avg_pool
from .switch import dispatch, with_vjp


def squeeze_excitation(x, p, approximate="none", act="gelu"):
    """Squeeze-and-excitation, the channel gate inside MBConv.

    ``s = mean_{H,W}(x)``; ``gate = sigmoid(act(s @ w_reduce + b_reduce) @ w_expand + b_expand)``;
    ``y = x * gate`` broadcast over H and W.

    Args:
        x: ``(N, H, W, C)``.
        p: ``{"w_reduce": (C, R), "b_reduce": (R,), "w_expand": (R, C), "b_expand": (C,)}``.
        approximate: the GELU's (``"none"`` or ``"tanh"``), when ``act="gelu"``.
        act: the hidden activation, ``"gelu"`` (minicoat's default: GELU everywhere, paper
            appendix A.1) or ``"silu"`` (EfficientNet's SE, and timm's CoAtNets).

    Returns:
        ``(N, H, W, C)``.
    """
    if act not in ("gelu", "silu"):
        raise ValueError(f"act must be 'gelu' or 'silu', got {act!r}")
    squeezed = global_avg_pool(x)  # (N, C)
    hidden = linear(squeezed, p["w_reduce"], p["b_reduce"])  # (N, R)
    hidden = gelu(hidden, approximate) if act == "gelu" else silu(hidden)
    gate = sigmoid(linear(hidden, p["w_expand"], p["b_expand"]))  # (N, C)
    return scale_channels(x, gate)


# -- the gate: each image's channels scaled by factors of its own -------------------------


def scale_channels_traced(x, s):
    """``x * s``, ``s`` broadcast over the pixels (shapes as ``scale_channels``)."""
    return x * s[:, None, None, :]


def scale_channels_backward(g, x, s):
    """``y = x s``: ``dx = g s`` (broadcast over the pixels) and ``ds = sum_{i,j} g x``, the
    gradient of a broadcast operand summed over the axes it was broadcast along.
    Returns ``(dx, ds)``."""
    return g * s[:, None, None, :], onp.sum(g * x, axis=(1, 2))


_scale_channels = dispatch(
    "scale_channels",
    traced=scale_channels_traced,
    readable=with_vjp(scale_channels_traced, scale_channels_backward),
)


def scale_channels(x, s):
    """``y[n, i, j, c] = x[n, i, j, c] s[n, c]``: squeeze-excitation's gate applied to its map.

    Args:
        x: ``(N, H, W, C)``.
        s: ``(N, C)``, of x's dtype.

    Returns:
        ``(N, H, W, C)``.
    """
    check_float("x", x)
    n, _, _, c = check_rank("x", x, 4, "(N, H, W, C)")
    if onp.shape(getval(s)) != (n, c):
        raise ValueError(
            f"s must have shape (N, C) = ({n}, {c}) for x of shape {onp.shape(getval(x))}, "
            f"got {onp.shape(getval(s))}"
        )
    check_same_dtype(x=x, s=s)
    return _scale_channels(x, s)


# -- cross-entropy --------------------------------------------------------------------------


def _targets(labels, k, label_smoothing, dtype):
    """``(1 - eps) * one_hot(labels) + eps / K``: (N,) ints -> (N, K) of ``dtype``."""
    return onp.eye(k, dtype=dtype)[labels] * (1.0 - label_smoothing) + label_smoothing / k


def cross_entropy_traced(logits, labels, label_smoothing=0.0):
    """``-mean_n sum_k target[n, k] log_softmax(logits)[n, k]`` (shapes as ``cross_entropy``)."""
    n, k = onp.shape(getval(logits))
    target = _targets(labels, k, label_smoothing, getval(logits).dtype)
    return -np.sum(target * log_softmax(logits, axis=-1)) * (1.0 / n)


def cross_entropy_backward(g, logits, labels, label_smoothing=0.0):
    """``d loss / d logits = (softmax(logits) - target) / N`` (each target row sums to 1), times
    the scalar ``g``. Returns ``(d_logits, None, None)``."""
    n, k = logits.shape
    target = _targets(labels, k, label_smoothing, logits.dtype)
    return g * (softmax_traced(logits, axis=-1) - target) * (1.0 / n), None, None


_cross_entropy = dispatch(
    "cross_entropy",
    traced=cross_entropy_traced,
    readable=with_vjp(cross_entropy_traced, cross_entropy_backward),
)


def cross_entropy(logits, labels, label_smoothing=0.0):
    """Mean cross-entropy between logits and integer labels, with optional label smoothing.

    The target is ``(1 - eps) * one_hot + eps / K`` (PyTorch ``F.cross_entropy`` with
    ``label_smoothing=eps``); the loss is
    ``-mean_n sum_k target[n, k] * log_softmax(logits)[n, k]``.

    Args:
        logits: ``(N, K)`` float; labels: ``(N,)`` integers in ``[0, K)``.

    Returns:
        A scalar of the logits' dtype.
    """
    check_float("logits", logits)
    n, k = onp.shape(getval(logits)) if onp.ndim(getval(logits)) == 2 else (None, None)
    if n is None:
        raise ValueError(f"logits must have shape (N, K), got {onp.shape(getval(logits))}")
    if n == 0:
        raise ValueError("cross_entropy needs at least one example, got logits of shape (0, K)")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    labels = onp.asarray(labels)
    if labels.shape != (n,) or not onp.issubdtype(labels.dtype, onp.integer):
        raise ValueError(
            f"labels must be integers of shape (N,) = ({n},), got {labels.dtype} {labels.shape}"
        )
    if labels.min() < 0 or labels.max() >= k:
        raise ValueError(f"labels must lie in [0, {k}), got range [{labels.min()}, {labels.max()}]")
    return _cross_entropy(logits, labels, label_smoothing)
