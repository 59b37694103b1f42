"""Hostile input files built in milliseconds: small on disk, gigabytes when inflated.

A deflate stream of zeros restarted with ``Z_FULL_FLUSH`` after every MiB compresses each MiB
to the same ~1 KB, so a bomb of any size is that piece repeated: nothing is ever compressed
(or held in memory) at full size. The files are valid (CRCs and sizes right), so a reader that
trusts them really does inflate them. Used by ``tests/test_bounds.py`` and
``benchmarks/input_bombs.py``.
"""

import struct
import tarfile
import zlib

import numpy as np

MIB = 1 << 20
_ZEROS = bytes(MIB)


class Deflated:
    """Raw deflate of ``prefix + n_zeros * b"\\0" + suffix``, with its CRC-32 and sizes."""

    def __init__(self, prefix, n_zeros, suffix=b""):
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        head = c.compress(prefix) + c.flush(zlib.Z_FULL_FLUSH)
        whole, rest = divmod(n_zeros, MIB)
        piece = c.compress(_ZEROS) + c.flush(zlib.Z_FULL_FLUSH) if whole else b""
        tail = c.compress(bytes(rest) + suffix) + c.flush()
        self.data = head + piece * whole + tail
        crc = zlib.crc32(prefix)
        for _ in range(whole):
            crc = zlib.crc32(_ZEROS, crc)
        self.crc = zlib.crc32(bytes(rest) + suffix, crc)
        self.size = len(prefix) + n_zeros + len(suffix)


def write_gzip(path, prefix, n_zeros, suffix=b""):
    """A gzip file of ``prefix``, ``n_zeros`` zero bytes, ``suffix``."""
    d = Deflated(prefix, n_zeros, suffix)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    trailer = struct.pack("<II", d.crc, d.size & 0xFFFFFFFF)
    with open(path, "wb") as f:
        f.write(header + d.data + trailer)
    return path


def write_zip(path, members):
    """A zip archive; ``members`` maps name -> bytes (stored) or ``Deflated`` (method 8)."""
    local, central = bytearray(), bytearray()
    for name, content in members.items():
        if isinstance(content, Deflated):
            method, data, crc, size = 8, content.data, content.crc, content.size
        else:
            method, data, crc, size = 0, bytes(content), zlib.crc32(content), len(content)
        assert size < 1 << 32 and len(data) < 1 << 32, "no zip64 here"
        raw = name.encode()
        offset = len(local)
        local += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0x21, crc,
                             len(data), size, len(raw), 0) + raw + data
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0x21,
                               crc, len(data), size, len(raw), 0, 0, 0, 0, 0, offset) + raw
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central),
                      len(local), 0)
    with open(path, "wb") as f:
        f.write(bytes(local) + bytes(central) + end)
    return path


def npy_header(dtype, shape):
    """The ``.npy`` (version 1.0) header of an array, without the array."""
    text = repr({"descr": np.dtype(dtype).str, "fortran_order": False, "shape": tuple(shape)})
    pad = 64 - (10 + len(text) + 1) % 64
    text = text + " " * pad + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin1")


def zip_members(path):
    """The raw member bytes of an (uncompressed) ``.npz``: name -> bytes."""
    import zipfile

    with zipfile.ZipFile(path) as z:
        return {info.filename: z.read(info.filename) for info in z.infolist()}


def checkpoint_bomb_extra_member(path, checkpoint, n_bytes):
    """A valid checkpoint plus one deflated member of ``n_bytes`` that its index does not list."""
    members = zip_members(checkpoint)
    members["params/zzz.npy"] = Deflated(npy_header("u1", (n_bytes,)), n_bytes)
    return write_zip(path, members)


def checkpoint_bomb_listed_member(path, checkpoint, n_bytes):
    """A checkpoint whose ``params/head.w`` is ``n_bytes`` of float32 zeros, listed so in its
    index: consistent with itself, but not with its own model config."""
    import json

    members = zip_members(checkpoint)
    shape = (n_bytes // 4 // 64, 64)
    meta = json.loads(_meta_text(members["meta.npy"]))
    meta["arrays"]["params/head.w"]["shape"] = list(shape)
    members["meta.npy"] = _meta_npy(json.dumps(meta, sort_keys=True))
    members["params/head.w.npy"] = Deflated(npy_header("<f4", shape), shape[0] * shape[1] * 4)
    return write_zip(path, members)


def checkpoint_bomb_meta(path, checkpoint, n_chars):
    """A checkpoint whose ``meta`` entry is a string of ``n_chars`` (4 bytes each), deflated."""
    members = zip_members(checkpoint)
    members["meta.npy"] = Deflated(npy_header(f"<U{n_chars}", ()), 4 * n_chars)
    return write_zip(path, members)


def _meta_text(npy):
    import io

    return str(np.load(io.BytesIO(npy), allow_pickle=False)[()])


def _meta_npy(text):
    import io

    buf = io.BytesIO()
    np.save(buf, np.array(text), allow_pickle=False)
    return buf.getvalue()


def idx_gzip_bomb(path, n_zeros, shape=(60000, 28, 28)):
    """``train-images-idx3-ubyte.gz``: an MNIST header, then ``n_zeros`` bytes of pixels."""
    header = struct.pack(">HBB", 0, 0x08, len(shape)) + struct.pack(f">{len(shape)}I", *shape)
    return write_gzip(path, header, n_zeros)


CIFAR_RECORD = 3073


def cifar_tar_bomb(path, n_records, extra_members=None):
    """``cifar-10-binary.tar.gz`` whose ``data_batch_1.bin`` holds ``n_records`` all-zero
    records (valid: label 0, black image); the other five batches hold one record each.
    ``extra_members`` (name -> bytes) are appended, e.g. a path outside the CIFAR folder."""
    import io

    def member(name, size):
        info = tarfile.TarInfo(name)
        info.size, info.mode = size, 0o644
        return info.tobuf(format=tarfile.GNU_FORMAT)

    size = n_records * CIFAR_RECORD
    prefix = member("cifar-10-batches-bin/data_batch_1.bin", size)
    pad = -size % 512
    rest = io.BytesIO()
    names = [f"data_batch_{i}.bin" for i in range(2, 6)] + ["test_batch.bin"]
    small = {f"cifar-10-batches-bin/{n}": bytes(CIFAR_RECORD) for n in names}
    for name, content in {**small, **(extra_members or {})}.items():
        rest.write(member(name, len(content)) + content + bytes(-len(content) % 512))
    rest.write(bytes(1024))  # end of archive
    return write_gzip(path, prefix, size + pad, rest.getvalue())


# -- building each bomb where a loader looks for it, and measuring a loader on it -------------

def _idx(shape, dtype_code=0x08):
    return struct.pack(">HBB", 0, dtype_code, len(shape)) + struct.pack(f">{len(shape)}I", *shape)


def build(kind, directory, n_bytes):
    """Write bomb ``kind`` of about ``n_bytes`` inflated into ``directory``.

    Returns ``(file, code)``: the bomb's path and the Python statement that loads it the way
    a user would (``minicoat evaluate`` / ``train`` reach the same functions).
    """
    from pathlib import Path

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    if kind.startswith("checkpoint"):
        import minicoat as mc

        config = mc.config("coatnet-digits")
        params, state = mc.init_params(config, 0)
        base = d / "base.npz"
        mc.save_checkpoint(base, params, state, config)
        path = d / "checkpoint.npz"
        make = {"checkpoint-extra-member": checkpoint_bomb_extra_member,
                "checkpoint-listed-member": checkpoint_bomb_listed_member,
                "checkpoint-meta": lambda p, c, n: checkpoint_bomb_meta(p, c, n // 4)}[kind]
        make(path, base, n_bytes)
        base.unlink()
        return path, f"import minicoat as mc; mc.load_checkpoint({str(path)!r})"
    if kind == "idx-gzip":
        mnist = d / "mnist"
        mnist.mkdir(exist_ok=True)
        path = idx_gzip_bomb(mnist / "train-images-idx3-ubyte.gz", n_bytes)
        (mnist / "train-labels-idx1-ubyte").write_bytes(_idx((60000,)) + bytes(60000))
        (mnist / "t10k-images-idx3-ubyte").write_bytes(_idx((10, 28, 28)) + bytes(7840))
        (mnist / "t10k-labels-idx1-ubyte").write_bytes(_idx((10,)) + bytes(10))
        return path, (f"from minicoat.datasets import load_dataset; "
                      f"load_dataset('mnist', data_dir={str(d)!r})")
    if kind == "cifar-archive":
        path = cifar_tar_bomb(d / "cifar-10-binary.tar.gz", n_bytes // CIFAR_RECORD)
        return path, (f"from minicoat.datasets import load_cifar10; "
                      f"load_cifar10(data_dir={str(d)!r})")
    raise ValueError(f"unknown bomb {kind!r}")


KINDS = ("checkpoint-extra-member", "checkpoint-listed-member", "checkpoint-meta", "idx-gzip",
         "cifar-archive")

_CHILD = """
import resource, sys


def peak_mib():
    # VmHWM: the peak RSS of this process image (ru_maxrss would carry over the parent's
    # peak across fork + exec, hiding any growth below the size of the process that ran us)
    try:
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmHWM:")) / 1024
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


import minicoat
base = peak_mib()
try:
    {code}
    outcome = "loaded"
except BaseException as err:
    kind = "ValueError" if isinstance(err, ValueError) else type(err).__name__
    outcome = kind + ": " + str(err).splitlines()[0][:300]
print("\\nRESULT", base, peak_mib(), outcome)
"""


def measure(code, env=None, timeout=300):
    """Run ``code`` in a fresh Python after ``import minicoat``; return a dict with the peak
    RSS in MiB after the imports (``base``), at the end (``peak``), their difference
    (``grown``) and the ``outcome`` (``"loaded"`` or the exception's first line)."""
    import os
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", _CHILD.format(code=code)],
                            capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, **(env or {})})
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"the child failed: {result.stderr[-2000:]}"
    _, base, peak, outcome = lines[-1].split(" ", 3)
    base, peak = float(base), float(peak)
    return {"base": base, "peak": peak, "grown": peak - base, "outcome": outcome}


def disk_usage(directory, skip=()):
    """Bytes in the files under ``directory``, except those named in ``skip``."""
    from pathlib import Path

    return sum(p.stat().st_size for p in Path(directory).rglob("*")
               if p.is_file() and p.name not in skip)
