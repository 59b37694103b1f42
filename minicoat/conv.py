"""Convolutions, channels-last: depthwise (the "C" in CoAtNet), dense k x k, and 1x1.

Paper, section 2.1, equation (1), depthwise convolution::

    y_i = sum_{j in L(i)} w_{i-j} * x_j          (L(i): the k x k window around i)

Everything here is a sum over the k*k *taps* of the kernel. Tap ``(di, dj)`` multiplies the
input shifted by ``(di - p, dj - p)`` with one slice of the kernel, where ``p = k // 2`` is the
"same" padding. With the input zero-padded once, the shifted input for a tap is a plain
strided slice, so a 3x3 convolution is nine slices and nine multiply-adds over whole arrays:
no Python loop over pixels, no stride tricks.

Each op comes twice:

* ``*_reference``: written with ``autograd.numpy`` and differentiated by tracing. This is
  the version to read first; it is the definition the fast version is tested against.
* the public op: an ``autograd.extend.primitive`` with a hand-written vector-Jacobian
  product (VJP) right beside its forward. The backward of "y += shift(x) * w" is
  "dx[shift] += g * w" and "dw += sum(shift(x) * g)": the same taps, run in reverse.
  Measured here it is several times faster than the traced version, which pays autograd's
  bookkeeping for every slice.
"""

import autograd.numpy as np
import numpy as onp
from autograd.extend import defvjp, defvjp_argnums, primitive

from .activations import column_sums
from .checks import check_float, check_odd_kernel, check_rank, check_same_dtype, check_stride


def output_size(n, k, stride):
    """Spatial output size of a "same"-padded k x k window with the given stride.

    ``(n + 2 * (k // 2) - k) // stride + 1``: ``n`` for stride 1, ``ceil(n / 2)`` for stride 2
    (identical to PyTorch's ``padding=k // 2``).
    """
    return (n + 2 * (k // 2) - k) // stride + 1


def _tap(x_pad, di, dj, ho, wo, stride):
    """The padded input seen by kernel tap (di, dj): (N, H+2p, W+2p, C) -> (N, Ho, Wo, C)."""
    return x_pad[
        :, di : di + stride * (ho - 1) + 1 : stride, dj : dj + stride * (wo - 1) + 1 : stride, :
    ]


def _check_conv_args(x, w, stride, kernel_layout, depthwise):
    check_float("x", x)
    check_float("w", w)
    _, _, _, c = check_rank("x", x, 4, "(N, H, W, C)")
    w_shape = check_rank("w", w, 3 if depthwise else 4, kernel_layout)
    check_odd_kernel("w", w_shape[0], w_shape[1])
    if w_shape[2] != c:
        raise ValueError(
            f"w must have shape {kernel_layout} with C_in = {c} to match x of shape "
            f"{onp.shape(x)} (channels-last); got w of shape {w_shape}"
        )
    check_stride(stride)
    check_same_dtype(x=x, w=w)


# ----------------------------------------------------------------------------------------
# Depthwise convolution
# ----------------------------------------------------------------------------------------


def depthwise_conv2d_reference(x, w, stride=1):
    """Readable, autograd-traced depthwise convolution (see ``depthwise_conv2d``)."""
    k = w.shape[0]
    p = k // 2
    n, h, wd, c = x.shape
    ho, wo = output_size(h, k, stride), output_size(wd, k, stride)
    x_pad = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode="constant")  # (N, H+2p, W+2p, C)
    y = 0.0
    for di in range(k):
        for dj in range(k):
            y = y + _tap(x_pad, di, dj, ho, wo, stride) * w[di, dj]  # (N, Ho, Wo, C) * (C,)
    return y


_IMAGES_BLOCK = 1 << 18  # elements per block of whole images (1 MiB of float32)


def _image_blocks(n, image_elements):
    """Slices of a batch of ``n`` images of ``image_elements`` each, ~``_IMAGES_BLOCK`` per slice.

    (At least one image per slice.)
    """
    per_block = max(1, _IMAGES_BLOCK // max(1, image_elements))
    for start in range(0, n, per_block):
        yield slice(start, min(n, start + per_block))


def _padded_blocks(x, p, expansion=1):
    """Yield ``(images, x_pad)``: a slice of the batch and those images zero-padded by ``p``.

    A few images at a time (``_image_blocks``), padded into one buffer reused from block to
    block (its border stays zero), so that all the taps of a block run while it sits in the
    cache: ~1.5x faster than padding the whole batch and sweeping it once per tap. A caller
    that expands each block ``expansion``-fold (im2col: k*k) asks for blocks that much smaller.
    """
    n, h, wd, c = x.shape
    x_pad = None
    for images in _image_blocks(n, h * wd * c * expansion):
        m = images.stop - images.start
        if x_pad is None:
            x_pad = onp.zeros((m, h + 2 * p, wd + 2 * p, c), dtype=x.dtype)  # border stays 0
        x_pad[:m, p : p + h, p : p + wd] = x[images]
        yield images, x_pad[:m]


def _depthwise_blocked(x, w, stride):
    """The sum over taps of ``depthwise_conv2d_reference`` in plain NumPy, block by block.

    Each product goes into a preallocated buffer (``out=``) instead of a fresh array. Each
    tap's weights are laid out along a whole output row, ``(Wo, C)``: multiplied by a ``(C,)``
    vector, NumPy's inner loop would run over the C channels of one pixel at a time; against
    a ``(Wo, C)`` array it runs over the Wo*C contiguous values of a row (1.6x faster here).
    """
    k = w.shape[0]
    n, h, wd, c = x.shape
    ho, wo = output_size(h, k, stride), output_size(wd, k, stride)
    w_rows = onp.ascontiguousarray(onp.broadcast_to(w[:, :, None, :], (k, k, wo, c)))
    y = onp.empty((n, ho, wo, c), dtype=x.dtype)
    for images, x_pad in _padded_blocks(x, k // 2):
        y_block = y[images]
        onp.multiply(_tap(x_pad, 0, 0, ho, wo, stride), w_rows[0, 0], out=y_block)  # first tap
        product = onp.empty_like(y_block)
        for tap in range(1, k * k):
            di, dj = divmod(tap, k)
            onp.multiply(_tap(x_pad, di, dj, ho, wo, stride), w_rows[di, dj], out=product)
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
                _tap(dx_pad, di, dj, ho, wo, stride)[...] += g * w[di, dj]
        return dx_pad[:, p : p + h, p : p + wd, :]

    return vjp


def _depthwise_vjp_w(y, x, w, stride):
    k = w.shape[0]
    ho, wo = y.shape[1:3]

    def vjp(g):  # g: (N, Ho, Wo, C) -> dw: (k, k, C)
        dw = onp.zeros_like(w)
        for images, x_pad in _padded_blocks(x, k // 2):
            for di in range(k):
                for dj in range(k):
                    tap = _tap(x_pad, di, dj, ho, wo, stride)
                    dw[di, dj] += onp.einsum("nhwc,nhwc->c", tap, g[images])
        return dw

    return vjp


defvjp(_depthwise_conv2d, _depthwise_vjp_x, _depthwise_vjp_w)


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
    _check_conv_args(x, w, stride, "(k, k, C)", depthwise=True)
    return _depthwise_conv2d(x, w, stride)


# ----------------------------------------------------------------------------------------
# Dense convolution
# ----------------------------------------------------------------------------------------


def conv2d_reference(x, w, stride=1):
    """Readable, autograd-traced dense convolution without bias (see ``conv2d``)."""
    k = w.shape[0]
    p = k // 2
    n, h, wd, c = x.shape
    ho, wo = output_size(h, k, stride), output_size(wd, k, stride)
    x_pad = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode="constant")  # (N, H+2p, W+2p, Ci)
    y = 0.0
    for di in range(k):
        for dj in range(k):
            y = y + _tap(x_pad, di, dj, ho, wo, stride) @ w[di, dj]  # (N,Ho,Wo,Ci) @ (Ci,Co)
    return y


def _im2col(x_pad, k, stride, ho, wo):
    """All k*k taps of padded images side by side: (m, Ho, Wo, k*k*Ci), tap-major, channel-minor.

    Flattened to ``(m*Ho*Wo, k*k*Ci)`` this turns the convolution into one matrix product with
    the kernel read as ``(k*k*Ci, Co)``.
    """
    taps = [_tap(x_pad, di, dj, ho, wo, stride) for di in range(k) for dj in range(k)]
    return onp.concatenate(taps, axis=-1)


# The dense convolution runs a few images at a time (``_padded_blocks``): the im2col matrix of a
# block (k*k times the block's images) stays ~1 MiB instead of k*k times the whole batch,
# which keeps the peak memory near that of the input and output, and the copy in the cache.


def _conv2d_blocked(x, w, stride):
    """``conv2d`` without bias in plain NumPy: per block of images, im2col and one product."""
    k, _, ci, co = w.shape
    n, h, wd, _ = x.shape
    ho, wo = output_size(h, k, stride), output_size(wd, k, stride)
    w_rows = w.reshape(k * k * ci, co)  # row order matches _im2col's columns
    y = onp.empty((n, ho, wo, co), dtype=x.dtype)
    for images, x_pad in _padded_blocks(x, k // 2, expansion=k * k):
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
        for images in _image_blocks(n, h * wd * ci * k * k):
            m = images.stop - images.start
            # The transpose of im2col: the gradient of every column, added back to its pixel.
            d_cols = (g[images].reshape(-1, co) @ w_rows.T).reshape(m, ho, wo, k * k, ci)
            dx_pad = onp.zeros((m, h + 2 * p, wd + 2 * p, ci), dtype=g.dtype)
            for t in range(k * k):
                _tap(dx_pad, t // k, t % k, ho, wo, stride)[...] += d_cols[..., t, :]
            dx[images] = dx_pad[:, p : p + h, p : p + wd]
        return dx

    return vjp


def _conv2d_vjp_w(y, x, w, stride):
    k, _, ci, co = w.shape
    ho, wo = y.shape[1:3]

    def vjp(g):  # g: (N, Ho, Wo, Co) -> dw: (k, k, Ci, Co)
        dw = onp.zeros((k * k * ci, co), dtype=g.dtype)
        for images, x_pad in _padded_blocks(x, k // 2, expansion=k * k):
            cols = _im2col(x_pad, k, stride, ho, wo).reshape(-1, k * k * ci)  # (m*Ho*Wo, k*k*Ci)
            dw += cols.T @ g[images].reshape(-1, co)
        return dw.reshape(k, k, ci, co)

    return vjp


defvjp(_conv2d, _conv2d_vjp_x, _conv2d_vjp_w)


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
    _check_conv_args(x, w, stride, "(k, k, C_in, C_out)", depthwise=False)
    y = _conv2d(x, w, stride)
    if b is not None:
        _check_bias(b, w.shape[-1], x)
        y = y + b
    return y


def _check_bias(b, c_out, x):
    check_float("b", b)
    if onp.shape(b) != (c_out,):
        raise ValueError(f"b must have shape (C_out,) = ({c_out},), got {onp.shape(b)}")
    check_same_dtype(x=x, b=b)


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


def matmul_last(x, w, b=None):
    """``x @ w + b`` over the last axis of ``x`` as one 2-D product: (..., C_in) -> (..., C_out).

    ``x @ w`` with ``x`` of 3 or 4 axes is the same product, but NumPy runs it as a stack of
    small products, and autograd's gradient for ``w`` then builds one ``(C_in, C_out)`` product
    per leading index before summing them. Flattening the leading axes first makes the forward
    and both gradients single BLAS calls (measured: several times faster at MBConv shapes).

    A primitive with the hand-written VJP above, which keeps only ``x`` and ``w``: the traced
    ``x @ w + b`` would also keep ``x @ w`` and the sum (autograd's own VJPs hold every input
    and output of a traced op until the backward pass). ``b`` is ``(C_out,)`` or None; the
    caller checks the shapes. ``x @ w + b`` is the reference it is tested against.
    """
    return _matmul_last(x, w, b)


def conv1x1(x, w, b=None, stride=1):
    """1x1 convolution as one matrix product over the channel axis.

    Channels-last makes a pointwise convolution exactly ``x @ w``; stride 2 keeps every
    second pixel (``x[:, ::2, ::2]``), as a 1x1 convolution with stride 2 does.

    Args:
        x: ``(N, H, W, C_in)``; w: ``(C_in, C_out)``; b: ``(C_out,)`` or None; stride: 1 or 2.

    Returns:
        ``(N, ceil(H / stride), ceil(W / stride), C_out)``.
    """
    check_float("x", x)
    check_float("w", w)
    _, _, _, c = check_rank("x", x, 4, "(N, H, W, C)")
    w_shape = check_rank("w", w, 2, "(C_in, C_out)")
    if w_shape[0] != c:
        raise ValueError(
            f"w must have shape (C_in, C_out) with C_in = {c} to match x of shape "
            f"{onp.shape(x)}; got {w_shape}"
        )
    check_stride(stride)
    check_same_dtype(x=x, w=w)
    if stride == 2:
        x = x[:, ::2, ::2, :]  # (N, ceil(H/2), ceil(W/2), C_in)
    if b is not None:
        _check_bias(b, w_shape[1], x)
    return matmul_last(x, w, b)  # x @ w + b as one 2-D product
