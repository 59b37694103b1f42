"""Run a model at another resolution: resize every relative-bias table to the new grid.

A Transformer block on an ``H x W`` grid learns one scalar per head and relative offset
``(dy, dx)``, ``dy in [-(H-1), H-1]``, ``dx in [-(W-1), W-1]``: a ``(2H-1) x (2W-1)`` table per
head (``rel_bias``, stored flat as ``(heads, (2H-1)(2W-1))``). At another image size the grid,
and so the table, changes size; everything else in the network is independent of it. The paper
fine-tunes at 384 from 224 by resizing these tables (section 4).

``resize_rel_bias_table`` resizes one table the way timm does
(``timm.layers.resize_rel_pos_bias_table``, from BEiT): per head, the old table's entries are
placed at offsets spaced by a geometric progression, ``0, +-1, +-(1 + q), +-(1 + q + q^2), ..``,
with ``q`` found by bisection so that the outermost old entry lands just inside the new
table's edge, and the new table, on the integer offsets, is interpolated bilinearly between
them (values outside the placed points are held at the edge). A table that keeps its size is
returned unchanged. timm interpolates in float32; this one keeps the table's dtype.
"""

import numpy as onp

from ..plans import plan


def _placed_offsets(src, dst):
    """Where the ``src`` entries of one axis of the old table sit on the new one's ``dst``
    integer offsets (timm's ``_calc``): a symmetric list of ``src`` floats."""
    left, right = 1.01, 1.5
    while right - left > 1e-6:  # bisection for q: 1 + q + .. + q^(n-1) = (dst // 2) at the edge
        q = (left + right) / 2.0
        if (1.0 - q ** (src // 2)) / (1.0 - q) > dst // 2:
            right = q
        else:
            left = q
    placed, current = [], 1.0
    for i in range(src // 2):
        placed.append(current)
        current += q ** (i + 1)
    return onp.array([-p for p in reversed(placed)] + [0.0] + placed)


def _interpolation(points, targets):
    """Indices and weights of linear interpolation on one axis, as timm's
    ``RegularGridInterpolator``: ``(left, right, weight_left, weight_right)``, each
    ``(len(targets),)``; values beyond the end points are the end values."""
    right = onp.minimum(onp.searchsorted(points, targets, side="left"), len(points) - 1)
    left = onp.clip(right - 1, 0, len(points) - 1)
    to_left = onp.maximum(targets - points[left], 0.0)  # distance to the left point
    to_right = onp.maximum(points[right] - targets, 0.0)
    both = (to_left == 0) & (to_right == 0)
    to_left[both], to_right[both] = 1.0, 1.0
    total = to_left + to_right
    return left, right, to_right / total, to_left / total  # the nearer point weighs more


def resize_rel_bias_table(table, old_grid, new_grid):
    """Resize one relative-bias table from an ``old_grid`` to a ``new_grid`` of tokens.

    Args:
        table: ``(heads, (2h-1) * (2w-1))`` for ``old_grid = (h, w)``, float32 or float64.
        old_grid, new_grid: ``(h, w)`` of the attention's token grid before and after.

    Returns:
        ``(heads, (2h'-1) * (2w'-1))`` for ``new_grid = (h', w')``, of the table's dtype (the
        table itself when the grid keeps its size).
    """
    table = onp.asarray(table)
    src = (2 * old_grid[0] - 1, 2 * old_grid[1] - 1)
    dst = (2 * new_grid[0] - 1, 2 * new_grid[1] - 1)
    if table.ndim != 2 or table.shape[1] != src[0] * src[1]:
        raise ValueError(f"a relative-bias table for a {tuple(old_grid)} grid has shape "
                         f"(heads, {src[0] * src[1]}), got {table.shape}")
    if src == dst:
        return table
    heads = table.shape[0]
    grid = table.reshape(heads, src[0], src[1])  # (heads, 2h-1, 2w-1): offsets (dy, dx)
    axes = []
    for axis in (0, 1):
        targets = onp.arange(-(dst[axis] // 2), dst[axis] // 2 + 1, dtype=onp.float64)
        axes.append(_interpolation(_placed_offsets(src[axis], dst[axis]), targets))
    (y0, y1, wy0, wy1), (x0, x1, wx0, wx1) = axes
    dtype = table.dtype
    wy0, wy1, wx0, wx1 = (w.astype(dtype) for w in (wy0, wy1, wx0, wx1))
    # bilinear: the four neighbours of every new offset, weighted by their nearness
    resized = (grid[:, y0][:, :, x0] * (wy0[:, None] * wx0[None, :])
               + grid[:, y0][:, :, x1] * (wy0[:, None] * wx1[None, :])
               + grid[:, y1][:, :, x0] * (wy1[:, None] * wx0[None, :])
               + grid[:, y1][:, :, x1] * (wy1[:, None] * wx1[None, :]))  # (heads, 2h'-1, 2w'-1)
    return onp.ascontiguousarray(resized.reshape(heads, dst[0] * dst[1]))


def resize_images(x, size):
    """Bilinear resize of a batch of images, ``(N, H, W, C) -> (N, H', W', C)``.

    Pixel centres as in ``torch.nn.functional.interpolate(mode="bilinear",
    align_corners=False)``: output pixel ``i`` samples the input at ``(i + 0.5) H / H' - 0.5``
    (held at the edges), interpolated linearly along H, then along W. For running a model at
    another resolution than the images' (``minicoat evaluate --image-size``).
    """
    x = onp.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"images must have shape (N, H, W, C), got {x.shape}")
    for axis, new in ((1, size[0]), (2, size[1])):
        old = x.shape[axis]
        source = onp.maximum((onp.arange(new) + 0.5) * (old / new) - 0.5, 0.0)
        left = onp.minimum(onp.floor(source).astype(int), old - 1)
        right = onp.minimum(left + 1, old - 1)
        weight = (source - left).astype(x.dtype)
        shape = [1, 1, 1, 1]
        shape[axis] = new
        weight = weight.reshape(shape)  # broadcast along the resized axis
        x = (onp.take(x, left, axis=axis) * (1 - weight)
             + onp.take(x, right, axis=axis) * weight)
    return x


def resize_rel_bias(params, config, image_size):
    """The parameters of ``config``'s network for another input size, and its config.

    Every Transformer block's ``attn.rel_bias`` is resized to the grid it has at
    ``image_size`` (``resize_rel_bias_table``); every other array is shared, unchanged.

    Args:
        params: a parameter tree that fits ``config``.
        config: the ``CoAtNetConfig`` the parameters were made for.
        image_size: the new ``(H, W)`` (or an int for square images).

    Returns:
        ``(params, config)``: a new tree (only the tables are new arrays) and
        ``config.replace(image_size=image_size)``.
    """
    new_config = config.replace(image_size=image_size)
    new_params = {stage: dict(blocks) if isinstance(blocks, dict) else blocks
                  for stage, blocks in params.items()}
    for old, new in zip(plan(config), plan(new_config), strict=True):
        if old.kind != "T":
            continue
        stage, name = old.keys
        block = dict(new_params[stage][name])
        block["attn"] = dict(block["attn"])
        block["attn"]["rel_bias"] = resize_rel_bias_table(
            block["attn"]["rel_bias"], old.grid_out, new.grid_out)
        new_params[stage][name] = block
    return new_params, new_config


def resize_opt_state(opt_state, config, image_size):
    """The optimizer state of ``config``'s parameters for another input size.

    Every slot that mirrors the parameters (AdamW's moments ``m`` and ``v``, SGD's
    ``momentum``) has its ``attn.rel_bias`` entries resized exactly like the tables
    (``resize_rel_bias``); other leaves and the ints (``step``) are kept. The resize is
    bilinear: each new entry is a convex combination of old entries (weights >= 0, summing to
    1), so the first moment moves with its table, and the second moment stays >= 0 (a bicubic
    resize could overshoot below 0 and make ``sqrt(v)`` NaN). Keeping ``step`` keeps the
    bias corrections and the learning-rate schedule where the run was.

    Args:
        opt_state: ``{"m": tree, "v": tree, "step": int}`` (AdamW) or ``{"momentum": tree,
            "step": int}`` (SGD), each tree shaped like the parameters of ``config``.
        config: the ``CoAtNetConfig`` the state was made for.
        image_size: the new ``(H, W)`` (or an int).

    Returns:
        a new state dict (only the tables' slots are new arrays).
    """
    return {slot: resize_rel_bias(leaves, config, image_size)[0] if isinstance(leaves, dict)
            else leaves for slot, leaves in opt_state.items()}
