"""Max pooling's kernel: three elementwise maxima of strided views, no window copy to reduce.

Registers as the ``fast`` ``max_pool2d`` (``minicoat/ops/pooling.py``); the gradient goes to
the first maximum of each window, as in the teaching tier and PyTorch.
"""

import numpy as onp
from autograd.extend import defvjp, primitive

from ..ops.pooling import repeat_edge_to_even
from ..ops.switch import register_kernel


def _corners(x_even):
    """The four pixels of every 2x2 window as strided views, in row-major window order."""
    return [x_even[:, i::2, j::2] for i in (0, 1) for j in (0, 1)]


@primitive
def _max_pool2d(x):
    # Three elementwise maxima of strided views: no (N, Ho, Wo, C, 4) copy to reduce over.
    top_left, top_right, bottom_left, bottom_right = _corners(repeat_edge_to_even(x))
    return onp.maximum(onp.maximum(top_left, top_right), onp.maximum(bottom_left, bottom_right))


def _max_pool2d_vjp(y, x):
    n, h, w, c = x.shape

    def vjp(g):  # g: (N, Ho, Wo, C); the gradient goes to the first maximum of each window
        x_even = repeat_edge_to_even(x)
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


register_kernel("max_pool2d")(_max_pool2d)
