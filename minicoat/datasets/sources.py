"""Raw loaders: uint8 images ``(N, H, W, C)`` and int64 labels, official train/test.

The carried digits come from the package itself; MNIST, Fashion-MNIST and CIFAR-10 from
``data_dir`` (:func:`default_data_dir`), downloaded only when asked.
"""

import gzip
import io
import os
from importlib import resources
from pathlib import Path

import numpy as onp

from .download import _BASE_URLS, DOWNLOADS, _download_all
from .formats import (
    CIFAR10_ARCHIVE,
    CIFAR10_DIR,
    CIFAR10_TEST_FILE,
    CIFAR10_TRAIN_FILES,
    MNIST_FILES,
    extract_cifar10,
    read_cifar10_batch,
    read_idx,
)


def default_data_dir():
    """``$MINICOAT_DATA_DIR`` if set, else ``~/.cache/minicoat``."""
    env = os.environ.get("MINICOAT_DATA_DIR")
    return Path(env) if env else Path.home() / ".cache" / "minicoat"


def _find(dirs, names):
    """First existing ``dir/name`` over ``dirs`` x ``names`` (in that order), else None."""
    for d in dirs:
        for n in names:
            p = Path(d) / n
            if p.is_file():
                return p
    return None


def _find_mnist_files(dirs):
    found = {key: _find(dirs, (stem, stem + ".gz")) for key, stem in MNIST_FILES.items()}
    missing = [MNIST_FILES[k] for k, p in found.items() if p is None]
    return found, missing


def load_mnist(data_dir=None, kind="mnist", download=False):
    """Official MNIST or Fashion-MNIST train and test sets as uint8 arrays.

    Looks for ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte`` (each plain or with ``.gz``) in
    ``data_dir/<kind>/`` first, then in ``data_dir`` itself. The two datasets use the same file
    names, so keep them in separate ``mnist/`` and ``fashion-mnist/`` folders. With
    ``download=True`` missing files are fetched into ``data_dir/<kind>/``.

    Returns ``(x_train, y_train, x_test, y_test)``: images ``(N, 28, 28, 1)`` uint8, labels
    ``(N,)`` int64. Raises ``FileNotFoundError`` naming the missing files, ``ValueError`` on
    corrupt ones.
    """
    if kind not in ("mnist", "fashion-mnist"):
        raise ValueError(f"kind must be 'mnist' or 'fashion-mnist', got {kind!r}")
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    dirs = (data_dir / kind, data_dir)
    found, missing = _find_mnist_files(dirs)
    if missing and download:
        _download_all(kind, data_dir / kind)
        found, missing = _find_mnist_files(dirs)
    if missing:
        raise FileNotFoundError(
            f"{kind}: missing {', '.join(missing)} (plain or .gz) in {dirs[0]} or {dirs[1]}. "
            f"Pass download=True (command line: --download) to fetch them, or download the "
            f"four .gz files from {_BASE_URLS[kind]} into {dirs[0]}.")
    x_train, y_train = _mnist_pair(found["train_images"], found["train_labels"])
    x_test, y_test = _mnist_pair(found["test_images"], found["test_labels"])
    return x_train, y_train, x_test, y_test


MNIST_MAX_IMAGES = 100_000  # per IDX file (the official files hold 60000 and 10000)


def _mnist_pair(images_path, labels_path):
    limit = MNIST_MAX_IMAGES
    x = read_idx(images_path, max_bytes=limit * 28 * 28, shape=(None, 28, 28), dtype=onp.uint8)
    y = read_idx(labels_path, max_bytes=limit, shape=(None,), dtype=onp.uint8)
    if len(x) == 0:
        raise ValueError(f"{images_path} holds no images")
    if len(x) != len(y):
        raise ValueError(f"{images_path} holds {len(x)} images but {labels_path} holds "
                         f"{len(y)} labels")
    if y.size and y.max() > 9:
        raise ValueError(f"{labels_path}: labels must be 0..9, found {y.max()}")
    return x[..., None], y.astype(onp.int64)


def _find_cifar10_files(dirs):
    names = CIFAR10_TRAIN_FILES + (CIFAR10_TEST_FILE,)
    found = {n: _find(dirs, (n,)) for n in names}
    return found, [n for n, p in found.items() if p is None]


def load_cifar10(data_dir=None, download=False):
    """Official CIFAR-10 train (50000) and test (10000) sets from the binary version.

    Looks for ``data_batch_1.bin`` .. ``data_batch_5.bin`` and ``test_batch.bin`` in
    ``data_dir/cifar-10-batches-bin/`` or ``data_dir``. If they are absent but the official
    ``cifar-10-binary.tar.gz`` is in ``data_dir``, its six batch files (and nothing else) are
    extracted into ``data_dir/cifar-10-batches-bin/`` (bounded: ``formats.extract_cifar10``);
    with ``download=True`` the archive is fetched first.

    Returns ``(x_train, y_train, x_test, y_test)``: images ``(N, 32, 32, 3)`` uint8 RGB,
    labels ``(N,)`` int64.
    """
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    dirs = (data_dir / CIFAR10_DIR, data_dir)
    found, missing = _find_cifar10_files(dirs)
    archive = data_dir / CIFAR10_ARCHIVE
    if missing and (archive.is_file() or download):
        if not archive.is_file():
            _download_all("cifar10", data_dir)
        extract_cifar10(archive, data_dir)
        found, missing = _find_cifar10_files(dirs)
    if missing and archive.is_file():
        raise ValueError(f"{archive} does not hold {CIFAR10_DIR}/{missing[0]}; is it the "
                         f"binary version of CIFAR-10? Delete it and pass --download")
    if missing:
        raise FileNotFoundError(
            f"cifar10: missing {', '.join(missing)} in {dirs[0]} or {dirs[1]}, and no "
            f"{CIFAR10_ARCHIVE} in {data_dir}. Pass download=True (command line: --download) "
            f"or put {DOWNLOADS['cifar10'][CIFAR10_ARCHIVE].url} (binary version) in "
            f"{data_dir}.")
    train = [read_cifar10_batch(found[n]) for n in CIFAR10_TRAIN_FILES]
    x_test, y_test = read_cifar10_batch(found[CIFAR10_TEST_FILE])
    x_train = onp.concatenate([x for x, _ in train])
    y_train = onp.concatenate([y for _, y in train])
    return x_train, y_train, x_test, y_test


def load_digits_raw():
    """The carried UCI digits: ``x`` ``(1797, 8, 8, 1)`` uint8 in 0..16, ``y`` ``(1797,)`` int64.

    Read with ``importlib.resources`` so it works from an installed wheel too.
    """
    blob = resources.files("minicoat").joinpath("data/digits.csv.gz").read_bytes()
    table = onp.loadtxt(io.StringIO(gzip.decompress(blob).decode("ascii")), delimiter=",",
                       dtype=onp.int64, ndmin=2)
    if table.shape[1] != 65 or table[:, :64].min() < 0 or table[:, :64].max() > 16:
        raise ValueError(f"digits.csv.gz: expected rows of 64 pixels in 0..16 and a label, "
                         f"got a table of shape {table.shape}")
    x = table[:, :64].astype(onp.uint8).reshape(-1, 8, 8, 1)
    return x, table[:, 64].copy()

