"""Tests for minicoat.datasets: splits, formats, downloads, augmentation. No network access.

The IDX and CIFAR-10 fixtures are written here by hand, independently of the readers, so a
reader that misunderstands the format cannot agree with a writer sharing its mistake.
"""

import gzip
import hashlib
import struct
import tarfile
import warnings

import numpy as np
import pytest

from minicoat import datasets as D
from minicoat.datasets.shapes import _stencil

# --------------------------------------------------------------------------------------------
# Fixture writers
# --------------------------------------------------------------------------------------------

_IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(np.int16): 0x0B,
              np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D, np.dtype(np.float64): 0x0E}


def idx_bytes(a):
    a = np.asarray(a)
    header = struct.pack(">HBB", 0, _IDX_CODES[a.dtype], a.ndim)
    header += struct.pack(f">{a.ndim}I", *a.shape)
    return header + a.astype(a.dtype.newbyteorder(">")).tobytes()


def write_idx(path, a, compress=False):
    data = idx_bytes(a)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def cifar_bytes(x, y):
    """Records: label byte, then the R plane, G plane, B plane, each 32x32 row-major."""
    out = bytearray()
    for img, label in zip(x, y, strict=True):
        out.append(int(label))
        for c in range(3):
            out += img[:, :, c].tobytes()
    return bytes(out)


def fake_mnist(tmp_path, n_train=20, n_test=10, compress=(False, True, False, True), sub=None):
    rng = np.random.default_rng(1)
    d = tmp_path / sub if sub else tmp_path
    d.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(n_train, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test, dtype=np.uint8) * 3) % 10,
    }
    for (name, a), gz in zip(arrays.items(), compress, strict=True):
        write_idx(d / (name + (".gz" if gz else "")), a, compress=gz)
    return arrays


def fake_cifar(n_per_file=2, seed=2):
    """Six batches (5 train, 1 test) of random images; image 0 of batch 1 has known pixels."""
    rng = np.random.default_rng(seed)
    batches = {}
    for name in D.CIFAR10_TRAIN_FILES + (D.CIFAR10_TEST_FILE,):
        x = rng.integers(0, 256, (n_per_file, 32, 32, 3), dtype=np.uint8)
        y = rng.integers(0, 10, n_per_file).astype(np.int64)
        batches[name] = (x, y)
    x0 = batches["data_batch_1.bin"][0]
    x0[0, 0, 0] = (10, 20, 30)  # top-left pixel: R, G, B
    x0[0, 1, 2] = (200, 100, 50)  # row 1, column 2: checks row-major order too
    return batches


# --------------------------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------------------------

def test_digits_shapes_dtypes_and_normalisation():
    d = D.load_dataset("digits")
    assert d.image_shape == (8, 8, 1) and d.num_classes == 10 and d.classes[3] == "3"
    for x, y in ((d.x_train, d.y_train), (d.x_val, d.y_val), (d.x_test, d.y_test)):
        assert x.dtype == np.float32 and x.ndim == 4 and x.shape[1:] == (8, 8, 1)
        assert y.dtype == np.int64 and y.shape == (len(x),)
        assert y.min() >= 0 and y.max() <= 9
    assert len(d.x_train) + len(d.x_val) + len(d.x_test) == 1797
    assert (len(d.x_train), len(d.x_val), len(d.x_test)) == (1294, 144, 359)
    np.testing.assert_allclose(d.x_train.mean(axis=(0, 1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(d.x_train.std(axis=(0, 1, 2)), 1, atol=1e-5)
    assert d.mean.shape == d.std.shape == (1,) and d.mean.dtype == np.float32
    assert 0 < d.mean[0] < 1  # statistics of pixels scaled to [0, 1]
    assert not d.flip and d.crop_pad == 1
    assert "train 1294" in d.summary() and "(8, 8, 1)" in d.summary()
    # stratified: every class in every split, test counts within 1 of each other
    for y in (d.y_train, d.y_val, d.y_test):
        counts = np.bincount(y, minlength=10)
        assert counts.min() > 0
    assert np.ptp(np.bincount(d.y_test)) <= 2


def _raw_rows(d, x):
    raw = np.rint((x * d.std + d.mean) * 16).astype(np.int64)  # undo normalisation
    return [r.tobytes() for r in raw.reshape(len(x), -1)]


def test_digits_splits_are_a_fixed_partition():
    d1 = D.load_dataset("digits", seed=0)
    d2 = D.load_dataset("digits", seed=123)  # the training seed must not move the splits
    for a in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(d1, a), getattr(d2, a))
    # the three splits together are exactly the carried data (as a multiset of rows)
    x, _ = D.load_digits_raw()
    together = sum((_raw_rows(d1, s) for s in (d1.x_train, d1.x_val, d1.x_test)), [])
    assert sorted(together) == sorted(r.tobytes() for r in x.astype(np.int64).reshape(1797, -1))
    # the 1797 images are all distinct, so disjoint rows mean disjoint splits
    train, val, test = (set(_raw_rows(d1, s)) for s in (d1.x_train, d1.x_val, d1.x_test))
    assert len(train | val | test) == 1797
    assert not (train & val) and not (train & test) and not (val & test)


def test_digits_subsets_and_val_fraction():
    d = D.load_dataset("digits", train_subset=100, test_subset=50, val_fraction=0.2)
    assert (len(d.x_train), len(d.x_test)) == (100, 50)
    assert len(d.x_val) == round(0.2 * (1797 - 359))
    assert np.bincount(d.y_train, minlength=10).min() >= 9  # ~10 per class
    full = D.load_dataset("digits", val_fraction=0.2)
    # a subset is a prefix of the full train split (up to normalisation)
    np.testing.assert_array_equal(d.y_train, full.y_train[:100])
    with pytest.raises(ValueError, match="train_subset"):
        D.load_dataset("digits", train_subset=10**6)


def test_stratified_order_prefixes_are_balanced():
    y = np.repeat(np.arange(4), [100, 50, 30, 20])
    order = D.stratified_order(y)
    assert sorted(order.tolist()) == list(range(200))
    counts = np.bincount(y[order[:40]], minlength=4)
    np.testing.assert_allclose(counts, [20, 10, 6, 4], atol=1)
    np.testing.assert_array_equal(order, D.stratified_order(y))


def test_unknown_dataset_lists_choices():
    with pytest.raises(ValueError, match="cifar10") as e:
        D.load_dataset("imagenet")
    assert all(name in str(e.value) for name in D.DATASETS)


# --------------------------------------------------------------------------------------------
# shapes
# --------------------------------------------------------------------------------------------

def test_shapes_deterministic_balanced_and_rule_holds():
    x, y, meta = D.make_shapes(400, seed=3, return_meta=True)
    x2, y2 = D.make_shapes(400, seed=3)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    assert not np.array_equal(x, D.make_shapes(400, seed=4)[0])
    assert x.shape == (400, 16, 16, 1) and x.dtype == np.float32 and y.dtype == np.int64
    assert 0 <= x.min() and x.max() <= 1
    np.testing.assert_array_equal(np.bincount(y), [100, 100, 100, 100])
    # re-derive the label from the objects' metadata
    kinds, tops, sizes = meta["kinds"], meta["tops"], meta["sizes"]
    same = kinds[:, 0] == kinds[:, 1]
    assert (tops[:, 0, 0] < tops[:, 1, 0]).all()  # object 0 is the upper one
    upper_left = tops[:, 0, 1] < tops[:, 1, 1]
    np.testing.assert_array_equal(y, 2 * same + upper_left)
    # objects far apart: centres >= 5 pixels apart in each axis
    centre = tops + (sizes[:, :, None] - 1) / 2
    assert (np.abs(centre[:, 0] - centre[:, 1]) >= 5).all()
    # each bit is balanced on its own, and "different" pairs use all kinds
    assert same.mean() == 0.5 and upper_left.mean() == 0.5
    assert set(kinds[~same].ravel().tolist()) == {0, 1, 2}


def test_shapes_pixels_match_metadata():
    x, _, meta = D.make_shapes(50, seed=5, noise=0.0, return_meta=True)
    for i in range(50):
        inside = np.zeros((16, 16), bool)
        for j in range(2):
            (r, c), s = meta["tops"][i, j], meta["sizes"][i, j]
            box = x[i, r:r + s, c:c + s, 0]
            expected = meta["intensity"][i, j] * _stencil(meta["kinds"][i, j], s)
            np.testing.assert_allclose(box, expected)
            inside[r:r + s, c:c + s] = True
        assert (x[i, ~inside, 0] == 0).all()
    # the three kinds really look different
    masks = [_stencil(k, 3) for k in range(3)]
    assert len({m.tobytes() for m in masks}) == 3


def test_shapes_dataset():
    d = D.load_dataset("shapes")
    assert (len(d.x_train), len(d.x_val), len(d.x_test)) == (4500, 500, 1000)
    assert d.image_shape == (16, 16, 1) and d.num_classes == 4
    assert not d.flip and d.crop_pad == 0
    np.testing.assert_allclose(d.x_train.mean(), 0, atol=1e-4)
    other = D.load_dataset("shapes", seed=1, train_subset=100)
    assert len(other.x_train) == 100 and not np.array_equal(other.y_test, d.y_test)


# --------------------------------------------------------------------------------------------
# IDX and MNIST
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_read_idx_roundtrip(tmp_path, compress, dtype):
    a = (np.arange(2 * 3 * 4) - 7).reshape(2, 3, 4)
    a = (a if dtype != np.uint8 else a + 7).astype(dtype)
    # the name says nothing: gzip is detected from the bytes
    path = write_idx(tmp_path / "blob", a, compress=compress)
    b = D.read_idx(path)
    assert b.dtype == a.dtype and b.dtype.isnative and b.shape == a.shape
    np.testing.assert_array_equal(a, b)


def test_read_idx_rejects_bad_files(tmp_path):
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    good = idx_bytes(a)
    cases = {
        "truncated": (good[:-5], "expected 24 bytes.*found 19"),
        "too_long": (good + b"\0", "found 25"),
        "bad_magic": (b"\x01\x02" + good[2:], "magic"),
        "bad_type": (good[:2] + b"\x07" + good[3:], "type"),
        "tiny": (b"\0\0", "header"),
    }
    for name, (data, msg) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ValueError, match=msg) as e:
            D.read_idx(path)
        assert name in str(e.value)  # the message names the file
    path = tmp_path / "truncated.gz"
    path.write_bytes(gzip.compress(good[:-1]))
    with pytest.raises(ValueError, match="size mismatch"):
        D.read_idx(path)


@pytest.mark.parametrize("sub", [None, "mnist"])
def test_load_mnist_from_fixture(tmp_path, sub):
    arrays = fake_mnist(tmp_path, sub=sub)
    x_tr, y_tr, x_te, y_te = D.load_mnist(tmp_path, "mnist")
    assert x_tr.shape == (20, 28, 28, 1) and x_tr.dtype == np.uint8 and y_tr.dtype == np.int64
    np.testing.assert_array_equal(x_tr[..., 0], arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(y_te, arrays["t10k-labels-idx1-ubyte"])
    np.testing.assert_array_equal(x_te[..., 0], arrays["t10k-images-idx3-ubyte"])

    d = D.load_dataset("mnist", data_dir=tmp_path)
    assert (len(d.x_train), len(d.x_val), len(d.x_test)) == (18, 2, 10)
    assert d.image_shape == (28, 28, 1) and d.crop_pad == 2 and not d.flip
    np.testing.assert_allclose(d.x_train.mean(), 0, atol=1e-5)
    np.testing.assert_allclose(d.x_train.std(), 1, atol=1e-4)
    # the train + val images are exactly the official training images
    raw = np.rint((np.concatenate([d.x_train, d.x_val]) * d.std + d.mean) * 255)
    got = sorted(r.tobytes() for r in raw.astype(np.uint8).reshape(20, -1))
    assert got == sorted(r.tobytes() for r in arrays["train-images-idx3-ubyte"].reshape(20, -1))
    sub_d = D.load_dataset("mnist", data_dir=tmp_path, train_subset=5, test_subset=4)
    assert (len(sub_d.x_train), len(sub_d.x_test)) == (5, 4)


def test_fashion_mnist_uses_its_own_folder(tmp_path):
    fake_mnist(tmp_path, sub="fashion-mnist")
    d = D.load_dataset("fashion-mnist", data_dir=tmp_path)
    assert d.classes[9] == "Ankle boot" and len(d.x_test) == 10
    with pytest.raises(FileNotFoundError):
        D.load_dataset("mnist", data_dir=tmp_path)


def test_missing_mnist_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte") as e:
        D.load_dataset("mnist", data_dir=tmp_path)
    assert "download" in str(e.value) and str(tmp_path) in str(e.value)
    fake_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte") as e:
        D.load_mnist(tmp_path)
    assert "train-images" not in str(e.value)  # only the missing file is named


def test_mnist_count_mismatch(tmp_path):
    fake_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(19, np.uint8), compress=True)
    with pytest.raises(ValueError, match="20 images but .* 19 labels"):
        D.load_mnist(tmp_path)


# --------------------------------------------------------------------------------------------
# CIFAR-10
# --------------------------------------------------------------------------------------------

def _write_cifar_dir(directory, batches):
    directory.mkdir(parents=True, exist_ok=True)
    for name, (x, y) in batches.items():
        (directory / name).write_bytes(cifar_bytes(x, y))


def test_read_cifar10_batch_channel_order(tmp_path):
    batches = fake_cifar()
    x_in, y_in = batches["data_batch_1.bin"]
    path = tmp_path / "b.bin"
    path.write_bytes(cifar_bytes(x_in, y_in))
    x, y = D.read_cifar10_batch(path)
    assert x.shape == (2, 32, 32, 3) and x.dtype == np.uint8 and y.dtype == np.int64
    assert tuple(x[0, 0, 0]) == (10, 20, 30)
    assert tuple(x[0, 1, 2]) == (200, 100, 50)
    np.testing.assert_array_equal(x, x_in)
    np.testing.assert_array_equal(y, y_in)
    # and against the byte layout directly: R plane first, then G, then B
    raw = path.read_bytes()
    assert raw[1] == 10 and raw[1 + 1024] == 20 and raw[1 + 2048] == 30
    assert raw[1 + 32 + 2] == 200


def test_read_cifar10_batch_rejects_bad_files(tmp_path):
    path = tmp_path / "short.bin"
    path.write_bytes(bytes(3073 + 5))
    with pytest.raises(ValueError, match="3073"):
        D.read_cifar10_batch(path)
    path = tmp_path / "label.bin"
    path.write_bytes(bytes([10]) + bytes(3072))
    with pytest.raises(ValueError, match="label 10"):
        D.read_cifar10_batch(path)


def test_load_cifar10_from_folder(tmp_path):
    batches = fake_cifar()
    _write_cifar_dir(tmp_path / "cifar-10-batches-bin", batches)
    x_tr, y_tr, x_te, y_te = D.load_cifar10(tmp_path)
    assert x_tr.shape == (10, 32, 32, 3) and x_te.shape == (2, 32, 32, 3)
    np.testing.assert_array_equal(x_tr[:2], batches["data_batch_1.bin"][0])
    np.testing.assert_array_equal(x_tr[8:], batches["data_batch_5.bin"][0])
    np.testing.assert_array_equal(y_te, batches["test_batch.bin"][1])
    d = D.load_dataset("cifar10", data_dir=tmp_path)
    assert (len(d.x_train), len(d.x_val), len(d.x_test)) == (9, 1, 2)
    assert d.flip and d.crop_pad == 4 and d.classes[0] == "airplane" and d.mean.shape == (3,)
    np.testing.assert_allclose(d.x_train.mean(axis=(0, 1, 2)), 0, atol=1e-5)


def test_load_cifar10_from_archive(tmp_path):
    batches = fake_cifar()
    staging = tmp_path / "staging"
    _write_cifar_dir(staging / "cifar-10-batches-bin", batches)
    data = tmp_path / "data"
    data.mkdir()
    with tarfile.open(data / "cifar-10-binary.tar.gz", "w:gz") as tar:
        tar.add(staging / "cifar-10-batches-bin", arcname="cifar-10-batches-bin")
    x_tr, _, _, _ = D.load_cifar10(data)
    assert tuple(x_tr[0, 0, 0]) == (10, 20, 30)
    assert (data / "cifar-10-batches-bin" / "test_batch.bin").is_file()


def test_unsafe_archive_is_refused(tmp_path):
    evil = tmp_path / "evil.bin"
    evil.write_bytes(b"x")
    data = tmp_path / "data"
    data.mkdir()
    with tarfile.open(data / "cifar-10-binary.tar.gz", "w:gz") as tar:
        tar.add(evil, arcname="../escaped.bin")
    with pytest.raises(ValueError, match="unsafe"):
        D.load_cifar10(data)
    assert not (tmp_path / "escaped.bin").exists()


def test_missing_cifar_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="data_batch_1.bin") as e:
        D.load_dataset("cifar10", data_dir=tmp_path)
    assert "cifar-10-binary.tar.gz" in str(e.value)


# --------------------------------------------------------------------------------------------
# download_file (file:// URLs only: tests never touch the network)
# --------------------------------------------------------------------------------------------

def test_download_file_verifies_checksum(tmp_path):
    src = tmp_path / "src.bin"
    payload = bytes(range(256)) * 100
    src.write_bytes(payload)
    sha = hashlib.sha256(payload).hexdigest()
    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a verified download must not warn
        dest = D.download_file(src.as_uri(), out / "good.bin", sha)
    assert dest.read_bytes() == payload
    with pytest.raises(ValueError, match="checksum mismatch"):
        D.download_file(src.as_uri(), out / "bad.bin", "0" * 64)
    assert not (out / "bad.bin").exists()
    assert sorted(p.name for p in out.iterdir()) == ["good.bin"]  # no leftover temp files
    with pytest.warns(UserWarning, match="could not be verified"):
        D.download_file(src.as_uri(), out / "unverified.bin", None)
    assert (out / "unverified.bin").read_bytes() == payload


def test_download_table_is_well_formed():
    for kind, files in D.DOWNLOADS.items():
        for name, remote in files.items():
            assert remote.url.endswith("/" + name), (kind, name)
            assert remote.sha256 is None or len(remote.sha256) == 64


# --------------------------------------------------------------------------------------------
# augment and iterate_minibatches
# --------------------------------------------------------------------------------------------

def test_augment_identity_shape_and_determinism():
    x = np.random.default_rng(0).normal(size=(6, 5, 7, 3)).astype(np.float32)
    same = D.augment(x, np.random.default_rng(1))
    np.testing.assert_array_equal(same, x)
    assert same is not x
    a = D.augment(x, np.random.default_rng(2), crop_pad=2, flip=True)
    b = D.augment(x, np.random.default_rng(2), crop_pad=2, flip=True)
    assert a.shape == x.shape and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)


def test_augment_flip_flips_exactly():
    x = np.random.default_rng(0).normal(size=(64, 4, 5, 2)).astype(np.float32)
    out = D.augment(x, np.random.default_rng(3), flip=True)
    flipped = np.array([np.array_equal(o, xi[:, ::-1]) for o, xi in zip(out, x, strict=True)])
    kept = np.array([np.array_equal(o, xi) for o, xi in zip(out, x, strict=True)])
    assert (flipped ^ kept).all()  # each image is exactly itself or its mirror image
    assert 10 < flipped.sum() < 54


def test_augment_crop_is_a_shifted_window():
    x = np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4, 1) + 1  # no zeros inside
    out = D.augment(x, np.random.default_rng(4), crop_pad=1)
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    for o, p in zip(out, padded, strict=True):
        windows = [p[i:i + 4, j:j + 4] for i in range(3) for j in range(3)]
        assert any(np.array_equal(o, w) for w in windows)
    shifts = D.augment(np.repeat(x[:1], 200, axis=0), np.random.default_rng(5), crop_pad=1)
    assert len({s.tobytes() for s in shifts}) == 9  # all 9 offsets occur


def test_iterate_minibatches_covers_each_example_once():
    x = np.arange(23)[:, None].astype(np.float32)
    y = np.arange(23)
    batches = list(D.iterate_minibatches(x, y, 5, rng=np.random.default_rng(0)))
    assert [len(b[1]) for b in batches] == [5, 5, 5, 5, 3]
    seen = np.concatenate([b[1] for b in batches])
    assert sorted(seen.tolist()) == list(range(23)) and seen.tolist() != list(range(23))
    for xb, yb in batches:
        np.testing.assert_array_equal(xb[:, 0], yb)  # pairs stay together
    ordered = [b[1] for b in D.iterate_minibatches(x, y, 5, shuffle=False, drop_last=True)]
    assert np.concatenate(ordered).tolist() == list(range(20))
