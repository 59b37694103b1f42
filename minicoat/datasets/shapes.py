"""The synthetic "shapes" task: the label is a relation between two distant objects."""

import numpy as onp

SHAPE_KINDS = ("square", "cross", "ring")
SHAPES_CLASSES = ("different/upper-right", "different/upper-left", "same/upper-right",
                  "same/upper-left")


def _stencil(kind, size):
    """A ``(size, size)`` 0/1 mask of a shape kind: filled square, plus-shaped cross, ring."""
    s = onp.zeros((size, size), onp.float32)
    if kind == 0:  # square
        s[:] = 1
    elif kind == 1:  # cross: arms one pixel thick (3x3) or two thick (4x4), through the centre
        mid = slice((size - 1) // 2, size // 2 + 1)
        s[mid, :] = 1
        s[:, mid] = 1
    else:  # ring: the square's one-pixel border
        s[:] = 1
        s[1:-1, 1:-1] = 0
    return s


def _centres2(tops, sizes):
    """Twice the box centres, ``2 * top + size`` (integers), ``(n, 2, 2)`` (object, row/col)."""
    return 2 * tops + sizes[:, :, None]


def _place_pairs(rng, size, sizes, gap):
    """Top-left corners ``(n, 2, 2)`` (row, col) of two boxes per image, whose centres are at
    least ``gap`` pixels apart both vertically and horizontally.

    Vectorised rejection sampling: redraw only the pairs that violate the gap; for size 16
    about a fifth of draws pass, so a few dozen rounds finish any n.
    """
    tops = onp.empty((len(sizes), 2, 2), onp.int64)
    todo = onp.arange(len(sizes))
    while todo.size:
        high = size - sizes[todo][:, :, None] + 1  # (m, 2, 1): per-object bound on row and col
        cand = rng.integers(0, high, size=(len(todo), 2, 2))
        c2 = _centres2(cand, sizes[todo])
        ok = (onp.abs(c2[:, 0] - c2[:, 1]) >= 2 * gap).all(axis=1)
        tops[todo[ok]] = cand[ok]
        todo = todo[~ok]
    return tops


def make_shapes(n, size=16, seed=0, noise=0.05, return_meta=False):
    """Synthetic images whose class is a relation between two distant objects.

    Each ``size x size`` image holds two small objects on a black background, each a
    ``square`` (filled), ``cross`` (plus sign) or ``ring`` (hollow square) of random size 3 or
    4 and random intensity in [0.5, 1], plus Gaussian noise (std ``noise``), clipped to [0, 1].
    The objects are at random positions whose centres differ by at least 5 pixels both
    vertically and horizontally, so they never touch (at least one background pixel between
    them in each direction) and one is unambiguously the *upper* (first in reading order) and
    one the *left*, whether judged by centres or by edges.

    Rule, 4 balanced classes: ``label = 2 * same + upper_left`` where ``same`` says the two
    objects are the same kind (sizes and intensities may differ) and ``upper_left`` says the
    upper object is to the left of the lower one. See ``SHAPES_CLASSES`` for names. Neither bit
    can be read off one object (only hinted at: an upper object at the right edge must have its
    partner on its left): the model has to relate two objects up to ~12 pixels apart, which is
    where attention (global receptive field) should beat local convolutions. Do not flip these
    images horizontally: a flip changes the label.

    Args:
        n: number of images. size: image side (>= 10). seed: anything
            ``onp.random.default_rng`` accepts (an int or a tuple of ints).
        noise: standard deviation of the additive Gaussian noise.
        return_meta: also return a dict with ``kinds`` ``(n, 2)`` (index into ``SHAPE_KINDS``),
            ``tops`` ``(n, 2, 2)`` top-left (row, col), ``sizes`` ``(n, 2)``, ``intensity``
            ``(n, 2)``; object 0 is the upper one.

    Returns:
        ``x`` ``(n, size, size, 1)`` float32 in [0, 1], ``y`` ``(n,)`` int64 (and ``meta``).
    """
    if size < 10:
        raise ValueError(f"make_shapes needs size >= 10 to fit two objects apart, got {size}")
    rng = onp.random.default_rng(seed)
    gap = 5  # centre distance >= (4 + 4) / 2 + 1: boxes separated by >= 1 pixel per axis
    y = rng.permutation(onp.arange(n) % 4).astype(onp.int64)  # exactly balanced (within 1)
    same, upper_left = y // 2, y % 2
    kinds = onp.empty((n, 2), onp.int64)
    kinds[:, 0] = rng.integers(0, 3, size=n)
    # "different": shift by 1 or 2 (mod 3) so the second kind is uniform over the other two
    kinds[:, 1] = onp.where(same == 1, kinds[:, 0], (kinds[:, 0] + rng.integers(1, 3, n)) % 3)
    sizes = rng.integers(3, 5, size=(n, 2))
    intensity = rng.uniform(0.5, 1.0, size=(n, 2)).astype(onp.float32)
    tops = _place_pairs(rng, size, sizes, gap)
    # make object 0 the upper one (rows differ by >= gap, so there is no tie)
    swap = tops[:, 0, 0] > tops[:, 1, 0]
    tops[swap], sizes[swap] = tops[swap, ::-1], sizes[swap, ::-1]
    # put the objects the required way round by mirroring their columns within the image
    # (col -> size - obj_size - col); the reflection keeps them inside the image and keeps the
    # distance between their centres
    wrong = (tops[:, 0, 1] < tops[:, 1, 1]) != (upper_left == 1)
    tops[wrong, :, 1] = size - sizes[wrong] - tops[wrong, :, 1]
    stencils = {(k, s): _stencil(k, s) for k in range(3) for s in (3, 4)}
    x = onp.zeros((n, size, size), onp.float32)
    for i in range(n):  # 2 slice assignments per image: cheap next to the model
        for j in range(2):
            (r, c), s = tops[i, j], sizes[i, j]
            x[i, r:r + s, c:c + s] = intensity[i, j] * stencils[kinds[i, j], s]
    if noise:
        x += rng.normal(0.0, noise, size=x.shape).astype(onp.float32)
        onp.clip(x, 0.0, 1.0, out=x)
    x = x[..., None]
    if return_meta:
        return x, y, {"kinds": kinds, "tops": tops, "sizes": sizes, "intensity": intensity}
    return x, y

