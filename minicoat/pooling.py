"""Pooling, channels-last: 2x2 stride-2 max and average pooling, global average pooling.

Rule for odd sizes: the output is ``ceil(H / 2) x ceil(W / 2)``, matching a stride-2 3x3 or
1x1 convolution with "same" padding, and a window that hangs over the bottom or right edge
pools only the pixels that exist (PyTorch: ``MaxPool2d(2, 2, ceil_mode=True)`` and
``AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False)``).

We implement the rule by repeating the last row / column once when the size is odd: a
window [a, a] has maximum a and mean a, so the repeated copy changes neither result.
"""

import autograd.numpy as np
import numpy as onp
from autograd.extend import defvjp, primitive

from .checks import check_float, check_rank


def _check_map(x):
    check_float("x", x)
    return check_rank("x", x, 4, "(N, H, W, C)")


def _repeat_edge_to_even(x):
    """(N, H, W, C) -> (N, H + H % 2, W + W % 2, C), repeating the last row / column."""
    if x.shape[1] % 2:
        x = np.concatenate([x, x[:, -1:]], axis=1)
    if x.shape[2] % 2:
        x = np.concatenate([x, x[:, :, -1:]], axis=2)
    return x


def avg_pool2d(x):
    """2x2 average pooling with stride 2 (odd sizes: see the module docstring).

    Args: x: ``(N, H, W, C)``. Returns: ``(N, ceil(H/2), ceil(W/2), C)``.
    """
    n, h, w, c = _check_map(x)
    x_even = _repeat_edge_to_even(x)
    win = x_even.reshape(n, x_even.shape[1] // 2, 2, x_even.shape[2] // 2, 2, c)
    return np.sum(win, axis=(2, 4)) * 0.25


def max_pool2d_reference(x):
    """Readable, traced 2x2 max pooling (see ``max_pool2d``).

    autograd splits the gradient of ``np.max`` evenly among tied maxima, where PyTorch (and
    ``max_pool2d``) gives it all to the first one: compare the two on inputs without ties.
    """
    x_even = _repeat_edge_to_even(x)
    n, h, w, c = x_even.shape
    windows = np.reshape(x_even, (n, h // 2, 2, w // 2, 2, c))  # (N, Ho, 2, Wo, 2, C)
    return np.max(np.max(windows, axis=4), axis=2)


def _corners(x_even):
    """The four pixels of every 2x2 window as strided views, in row-major window order."""
    return [x_even[:, i::2, j::2] for i in (0, 1) for j in (0, 1)]


@primitive
def _max_pool2d(x):
    # Three elementwise maxima of strided views: no (N, Ho, Wo, C, 4) copy to reduce over.
    top_left, top_right, bottom_left, bottom_right = _corners(_repeat_edge_to_even(x))
    return onp.maximum(onp.maximum(top_left, top_right), onp.maximum(bottom_left, bottom_right))


def _max_pool2d_vjp(y, x):
    n, h, w, c = x.shape

    def vjp(g):  # g: (N, Ho, Wo, C); the gradient goes to the first maximum of each window
        x_even = _repeat_edge_to_even(x)
        dx = onp.empty(x_even.shape, dtype=g.dtype)
        taken = onp.zeros(y.shape, dtype=bool)  # window already has its maximum
        for corner, d_corner in zip(_corners(x_even), _corners(dx), strict=True):
            first = (corner == y) & ~taken
            onp.multiply(g, first, out=d_corner)
            taken |= first
        if h % 2:  # fold the repeated row back onto the last real row
            dx[:, h - 1] += dx[:, h]
        if w % 2:
            dx[:, :, w - 1] += dx[:, :, w]
        return dx if (h, w) == dx.shape[1:3] else onp.ascontiguousarray(dx[:, :h, :w])

    return vjp


defvjp(_max_pool2d, _max_pool2d_vjp)


def max_pool2d(x):
    """2x2 max pooling with stride 2 (the paper's downsampling pool; odd sizes: see module).

    The gradient flows to the first maximum of each window (PyTorch's choice).
    Args: x: ``(N, H, W, C)``. Returns: ``(N, ceil(H/2), ceil(W/2), C)``.
    """
    _check_map(x)
    return _max_pool2d(x)


def global_avg_pool(x):
    """Mean over the spatial axes: ``(N, H, W, C) -> (N, C)``."""
    _, h, w, _ = _check_map(x)
    return np.sum(x, axis=(1, 2)) * (1.0 / (h * w))
