"""Augmentation and minibatches: what the training loop draws from a :class:`Dataset`."""

import numpy as onp


def augment(x, rng, crop_pad=0, flip=False):
    """Random crop (with zero padding) and random horizontal flip, per image.

    ``x`` ``(N, H, W, C)`` -> same shape and dtype. Each image is zero-padded by ``crop_pad`` on
    every side and an ``H x W`` window is taken at a random offset in ``0..2*crop_pad`` (the
    standard CIFAR recipe); with ``flip`` each image is mirrored left-right with probability
    1/2. Both happen in one vectorised gather: row and column index arrays per image, the
    column indices reversed for flipped images. ``rng`` is a ``onp.random.Generator``; the
    result is deterministic given its state. ``crop_pad=0, flip=False`` returns a copy of ``x``.
    Note that images are normalised, so the padding is the mean colour, not black.
    """
    x = onp.asarray(x)
    n, h, w, _ = x.shape
    if crop_pad == 0 and not flip:
        return x.copy()
    p = int(crop_pad)
    oy = rng.integers(0, 2 * p + 1, size=n) if p else onp.zeros(n, onp.int64)
    ox = rng.integers(0, 2 * p + 1, size=n) if p else onp.zeros(n, onp.int64)
    rows = oy[:, None] + onp.arange(h)  # (N, H) rows of the padded image
    cols = ox[:, None] + onp.arange(w)  # (N, W)
    if flip:
        flipped = rng.random(n) < 0.5
        cols = onp.where(flipped[:, None], cols[:, ::-1], cols)
    padded = onp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode="constant") if p else x
    idx = onp.arange(n)[:, None, None]
    return padded[idx, rows[:, :, None], cols[:, None, :]]


def iterate_minibatches(x, y, batch_size, rng=None, shuffle=True, drop_last=False):
    """Yield ``(xb, yb)`` minibatches covering every example once per pass.

    ``x`` ``(N, ...)``, ``y`` ``(N,)`` -> ``xb`` ``(B, ...)``, ``yb`` ``(B,)`` with ``B =
    batch_size`` except possibly a smaller last batch (skipped if ``drop_last``). With
    ``shuffle`` the order is a permutation drawn from ``rng`` (a ``onp.random.Generator``; a
    fresh unseeded one if None).
    """
    n = len(x)
    if len(y) != n:
        raise ValueError(f"x has {n} examples but y has {len(y)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if shuffle:
        order = (rng if rng is not None else onp.random.default_rng()).permutation(n)
    else:
        order = onp.arange(n)
    stop = n - n % batch_size if drop_last else n
    for s in range(0, stop, batch_size):
        idx = order[s:s + batch_size]
        yield x[idx], y[idx]
