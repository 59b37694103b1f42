"""Datasets for minicoat: loading, fixed splits, normalisation, augmentation, minibatches.

Every image array is channels-last ``(N, H, W, C)``; labels are ``(N,)`` int64. Loaders return
a :class:`Dataset` whose images are float32, normalised per channel with the statistics of its
own training split (pixels first scaled to ``[0, 1]``).

Five datasets (``DATASETS``):

- ``"digits"``: the UCI optical-recognition handwritten digits (8x8x1, 1797 images), carried
  inside the package (``minicoat/data/digits.csv.gz``, see ``minicoat/data/README.md``), so it
  works offline and trains in seconds.
- ``"shapes"``: a synthetic 16x16x1 task whose label is a *relation between two distant
  objects* (see :func:`make_shapes`), built so that long-range interaction (attention) helps.
- ``"mnist"``, ``"fashion-mnist"``: 28x28x1 from the official IDX files (:func:`read_idx`).
- ``"cifar10"``: 32x32x3 from the official binary version (:func:`read_cifar10_batch`).

The big three are read from ``data_dir`` and downloaded only when asked (``download=True``);
downloads are checked against SHA-256 sums (:data:`DOWNLOADS`).

Splits never depend on the training seed: they come from a fixed internal seed
(``SPLIT_SEED``), so every run of every experiment sees the same train/validation/test images.
Nothing here unpickles anything (the CIFAR-10 *python* version is a pickle, which is why the
binary version is used).

The package, one concern per module (this one re-exports their public names):

- ``formats``: reading IDX files, CIFAR-10 batches and the CIFAR-10 archive;
- ``download``: the download table and checked, atomic downloads;
- ``sources``: the raw loaders (carried digits, MNIST / Fashion-MNIST, CIFAR-10);
- ``shapes``: the synthetic relation task;
- ``splits``: fixed splits, normalisation, resizing, the ``Dataset`` record and ``load_dataset``;
- ``batches``: augmentation and minibatches.
"""

# The constants (DOWNLOADS, DATASETS, MNIST_FILES, ...) are re-exported for `datasets.X` but
# left out of __all__, which lists what the API reference documents (constants carry no
# docstrings of their own).
# ruff: noqa: F401

from .batches import augment, iterate_minibatches
from .download import DOWNLOADS, Remote, download_file, sha256_of
from .formats import (
    CIFAR10_ARCHIVE,
    CIFAR10_DIR,
    CIFAR10_RECORD,
    CIFAR10_TEST_FILE,
    CIFAR10_TRAIN_FILES,
    GZIP_MAGIC,
    IDX_DTYPES,
    MNIST_FILES,
    extract_cifar10,
    read_cifar10_batch,
    read_idx,
)
from .shapes import SHAPE_KINDS, SHAPES_CLASSES, make_shapes
from .sources import default_data_dir, load_cifar10, load_digits_raw, load_mnist
from .splits import (
    CIFAR10_CLASSES,
    DATASETS,
    DIGITS_CLASSES,
    DIGITS_TEST_FRACTION,
    FASHION_MNIST_CLASSES,
    MNIST_CLASSES,
    SHAPES_TEST,
    SHAPES_TRAINVAL,
    SPLIT_SEED,
    Dataset,
    channel_stats,
    data_differences,
    load_dataset,
    normalize,
    resize_split,
    stratified_order,
)

__all__ = [
    "Dataset", "Remote", "augment", "channel_stats", "data_differences", "default_data_dir",
    "download_file", "extract_cifar10", "iterate_minibatches", "load_cifar10", "load_dataset",
    "load_digits_raw", "load_mnist", "make_shapes", "normalize", "read_cifar10_batch",
    "read_idx", "resize_split", "sha256_of", "stratified_order",
]


