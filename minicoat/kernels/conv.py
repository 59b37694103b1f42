"""Convolution and linear kernels: blocked over images, im2col, one BLAS call per product.

Each registers as the ``fast`` implementation of the teaching tier's op of the same name
(``minicoat/ops/conv.py``), takes its arguments, and is tested equal to it. Why each is shaped
as it is, with the measurements: ``docs/performance.md``.
"""

import numpy as onp
from autograd.extend import defvjp, defvjp_argnums, primitive
from numpy.lib.stride_tricks import as_strided, sliding_window_view

from ..ops.conv import output_size, tap
from ..ops.switch import register_kernel
from .blocking import PaddedImageBlocks, column_sums, image_blocks, padded_blocks
from .threads import parallel_blocks, per_thread_products


def windows(x_pad, k, stride, ho, wo):
    """Every k x k window of padded images, a view: (m, Hp, Wp, C) -> (m, Ho, Wo, C, k, k).

    ``windows(...)[n, i, j, :, di, dj]`` is ``tap(x_pad, di, dj, ho, wo, stride)[n, i, j]``:
    the taps of the teaching tier as two more axes of one strided view
    (``sliding_window_view``), with nothing copied. A whole convolution is then one
    ``einsum`` (depthwise) or one copy and one matrix product (dense).
    """
    win = sliding_window_view(x_pad, (k, k), axis=(1, 2))  # (m, Hp-k+1, Wp-k+1, C, k, k)
    return win[:, ::stride, ::stride][:, :ho, :wo]


def _depthwise_blocked(x, w, stride):
    """``depthwise_conv2d_traced`` in plain NumPy: per block of images, one ``einsum``.

    ``einsum("nhwcij,ijc->nhwc")`` over the windows of a padded block sums the k*k taps in
    the loop of one call, where the tap-by-tap form makes 2 k*k passes over the block (a
    product and a sum per tap). Blocks of images stay in the cache; the kernel threads take
    them as they come free (``parallel_blocks``), each writing only its block's images.
    """
    k = w.shape[0]
    n, h, wd, c = x.shape
    ho, wo = output_size(h, k, stride), output_size(wd, k, stride)
    y = onp.empty((n, ho, wo, c), dtype=x.dtype)
    blocks = PaddedImageBlocks(x, k // 2)

    def run(i):
        images, x_pad = blocks[i]
        onp.einsum("nhwcij,ijc->nhwc", windows(x_pad, k, stride, ho, wo), w, out=y[images])

    parallel_blocks(run, len(blocks), x.size * k * k)
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
            return _depthwise_blocked(g, onp.ascontiguousarray(w[::-1, ::-1]), 1)
        # stride 2: each tap's g * w added back into its window of the padded gradient, a
        # few images at a time (in the cache), the blocks shared among the kernel threads
        dx = onp.empty(x.shape, dtype=g.dtype)
        blocks = list(image_blocks(n, h * wd * c))

        def run(i):
            g_block = g[blocks[i]]
            dx_pad = onp.zeros((len(g_block), h + 2 * p, wd + 2 * p, c), dtype=g.dtype)
            product = onp.empty_like(g_block)
            for di in range(k):
                for dj in range(k):
                    onp.multiply(g_block, w[di, dj], out=product)
                    tap(dx_pad, di, dj, ho, wo, stride)[...] += product
            dx[blocks[i]] = dx_pad[:, p : p + h, p : p + wd, :]

        parallel_blocks(run, len(blocks), x.size * k * k)
        return dx

    return vjp


def _depthwise_vjp_w(y, x, w, stride):
    k = w.shape[0]
    ho, wo = y.shape[1:3]

    def vjp(g):  # g: (N, Ho, Wo, C) -> dw: (k, k, C)
        blocks = PaddedImageBlocks(x, k // 2)

        def run(i):  # one block's share of dw
            images, x_pad = blocks[i]
            return onp.einsum("nhwcij,nhwc->ijc", windows(x_pad, k, stride, ho, wo), g[images])

        return sum(parallel_blocks(run, len(blocks), x.size * k * k))  # in block order

    return vjp


defvjp(_depthwise_conv2d, _depthwise_vjp_x, _depthwise_vjp_w)


register_kernel("depthwise_conv2d")(_depthwise_conv2d)


def row_windows(x_pad, k, stride, ho, wo):
    """For every output pixel and kernel row, its k pixels of the padded input: a view.

    ``(m, Hp, Wp, C) -> (m, Ho, Wo, k, k*C)``: ``row_windows(...)[n, i, j, di]`` is
    ``x_pad[n, i*stride + di, j*stride : j*stride + k, :]`` flattened, k*C values that lie
    next to each other in memory (one image row is ``Wp*C`` consecutive values). Its last two
    axes flattened are the ``k*k*C`` columns of im2col in the kernel's order
    ``(di, dj, c)``, and a copy of it moves runs of k*C values, where a copy of ``windows``
    (taps apart) moves runs of C.
    """
    m, hp, wp, c = x_pad.shape
    sn, sh, sw, sc = x_pad.strides
    if sc != x_pad.itemsize or sw != c * sc:
        raise ValueError("row_windows needs image rows contiguous in memory")
    return as_strided(x_pad, shape=(m, ho, wo, k, k * c),
                      strides=(sn, stride * sh, stride * sw, sh, sc), writeable=False)


def _im2col(x_pad, k, stride, ho, wo, out=None):
    """All k*k taps of padded images side by side: (m, Ho, Wo, k*k*Ci), tap-major, channel-minor.

    Flattened to ``(m*Ho*Wo, k*k*Ci)`` this turns the convolution into one matrix product with
    the kernel read as ``(k*k*Ci, Co)``. One copy of ``row_windows`` into ``out`` (a buffer
    reused from block to block) when given, instead of a concatenation of k*k taps.
    """
    m, ci = x_pad.shape[0], x_pad.shape[-1]
    size = m * ho * wo * k * k * ci
    cols = onp.empty(size, dtype=x_pad.dtype) if out is None else out.reshape(-1)[:size]
    cols = cols.reshape(m, ho, wo, k, k * ci)
    cols[...] = row_windows(x_pad, k, stride, ho, wo)
    return cols.reshape(m, ho, wo, k * k * ci)


# The dense convolution runs a few images at a time (``padded_blocks``): the im2col matrix of a
# block (k*k times the block's images) stays ~COLS_BLOCK elements instead of k*k times the whole
# batch, which keeps the peak memory near that of the input and output. The block is larger
# than the elementwise passes' (8 MiB of float32, not 1): each block is one matrix product, and
# OpenBLAS's threads start and stop around every call (``docs/performance.md``). When the batch
# is split among the kernel threads (``per_thread_products``), each takes 1/threads of it.
COLS_BLOCK = 1 << 21


def _im2col_products(x, k, stride, ho, wo, threads, product):
    """``product(images, cols)`` for each block of ``x``'s images and its im2col matrix
    ``cols`` ``(m*Ho*Wo, k*k*Ci)``, in one buffer reused from block to block."""
    ci = x.shape[-1]
    buffer = None
    for images, x_pad in padded_blocks(x, k // 2, expansion=k * k, block=COLS_BLOCK // threads):
        if buffer is None:
            buffer = onp.empty(len(x_pad) * ho * wo * k * k * ci, dtype=x.dtype)
        product(images, _im2col(x_pad, k, stride, ho, wo, out=buffer).reshape(-1, k * k * ci))


def _conv2d_blocked(x, w, stride):
    """``conv2d`` without bias in plain NumPy: per block of images, im2col and one product.

    The batch is split among the kernel threads, each with its own products
    (``per_thread_products``)."""
    k, _, ci, co = w.shape
    n, h, wd, _ = x.shape
    ho, wo = output_size(h, k, stride), output_size(wd, k, stride)
    w_rows = w.reshape(k * k * ci, co)  # row order matches _im2col's columns
    y = onp.empty((n, ho, wo, co), dtype=x.dtype)

    def run(part, threads):
        y_part = y[part]  # contiguous, and so is each y_part[images]

        def product(images, cols):
            onp.matmul(cols, w_rows, out=y_part[images].reshape(-1, co))

        _im2col_products(x[part], k, stride, ho, wo, threads, product)

    per_thread_products(run, n, x.size * k * k)
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

        def run(part, threads):
            g_part, dx_part = g[part], dx[part]
            for images in image_blocks(len(g_part), h * wd * ci * k * k, COLS_BLOCK // threads):
                m = images.stop - images.start
                # The transpose of im2col: the gradient of every column, added back to its pixel.
                d_cols = (g_part[images].reshape(-1, co) @ w_rows.T).reshape(m, ho, wo, k * k, ci)
                dx_pad = onp.zeros((m, h + 2 * p, wd + 2 * p, ci), dtype=g.dtype)
                for t in range(k * k):
                    tap(dx_pad, t // k, t % k, ho, wo, stride)[...] += d_cols[..., t, :]
                dx_part[images] = dx_pad[:, p : p + h, p : p + wd]

        per_thread_products(run, n, x.size * k * k)
        return dx

    return vjp


def _conv2d_vjp_w(y, x, w, stride):
    k, _, ci, co = w.shape
    ho, wo = y.shape[1:3]

    def vjp(g):  # g: (N, Ho, Wo, Co) -> dw: (k, k, Ci, Co)
        def run(part, threads):  # this thread's images' share of dw
            dw = onp.zeros((k * k * ci, co), dtype=g.dtype)
            g_part = g[part]

            def product(images, cols):  # cols: (m*Ho*Wo, k*k*Ci)
                dw[...] += cols.T @ g_part[images].reshape(-1, co)

            _im2col_products(x[part], k, stride, ho, wo, threads, product)
            return dw

        return sum(per_thread_products(run, len(x), x.size * k * k)).reshape(k, k, ci, co)

    return vjp


defvjp(_conv2d, _conv2d_vjp_x, _conv2d_vjp_w)


@register_kernel("conv2d")
def conv2d(x, w, b=None, stride=1):
    y = _conv2d(x, w, stride)
    return y if b is None else y + b


@primitive
def _matmul_last(x, w, b):
    x_rows = onp.reshape(x, (-1, x.shape[-1]))  # (M, C_in): one 2-D product, one BLAS call
    y = onp.empty((len(x_rows), w.shape[-1]), dtype=onp.result_type(x, w))  # (M, C_out)

    def run(rows, threads):  # this kernel thread's rows (all of them, on one thread)
        onp.matmul(x_rows[rows], w, out=y[rows])
        if b is not None:
            y[rows] += b

    per_thread_products(run, len(y), x_rows.size + y.size, alone=False)
    return y.reshape(x.shape[:-1] + (w.shape[-1],))


def _matmul_last_vjp(argnums, y, args, kwargs):
    x, w, _ = args  # only x and w are kept for the backward pass, not the output y

    def vjp(g):  # g: (..., C_out)
        g_rows = g.reshape(-1, g.shape[-1])  # (M, C_out)
        x_rows = onp.reshape(x, (-1, x.shape[-1]))
        d_x = onp.empty(x_rows.shape, dtype=g.dtype) if 0 in argnums else None

        def run(rows, threads):  # this kernel thread's rows: its part of d_x, its sums
            sums = {}
            if 0 in argnums:  # d_x = g w^T
                onp.matmul(g_rows[rows], w.T, out=d_x[rows])
            if 1 in argnums:  # d_w = x^T g, summed over the rows in one product
                sums[1] = x_rows[rows].T @ g_rows[rows]
            if 2 in argnums:  # d_b = sum of g over the rows
                sums[2] = column_sums(g_rows[rows])
            return sums

        shares = per_thread_products(run, len(g_rows), x_rows.size + g_rows.size, alone=False)
        grads = {i: sum(share[i] for share in shares) for i in (1, 2) if i in argnums}
        if 0 in argnums:
            grads[0] = d_x.reshape(x.shape)
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
