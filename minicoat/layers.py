"""Small layers built from the ops: linear, squeeze-excitation, cross-entropy."""

import autograd.numpy as np
import numpy as onp
from autograd.tracer import getval

from .activations import gelu, log_softmax, sigmoid
from .checks import check_float, check_same_dtype
from .conv import matmul_last
from .pooling import global_avg_pool


def linear(x, w, b=None):
    """Affine map over the last axis: ``x @ w + b``.

    Args:
        x: ``(..., C_in)``; w: ``(C_in, C_out)``; b: ``(C_out,)`` or None.

    Returns:
        ``(..., C_out)``.
    """
    check_float("x", x)
    check_float("w", w)
    xs, ws = onp.shape(getval(x)), onp.shape(getval(w))
    if len(ws) != 2 or xs[-1] != ws[0]:
        raise ValueError(
            f"w must have shape (C_in, C_out) with C_in = {xs[-1]} to match x of shape {xs}; "
            f"got w of shape {ws}"
        )
    check_same_dtype(x=x, w=w, b=b)
    if b is not None and onp.shape(getval(b)) != (ws[1],):
        raise ValueError(f"b must have shape (C_out,) = ({ws[1]},), got {onp.shape(getval(b))}")
    return matmul_last(x, w, b)


def squeeze_excitation(x, p, approximate="none"):
    """Squeeze-and-excitation (Hu et al. 2018), the channel gate inside MBConv.

    ``s = mean_{H,W}(x)``; ``gate = sigmoid(gelu(s @ w_reduce + b_reduce) @ w_expand + b_expand)``;
    ``y = x * gate`` broadcast over H and W.

    Args:
        x: ``(N, H, W, C)``.
        p: ``{"w_reduce": (C, R), "b_reduce": (R,), "w_expand": (R, C), "b_expand": (C,)}``.

    Returns:
        ``(N, H, W, C)``.
    """
    squeezed = global_avg_pool(x)  # (N, C)
    hidden = gelu(linear(squeezed, p["w_reduce"], p["b_reduce"]), approximate)  # (N, R)
    gate = sigmoid(linear(hidden, p["w_expand"], p["b_expand"]))  # (N, C)
    return x * gate[:, None, None, :]


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
    if n and (labels.min() < 0 or labels.max() >= k):
        raise ValueError(f"labels must lie in [0, {k}), got range [{labels.min()}, {labels.max()}]")
    dtype = getval(logits).dtype
    target = onp.eye(k, dtype=dtype)[labels] * (1.0 - label_smoothing) + label_smoothing / k
    return -np.sum(target * log_softmax(logits, axis=-1)) * (1.0 / n)
