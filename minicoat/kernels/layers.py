"""Squeeze-excitation's gate, ``scale_channels``: a few images at a time, on the kernel threads.

Traced, ``x * s[:, None, None, :]`` is one product over the whole map on one thread, and its
VJP two more (``g s``, and ``g x`` before it is summed over the pixels). Here the forward and
both gradients run on blocks of whole images (``image_blocks``), taken by whichever kernel
thread is free inside a training step, and ``ds`` is one ``einsum`` per block, the product and
its sum in one pass (``docs/performance.md``, 28).
"""

import numpy as onp
from autograd.extend import defvjp_argnums, primitive

from ..ops.switch import register_kernel
from .blocking import image_blocks
from .threads import parallel_blocks


def _image_blocks(x):
    return list(image_blocks(len(x), x[0].size if len(x) else 1))


@primitive
def _scale_channels(x, s):
    y = onp.empty(x.shape, dtype=onp.result_type(x, s))
    blocks = _image_blocks(x)

    def run(i):  # one block of images, on whichever kernel thread takes it
        images = blocks[i]
        onp.multiply(x[images], s[images, None, None, :], out=y[images])

    parallel_blocks(run, len(blocks), x.size, elementwise=True)
    return y


def _scale_channels_vjp(argnums, y, args, kwargs):
    x, s = args  # the output y is not kept

    def vjp(g):
        d_x = onp.empty(x.shape, dtype=g.dtype) if 0 in argnums else None
        d_s = onp.empty(s.shape, dtype=g.dtype) if 1 in argnums else None
        blocks = _image_blocks(x)

        def run(i):  # this block's rows of dx = g s and of ds = sum over the pixels of g x
            images = blocks[i]
            if d_x is not None:
                onp.multiply(g[images], s[images, None, None, :], out=d_x[images])
            if d_s is not None:
                d_s[images] = onp.einsum("nijc,nijc->nc", g[images], x[images])

        parallel_blocks(run, len(blocks), x.size, elementwise=True)
        grads = {0: d_x, 1: d_s}
        return tuple(grads[i] for i in argnums)

    return vjp


defvjp_argnums(_scale_channels, _scale_channels_vjp)


@register_kernel("scale_channels")
def scale_channels(x, s):
    """``scale_channels`` by blocks of images; the caller has checked the shapes."""
    return _scale_channels(x, s)
