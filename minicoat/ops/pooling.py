"""Pooling, channels-last: 2x2 stride-2 max and average pooling, global average pooling.

Downsampling blocks pool their shortcut, ``x <- Proj(Pool(x)) + ...`` (paper, section 2.2):
max pooling in the paper, average pooling in timm. Rule for odd sizes: the output is
``ceil(H / 2) x ceil(W / 2)``, matching a stride-2 3x3 or 1x1 convolution with "same" padding,
and a window that hangs over the bottom or right edge pools only the pixels that exist
(PyTorch: ``MaxPool2d(2, 2, ceil_mode=True)`` and
``AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False)``).

We implement the rule by repeating the last row / column once when the size is odd: a window
``[a, a]`` has maximum a and mean a, so the copy changes neither result. In the backward pass
the copy's gradient goes back to the row it copies (``fold_edge``).
"""

import autograd.numpy as np
import numpy as onp

from .checks import check_float, check_rank
from .switch import dispatch, with_vjp


def _check_map(x):
    check_float("x", x)
    return check_rank("x", x, 4, "(N, H, W, C)")


def repeat_edge_to_even(x):
    """(N, H, W, C) -> (N, H + H % 2, W + W % 2, C), repeating the last row / column."""
    if x.shape[1] % 2:
        x = np.concatenate([x, x[:, -1:]], axis=1)
    if x.shape[2] % 2:
        x = np.concatenate([x, x[:, :, -1:]], axis=2)
    return x


def fold_edge(d_even, h, w):
    """The backward of ``repeat_edge_to_even``: the repeated row / column's gradient is added
    to the last real one. (N, H + H % 2, W + W % 2, C) -> (N, H, W, C)."""
    d = d_even.copy()
    if d.shape[1] > h:  # row h is a copy of row h - 1
        d[:, h - 1] += d[:, h]
    if d.shape[2] > w:  # column w is a copy of column w - 1 (the corner folds twice)
        d[:, :, w - 1] += d[:, :, w]
    return onp.ascontiguousarray(d[:, :h, :w])


def windows(x_even):
    """The 2x2 windows of an even-sized map: (N, H, W, C) -> (N, H/2, 2, W/2, 2, C)."""
    n, h, w, c = x_even.shape
    return np.reshape(x_even, (n, h // 2, 2, w // 2, 2, c))


# -- max pooling ----------------------------------------------------------------------------


def max_pool2d_traced(x):
    """2x2 max pooling (shapes as ``max_pool2d``).

    autograd splits the gradient of ``np.max`` evenly among tied maxima, where PyTorch (and
    the readable and fast implementations) give it all to the first one: the three agree on
    inputs without ties.
    """
    return np.max(np.max(windows(repeat_edge_to_even(x)), axis=4), axis=2)


def max_pool2d_backward(g, x):
    """Gradient of ``max_pool2d``: each window's ``g`` goes to its first maximum. ``(dx,)``."""
    n, h, w, c = x.shape
    x_win = windows(repeat_edge_to_even(x))  # (N, Ho, 2, Wo, 2, C)
    ho, wo = x_win.shape[1], x_win.shape[3]
    pixels = x_win.transpose(0, 1, 3, 5, 2, 4).reshape(n, ho, wo, c, 4)  # the 4 of each window
    first = pixels.argmax(axis=-1)  # (N, Ho, Wo, C): argmax picks the first of tied maxima
    d_pixels = (onp.arange(4) == first[..., None]) * g[..., None]  # (N, Ho, Wo, C, 4)
    d_win = d_pixels.reshape(n, ho, wo, c, 2, 2).transpose(0, 1, 4, 2, 5, 3)  # (N,Ho,2,Wo,2,C)
    return (fold_edge(d_win.reshape(n, 2 * ho, 2 * wo, c), h, w),)


_max_pool2d = dispatch(
    "max_pool2d",
    traced=max_pool2d_traced,
    readable=with_vjp(max_pool2d_traced, max_pool2d_backward),
)


def max_pool2d(x):
    """2x2 max pooling with stride 2 (the paper's downsampling pool; odd sizes: see module).

    The gradient flows to the first maximum of each window (PyTorch's choice).
    Args: x: ``(N, H, W, C)``. Returns: ``(N, ceil(H/2), ceil(W/2), C)``.
    """
    _check_map(x)
    return _max_pool2d(x)


# -- average pooling ------------------------------------------------------------------------


def avg_pool2d_traced(x):
    """2x2 average pooling (shapes as ``avg_pool2d``)."""
    return np.sum(windows(repeat_edge_to_even(x)), axis=(2, 4)) * 0.25


def avg_pool2d_backward(g, x):
    """Each of a window's 4 pixels gets a quarter of its ``g``. Returns ``(dx,)``."""
    d_even = onp.repeat(onp.repeat(g, 2, axis=1), 2, axis=2) * 0.25  # (N, 2 Ho, 2 Wo, C)
    return (fold_edge(d_even, x.shape[1], x.shape[2]),)


_avg_pool2d = dispatch(
    "avg_pool2d",
    traced=avg_pool2d_traced,
    readable=with_vjp(avg_pool2d_traced, avg_pool2d_backward),
)


def avg_pool2d(x):
    """2x2 average pooling with stride 2 (timm's downsampling pool; odd sizes: see module).

    Args: x: ``(N, H, W, C)``. Returns: ``(N, ceil(H/2), ceil(W/2), C)``.
    """
    _check_map(x)
    return _avg_pool2d(x)


# -- global average pooling -----------------------------------------------------------------


def global_avg_pool_traced(x):
    """Mean over the spatial axes (shapes as ``global_avg_pool``)."""
    return np.sum(x, axis=(1, 2)) * (1.0 / (x.shape[1] * x.shape[2]))


def global_avg_pool_backward(g, x):
    """Every pixel gets ``g / (H W)`` of its channel: (N, C) -> (N, H, W, C). Returns ``(dx,)``."""
    n, h, w, c = x.shape
    return (onp.broadcast_to(g[:, None, None, :] * (1.0 / (h * w)), (n, h, w, c)).copy(),)


_global_avg_pool = dispatch(
    "global_avg_pool",
    traced=global_avg_pool_traced,
    readable=with_vjp(global_avg_pool_traced, global_avg_pool_backward),
)


def global_avg_pool(x):
    """Mean over the spatial axes: ``(N, H, W, C) -> (N, C)``."""
    _check_map(x)
    return _global_avg_pool(x)
