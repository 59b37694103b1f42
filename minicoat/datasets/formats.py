"""File formats: IDX (MNIST, Fashion-MNIST), the CIFAR-10 binary version and its archive.

Every reader is bounded before it reads: an input file can cost at most what its format and
the loader allow (``docs/training.md``, "Limits on input files"), whatever it claims.

- IDX files, plain or gzip, are decompressed as a stream into an array of the size their
  header declares, after the header has been checked against what the loader expects; a file
  holding one byte more than that is refused at that byte (a 2 MB gzip cannot inflate to GBs).
- CIFAR-10 batches are size-checked before they are read (at most 10000 records each).
- The CIFAR-10 archive is read as a stream: only the six batch files are extracted, into the
  loader's own folder, each atomically, and every member is bounded by its declared size
  before any of its data is decompressed.

Nothing here unpickles anything (the CIFAR-10 *python* version is a pickle, which is why the
binary version is used).
"""

import gzip
import math
import os
import struct
import tarfile
import zlib
from pathlib import Path, PurePosixPath

import numpy as onp

from ..files import atomic_write

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

# Bounds (the official files are well inside them; see docs/training.md).
IDX_MAX_BYTES = 1 << 30  # read_idx's default: data an IDX header may declare
CIFAR10_MAX_RECORDS = 10000  # records per batch file (each official file holds 10000)
CIFAR10_MAX_MEMBER = CIFAR10_MAX_RECORDS * CIFAR10_RECORD  # 30,730,000 bytes
CIFAR10_MAX_ARCHIVE = 256 << 20  # bytes of tar stream read in all (official: ~184 MB)
CIFAR10_MAX_MEMBERS = 1000  # entries read from the archive (official: 9)
_CHUNK = 1 << 20

GZIP_MAGIC = b"\x1f\x8b"

# IDX type codes -> big-endian NumPy dtypes (http://yann.lecun.com/exdb/mnist/, bottom).
IDX_DTYPES = {
    0x08: onp.dtype(">u1"),
    0x09: onp.dtype(">i1"),
    0x0B: onp.dtype(">i2"),
    0x0C: onp.dtype(">i4"),
    0x0D: onp.dtype(">f4"),
    0x0E: onp.dtype(">f8"),
}


def _read_exactly(f, out, path):
    """Fill the writable buffer ``out`` from ``f`` in chunks; ``ValueError`` if ``f`` ends."""
    view, filled = memoryview(out.reshape(-1)).cast("B"), 0
    while filled < len(view):
        n = f.readinto(view[filled:filled + _CHUNK])
        if not n:
            raise ValueError(f"{path}: IDX data size mismatch: the header declares {len(view)} "
                             f"bytes of data, the file ends after {filled} (truncated?)")
        filled += n


def _check_shape(path, shape, dtype, expect_shape, expect_dtype):
    if expect_dtype is not None and dtype != onp.dtype(expect_dtype).newbyteorder(">"):
        raise ValueError(f"{path}: IDX data type {dtype.name}, expected "
                         f"{onp.dtype(expect_dtype).name}")
    if expect_shape is not None and (len(shape) != len(expect_shape) or any(
            e is not None and s != e for s, e in zip(shape, expect_shape, strict=True))):
        wanted = "(" + ", ".join("N" if e is None else str(e) for e in expect_shape) + ")"
        raise ValueError(f"{path}: IDX shape {shape}, expected {wanted}")


def read_idx(path, max_bytes=IDX_MAX_BYTES, shape=None, dtype=None):
    """Read an IDX file (the MNIST format), plain or gzip-compressed, in bounded memory.

    Layout: two zero bytes, a type byte (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64), a byte ``ndim``, ``ndim`` big-endian uint32 sizes, then the
    data, big-endian, row-major. Returns an array of that shape in native byte order, e.g.
    ``(N, 28, 28)`` uint8 images or ``(N,)`` uint8 labels.

    The header is checked first: against ``shape`` (a tuple, ``None`` for a free axis) and
    ``dtype`` if given, and its data size against ``max_bytes``. Then exactly that many bytes
    are read (gzip: decompressed as a stream), and one byte more is refused: memory never
    exceeds the array the header declares.

    Raises ``ValueError`` naming the file on a bad magic number, an unknown type code, a header
    the loader does not expect, or a data size that does not match the header (a truncated
    download, say).
    """
    with open(path, "rb") as raw:
        is_gzip = raw.read(2) == GZIP_MAGIC
    try:
        f = gzip.open(path, "rb") if is_gzip else open(path, "rb")
        with f:
            head = f.read(4)
            if len(head) < 4:
                raise ValueError(f"{path}: not an IDX file (only {len(head)} bytes, header "
                                 f"needs 4)")
            zero, code, ndim = struct.unpack(">HBB", head)
            if zero != 0:
                raise ValueError(f"{path}: bad IDX magic number: expected the first two bytes "
                                 f"to be 00 00, found {head[:2].hex(' ')}")
            if code not in IDX_DTYPES:
                known = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
                raise ValueError(f"{path}: unknown IDX data type 0x{code:02X} (expected one "
                                 f"of {known})")
            sizes = f.read(4 * ndim)
            if len(sizes) < 4 * ndim:
                raise ValueError(f"{path}: truncated IDX header: expected {4 + 4 * ndim} bytes "
                                 f"for {ndim} dimensions, found {4 + len(sizes)}")
            dims = struct.unpack(f">{ndim}I", sizes)
            kind = IDX_DTYPES[code]
            _check_shape(path, dims, kind, shape, dtype)
            expected = math.prod(dims) * kind.itemsize  # Python ints: no overflow
            if expected > max_bytes:
                raise ValueError(f"{path}: the IDX header declares shape {dims} of {kind.name}"
                                 f" ({expected:,} bytes), more than the {max_bytes:,} allowed")
            if not is_gzip and os.path.getsize(path) != 4 + 4 * ndim + expected:
                found = os.path.getsize(path) - 4 - 4 * ndim
                raise ValueError(
                    f"{path}: IDX data size mismatch: expected {expected} bytes of data for "
                    f"the header's shape {dims} of {kind.name}, found {found} bytes (truncated "
                    f"or corrupt file?)")
            arr = onp.empty(dims, kind)
            _read_exactly(f, arr, path)
            if f.read(1):
                raise ValueError(
                    f"{path}: IDX data size mismatch: more than the {expected} bytes of data "
                    f"the header's shape {dims} of {kind.name} declares (corrupt file?)")
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise ValueError(f"{path}: corrupt gzip data ({e})") from e
    return arr.astype(kind.newbyteorder("="))  # native order


def read_cifar10_batch(path, max_records=CIFAR10_MAX_RECORDS):
    """Read one file of the CIFAR-10 binary version.

    Each record is 3073 bytes: the label (0..9), then 1024 red, 1024 green and 1024 blue
    bytes, each a 32x32 image in row-major order. Returns ``x`` ``(N, 32, 32, 3)`` uint8,
    channels-last, and ``y`` ``(N,)`` int64. Raises ``ValueError`` (before reading) if the file
    size is not a positive multiple of 3073 or holds more than ``max_records`` records, and if
    a label is above 9.
    """
    size = os.path.getsize(path)
    if size == 0 or size % CIFAR10_RECORD:
        raise ValueError(
            f"{path}: not a CIFAR-10 binary batch: size {size} bytes is not a positive "
            f"multiple of the {CIFAR10_RECORD}-byte record (1 label + 3x32x32 pixels)")
    if size > max_records * CIFAR10_RECORD:
        raise ValueError(f"{path}: {size // CIFAR10_RECORD} records, more than the "
                         f"{max_records} of a CIFAR-10 batch file")
    records = onp.fromfile(path, dtype=onp.uint8).reshape(-1, CIFAR10_RECORD)
    y = records[:, 0].astype(onp.int64)
    if y.max() > 9:
        bad = int(onp.argmax(y > 9))
        raise ValueError(f"{path}: record {bad} has label {y[bad]}, CIFAR-10 labels are 0..9")
    # planar (N, C, H, W) on disk -> channels-last (N, H, W, C) in memory
    x = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return onp.ascontiguousarray(x), y


def extract_cifar10(archive, dest):
    """Extract the six batch files of the official archive into ``dest/cifar-10-batches-bin/``.

    The archive is read as a stream, once, and only as far as needed. Refused with
    ``ValueError`` before any of its data is decompressed: a member with an absolute or ``..``
    path; a batch file that is a link or device, or larger than a CIFAR-10 batch
    (``CIFAR10_MAX_MEMBER``); any member larger than that; more than ``CIFAR10_MAX_MEMBERS``
    entries or ``CIFAR10_MAX_ARCHIVE`` bytes in all. Every other member (``batches.meta.txt``,
    ``readme.html``, or a file meant for another dataset's folder) is skipped, never written.
    Each batch is written atomically; returns the paths extracted.
    """
    wanted = {f"{CIFAR10_DIR}/{name}" for name in CIFAR10_TRAIN_FILES + (CIFAR10_TEST_FILE,)}
    folder = Path(dest) / CIFAR10_DIR
    done, seen, total = [], 0, 0
    try:
        with tarfile.open(archive, "r|*") as tar:
            for m in tar:
                parts = [p for p in PurePosixPath(m.name).parts if p != "."]
                if m.name.startswith(("/", "\\")) or ".." in parts:
                    raise ValueError(f"{archive}: refusing unsafe member path {m.name!r}")
                if m.size > CIFAR10_MAX_MEMBER:
                    raise ValueError(
                        f"{archive}: member {m.name!r} is {m.size:,} bytes, more than a CIFAR-10 "
                        f"batch ({CIFAR10_MAX_MEMBER:,}); not the CIFAR-10 archive")
                seen, total = seen + 1, total + 512 + m.size
                if seen > CIFAR10_MAX_MEMBERS or total > CIFAR10_MAX_ARCHIVE:
                    raise ValueError(f"{archive}: more than {CIFAR10_MAX_MEMBERS} entries or "
                                     f"{CIFAR10_MAX_ARCHIVE:,} bytes; not the CIFAR-10 archive")
                name = "/".join(parts)
                if name not in wanted:
                    continue
                if not m.isfile():
                    raise ValueError(f"{archive}: refusing link or special member {m.name!r}")
                folder.mkdir(parents=True, exist_ok=True)
                target = folder / parts[-1]
                with tar.extractfile(m) as src, atomic_write(target) as out:
                    while block := src.read(_CHUNK):
                        out.write(block)
                done.append(target)
                wanted.discard(name)
                if not wanted:
                    break  # everything the loader needs: do not read the rest
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"{archive}: cannot extract ({e})") from e
    return done
