"""Reading ``.npz`` archives member by member, in bounded memory and without pickle.

``onp.load`` trusts an archive: a member's ``.npy`` header says how much to allocate, and a
deflated member of a few MB can inflate to GBs before anything is checked. ``NpzArchive``
reads only the members asked for, each against the shape and dtype the caller expects: the
zip directory's declared size and the ``.npy`` header must both agree with them before the
array is allocated, the data is inflated as a stream straight into that array, and one byte
more than declared is an error. Object (pickled) arrays are refused.
"""

import math
import zipfile
import zlib

import numpy as onp
import numpy.lib.format as npy_format

MAX_HEADER = 10000  # bytes of .npy header accepted (numpy's own default limit)
_CHUNK = 1 << 20


class NpzError(ValueError):
    """An archive, or one of its members, is not what it must be (the message says why)."""


class NpzArchive:
    """An open ``.npz`` (zip) archive; ``members`` maps each key (``"params/head.w"``) to its
    zip entry. Use as a context manager; ``read`` one member at a time."""

    def __init__(self, path, max_members=100_000):
        self.path = path
        try:
            self._zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as err:
            raise NpzError(f"{path} is not a valid minicoat checkpoint (truncated or corrupt?): "
                           f"{type(err).__name__}: {err}") from err
        infos = self._zip.infolist()
        if len(infos) > max_members:
            self.close()
            raise NpzError(f"{path} holds {len(infos)} entries, more than {max_members}")
        self.members = {}
        for info in infos:
            if not info.filename.endswith(".npy"):
                self.close()
                raise NpzError(f"{path}: entry {info.filename!r} is not an .npy array")
            self.members[info.filename[:-4]] = info

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self._zip.close()

    def read(self, key, shape=None, dtype=None, max_bytes=None):
        """Member ``key`` as an array, checked before it is allocated.

        With ``shape`` and ``dtype`` the member must be exactly that array; with ``max_bytes``
        (and no shape) its data may be any shape of ``dtype`` up to that size.
        """
        info = self.members[key]
        where = f"{self.path}: {key}"
        if shape is None:
            limit, allowed = max_bytes, f"the {max_bytes:,} bytes allowed"
        else:
            limit = math.prod(shape) * onp.dtype(dtype).itemsize
            allowed = f"an array of shape {tuple(shape)} and dtype {onp.dtype(dtype)} takes"
        if info.file_size > limit + 10 + MAX_HEADER:
            raise NpzError(f"{where} declares {info.file_size:,} bytes in the archive, more "
                           f"than {allowed}")
        try:
            with self._zip.open(info) as f:
                found_shape, fortran, found_dtype = _read_header(f, where)
                if found_dtype.hasobject:
                    raise NpzError(
                        f"{self.path} contains pickled (object) arrays; minicoat refuses to load "
                        f"pickled checkpoints for safety (unpickling can run arbitrary code)")
                if shape is not None and (found_shape, found_dtype) != (tuple(shape), dtype):
                    raise NpzError(f"{where} has shape {found_shape} and dtype {found_dtype}; "
                                   f"the metadata expects {tuple(shape)} and {onp.dtype(dtype)}")
                nbytes = math.prod(found_shape) * found_dtype.itemsize
                if shape is None and nbytes > max_bytes:
                    raise NpzError(f"{where} is {nbytes:,} bytes, more than the {max_bytes:,} "
                                   f"allowed")
                if info.file_size != f.tell() + nbytes:
                    raise NpzError(f"{where} declares {info.file_size:,} bytes in the archive; "
                                   f"its header says {f.tell() + nbytes:,}")
                out = onp.empty(found_shape[::-1] if fortran else found_shape, found_dtype)
                view, filled = memoryview(out.reshape(-1)).cast("B"), 0
                while filled < nbytes:
                    n = f.readinto(view[filled:filled + _CHUNK])
                    if not n:
                        raise NpzError(f"{where} ends after {filled} of its {nbytes} bytes")
                    filled += n
                if f.read(1):
                    raise NpzError(f"{where} holds more data than its header declares")
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error, NotImplementedError) as err:
            raise NpzError(f"{self.path} is not a valid minicoat checkpoint (truncated or "
                           f"corrupt?): {key}: {type(err).__name__}: {err}") from err
        return out.T if fortran else out


def _read_header(f, where):
    """``(shape, fortran_order, dtype)`` from an ``.npy`` header (versions 1.0 and 2.0)."""
    try:
        version = npy_format.read_magic(f)
        if version == (1, 0):
            return npy_format.read_array_header_1_0(f, max_header_size=MAX_HEADER)
        if version == (2, 0):
            return npy_format.read_array_header_2_0(f, max_header_size=MAX_HEADER)
    except (ValueError, SyntaxError, TypeError) as err:
        raise NpzError(f"{where} is not a valid .npy array: {err}") from err
    raise NpzError(f"{where} has .npy format version {version}; expected 1.0 or 2.0")
