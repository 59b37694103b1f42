"""Convolution and linear kernels: blocked over images, im2col, one BLAS call per product.

Each registers as the ``fast`` implementation of the teaching tier's op of the same name
(``minicoat/ops/conv.py``), takes its arguments, and is tested equal to it. Why each is shaped
as it is, with the measurements: ``docs/performance.md``.
"""

import numpy as onp
from autograd.extend import defvjp, defvjp_argnums, primitive

from ..ops.conv import output_size, tap
from ..ops.switch import register_kernel
from .blocking import column_sums, image_blocks, padded_blocks


def _depthwise_blocked(x, w, stride):
    """The sum over taps of ``depthwise_conv2d_traced`` in plain NumPy, block by block.

    Each product goes into a preallocated buffer (``out=``) instead of a fresh array. Each
    tap's weights are laid out along a whole output row, ``(Wo, C)``: multiplied by a ``(C,)``
    vector, NumPy's inner loop would run over the C channels of one pixel at a time; against
    a ``(Wo, C)`` array it runs over the Wo*C contiguous values of a row.
    """
    k = w.shape[0]
    n, h, wd, c = x.shape
    ho, wo = output_size(h, k, stride), output_size(wd, k, stride)
    w_rows = onp.ascontiguousarray(onp.broadcast_to(w[:, :, None, :], (k, k, wo, c)))
    y = onp.empty((n, ho, wo, c), dtype=x.dtype)
    for images, x_pad in padded_blocks(x, k // 2):
        y_block = y[images]
        onp.multiply(tap(x_pad, 0, 0, ho, wo, stride), w_rows[0, 0], out=y_block)  # first tap
        product = onp.empty_like(y_block)
        for t in range(1, k * k):
            di, dj = divmod(t, k)
            onp.multiply(tap(x_pad, di, dj, ho, wo, stride), w_rows[di, dj], out=product)
            y_block += product
    return y


@primitive
def _depthwise_conv2d(x, w, stride):
    return _depthwise_blocked(x, w, stride)


def _depthwise_vjp_x(y, x, w, stride):
    k = w.shape[0]
    p = k // 2
    n, h, wd, c = x.shape
    ho, wo = y.shape[1:3]

    def vjp(g):  # g: (N, Ho, Wo, C) -> dx: (N, H, W, C)
        if stride == 1:
            # dx[j] = sum_i g[i] w[j - i + p]: the same convolution of g with the flipped kernel.
            return _depthwise_blocked(g, w[::-1, ::-1], 1)
        dx_pad = onp.zeros((n, h + 2 * p, wd + 2 * p, c), dtype=g.dtype)
        for di in range(k):
            for dj in range(k):
                tap(dx_pad, di, dj, ho, wo, stride)[...] += g * w[di, dj]
        return dx_pad[:, p : p + h, p : p + wd, :]

    return vjp


def _depthwise_vjp_w(y, x, w, stride):
    k = w.shape[0]
    ho, wo = y.shape[1:3]

    def vjp(g):  # g: (N, Ho, Wo, C) -> dw: (k, k, C)
        dw = onp.zeros_like(w)
        for images, x_pad in padded_blocks(x, k // 2):
            for di in range(k):
                for dj in range(k):
                    window = tap(x_pad, di, dj, ho, wo, stride)
                    dw[di, dj] += onp.einsum("nhwc,nhwc->c", window, g[images])
        return dw

    return vjp


defvjp(_depthwise_conv2d, _depthwise_vjp_x, _depthwise_vjp_w)


register_kernel("depthwise_conv2d")(_depthwise_conv2d)


def _im2col(x_pad, k, stride, ho, wo):
    """All k*k taps of padded images side by side: (m, Ho, Wo, k*k*Ci), tap-major, channel-minor.

    Flattened to ``(m*Ho*Wo, k*k*Ci)`` this turns the convolution into one matrix product with
    the kernel read as ``(k*k*Ci, Co)``.
    """
    taps = [tap(x_pad, di, dj, ho, wo, stride) for di in range(k) for dj in range(k)]
    return onp.concatenate(taps, axis=-1)


# The dense convolution runs a few images at a time (``padded_blocks``): the im2col matrix of a
# block (k*k times the block's images) stays ~1 MiB instead of k*k times the whole batch,
# which keeps the peak memory near that of the input and output, and the copy in the cache.


def _conv2d_blocked(x, w, stride):
    """``conv2d`` without bias in plain NumPy: per block of images, im2col and one product."""
    k, _, ci, co = w.shape
    n, h, wd, _ = x.shape
    ho, wo = output_size(h, k, stride), output_size(wd, k, stride)
    w_rows = w.reshape(k * k * ci, co)  # row order matches _im2col's columns
    y = onp.empty((n, ho, wo, co), dtype=x.dtype)
    for images, x_pad in padded_blocks(x, k // 2, expansion=k * k):
        cols = _im2col(x_pad, k, stride, ho, wo).reshape(-1, k * k * ci)
        onp.matmul(cols, w_rows, out=y[images].reshape(-1, co))  # y[images] is contiguous
    return y


@primitive
def _conv2d(x, w, stride):
    return _conv2d_blocked(x, w, stride)


def _conv2d_vjp_x(y, x, w, stride):
    k, _, ci, co = w.shape
    p = k // 2
    n, h, wd, _ = x.shape
    ho, wo = y.shape[1:3]
    w_rows = w.reshape(k * k * ci, co)

    def vjp(g):  # g: (N, Ho, Wo, Co) -> dx: (N, H, W, Ci)
        if stride == 1:
            # dx[j] = sum_i g[i] w[j - i + p]^T: the same convolution of g, with the kernel
            # flipped in space and transposed in channels, (k, k, Co, Ci).
            return _conv2d_blocked(g, w[::-1, ::-1].transpose(0, 1, 3, 2), 1)
        dx = onp.empty(x.shape, dtype=g.dtype)
        for images in image_blocks(n, h * wd * ci * k * k):
            m = images.stop - images.start
            # The transpose of im2col: the gradient of every column, added back to its pixel.
            d_cols = (g[images].reshape(-1, co) @ w_rows.T).reshape(m, ho, wo, k * k, ci)
            dx_pad = onp.zeros((m, h + 2 * p, wd + 2 * p, ci), dtype=g.dtype)
            for t in range(k * k):
                tap(dx_pad, t // k, t % k, ho, wo, stride)[...] += d_cols[..., t, :]
            dx[images] = dx_pad[:, p : p + h, p : p + wd]
        return dx

    return vjp


def _conv2d_vjp_w(y, x, w, stride):
    k, _, ci, co = w.shape
    ho, wo = y.shape[1:3]

    def vjp(g):  # g: (N, Ho, Wo, Co) -> dw: (k, k, Ci, Co)
        dw = onp.zeros((k * k * ci, co), dtype=g.dtype)
        for images, x_pad in padded_blocks(x, k // 2, expansion=k * k):
            cols = _im2col(x_pad, k, stride, ho, wo).reshape(-1, k * k * ci)  # (m*Ho*Wo, k*k*Ci)
            dw += cols.T @ g[images].reshape(-1, co)
        return dw.reshape(k, k, ci, co)

    return vjp


defvjp(_conv2d, _conv2d_vjp_x, _conv2d_vjp_w)


@register_kernel("conv2d")
def conv2d(x, w, b=None, stride=1):
    y = _conv2d(x, w, stride)
    return y if b is None else y + b


@primitive
def _matmul_last(x, w, b):
    x_rows = onp.reshape(x, (-1, x.shape[-1]))  # (M, C_in): one 2-D product, one BLAS call
    y = x_rows @ w  # (M, C_out)
    if b is not None:
        y += b
    return y.reshape(x.shape[:-1] + (w.shape[-1],))


def _matmul_last_vjp(argnums, y, args, kwargs):
    x, w, _ = args  # only x and w are kept for the backward pass, not the output y

    def vjp(g):  # g: (..., C_out)
        g_rows = g.reshape(-1, g.shape[-1])  # (M, C_out)
        grads = {}
        if 0 in argnums:  # d_x = g w^T
            grads[0] = (g_rows @ w.T).reshape(x.shape)
        if 1 in argnums:  # d_w = x^T g, summed over all M rows in the one product
            grads[1] = onp.reshape(x, (-1, x.shape[-1])).T @ g_rows
        if 2 in argnums:  # d_b = sum of g over the rows
            grads[2] = column_sums(g_rows)
        return tuple(grads[i] for i in argnums)

    return vjp


defvjp_argnums(_matmul_last, _matmul_last_vjp)


@register_kernel("linear")
def matmul_last(x, w, b=None):
    """``x @ w + b`` over the last axis of ``x`` as one 2-D product: (..., C_in) -> (..., C_out).

    ``x @ w`` with ``x`` of 3 or 4 axes is the same product, but NumPy runs it as a stack of
    small products, and autograd's gradient for ``w`` then builds one ``(C_in, C_out)`` product
    per leading index before summing them. Flattening the leading axes first makes the forward
    and both gradients single BLAS calls (``docs/performance.md``, 1).

    A primitive with the hand-written VJP above, which keeps only ``x`` and ``w``: the traced
    ``x @ w + b`` would also keep ``x @ w`` and the sum (autograd's own VJPs hold every input
    and output of a traced op until the backward pass). ``b`` is ``(C_out,)`` or None; the
    caller checks the shapes. It is the kernel of ``linear`` (and so of ``conv1x1``).
    """
    return _matmul_last(x, w, b)
