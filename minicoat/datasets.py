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
"""

import gzip
import hashlib
import io
import os
import struct
import tarfile
import tempfile
import urllib.request
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath

import numpy as np

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
SHAPE_KINDS = ("square", "cross", "ring")
SHAPES_CLASSES = ("different/upper-right", "different/upper-left", "same/upper-right",
                  "same/upper-left")

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
CIFAR10_DIR = "cifar-10-batches-bin"  # the folder inside the official archive
CIFAR10_ARCHIVE = "cifar-10-binary.tar.gz"
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch.bin"
CIFAR10_RECORD = 1 + 32 * 32 * 3  # one label byte, then 1024 R, 1024 G, 1024 B bytes


# --------------------------------------------------------------------------------------------
# Downloads
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Remote:
    """A downloadable file: where it lives, its SHA-256 (``None`` if unknown) and size in bytes."""

    url: str
    sha256: str | None
    size: int | None = None


# The upstream sites publish no SHA-256 sums (torchvision checks these files with MD5). The
# SHA-256 sums and sizes below are those recorded by TensorFlow Datasets in its url_checksums
# registry (tensorflow_datasets/url_checksums/{mnist,fashion_mnist,cifar10}.txt), i.e. the hashes
# of exactly these URLs as downloaded by that project. They were NOT re-computed here (this
# machine has no network). If a server ever sends different bytes, download_file refuses them;
# set that entry's sha256 to None to accept any bytes (download_file then warns that nothing
# was verified).
_MNIST_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_BASE_URLS = {"mnist": _MNIST_URL, "fashion-mnist": _FASHION_URL}
DOWNLOADS = {
    "mnist": {
        "train-images-idx3-ubyte.gz": Remote(
            _MNIST_URL + "train-images-idx3-ubyte.gz",
            "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609", 9912422),
        "train-labels-idx1-ubyte.gz": Remote(
            _MNIST_URL + "train-labels-idx1-ubyte.gz",
            "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c", 28881),
        "t10k-images-idx3-ubyte.gz": Remote(
            _MNIST_URL + "t10k-images-idx3-ubyte.gz",
            "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6", 1648877),
        "t10k-labels-idx1-ubyte.gz": Remote(
            _MNIST_URL + "t10k-labels-idx1-ubyte.gz",
            "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6", 4542),
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": Remote(
            _FASHION_URL + "train-images-idx3-ubyte.gz",
            "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84", 26421880),
        "train-labels-idx1-ubyte.gz": Remote(
            _FASHION_URL + "train-labels-idx1-ubyte.gz",
            "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845", 29515),
        "t10k-images-idx3-ubyte.gz": Remote(
            _FASHION_URL + "t10k-images-idx3-ubyte.gz",
            "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073", 4422102),
        "t10k-labels-idx1-ubyte.gz": Remote(
            _FASHION_URL + "t10k-labels-idx1-ubyte.gz",
            "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5", 5148),
    },
    "cifar10": {
        CIFAR10_ARCHIVE: Remote(
            "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
            "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd", 170052171),
    },
}


def sha256_of(path, chunk=1 << 20):
    """Hex SHA-256 of a file, read in chunks (CIFAR-10's archive is 170 MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def download_file(url, dest, sha256=None, timeout=60):
    """Download ``url`` to ``dest`` atomically and verify its SHA-256.

    The bytes go to a temporary file next to ``dest`` that is renamed into place only once
    complete and verified, so an interrupted or corrupt download never leaves a file that a
    later run would trust. On a checksum mismatch the temporary file is deleted and
    ``ValueError`` is raised. With ``sha256=None`` the file is kept but a ``UserWarning`` says
    it could not be verified. Returns ``dest`` as a ``Path``.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            while block := resp.read(1 << 20):
                h.update(block)
                out.write(block)
        digest = h.hexdigest()
        if sha256 is None:
            warnings.warn(
                f"no known SHA-256 for {url}: {dest.name} was downloaded but could not be "
                f"verified (its SHA-256 is {digest})", stacklevel=2)
        elif digest != sha256.lower():
            raise ValueError(
                f"checksum mismatch for {url}: expected SHA-256 {sha256}, got {digest}; "
                f"the download was discarded")
        os.replace(tmp, dest)  # atomic on POSIX and Windows within one directory
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def _download_all(kind, directory):
    """Download every file of ``DOWNLOADS[kind]`` that is not already in ``directory``."""
    for name, remote in DOWNLOADS[kind].items():
        dest = Path(directory) / name
        if not dest.exists():
            print(f"downloading {remote.url} -> {dest}", flush=True)
            download_file(remote.url, dest, remote.sha256)


# --------------------------------------------------------------------------------------------
# File formats: IDX (MNIST, Fashion-MNIST) and the CIFAR-10 binary version
# --------------------------------------------------------------------------------------------

GZIP_MAGIC = b"\x1f\x8b"

# IDX type codes -> big-endian NumPy dtypes (http://yann.lecun.com/exdb/mnist/, bottom).
IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_maybe_gzip(path):
    """The bytes of a file, gunzipped if it *is* gzip (detected by magic bytes, not by name)."""
    raw = Path(path).read_bytes()
    if raw[:2] == GZIP_MAGIC:
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise ValueError(f"{path}: corrupt gzip data ({e})") from e
    return raw


def read_idx(path):
    """Read an IDX file (the MNIST format), plain or gzip-compressed.

    Layout: two zero bytes, a type byte (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64), a byte ``ndim``, ``ndim`` big-endian uint32 sizes, then the
    data, big-endian, row-major. Returns an array of that shape in native byte order, e.g.
    ``(N, 28, 28)`` uint8 images or ``(N,)`` uint8 labels.

    Raises ``ValueError`` naming the file on a bad magic number, an unknown type code, or a data
    size that does not match the header (a truncated download, say).
    """
    data = _read_maybe_gzip(path)
    if len(data) < 4:
        raise ValueError(f"{path}: not an IDX file (only {len(data)} bytes, header needs 4)")
    zero, code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0:
        raise ValueError(
            f"{path}: bad IDX magic number: expected the first two bytes to be 00 00, found "
            f"{data[:2].hex(' ')}")
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise ValueError(f"{path}: unknown IDX data type 0x{code:02X} (expected one of {known})")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(
            f"{path}: truncated IDX header: expected {header} bytes for {ndim} dimensions, "
            f"found {len(data)}")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    found = len(data) - header
    if found != expected:
        raise ValueError(
            f"{path}: IDX data size mismatch: expected {expected} bytes of data for the "
            f"header's shape {shape} of {dtype.name}, found {found} bytes (truncated or "
            f"corrupt file?)")
    arr = np.frombuffer(data, dtype=dtype, count=expected // dtype.itemsize, offset=header)
    return arr.reshape(shape).astype(dtype.newbyteorder("="))  # native order, writable copy


def read_cifar10_batch(path):
    """Read one file of the CIFAR-10 binary version.

    Each record is 3073 bytes: the label (0..9), then 1024 red, 1024 green and 1024 blue
    bytes, each a 32x32 image in row-major order. Returns ``x`` ``(N, 32, 32, 3)`` uint8,
    channels-last, and ``y`` ``(N,)`` int64. Raises ``ValueError`` if the file size is not a
    multiple of 3073 or a label is above 9.
    """
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % CIFAR10_RECORD:
        raise ValueError(
            f"{path}: not a CIFAR-10 binary batch: size {raw.size} bytes is not a positive "
            f"multiple of the {CIFAR10_RECORD}-byte record (1 label + 3x32x32 pixels)")
    records = raw.reshape(-1, CIFAR10_RECORD)
    y = records[:, 0].astype(np.int64)
    if y.max() > 9:
        bad = int(np.argmax(y > 9))
        raise ValueError(f"{path}: record {bad} has label {y[bad]}, CIFAR-10 labels are 0..9")
    # planar (N, C, H, W) on disk -> channels-last (N, H, W, C) in memory
    x = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(x), y


# --------------------------------------------------------------------------------------------
# Raw loaders: uint8 images (N, H, W, C) and int64 labels, official train/test
# --------------------------------------------------------------------------------------------

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


def _mnist_pair(images_path, labels_path):
    x, y = read_idx(images_path), read_idx(labels_path)
    if x.ndim != 3 or x.dtype != np.uint8:
        raise ValueError(f"{images_path}: expected (N, H, W) uint8 images, got "
                         f"{x.shape} {x.dtype}")
    if y.ndim != 1:
        raise ValueError(f"{labels_path}: expected (N,) labels, got shape {y.shape}")
    if len(x) != len(y):
        raise ValueError(f"{images_path} holds {len(x)} images but {labels_path} holds "
                         f"{len(y)} labels")
    if y.size and y.max() > 9:
        raise ValueError(f"{labels_path}: labels must be 0..9, found {y.max()}")
    return x[..., None], y.astype(np.int64)


def _safe_extract(archive, dest):
    """Extract a tar archive into ``dest``, refusing anything that could escape it.

    Absolute paths, ``..`` components, links and device files are refused with ``ValueError``
    before anything is written (a tar file can otherwise overwrite any file the user can
    write). Python's ``filter="data"`` adds the same checks where available (3.12, 3.11.4+).
    """
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for m in members:
                p = PurePosixPath(m.name)
                if p.is_absolute() or ".." in p.parts or m.name.startswith("\\"):
                    raise ValueError(f"{archive}: refusing unsafe member path {m.name!r}")
                if not (m.isfile() or m.isdir()):
                    raise ValueError(f"{archive}: refusing link or special member {m.name!r}")
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, members=members, filter="data")
            else:  # pragma: no cover - older Pythons; members were checked above
                tar.extractall(dest, members=members)
    except (tarfile.TarError, OSError, EOFError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"{archive}: cannot extract ({e})") from e


def _find_cifar10_files(dirs):
    names = CIFAR10_TRAIN_FILES + (CIFAR10_TEST_FILE,)
    found = {n: _find(dirs, (n,)) for n in names}
    return found, [n for n, p in found.items() if p is None]


def load_cifar10(data_dir=None, download=False):
    """Official CIFAR-10 train (50000) and test (10000) sets from the binary version.

    Looks for ``data_batch_1.bin`` .. ``data_batch_5.bin`` and ``test_batch.bin`` in
    ``data_dir/cifar-10-batches-bin/`` or ``data_dir``. If they are absent but the official
    ``cifar-10-binary.tar.gz`` is in ``data_dir``, it is extracted there (safely); with
    ``download=True`` the archive is fetched first.

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
        _safe_extract(archive, data_dir)
        found, missing = _find_cifar10_files(dirs)
    if missing:
        raise FileNotFoundError(
            f"cifar10: missing {', '.join(missing)} in {dirs[0]} or {dirs[1]}, and no "
            f"{CIFAR10_ARCHIVE} in {data_dir}. Pass download=True (command line: --download) "
            f"or put {DOWNLOADS['cifar10'][CIFAR10_ARCHIVE].url} (binary version) in "
            f"{data_dir}.")
    train = [read_cifar10_batch(found[n]) for n in CIFAR10_TRAIN_FILES]
    x_test, y_test = read_cifar10_batch(found[CIFAR10_TEST_FILE])
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    return x_train, y_train, x_test, y_test


def load_digits_raw():
    """The carried UCI digits: ``x`` ``(1797, 8, 8, 1)`` uint8 in 0..16, ``y`` ``(1797,)`` int64.

    Read with ``importlib.resources`` so it works from an installed wheel too.
    """
    blob = resources.files(__package__).joinpath("data/digits.csv.gz").read_bytes()
    table = np.loadtxt(io.StringIO(gzip.decompress(blob).decode("ascii")), delimiter=",",
                       dtype=np.int64, ndmin=2)
    if table.shape[1] != 65 or table[:, :64].min() < 0 or table[:, :64].max() > 16:
        raise ValueError(f"digits.csv.gz: expected rows of 64 pixels in 0..16 and a label, "
                         f"got a table of shape {table.shape}")
    x = table[:, :64].astype(np.uint8).reshape(-1, 8, 8, 1)
    return x, table[:, 64].copy()


# --------------------------------------------------------------------------------------------
# The synthetic "shapes" task
# --------------------------------------------------------------------------------------------

def _stencil(kind, size):
    """A ``(size, size)`` 0/1 mask of a shape kind: filled square, plus-shaped cross, ring."""
    s = np.zeros((size, size), np.float32)
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
    tops = np.empty((len(sizes), 2, 2), np.int64)
    todo = np.arange(len(sizes))
    while todo.size:
        high = size - sizes[todo][:, :, None] + 1  # (m, 2, 1): per-object bound on row and col
        cand = rng.integers(0, high, size=(len(todo), 2, 2))
        c2 = _centres2(cand, sizes[todo])
        ok = (np.abs(c2[:, 0] - c2[:, 1]) >= 2 * gap).all(axis=1)
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
            ``np.random.default_rng`` accepts (an int or a tuple of ints).
        noise: standard deviation of the additive Gaussian noise.
        return_meta: also return a dict with ``kinds`` ``(n, 2)`` (index into ``SHAPE_KINDS``),
            ``tops`` ``(n, 2, 2)`` top-left (row, col), ``sizes`` ``(n, 2)``, ``intensity``
            ``(n, 2)``; object 0 is the upper one.

    Returns:
        ``x`` ``(n, size, size, 1)`` float32 in [0, 1], ``y`` ``(n,)`` int64 (and ``meta``).
    """
    if size < 10:
        raise ValueError(f"make_shapes needs size >= 10 to fit two objects apart, got {size}")
    rng = np.random.default_rng(seed)
    gap = 5  # centre distance >= (4 + 4) / 2 + 1: boxes separated by >= 1 pixel per axis
    y = rng.permutation(np.arange(n) % 4).astype(np.int64)  # exactly balanced (within 1)
    same, upper_left = y // 2, y % 2
    kinds = np.empty((n, 2), np.int64)
    kinds[:, 0] = rng.integers(0, 3, size=n)
    # "different": shift by 1 or 2 (mod 3) so the second kind is uniform over the other two
    kinds[:, 1] = np.where(same == 1, kinds[:, 0], (kinds[:, 0] + rng.integers(1, 3, n)) % 3)
    sizes = rng.integers(3, 5, size=(n, 2))
    intensity = rng.uniform(0.5, 1.0, size=(n, 2)).astype(np.float32)
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
    x = np.zeros((n, size, size), np.float32)
    for i in range(n):  # 2 slice assignments per image: cheap next to the model
        for j in range(2):
            (r, c), s = tops[i, j], sizes[i, j]
            x[i, r:r + s, c:c + s] = intensity[i, j] * stencils[kinds[i, j], s]
    if noise:
        x += rng.normal(0.0, noise, size=x.shape).astype(np.float32)
        np.clip(x, 0.0, 1.0, out=x)
    x = x[..., None]
    if return_meta:
        return x, y, {"kinds": kinds, "tops": tops, "sizes": sizes, "intensity": intensity}
    return x, y


# --------------------------------------------------------------------------------------------
# Splits and normalisation
# --------------------------------------------------------------------------------------------

def stratified_order(y, seed=SPLIT_SEED):
    """A fixed shuffle of ``range(len(y))`` in which every prefix has ~the class proportions.

    Each example gets the key ``(rank within its class + 0.5) / class size`` (ranks taken in a
    random order), and examples are sorted by key: the classes are interleaved evenly, so the
    first k indices are a stratified random sample of size k for every k. All splits and
    subsets below are prefixes of such orders.
    """
    y = np.asarray(y)
    perm = np.random.default_rng(seed).permutation(len(y))
    yp = y[perm]
    key = np.empty(len(y))
    for c in np.unique(yp):
        idx = np.flatnonzero(yp == c)
        key[idx] = (np.arange(len(idx)) + 0.5) / len(idx)
    return perm[np.argsort(key, kind="stable")]


def _take_first(order, k, what):
    if k is None:
        return order
    if not 0 < k <= len(order):
        raise ValueError(f"{what} must be in 1..{len(order)}, got {k}")
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
    total = np.zeros(c)
    for s in range(0, len(x), chunk):
        total += x[s:s + chunk].sum(axis=(0, 1, 2), dtype=np.float64)
    mean = total / count
    sq = np.zeros(c)  # second pass: sum of squared deviations (stabler than E[x^2] - E[x]^2)
    for s in range(0, len(x), chunk):
        sq += ((x[s:s + chunk].astype(np.float64) - mean) ** 2).sum(axis=(0, 1, 2))
    std = np.sqrt(sq / count)
    return (mean * scale).astype(np.float32), (std * scale).astype(np.float32)


def normalize(x, mean, std, scale=1.0, chunk=4096):
    """``(x * scale - mean) / std`` as float32 ``(N, H, W, C)``, in chunks to bound memory."""
    out = np.empty(x.shape, np.float32)
    inv = (1.0 / std).astype(np.float32)
    for s in range(0, len(x), chunk):
        xs = x[s:s + chunk].astype(np.float32)
        out[s:s + chunk] = (xs * np.float32(scale) - mean) * inv
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
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple
    mean: np.ndarray
    std: np.ndarray
    flip: bool
    crop_pad: int

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
                 train_subset=None, test_subset=None):
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
    mean/std of the training images actually kept.

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
    keep = _take_first(np.arange(len(y_tr)), train_subset, "train_subset")
    x_tr, y_tr = x_tr[keep], y_tr[keep]
    if test_subset is not None:
        keep = _take_first(stratified_order(y_te), test_subset, "test_subset")
        x_te, y_te = x_te[keep], y_te[keep]

    classes, flip, crop_pad, scale = _META[name]
    mean, std = channel_stats(x_tr, scale)
    std = np.where(std > 1e-6, std, np.float32(1.0)).astype(np.float32)  # constant channels
    return Dataset(
        name=name,
        x_train=normalize(x_tr, mean, std, scale), y_train=y_tr.astype(np.int64),
        x_val=normalize(x_va, mean, std, scale), y_val=y_va.astype(np.int64),
        x_test=normalize(x_te, mean, std, scale), y_test=y_te.astype(np.int64),
        classes=classes, mean=mean, std=std, flip=flip, crop_pad=crop_pad,
    )


# --------------------------------------------------------------------------------------------
# Augmentation and minibatches
# --------------------------------------------------------------------------------------------

def augment(x, rng, crop_pad=0, flip=False):
    """Random crop (with zero padding) and random horizontal flip, per image.

    ``x`` ``(N, H, W, C)`` -> same shape and dtype. Each image is zero-padded by ``crop_pad`` on
    every side and an ``H x W`` window is taken at a random offset in ``0..2*crop_pad`` (the
    standard CIFAR recipe); with ``flip`` each image is mirrored left-right with probability
    1/2. Both happen in one vectorised gather: row and column index arrays per image, the
    column indices reversed for flipped images. ``rng`` is a ``np.random.Generator``; the
    result is deterministic given its state. ``crop_pad=0, flip=False`` returns a copy of ``x``.
    Note that images are normalised, so the padding is the mean colour, not black.
    """
    x = np.asarray(x)
    n, h, w, _ = x.shape
    if crop_pad == 0 and not flip:
        return x.copy()
    p = int(crop_pad)
    oy = rng.integers(0, 2 * p + 1, size=n) if p else np.zeros(n, np.int64)
    ox = rng.integers(0, 2 * p + 1, size=n) if p else np.zeros(n, np.int64)
    rows = oy[:, None] + np.arange(h)  # (N, H) rows of the padded image
    cols = ox[:, None] + np.arange(w)  # (N, W)
    if flip:
        flipped = rng.random(n) < 0.5
        cols = np.where(flipped[:, None], cols[:, ::-1], cols)
    padded = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode="constant") if p else x
    idx = np.arange(n)[:, None, None]
    return padded[idx, rows[:, :, None], cols[:, None, :]]


def iterate_minibatches(x, y, batch_size, rng=None, shuffle=True, drop_last=False):
    """Yield ``(xb, yb)`` minibatches covering every example once per pass.

    ``x`` ``(N, ...)``, ``y`` ``(N,)`` -> ``xb`` ``(B, ...)``, ``yb`` ``(B,)`` with ``B =
    batch_size`` except possibly a smaller last batch (skipped if ``drop_last``). With
    ``shuffle`` the order is a permutation drawn from ``rng`` (a ``np.random.Generator``; a
    fresh unseeded one if None).
    """
    n = len(x)
    if len(y) != n:
        raise ValueError(f"x has {n} examples but y has {len(y)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if shuffle:
        order = (rng if rng is not None else np.random.default_rng()).permutation(n)
    else:
        order = np.arange(n)
    stop = n - n % batch_size if drop_last else n
    for s in range(0, stop, batch_size):
        idx = order[s:s + batch_size]
        yield x[idx], y[idx]
