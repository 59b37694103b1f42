"""Max pooling's kernel: three elementwise maxima of strided views, no window copy to reduce.

Registers as the ``fast`` ``max_pool2d`` (``minicoat/ops/pooling.py``); the gradient goes to
the first maximum of each window, as in the teaching tier and PyTorch. A few images at a
time, shared among the kernel threads inside ``owned_cores``.
"""

import numpy as onp
from autograd.extend import defvjp, primitive

from ..ops.pooling import repeat_edge_to_even
from ..ops.switch import register_kernel
from .blocking import image_blocks
from .threads import parallel_blocks


def _corners(x_even):
    """The four pixels of every 2x2 window as strided views, in row-major window order."""
    return [x_even[:, i::2, j::2] for i in (0, 1) for j in (0, 1)]


def _per_image_block(f, x):
    """``f(images)`` for blocks of x's images (``image_blocks``), shared among the kernel
    threads inside ``owned_cores`` (``parallel_blocks``); each call writes only its images."""
    blocks = list(image_blocks(len(x), x[0].size))
    parallel_blocks(lambda i: f(blocks[i]), len(blocks), x.size, elementwise=True)


def _pool_block(x):
    # Three elementwise maxima of strided views: no (N, Ho, Wo, C, 4) copy to reduce over.
    top_left, top_right, bottom_left, bottom_right = _corners(repeat_edge_to_even(x))
    return onp.maximum(onp.maximum(top_left, top_right), onp.maximum(bottom_left, bottom_right))


@primitive
def _max_pool2d(x):
    n, h, w, c = x.shape
    y = onp.empty((n, (h + 1) // 2, (w + 1) // 2, c), dtype=x.dtype)

    def run(images):
        y[images] = _pool_block(x[images])

    _per_image_block(run, x)
    return y


def _max_pool2d_vjp(y, x):
    n, h, w, c = x.shape

    def vjp(g):  # g: (N, Ho, Wo, C); the gradient goes to the first maximum of each window
        dx = onp.empty(x.shape, dtype=g.dtype)

        def run(images):  # a block of images, in the cache
            x_even, y_block, g_block = repeat_edge_to_even(x[images]), y[images], g[images]
            d_even = onp.empty(x_even.shape, dtype=g.dtype)
            taken = onp.zeros(y_block.shape, dtype=bool)  # window already has its maximum
            for corner, d_corner in zip(_corners(x_even), _corners(d_even), strict=True):
                first = (corner == y_block) & ~taken
                onp.multiply(g_block, first, out=d_corner)
                taken |= first
            if h % 2:  # fold the repeated row back onto the last real row
                d_even[:, h - 1] += d_even[:, h]
            if w % 2:
                d_even[:, :, w - 1] += d_even[:, :, w]
            dx[images] = d_even[:, :h, :w]

        _per_image_block(run, x)
        return dx

    return vjp


defvjp(_max_pool2d, _max_pool2d_vjp)


register_kernel("max_pool2d")(_max_pool2d)
