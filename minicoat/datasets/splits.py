"""Fixed splits, normalisation and the :class:`Dataset` record that ``load_dataset`` returns.

Splits never depend on the training seed: they come from a fixed internal seed
(``SPLIT_SEED``), so every run of every experiment sees the same train/validation/test images.
"""

import hashlib
import numbers
from dataclasses import dataclass

import numpy as onp

from .shapes import SHAPES_CLASSES, make_shapes
from .sources import load_cifar10, load_digits_raw, load_mnist

DATASETS = ("digits", "shapes", "mnist", "fashion-mnist", "cifar10")

# Splits use their own seed so that changing the training seed never moves an image between
# train, validation and test.
SPLIT_SEED = 0

DIGITS_TEST_FRACTION = 0.2
SHAPES_TRAINVAL = 5000  # shapes: images generated for train + validation
SHAPES_TEST = 1000  # shapes: images generated for test

DIGITS_CLASSES = tuple(str(d) for d in range(10))
MNIST_CLASSES = DIGITS_CLASSES
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip


def stratified_order(y, seed=SPLIT_SEED):
    """A fixed shuffle of ``range(len(y))`` in which every prefix has ~the class proportions.

    Each example gets the key ``(rank within its class + 0.5) / class size`` (ranks taken in a
    random order), and examples are sorted by key: the classes are interleaved evenly, so the
    first k indices are a stratified random sample of size k for every k. All splits and
    subsets below are prefixes of such orders.
    """
    y = onp.asarray(y)
    perm = onp.random.default_rng(seed).permutation(len(y))
    yp = y[perm]
    key = onp.empty(len(y))
    for c in onp.unique(yp):
        idx = onp.flatnonzero(yp == c)
        key[idx] = (onp.arange(len(idx)) + 0.5) / len(idx)
    return perm[onp.argsort(key, kind="stable")]


def _take_first(order, k, what):
    if k is None:
        return order
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 0 < k <= len(order):
        raise ValueError(f"{what} must be an integer in 1..{len(order)}, got {k!r}")
    return order[:k]


def _count(fraction, n):
    return int(round(fraction * n))


def channel_stats(x, scale=1.0, chunk=4096):
    """Per-channel mean and std ``(C,)`` float32 of ``x * scale`` over (N, H, W).

    ``x`` is ``(N, H, W, C)`` of any dtype; accumulated in float64 chunk by chunk so that the
    uint8 CIFAR-10 training set is never copied whole to float64 (1.2 GB).
    """
    c = x.shape[-1]
    count = x.size // c
    total = onp.zeros(c)
    for s in range(0, len(x), chunk):
        total += x[s:s + chunk].sum(axis=(0, 1, 2), dtype=onp.float64)
    mean = total / count
    sq = onp.zeros(c)  # second pass: sum of squared deviations (stabler than E[x^2] - E[x]^2)
    for s in range(0, len(x), chunk):
        sq += ((x[s:s + chunk].astype(onp.float64) - mean) ** 2).sum(axis=(0, 1, 2))
    std = onp.sqrt(sq / count)
    return (mean * scale).astype(onp.float32), (std * scale).astype(onp.float32)


def normalize(x, mean, std, scale=1.0, chunk=4096):
    """``(x * scale - mean) / std`` as float32 ``(N, H, W, C)``, in chunks to bound memory."""
    out = onp.empty(x.shape, onp.float32)
    inv = (1.0 / std).astype(onp.float32)
    for s in range(0, len(x), chunk):
        xs = x[s:s + chunk].astype(onp.float32)
        out[s:s + chunk] = (xs * onp.float32(scale) - mean) * inv
    return out


# --------------------------------------------------------------------------------------------
# The Dataset record and load_dataset
# --------------------------------------------------------------------------------------------

@dataclass
class Dataset:
    """A dataset ready for training: fixed splits, normalised float32 images.

    Attributes:
        name: one of ``DATASETS``.
        x_train, x_val, x_test: ``(N, H, W, C)`` float32, normalised with ``mean``/``std``.
        y_train, y_val, y_test: ``(N,)`` int64 class indices.
        classes: class names, ``classes[y]`` names label ``y``.
        mean, std: ``(C,)`` float32 per-channel statistics of the *training split's* pixels
            scaled to [0, 1]; ``raw01 = x * std + mean`` undoes the normalisation.
        flip: whether random horizontal flips are a label-preserving augmentation.
        crop_pad: zero padding for random-crop augmentation (0 disables it).
        definition: what a checkpoint records to tell whether a later run sees the same
            data (``data_definition``): the arguments of ``load_dataset``, the SHA-256 of
            each split's raw images and labels, ``mean`` and ``std``.
    """

    name: str
    x_train: onp.ndarray
    y_train: onp.ndarray
    x_val: onp.ndarray
    y_val: onp.ndarray
    x_test: onp.ndarray
    y_test: onp.ndarray
    classes: tuple
    mean: onp.ndarray
    std: onp.ndarray
    flip: bool
    crop_pad: int
    definition: dict = None

    @property
    def image_shape(self):
        """``(H, W, C)`` of one image."""
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self):
        return len(self.classes)

    def summary(self):
        """One line: split sizes, image shape and classes."""
        names = ", ".join(self.classes)
        return (f"{self.name}: train {len(self.x_train)}, val {len(self.x_val)}, "
                f"test {len(self.x_test)}; image {self.image_shape}; "
                f"{self.num_classes} classes ({names})")


# name -> (classes, flip, crop_pad, scale to [0, 1])
_META = {
    "digits": (DIGITS_CLASSES, False, 1, 1.0 / 16),
    "shapes": (SHAPES_CLASSES, False, 0, 1.0),  # a flip would swap upper-left/upper-right
    "mnist": (MNIST_CLASSES, False, 2, 1.0 / 255),
    # clothes are left/right symmetric classes, so flips are a common augmentation here
    "fashion-mnist": (FASHION_MNIST_CLASSES, True, 2, 1.0 / 255),
    "cifar10": (CIFAR10_CLASSES, True, 4, 1.0 / 255),
}


def _raw_splits(name, data_dir, download, seed, val_fraction):
    """Un-normalised ``(x_train, y_train, x_val, y_val, x_test, y_test)`` of a dataset."""
    if name == "digits":
        x, y = load_digits_raw()
        order = stratified_order(y)
        n_test = _count(DIGITS_TEST_FRACTION, len(y))
        test, rest = order[:n_test], order[n_test:]
        x_trval, y_trval, x_test, y_test = x[rest], y[rest], x[test], y[test]
        # rest is a suffix of a stratified order, hence itself stratified: split it by prefix
        n_val = _count(val_fraction, len(rest))
        return (x_trval[n_val:], y_trval[n_val:], x_trval[:n_val], y_trval[:n_val],
                x_test, y_test)
    if name == "shapes":
        x_trval, y_trval = make_shapes(SHAPES_TRAINVAL, seed=(seed, 0))
        x_test, y_test = make_shapes(SHAPES_TEST, seed=(seed, 1))
    elif name in ("mnist", "fashion-mnist"):
        x_trval, y_trval, x_test, y_test = load_mnist(data_dir, name, download)
    else:
        x_trval, y_trval, x_test, y_test = load_cifar10(data_dir, download)
    order = stratified_order(y_trval)
    n_val = _count(val_fraction, len(order))
    val, train = order[:n_val], order[n_val:]
    return x_trval[train], y_trval[train], x_trval[val], y_trval[val], x_test, y_test


def load_dataset(name, data_dir=None, download=False, seed=0, val_fraction=0.1,
                 train_subset=None, test_subset=None, mean=None, std=None, image_size=None):
    """Load a dataset with fixed splits, normalised float32 images ``(N, H, W, C)``.

    Splits (fixed: they depend on nothing but ``val_fraction``, never on ``seed``):

    - ``digits``: the 1797 images -> 20% test (359), then ``val_fraction`` of the remaining
      1438 as validation (144), the rest train (1294); all stratified by class.
    - ``shapes``: 5000 generated images -> ``val_fraction`` validation (500), train (4500);
      1000 separately generated test images. ``seed`` seeds the generator (the only use of
      ``seed``); ``seed=0`` gives the reference data.
    - ``mnist``, ``fashion-mnist`` (60000/10000), ``cifar10`` (50000/10000): the official test
      set; validation is a fixed stratified ``val_fraction`` of the official training set
      (6000 and 5000 by default), the rest is train.

    ``train_subset=k`` keeps the first ``k`` training images of the fixed stratified shuffle
    (so about k/10 per class); ``test_subset`` likewise for the test set. Normalisation uses the
    mean/std of the training images actually kept, unless ``mean`` and ``std`` (``(C,)``, e.g.
    a checkpoint's) are given: then those are used, as evaluating a trained model must.

    ``image_size`` ``(H, W)`` (or an int) resizes every split bilinearly (``resize_images``,
    as torch's ``interpolate``) after normalising, with the statistics of the images at their
    own size (each resized pixel is a convex combination of pixels, so the normalisation
    commutes with the resize up to rounding; a run resumed at another size keeps its own
    normalisation). ``crop_pad`` and ``flip`` stay as they are, so an epoch's random draws do
    not depend on the size (a run changing size in the middle of an epoch still sees every
    image once in it). None, or the images' own size, leaves them as they are;
    ``definition["image_size"]`` is the new ``[H, W]``, or None.

    Raises ``ValueError`` for an unknown name or bad sizes, ``FileNotFoundError`` when the
    files of mnist/fashion-mnist/cifar10 are not in ``data_dir`` (default
    :func:`default_data_dir`) and ``download`` is False.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    x_tr, y_tr, x_va, y_va, x_te, y_te = _raw_splits(name, data_dir, download, seed,
                                                     val_fraction)
    if len(y_tr) == 0:
        raise ValueError(f"val_fraction={val_fraction} leaves no training images for {name}")
    # train is already in stratified order; test is re-ordered only when subsetting
    keep = _take_first(onp.arange(len(y_tr)), train_subset, "train_subset")
    x_tr, y_tr = x_tr[keep], y_tr[keep]
    if test_subset is not None:
        keep = _take_first(stratified_order(y_te), test_subset, "test_subset")
        x_te, y_te = x_te[keep], y_te[keep]

    classes, flip, crop_pad, scale = _META[name]
    if (mean is None) != (std is None):
        raise ValueError("give both mean and std (the stored normalisation), or neither")
    if mean is None:
        mean, std = channel_stats(x_tr, scale)
        std = onp.where(std > 1e-6, std, onp.float32(1.0)).astype(onp.float32)  # constant channels
    else:
        mean, std = _statistics(mean, std, x_tr.shape[-1])
    raw = {"train": (x_tr, y_tr), "val": (x_va, y_va), "test": (x_te, y_te)}
    size = _new_size(image_size, x_tr.shape[1:3])
    definition = dict(
        dataset=name, val_fraction=float(val_fraction),
        train_subset=None if train_subset is None else int(train_subset),
        test_subset=None if test_subset is None else int(test_subset),
        seed=int(seed) if name == "shapes" else None,
        sha256={split: _digest(*arrays) for split, arrays in raw.items()},
        mean=mean.tolist(), std=std.tolist(), image_size=None if size is None else list(size),
    )
    x = {split: resize_split(normalize(arrays[0], mean, std, scale), size)
         for split, arrays in raw.items()}
    return Dataset(
        name=name,
        x_train=x["train"], y_train=y_tr.astype(onp.int64),
        x_val=x["val"], y_val=y_va.astype(onp.int64),
        x_test=x["test"], y_test=y_te.astype(onp.int64),
        classes=classes, mean=mean, std=std, flip=flip, crop_pad=crop_pad,
        definition=definition,
    )


def _new_size(image_size, native):
    """``image_size`` as ``(H, W)``, or None when it is None or the images' own size."""
    if image_size is None:
        return None
    size = (image_size,) * 2 if isinstance(image_size, numbers.Integral) else image_size
    try:
        size = tuple(size)
    except TypeError:
        size = ()
    if len(size) != 2 or not all(isinstance(n, numbers.Integral) and not isinstance(n, bool)
                                 and n >= 1 for n in size):
        raise ValueError(f"image_size must be an integer >= 1 or (H, W) of such, got "
                         f"{image_size!r}")
    size = (int(size[0]), int(size[1]))
    return None if size == tuple(native) else size


def resize_split(x, size, chunk=1024):
    """Images ``(N, H, W, C)`` resized bilinearly to ``size`` ``(H', W')`` (``resize_images``),
    in chunks to bound memory; ``x`` itself when ``size`` is None."""
    if size is None:
        return x
    from ..interop.resize import resize_images

    out = onp.empty((len(x), *size, x.shape[3]), x.dtype)
    for s in range(0, len(x), chunk):
        out[s:s + chunk] = resize_images(x[s:s + chunk], size)
    return out


def _statistics(mean, std, channels):
    """Given normalisation statistics as ``(C,)`` float32, checked finite and std > 0."""
    mean, std = (onp.asarray(v, dtype=onp.float32) for v in (mean, std))
    for what, v in (("mean", mean), ("std", std)):
        if v.shape != (channels,) or not onp.all(onp.isfinite(v)):
            raise ValueError(f"{what} must be {channels} finite numbers (one per channel), "
                             f"got {v.tolist()}")
    if not onp.all(std > 0):
        raise ValueError(f"std must be positive, got {std.tolist()}")
    return mean, std


def _digest(x, y):
    """SHA-256 of a split's raw images and labels (their bytes, shapes and dtypes)."""
    h = hashlib.sha256()
    for a in (x, y):
        a = onp.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def data_differences(stored, current):
    """The fields in which two ``Dataset.definition`` dicts differ, as readable strings.

    ``["train_subset: 96 (run) != None (now)", "sha256.train: 3f2a.. != 9b1c..", ...]``.
    """
    out = []
    for key in sorted(set(stored) | set(current)):
        a, b = stored.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{key}.{k}: {str(a.get(k))[:12]}.. (run) != {str(b.get(k))[:12]}.. (now)"
                    for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b:
            out.append(f"{key}: {a!r} (run) != {b!r} (now)")
    return out
