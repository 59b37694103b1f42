"""No input file can take the machine: every reader is bounded before it reads.

The bombs (``bombs.py``) are a few hundred KB on disk and inflate to 512 MiB; each is loaded in
a fresh Python process that reports its peak RSS, so the test sees what a user's machine would.
``benchmarks/input_bombs.py`` measures the same bombs at the sizes of issue 15 (GBs).
"""

import gzip
import hashlib
import struct
import tarfile

import bombs
import numpy as np
import pytest

from minicoat import datasets as D

BOMB = 512 << 20  # inflated size of each bomb
GROWTH = {  # what a refused bomb may add to the peak RSS (MiB)
    "checkpoint-extra-member": 32,
    "checkpoint-listed-member": 32,
    "checkpoint-meta": 32,
    "idx-gzip": 47 + 32,  # the (60000, 28, 28) uint8 array its header declares: 47 MB
    "cifar-archive": 32,
}
REFUSAL = {
    "checkpoint-extra-member": "do not match the checkpoint's metadata: missing [], "
                               "unexpected ['params/zzz']",
    "checkpoint-listed-member": "params do not fit config 'coatnet-digits'",
    "checkpoint-meta": "meta declares 536,871,040 bytes in the archive, more than the "
                       "16,777,216 bytes allowed",
    "idx-gzip": "more than the 47040000 bytes of data the header",
    "cifar-archive": "more than a CIFAR-10 batch",
}


@pytest.mark.parametrize("kind", bombs.KINDS)
def test_a_bomb_is_refused_in_bounded_memory_and_disk(kind, tmp_path):
    path, code = bombs.build(kind, tmp_path, BOMB)
    assert path.stat().st_size < 2 << 20  # small on disk
    before = bombs.disk_usage(tmp_path)
    result = bombs.measure(code)
    assert result["outcome"].startswith("ValueError"), result
    assert REFUSAL[kind] in result["outcome"], result
    assert result["grown"] < GROWTH[kind], result
    assert bombs.disk_usage(tmp_path) == before  # nothing extracted or written


def _idx(shape, code=0x08):
    return struct.pack(">HBB", 0, code, len(shape)) + struct.pack(f">{len(shape)}I", *shape)


def test_idx_header_is_checked_before_any_data_is_read(tmp_path):
    huge = tmp_path / "huge.gz"  # a header claiming 4 GB, and no data at all
    huge.write_bytes(gzip.compress(_idx((2**20, 64, 64))))
    with pytest.raises(ValueError, match=r"huge.gz: the IDX header declares .* more than"):
        D.read_idx(huge, max_bytes=1 << 30)
    with pytest.raises(ValueError, match=r"IDX shape \(1048576, 64, 64\), expected \(N, 28, 28\)"):
        D.read_idx(huge, shape=(None, 28, 28))
    plain = tmp_path / "labels"
    plain.write_bytes(_idx((3,)) + bytes(3) + b"extra")
    with pytest.raises(ValueError, match="size mismatch"):
        D.read_idx(plain)
    packed = tmp_path / "labels.gz"
    packed.write_bytes(gzip.compress(_idx((3,)) + bytes(4)))
    with pytest.raises(ValueError, match="more than the 3 bytes"):
        D.read_idx(packed)


def test_mnist_images_must_be_28x28_and_not_too_many(tmp_path):
    d = tmp_path / "mnist"
    d.mkdir()
    (d / "train-images-idx3-ubyte").write_bytes(_idx((2, 27, 27)) + bytes(2 * 27 * 27))
    (d / "train-labels-idx1-ubyte").write_bytes(_idx((2,)) + bytes(2))
    (d / "t10k-images-idx3-ubyte").write_bytes(_idx((1, 28, 28)) + bytes(784))
    (d / "t10k-labels-idx1-ubyte").write_bytes(_idx((1,)) + bytes(1))
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte: IDX shape \(2, 27, 27\)"):
        D.load_mnist(tmp_path)
    big = (D.sources.MNIST_MAX_IMAGES + 1, 28, 28)
    (d / "train-images-idx3-ubyte").write_bytes(gzip.compress(_idx(big)))
    (d / "train-images-idx3-ubyte").rename(d / "train-images-idx3-ubyte.gz")
    with pytest.raises(ValueError, match="more than the 78,400,000 allowed"):
        D.load_mnist(tmp_path)


def test_an_empty_split_is_refused_when_loading(tmp_path):
    d = tmp_path / "mnist"
    d.mkdir()
    (d / "train-images-idx3-ubyte").write_bytes(_idx((2, 28, 28)) + bytes(2 * 784))
    (d / "train-labels-idx1-ubyte").write_bytes(_idx((2,)) + bytes(2))
    (d / "t10k-images-idx3-ubyte").write_bytes(_idx((0, 28, 28)))
    (d / "t10k-labels-idx1-ubyte").write_bytes(_idx((0,)))
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte holds no images"):
        D.load_mnist(tmp_path)


def _tar(path, members, links=()):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, __import__("io").BytesIO(data))
        for name in links:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)


def test_archive_extracts_only_the_batches_into_its_own_folder(tmp_path):
    data = tmp_path / "data"
    (data / "mnist").mkdir(parents=True)
    theirs = data / "mnist" / "train-images-idx3-ubyte"
    theirs.write_bytes(b"another dataset's file")
    batches = {f"cifar-10-batches-bin/{n}": bytes(bombs.CIFAR_RECORD)
               for n in D.CIFAR10_TRAIN_FILES + (D.CIFAR10_TEST_FILE,)}
    _tar(data / D.CIFAR10_ARCHIVE, {"mnist/train-images-idx3-ubyte": b"overwritten!",
                                    "cifar-10-batches-bin/readme.html": b"<html>",
                                    "notes.txt": b"x", **batches})
    x_train, _, x_test, _ = D.load_cifar10(data)
    assert x_train.shape == (5, 32, 32, 3) and x_test.shape == (1, 32, 32, 3)
    assert theirs.read_bytes() == b"another dataset's file"
    assert sorted(p.name for p in data.iterdir()) == ["cifar-10-batches-bin",
                                                      "cifar-10-binary.tar.gz", "mnist"]
    assert sorted(p.name for p in (data / "cifar-10-batches-bin").iterdir()) == sorted(
        D.CIFAR10_TRAIN_FILES + (D.CIFAR10_TEST_FILE,))


def test_archive_links_and_oversized_batches_are_refused(tmp_path):
    _tar(tmp_path / D.CIFAR10_ARCHIVE, {}, links=["cifar-10-batches-bin/data_batch_1.bin"])
    with pytest.raises(ValueError, match="refusing link or special member"):
        D.load_cifar10(tmp_path)
    assert not (tmp_path / "cifar-10-batches-bin" / "data_batch_1.bin").exists()
    big = tmp_path / "data_batch_1.bin"  # sparse: 10001 records cost no disk
    with open(big, "wb") as f:
        f.truncate((D.formats.CIFAR10_MAX_RECORDS + 1) * bombs.CIFAR_RECORD)
    with pytest.raises(ValueError, match="10001 records, more than the 10000"):
        D.read_cifar10_batch(big)


def test_download_is_cut_off_at_the_expected_size(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 5000)
    sha = hashlib.sha256(b"x" * 5000).hexdigest()
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="sends more than the 1,000 bytes expected"):
        D.download_file(src.as_uri(), out / "a.bin", sha, size=1000)
    with pytest.raises(ValueError, match="sent 5,000 bytes, expected 6,000"):
        D.download_file(src.as_uri(), out / "a.bin", sha, size=6000)
    assert list(out.iterdir()) == []  # nothing kept, no temporary file left
    assert D.download_file(src.as_uri(), out / "a.bin", sha, size=5000).stat().st_size == 5000


def test_sparse_bomb_helpers_are_what_they_claim(tmp_path):
    """The bombs are real: the gzip inflates to its size with a valid CRC."""
    path = bombs.write_gzip(tmp_path / "z.gz", b"head", 3 << 20, b"tail")
    with gzip.open(path) as f:
        data = f.read()
    assert len(data) == (3 << 20) + 8 and data[:4] == b"head" and data[-4:] == b"tail"
    assert not np.frombuffer(data[4:-4], np.uint8).any()
