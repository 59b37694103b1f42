"""Downloads: where the MNIST, Fashion-MNIST and CIFAR-10 files live, fetched atomically and
checked against SHA-256 sums (:data:`DOWNLOADS`). Only asked for (``download=True``), never
implicit.
"""

import hashlib
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..files import atomic_write
from .formats import CIFAR10_ARCHIVE


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


DOWNLOAD_MAX_BYTES = 512 << 20  # when a file's size is unknown (the largest here: 170 MB)


def download_file(url, dest, sha256=None, timeout=60, size=None):
    """Download ``url`` to ``dest`` atomically and verify its size and SHA-256.

    The bytes go to a temporary file next to ``dest`` that is renamed into place only once
    complete and verified, so an interrupted or corrupt download never leaves a file that a
    later run would trust. A server that sends more than ``size`` bytes (or, if ``size`` is
    None, more than ``DOWNLOAD_MAX_BYTES``) is cut off at the first byte too many, and one
    that sends fewer than ``size`` is refused. On a size or checksum mismatch the temporary
    file is deleted and ``ValueError`` is raised. With ``sha256=None`` the file is kept but a
    ``UserWarning`` says it could not be verified. Returns ``dest`` as a ``Path``.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    limit = DOWNLOAD_MAX_BYTES if size is None else int(size)
    with atomic_write(dest) as out:  # renamed into place only if the block completes
        h, received = hashlib.sha256(), 0
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            while block := resp.read(min(1 << 20, limit + 1 - received)):
                received += len(block)
                if received > limit:
                    raise ValueError(f"{url} sends more than the {limit:,} bytes expected; "
                                     f"the download was discarded")
                h.update(block)
                out.write(block)
        if size is not None and received != limit:
            raise ValueError(f"{url} sent {received:,} bytes, expected {limit:,}; the "
                             f"download was discarded")
        digest = h.hexdigest()
        if sha256 is None:
            warnings.warn(
                f"no known SHA-256 for {url}: {dest.name} was downloaded but could not be "
                f"verified (its SHA-256 is {digest})", stacklevel=3)
        elif digest != sha256.lower():
            raise ValueError(
                f"checksum mismatch for {url}: expected SHA-256 {sha256}, got {digest}; "
                f"the download was discarded")
    return dest


def _download_all(kind, directory):
    """Download every file of ``DOWNLOADS[kind]`` that is not already in ``directory``."""
    for name, remote in DOWNLOADS[kind].items():
        dest = Path(directory) / name
        if not dest.exists():
            print(f"downloading {remote.url} -> {dest}", flush=True)
            download_file(remote.url, dest, remote.sha256, size=remote.size)

