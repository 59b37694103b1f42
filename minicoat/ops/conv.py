"""Convolutions, channels-last: depthwise (the "C" in CoAtNet), dense k x k, and 1x1 / linear.

Paper, section 2.1, equation (1), depthwise convolution::

    y_i = sum_{j in L(i)} w_{i-j} * x_j          (L(i): the k x k window around i)

Everything here is a sum over the k*k *taps* of the kernel. Tap ``(di, dj)`` multiplies the
input shifted by ``(di - p, dj - p)`` with one slice of the kernel, where ``p = k // 2`` is the
"same" padding. With the input zero-padded once, the shifted input of a tap is a plain strided
slice (``tap``), so a 3x3 convolution is nine slices and nine multiply-adds over whole arrays.

The backward pass runs the same taps in reverse. For one tap the forward line is
``y += s * w_t`` with ``s = tap(x_pad)``; differentiating it gives ``dw_t = sum g * s`` (summed
over every pixel) and ``ds = g * w_t``, and since ``s`` is a window of ``x_pad``, ``ds`` is
added back into that window of ``dx_pad``. Each op below: ``*_traced`` (autograd
differentiates it), ``*_backward`` (that derivation, by hand) and the public function.
"""

import autograd.numpy as np
import numpy as onp

from .checks import (
    check_bias,
    check_conv_args,
    check_float,
    check_rank,
    check_same_dtype,
    check_stride,
)
from .switch import dispatch, with_vjp


def output_size(n, k, stride):
    """Spatial output size of a "same"-padded k x k window with the given stride.

    ``(n + 2 * (k // 2) - k) // stride + 1``: ``n`` for stride 1, ``ceil(n / 2)`` for stride 2
    (identical to PyTorch's ``padding=k // 2``).
    """
    return (n + 2 * (k // 2) - k) // stride + 1


def tap(x_pad, di, dj, ho, wo, stride):
    """The padded input seen by tap (di, dj), a view: (N, H+2p, W+2p, C) -> (N, Ho, Wo, C)."""
    rows = slice(di, di + stride * (ho - 1) + 1, stride)
    cols = slice(dj, dj + stride * (wo - 1) + 1, stride)
    return x_pad[:, rows, cols, :]


def pad(x, p):
    """Zero-pad the two spatial axes by ``p``: (N, H, W, C) -> (N, H+2p, W+2p, C)."""
    return np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode="constant")


# -- depthwise convolution ------------------------------------------------------------------


def depthwise_conv2d_traced(x, w, stride=1):
    """Depthwise convolution as k*k shifted multiply-adds (shapes as ``depthwise_conv2d``)."""
    k = w.shape[0]
    n, h, wd, c = x.shape
    ho, wo = output_size(h, k, stride), output_size(wd, k, stride)
    x_pad = pad(x, k // 2)  # (N, H+2p, W+2p, C)
    y = 0.0
    for di in range(k):
        for dj in range(k):
            y = y + tap(x_pad, di, dj, ho, wo, stride) * w[di, dj]  # (N, Ho, Wo, C) * (C,)
    return y


def depthwise_conv2d_backward(g, x, w, stride=1):
    """Gradients of ``depthwise_conv2d`` for the output gradient ``g`` (N, Ho, Wo, C).

    Returns ``(dx, dw, None)``: ``dx`` (N, H, W, C), ``dw`` (k, k, C); the stride gets none.
    """
    k = w.shape[0]
    p = k // 2
    _, h, wd, _ = x.shape
    ho, wo = g.shape[1:3]
    x_pad = pad(x, p)
    dx_pad = onp.zeros_like(x_pad)  # (N, H+2p, W+2p, C)
    dw = onp.zeros_like(w)
    for di in range(k):
        for dj in range(k):
            # forward: y += s * w[di, dj], with s = tap(x_pad), the window this tap sees
            dw[di, dj] = onp.sum(tap(x_pad, di, dj, ho, wo, stride) * g, axis=(0, 1, 2))  # (C,)
            window = tap(dx_pad, di, dj, ho, wo, stride)  # the same window of dx_pad (a view)
            window += g * w[di, dj]  # ds = g * w[di, dj]
    return dx_pad[:, p : p + h, p : p + wd, :], dw, None  # drop the padding's gradient


_depthwise_conv2d = dispatch(
    "depthwise_conv2d",
    traced=depthwise_conv2d_traced,
    readable=with_vjp(depthwise_conv2d_traced, depthwise_conv2d_backward),
)


def depthwise_conv2d(x, w, stride=1):
    """Depthwise k x k convolution with "same" padding (paper eq. 1).

    ``y[n, i, j, c] = sum_{di, dj} w[di, dj, c] * x_pad[n, s*i + di, s*j + dj, c]``, with
    ``x`` zero-padded by ``k // 2`` and ``s`` the stride. Each channel has its own kernel and
    channels never mix (PyTorch: ``F.conv2d(x, w, padding=k // 2, groups=C)``).

    Args:
        x: ``(N, H, W, C)`` float32 or float64.
        w: ``(k, k, C)`` per-channel kernels, ``k`` odd, same dtype as ``x``.
        stride: 1 or 2.

    Returns:
        ``(N, H', W', C)`` with ``H' = ceil(H / stride)``, ``W' = ceil(W / stride)``.
    """
    check_conv_args(x, w, stride, "(k, k, C)", depthwise=True)
    return _depthwise_conv2d(x, w, stride)


# -- dense convolution ----------------------------------------------------------------------


def conv2d_traced(x, w, b=None, stride=1):
    """Dense convolution as k*k shifted matrix products (shapes as ``conv2d``)."""
    k = w.shape[0]
    n, h, wd, _ = x.shape
    ho, wo = output_size(h, k, stride), output_size(wd, k, stride)
    x_pad = pad(x, k // 2)  # (N, H+2p, W+2p, Ci)
    y = 0.0
    for di in range(k):
        for dj in range(k):
            y = y + tap(x_pad, di, dj, ho, wo, stride) @ w[di, dj]  # (N,Ho,Wo,Ci) @ (Ci,Co)
    return y if b is None else y + b


def conv2d_backward(g, x, w, b=None, stride=1):
    """Gradients of ``conv2d`` for the output gradient ``g`` (N, Ho, Wo, C_out).

    Per tap the forward is ``y += s @ w_t``: so ``dw_t = s^T g`` (summed over every pixel) and
    ``ds = g w_t^T``, added back into the tap's window. Returns ``(dx, dw, db, None)``.
    """
    k, _, c_in, c_out = w.shape
    p = k // 2
    _, h, wd, _ = x.shape
    ho, wo = g.shape[1:3]
    x_pad = pad(x, p)
    dx_pad = onp.zeros_like(x_pad)  # (N, H+2p, W+2p, Ci)
    dw = onp.zeros_like(w)
    g_rows = g.reshape(-1, c_out)  # (N*Ho*Wo, Co): one row per output pixel
    for di in range(k):
        for dj in range(k):
            s_rows = tap(x_pad, di, dj, ho, wo, stride).reshape(-1, c_in)  # (N*Ho*Wo, Ci)
            dw[di, dj] = s_rows.T @ g_rows  # (Ci, Co)
            window = tap(dx_pad, di, dj, ho, wo, stride)  # a view of dx_pad
            window += (g_rows @ w[di, dj].T).reshape(window.shape)  # ds = g w_t^T
    db = None if b is None else g_rows.sum(axis=0)  # y = ... + b: db sums g over the pixels
    return dx_pad[:, p : p + h, p : p + wd, :], dw, db, None


_conv2d = dispatch(
    "conv2d", traced=conv2d_traced, readable=with_vjp(conv2d_traced, conv2d_backward)
)


def conv2d(x, w, b=None, stride=1):
    """Dense k x k convolution with "same" padding and an optional bias.

    ``y[n, i, j, :] = sum_{di, dj} x_pad[n, s*i + di, s*j + dj, :] @ w[di, dj] + b``
    (PyTorch: ``F.conv2d(x, w, b, stride, padding=k // 2)`` in NCHW).

    Args:
        x: ``(N, H, W, C_in)`` float32 or float64.
        w: ``(k, k, C_in, C_out)``, ``k`` odd, same dtype as ``x``.
        b: ``(C_out,)`` or None.
        stride: 1 or 2.

    Returns:
        ``(N, H', W', C_out)`` with ``H' = ceil(H / stride)``, ``W' = ceil(W / stride)``.
    """
    check_conv_args(x, w, stride, "(k, k, C_in, C_out)", depthwise=False)
    if b is not None:
        check_bias(b, w.shape[-1], x)
    return _conv2d(x, w, b, stride)


# -- linear map over the channels = 1x1 convolution -----------------------------------------


def linear_traced(x, w, b=None):
    """``x @ w + b`` over the last axis (shapes as ``linear``)."""
    y = x @ w
    return y if b is None else y + b


def linear_backward(g, x, w, b=None):
    """Gradients of ``linear`` for ``g`` (..., C_out): ``y = x w + b`` row by row, so
    ``dx = g w^T``, ``dw = x^T g`` and ``db = sum of g``, summed over all rows."""
    x_rows = x.reshape(-1, x.shape[-1])  # (M, C_in): every token / pixel is a row
    g_rows = g.reshape(-1, g.shape[-1])  # (M, C_out)
    dx = (g_rows @ w.T).reshape(x.shape)
    dw = x_rows.T @ g_rows  # (C_in, C_out)
    db = None if b is None else g_rows.sum(axis=0)
    return dx, dw, db


_linear = dispatch(
    "linear", traced=linear_traced, readable=with_vjp(linear_traced, linear_backward)
)


def linear(x, w, b=None):
    """Affine map over the last axis: ``x @ w + b``.

    Args:
        x: ``(..., C_in)``; w: ``(C_in, C_out)``; b: ``(C_out,)`` or None.

    Returns:
        ``(..., C_out)``.
    """
    check_float("x", x)
    check_float("w", w)
    xs, ws = onp.shape(x), onp.shape(w)
    if len(ws) != 2 or not xs or xs[-1] != ws[0]:
        raise ValueError(
            f"w must have shape (C_in, C_out) with C_in = {xs[-1] if xs else '?'} to match x of "
            f"shape {xs}; got w of shape {ws}"
        )
    check_same_dtype(x=x, w=w, b=b)
    if b is not None and onp.shape(b) != (ws[1],):
        raise ValueError(f"b must have shape (C_out,) = ({ws[1]},), got {onp.shape(b)}")
    return _linear(x, w, b)


def conv1x1(x, w, b=None, stride=1):
    """1x1 convolution: a linear map over the channel axis.

    Channels-last makes a pointwise convolution exactly ``x @ w``; stride 2 keeps every
    second pixel (``x[:, ::2, ::2]``), as a 1x1 convolution with stride 2 does.

    Args:
        x: ``(N, H, W, C_in)``; w: ``(C_in, C_out)``; b: ``(C_out,)`` or None; stride: 1 or 2.

    Returns:
        ``(N, ceil(H / stride), ceil(W / stride), C_out)``.
    """
    check_rank("x", x, 4, "(N, H, W, C)")
    check_rank("w", w, 2, "(C_in, C_out)")
    check_stride(stride)
    if stride == 2:
        x = x[:, ::2, ::2, :]  # (N, ceil(H/2), ceil(W/2), C_in)
    return linear(x, w, b)
