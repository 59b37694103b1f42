"""Blocking helpers of the kernel tier: walk large arrays in cache-sized pieces.

Elementwise work on a feature map of several MB streams it through main memory once per NumPy
pass; on blocks that fit in the cache the same passes run faster and temporaries stay
block-sized (measured in ``docs/performance.md``). ``blockwise`` does this for row-wise functions,
``channel_blocks`` writes per-channel vectors out per block, ``column_sums`` turns per-channel
sums into one BLAS call, and ``padded_blocks`` pads a few images at a time for convolutions.
"""

import threading

import numpy as onp

from .threads import parallel_blocks, splits_elementwise

BLOCK = 1 << 16  # elements per block: 256 KiB of float32, which stays in the L2 cache
# elements per block where the kernel threads share the passes (``threads.owned_cores``): each
# call of a split pass waits for the GIL on its way out, and fewer, longer calls wait less
# (``docs/performance.md``, 22)
SPLIT_BLOCK = 1 << 17


def row_blocks(rows):
    """Slices of ~``BLOCK`` elements (whole rows) over the rows of a 2-D array
    (``SPLIT_BLOCK`` where the elementwise passes are split among the kernel threads).

    An array of at most two blocks is one slice.
    """
    block = SPLIT_BLOCK if splits_elementwise() else BLOCK
    if rows.size <= 2 * block:
        return [slice(0, len(rows))]
    step = max(1, block // max(1, rows.shape[1]))
    return [slice(start, min(len(rows), start + step)) for start in range(0, len(rows), step)]


def repeat_rows(vector, rows):
    """A per-channel vector ``(C,)`` written out over ``rows`` rows: ``(rows, C)``, contiguous.

    NumPy broadcasting a ``(C,)`` vector over a ``(rows, C)`` block runs its inner loop once
    per row, and misses the fast loop it has for two contiguous arrays; written out once and
    reused for every block, the vector costs that loop no more (``docs/performance.md``, 15).
    """
    return onp.ascontiguousarray(onp.broadcast_to(vector, (rows, len(vector))))


def channel_blocks(rows, *vectors):
    """Yield ``(part, *vector_blocks)`` for each slice ``part`` of ``row_blocks(rows)``.

    ``rows`` is ``(M, C)`` and each vector ``(C,)``; each comes out as ``(len(rows[part]), C)``,
    written out once (``repeat_rows``) and sliced for every block.
    """
    parts = row_blocks(rows)
    written = [repeat_rows(v, parts[0].stop - parts[0].start) for v in vectors]
    for part in parts:
        m = part.stop - part.start
        yield (part, *(w[:m] for w in written))


def blockwise(f, *arrays, channels=(), out=None):
    """``f(*arrays, *channels)`` for same-shaped arrays, ~64K elements (whole rows) at a time.

    ``f`` must act row by row on the last axis: elementwise, or with per-channel vectors
    (as BatchNorm does). A composite elementwise function (the float32 GELU is ~20 NumPy
    passes) applied to a whole feature map of several MB streams it through main memory once
    per pass and allocates a full-size temporary per step; on blocks that fit in the cache the
    same passes run faster and temporaries stay block-sized. Small inputs go in one block.
    Plain NumPy (for primitives).

    ``channels``: per-channel vectors ``(C,)``, C the arrays' last axis. ``f`` receives each
    as ``(rows, C)``, the shape of the blocks it comes with (``channel_blocks``).
    ``out``: a contiguous array of the same shape to write the result into (it may be one of
    the inputs: each block is read before its result is written), instead of a new one.

    ``f`` is called as ``f(*blocks, *vectors, out=out_block)`` and returns the block's result:
    ``out_block`` itself when its last pass wrote there (``np.add(a, b, out=out)``), or any
    array, which is then copied into it. Writing in place saves that copy, a pass over the
    block (the float32 GELU: 0.89x the time; ``docs/performance.md``, 30). ``f`` may also
    write into the blocks of an array it is given, as a second output (the GELU's slope).
    """
    arrays = [onp.asarray(a) for a in arrays]
    shape = arrays[0].shape
    width = shape[-1] if len(shape) > 1 else 1
    rows = [onp.reshape(a, (-1, width)) for a in arrays]
    if out is None:
        out = onp.empty(shape, dtype=onp.result_type(*arrays))
    out_rows = out.reshape(-1, width)  # a view: out is contiguous
    blocks = list(channel_blocks(out_rows, *channels))

    def run(i):  # one block, on whichever kernel thread takes it
        part, *vectors = blocks[i]
        out_block = out_rows[part]
        result = f(*(r[part] for r in rows), *vectors, out=out_block)
        if result is not out_block:
            out_block[...] = result

    parallel_blocks(run, len(blocks), out.size, elementwise=True)
    return out


def blockwise_sums(f, rows, *vectors):
    """``sum(f(part, *vector_blocks) for each block)``, the blocks shared among the threads.

    ``rows`` ``(M, C)`` and the ``(C,)`` vectors are split as by ``channel_blocks``; ``f``
    returns a tuple of per-channel sums for its block (it may also write its own rows of an
    output). The kernel threads take the blocks as they come free (``parallel_blocks``),
    and the blocks' sums are added in block order at the end: the same totals, to the bit,
    with any number of threads (for blocks of the same size; ``row_blocks``).
    """
    blocks = list(channel_blocks(rows, *vectors))
    sums = parallel_blocks(lambda i: f(*blocks[i]), len(blocks), rows.size, elementwise=True)
    return tuple(sum(column) for column in zip(*sums, strict=True))


def column_sums(rows):
    """``rows.sum(axis=0)`` of a 2-D array ``(M, C) -> (C,)``, as one matrix-vector product.

    NumPy sums over axis 0 one row at a time, in an inner loop only C long; BLAS's
    ``ones(M) @ rows`` is one call (``docs/performance.md``, 16). (Both add the values of a
    column in float32; the BLAS kernel keeps several partial sums.) Per-channel sums of a
    feature map, as BatchNorm's and every bias gradient needs, are this.
    """
    return onp.ones(len(rows), dtype=rows.dtype) @ rows


def column_dots(a, b, buffer=None):
    """``(a * b).sum(axis=0)`` for 2-D ``a``, ``b`` of the same shape: ``(M, C) -> (C,)``.

    The product goes into ``buffer`` (an array of that shape, reused) when one is given, and
    the sum is ``column_sums`` (rather than ``einsum("mc,mc->c", a, b)``).
    """
    product = onp.multiply(a, b, out=buffer)
    return column_sums(product)


IMAGES_BLOCK = 1 << 18  # elements per block of whole images (1 MiB of float32)


def image_blocks(n, image_elements, block=None):
    """Slices of a batch of ``n`` images of ``image_elements`` each, ~``block`` elements per slice.

    ``block`` defaults to ``IMAGES_BLOCK``. (At least one image per slice.)
    """
    per_block = max(1, (block or IMAGES_BLOCK) // max(1, image_elements))
    for start in range(0, n, per_block):
        yield slice(start, min(n, start + per_block))


def padded_blocks(x, p, expansion=1, block=None):
    """Yield ``(images, x_pad)``: a slice of the batch and those images zero-padded by ``p``.

    A few images at a time (``image_blocks``), padded into one buffer reused from block to
    block (its border stays zero), so that all the taps of a block run while it sits in the
    cache, instead of padding the whole batch and sweeping it once per tap. A caller
    that expands each block ``expansion``-fold (im2col: k*k) asks for blocks that much smaller;
    ``block`` is passed on to ``image_blocks``.
    """
    n, h, wd, c = x.shape
    x_pad = None
    for images in image_blocks(n, h * wd * c * expansion, block):
        m = images.stop - images.start
        if x_pad is None:
            x_pad = onp.zeros((m, h + 2 * p, wd + 2 * p, c), dtype=x.dtype)  # border stays 0
        x_pad[:m, p : p + h, p : p + wd] = x[images]
        yield images, x_pad[:m]


class PaddedImageBlocks:
    """``padded_blocks`` for kernel threads that take the blocks in any order: item ``i`` is
    ``(images, x_pad)`` for the i-th slice of ``image_blocks``, padded into a buffer of the
    calling thread's own (made once per thread, its border left zero)."""

    def __init__(self, x, p):
        n, h, wd, c = x.shape
        self.x, self.p = x, p
        self.slices = list(image_blocks(n, h * wd * c))
        self._buffers = threading.local()

    def __len__(self):
        return len(self.slices)

    def __getitem__(self, i):
        images, x, p = self.slices[i], self.x, self.p
        buffer = getattr(self._buffers, "x_pad", None)
        if buffer is None:
            m = self.slices[0].stop - self.slices[0].start  # the first block is the largest
            h, wd, c = x.shape[1:]
            buffer = self._buffers.x_pad = onp.zeros((m, h + 2 * p, wd + 2 * p, c), x.dtype)
        m = images.stop - images.start
        buffer[:m, p : p + x.shape[1], p : p + x.shape[2]] = x[images]
        return images, buffer[:m]
