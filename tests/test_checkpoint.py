"""Checkpoints: bit-exact round trips, atomic writes, and clear errors for bad files."""

import json
import os

import numpy as np
import pytest

from minicoat.checkpoint import load_checkpoint, restore_rng, save_checkpoint
from minicoat.configs import CoAtNetConfig, config
from minicoat.model import init_params
from minicoat.optim import adamw_init, adamw_update
from minicoat.tree import flatten, tree_map

# A small real network: checkpoints are checked against their config when saved and loaded.
CONFIG = config("coatnet-digits", depths=(1, 1, 1, 1, 1), channels=(8, 8, 16, 32, 32),
                head_dim=16)


def make_tree(seed=0, dtype=np.float32):
    """Params and BN state of CONFIG (head.b holding special values) and AdamW state."""
    params, state = init_params(CONFIG, seed, dtype)
    # Bit-exactness includes the values text formats lose: -0.0, NaN, inf, subnormals.
    special = np.array([-0.0, np.nan, np.inf, -np.inf, np.finfo(dtype).smallest_subnormal,
                        1 / 3, 0, 0, 0, 0], dtype)
    params["head"]["b"] = special
    rng = np.random.default_rng(seed)
    state["s1"]["block0"]["norm1"]["mean"] = rng.standard_normal(32).astype(dtype)
    grads = tree_map(lambda p: np.ones_like(p), params)
    _, opt_state = adamw_update(params, grads, adamw_init(params), 1e-3)
    return params, state, opt_state


def assert_bit_exact(a, b):
    flat_a, flat_b = flatten(a), flatten(b)
    assert flat_a.keys() == flat_b.keys()
    for key, x in flat_a.items():
        y = flat_b[key]
        if isinstance(x, int):
            assert type(y) is int and x == y, key
        else:
            assert x.dtype == y.dtype and x.shape == y.shape, key
            assert x.tobytes() == y.tobytes(), key


def test_round_trip_is_bit_exact(tmp_path):
    params, state, opt_state = make_tree()
    rng = np.random.default_rng(1234)
    rng.random(17)  # advance the stream: the checkpoint must capture where it is
    extra = {"epoch": 3, "loss": 0.123456789012345678, "args": {"batch": 32}}
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, params, state, CONFIG, opt_state=opt_state, step=42, rng_state=rng,
                    extra=extra)
    expected_stream = rng.random(10)

    ckpt = load_checkpoint(path, expected_config=CONFIG)
    assert np.isnan(ckpt.params["head"]["b"][1]) and np.signbit(ckpt.params["head"]["b"][0])
    assert_bit_exact(ckpt.params, params)
    assert_bit_exact(ckpt.state, state)
    assert_bit_exact(ckpt.opt_state, opt_state)
    assert ckpt.opt_state["step"] == 1 and type(ckpt.opt_state["step"]) is int
    assert ckpt.config == CONFIG
    assert ckpt.step == 42 and ckpt.extra == extra
    np.testing.assert_array_equal(restore_rng(ckpt.rng_state).random(10), expected_stream)


def test_file_layout_is_plain_npz(tmp_path):
    """Readable by NumPy alone: documented keys, meta a unicode (not object) array."""
    params, state, opt_state = make_tree()
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, params, state, CONFIG, opt_state=opt_state)
    with np.load(path, allow_pickle=False) as npz:
        keys = set(npz.files)
        meta = npz["meta"]
        step = npz["opt/step"]
    assert {"params/s3.block0.attn.rel_bias", "state/s1.block0.norm1.mean", "opt/m.head.w",
            "opt/step", "meta"} <= keys
    assert meta.dtype.kind == "U" and meta.shape == ()
    assert step.dtype == np.int64 and step.shape == ()
    meta = json.loads(str(meta))
    assert meta["format"] == "minicoat-checkpoint"
    assert CoAtNetConfig.from_dict(meta["config"]) == CONFIG
    assert meta["arrays"]["params/head.b"] == {"shape": [10], "dtype": "<f4", "kind": "array"}


def test_float64_round_trip(tmp_path):
    params, state, opt_state = make_tree(dtype=np.float64)
    save_checkpoint(tmp_path / "c.npz", params, state, CONFIG, opt_state=opt_state)
    ckpt = load_checkpoint(tmp_path / "c.npz")
    assert_bit_exact(ckpt.params, params)
    assert_bit_exact(ckpt.opt_state, opt_state)


def test_no_opt_state_mt19937_and_path_without_suffix(tmp_path):
    params, state, _ = make_tree()
    rng = np.random.Generator(np.random.MT19937(5))  # its state holds an array (as a list)
    rng.integers(0, 10, 7)
    path = tmp_path / "latest"  # no ".npz" appended behind the caller's back
    save_checkpoint(path, params, state, CONFIG.to_dict(), rng_state=rng.bit_generator.state)
    assert os.listdir(tmp_path) == ["latest"]
    ckpt = load_checkpoint(path)
    assert ckpt.opt_state is None and ckpt.rng_state is not None and ckpt.extra is None
    np.testing.assert_array_equal(restore_rng(ckpt.rng_state).random(5), rng.random(5))


def test_write_is_atomic(tmp_path, monkeypatch):
    params, state, opt_state = make_tree(0)
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, params, state, CONFIG, opt_state=opt_state, step=1)
    assert os.listdir(tmp_path) == ["ckpt.npz"]  # no temporary file left behind
    original = path.read_bytes()

    def crash_mid_write(file, *args, **kwargs):
        file.write(b"PK\x03\x04 half an archive")  # partial output, then the process "dies"
        raise RuntimeError("disk full")

    monkeypatch.setattr(np, "savez", crash_mid_write)
    new_params, _, _ = make_tree(1)
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(path, new_params, state, CONFIG, step=2)
    monkeypatch.undo()

    assert os.listdir(tmp_path) == ["ckpt.npz"]
    assert path.read_bytes() == original  # the previous checkpoint is untouched
    ckpt = load_checkpoint(path)
    assert ckpt.step == 1
    assert_bit_exact(ckpt.params, params)


def test_failed_rename_keeps_previous_checkpoint(tmp_path, monkeypatch):
    params, state, _ = make_tree()
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, params, state, CONFIG, step=1)

    def failing_replace(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="rename failed"):
        save_checkpoint(path, params, state, CONFIG, step=2)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["ckpt.npz"]
    assert load_checkpoint(path).step == 1


@pytest.mark.parametrize("keep", [0, 3, 100, 0.5, -1])
def test_truncated_file_is_a_clear_error(tmp_path, keep):
    params, state, opt_state = make_tree()
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, params, state, CONFIG, opt_state=opt_state)
    data = path.read_bytes()
    cut = int(len(data) * keep) if isinstance(keep, float) else keep % len(data)
    path.write_bytes(data[:cut])
    with pytest.raises(ValueError, match=r"ckpt\.npz is not a valid minicoat checkpoint "
                                         r"\(truncated or corrupt\?\)"):
        load_checkpoint(path)


def test_corrupted_bytes_are_a_clear_error(tmp_path):
    params, state, _ = make_tree()
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, params, state, CONFIG)
    data = bytearray(path.read_bytes())
    start = data.index(b"\x93NUMPY")  # the first stored array's .npy header
    data[start + 130:start + 146] = b"\xff" * 16  # inside its data: the CRC no longer matches
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_checkpoint(path)


def test_pickled_arrays_are_refused_and_never_run(tmp_path):
    marker = tmp_path / "payload-ran"
    evil = np.empty(10, dtype=object)
    evil[0] = Payload(str(marker))  # unpickling it would create `marker`
    _rewrite(_saved(tmp_path), tmp_path / "evil.npz",
             arrays_change=lambda arrays, index: arrays.update({"params/head.b": evil}))
    with pytest.raises(ValueError, match="evil.npz.*pickled.*refuses.*safety"):
        load_checkpoint(tmp_path / "evil.npz")
    assert not marker.exists()


class Payload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_not_a_checkpoint(tmp_path):
    plain = tmp_path / "plain.npz"
    np.savez(plain, w=np.ones(3))
    with pytest.raises(ValueError, match="plain.npz is not a minicoat checkpoint.*meta"):
        load_checkpoint(plain)

    other = tmp_path / "other.npz"
    np.savez(other, meta=np.array(json.dumps({"format": "something-else"})))
    with pytest.raises(ValueError, match="expected format 'minicoat-checkpoint'"):
        load_checkpoint(other)

    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="notes.txt is not a valid minicoat checkpoint"):
        load_checkpoint(text)


def test_arrays_must_match_the_metadata(tmp_path):
    params, state, _ = make_tree()
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, params, state, CONFIG)
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}

    missing = dict(arrays)
    del missing["params/head.b"]
    np.savez(tmp_path / "missing.npz", **missing)
    with pytest.raises(ValueError, match=r"missing.npz.*missing \['params/head.b'\]"):
        load_checkpoint(tmp_path / "missing.npz")

    reshaped = dict(arrays, **{"params/head.b": np.zeros((1, 3), np.float32)})
    np.savez(tmp_path / "reshaped.npz", **reshaped)
    with pytest.raises(ValueError, match=r"params/head.b has shape \(1, 3\)"):
        load_checkpoint(tmp_path / "reshaped.npz")

    retyped = dict(arrays, **{"params/head.b": arrays["params/head.b"].astype(np.float64)})
    np.savez(tmp_path / "retyped.npz", **retyped)
    with pytest.raises(ValueError, match="params/head.b .*dtype float64.*float32"):
        load_checkpoint(tmp_path / "retyped.npz")


def test_other_config_is_refused_naming_fields(tmp_path):
    params, state, _ = make_tree()
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, params, state, CONFIG)
    other = CONFIG.replace(layout="CTTT", num_classes=4)
    with pytest.raises(ValueError, match="another config") as info:
        load_checkpoint(path, expected_config=other)
    message = str(info.value)
    assert "layout: 'CCTT' != 'CTTT'" in message and "num_classes: 10 != 4" in message
    assert "channels" not in message  # only the differing fields


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.npz does not exist"):
        load_checkpoint(tmp_path / "nothing.npz")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save_checkpoint(tmp_path / "no_dir" / "c.npz", {}, {}, CONFIG)


def test_unserialisable_extra_is_refused_before_writing(tmp_path):
    params, state, _ = make_tree()
    with pytest.raises(ValueError, match="JSON"):
        save_checkpoint(tmp_path / "c.npz", params, state, CONFIG, extra={"f": object()})
    assert os.listdir(tmp_path) == []


# -- contents are checked against the config, before any array is read ---------------------


def _rewrite(path, out, meta_change=None, arrays_change=None):
    """Copy a checkpoint with its metadata and arrays edited, as a hostile tool could."""
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(str(arrays.pop("meta")))
    if meta_change:
        meta_change(meta)
    if arrays_change:
        arrays_change(arrays, meta["arrays"])
    text = meta if isinstance(meta, str) else json.dumps(meta)
    np.savez(out, meta=np.array(text), **arrays)
    return out


def _saved(tmp_path, config=CONFIG):
    params, state = init_params(config, 0)
    path = tmp_path / "good.npz"
    save_checkpoint(path, params, state, config)
    return path


def test_a_head_of_another_width_is_refused_like_check_params(tmp_path):
    """The stored config says 10 classes but the arrays are a 12-class head: evaluate used to
    crash with an IndexError in the confusion matrix."""
    path = _saved(tmp_path, CONFIG.replace(num_classes=12))
    bad = _rewrite(path, tmp_path / "bad.npz",
                   meta_change=lambda m: m["config"].update(num_classes=10))
    with pytest.raises(ValueError, match=r"bad.npz: params do not fit config 'coatnet-digits'.*"
                                         r"wrong shapes \['head.b: expected \(10,\), got \(12,\)'"):
        load_checkpoint(bad)


def test_a_missing_parameter_is_refused(tmp_path):
    def drop(arrays, index):
        del arrays["params/head.b"], index["params/head.b"]

    bad = _rewrite(_saved(tmp_path), tmp_path / "bad.npz", arrays_change=drop)
    with pytest.raises(ValueError, match=r"params do not fit .*missing \['head.b'\]"):
        load_checkpoint(bad)


def test_a_leaf_of_another_dtype_is_refused(tmp_path):
    def retype(arrays, index):
        arrays["params/head.b"] = arrays["params/head.b"].astype(np.float64)
        index["params/head.b"]["dtype"] = "<f8"

    bad = _rewrite(_saved(tmp_path), tmp_path / "bad.npz", arrays_change=retype)
    with pytest.raises(ValueError, match=r"all float32 or all float64; found \['params.head.b"):
        load_checkpoint(bad)


def test_optimizer_state_must_mirror_the_parameters(tmp_path):
    params, state, opt_state = make_tree()
    path = tmp_path / "good.npz"
    save_checkpoint(path, params, state, CONFIG, opt_state=opt_state)

    def shrink(arrays, index):
        arrays["opt/m.head.b"] = arrays["opt/m.head.b"][:3]
        index["opt/m.head.b"]["shape"] = [3]

    bad = _rewrite(path, tmp_path / "bad.npz", arrays_change=shrink)
    with pytest.raises(ValueError, match=r"optimizer state 'm' does not mirror .*\['head.b'\]"):
        load_checkpoint(bad)


def _nested(depth):
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("change, message", [
    (lambda m: m.update(arrays=[1, 2]),
     "'arrays' is \\[1, 2\\]; expected an object"),
    (lambda m: m["arrays"].update({"params/head.b": [10]}), "index entry of 'params/head.b'"),
    (lambda m: m["arrays"]["params/head.b"].update(dtype="O"), "expected a numeric dtype"),
    (lambda m: m["arrays"]["params/head.b"].update(shape=[-1]), "index entry of"),
    (lambda m: m.update(step="12"), "'step' is '12'; expected an integer"),
    (lambda m: m.update(config=[1]), "'config' is \\[1\\]; expected an object"),
    (lambda m: m["config"].update(depths=[2.7, 1, 1, 1, 1]), "depths\\[0\\] must be an integer"),
    (lambda m: m["config"].update(depths=[1, 10**9, 1, 1, 1]), "layers and blocks but the file"),
    (lambda m: m.update(has_opt_state=True), "has_opt_state is True but"),
])
def test_crafted_metadata_is_a_clear_error(tmp_path, change, message):
    bad = _rewrite(_saved(tmp_path), tmp_path / "bad.npz", meta_change=change)
    with pytest.raises(ValueError, match=message):
        load_checkpoint(bad)


def test_deeply_nested_metadata_is_not_a_recursion_error(tmp_path):
    path = _saved(tmp_path)
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = str(arrays.pop("meta"))
    meta = meta[:-1] + ', "deep": ' + _nested(100_000) + "}"
    np.savez(tmp_path / "bad.npz", meta=np.array(meta), **arrays)
    with pytest.raises(ValueError, match="'meta' entry is not valid JSON"):
        load_checkpoint(tmp_path / "bad.npz")


def test_a_crafted_rng_state_is_a_clear_error():
    with pytest.raises(ValueError, match="not a valid PCG64 state"):
        restore_rng({"bit_generator": "PCG64", "state": {"state": "x", "inc": 1}})
    with pytest.raises(ValueError, match="bit_generator 'os.system'"):
        restore_rng({"bit_generator": "os.system"})
