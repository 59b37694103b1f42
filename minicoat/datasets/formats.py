"""File formats: IDX (MNIST, Fashion-MNIST), the CIFAR-10 binary version and its archive.

Nothing here unpickles anything (the CIFAR-10 *python* version is a pickle, which is why the
binary version is used).
"""

import gzip
import struct
import tarfile
from pathlib import Path, PurePosixPath

import numpy as np

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

