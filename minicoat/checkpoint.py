"""Checkpoints: parameters, BatchNorm state, optimizer state and metadata in one ``.npz``.

Layout of the archive (written by ``np.savez``, readable by any NumPy without minicoat)::

    params/<dotted key>   one array per parameter, e.g. "params/s3.block0.attn.rel_bias"
    state/<dotted key>    BatchNorm running statistics ("state/s1.block0.norm.mean")
    opt/<dotted key>      optimizer state ("opt/m.head.w", "opt/step"); ints are 0-d int64
    meta                  a 0-d unicode array holding a JSON document:
                          {"format": "minicoat-checkpoint", "version": 1, "config": {...},
                           "step": int, "rng_state": {...} | null, "extra": {...} | null,
                           "has_opt_state": bool,
                           "arrays": {"<archive key>": {"shape": [...], "dtype": "<f4",
                                                        "kind": "array" | "int"}, ...}}

Nothing is pickled, and loading refuses files that would need pickle: unpickling runs code
from the file. Arrays come back bit-exact with their dtypes; ``kind: "int"`` entries (the
optimizer's step count) come back as Python ints.

Writes are atomic: the archive goes to a temporary file in the target's directory, is
flushed to disk, then renamed over the target (``os.replace``), so a crash mid-write leaves
the previous checkpoint intact rather than half a file.
"""

import dataclasses
import json
import os
import secrets
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np

from .configs import CoAtNetConfig
from .tree import flatten, unflatten

FORMAT = "minicoat-checkpoint"
VERSION = 1
SECTIONS = ("params", "state", "opt")
_ZIP_MAGIC = b"PK\x03\x04"  # every non-empty .npz (a zip archive) starts with this
_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")


@dataclass
class Checkpoint:
    """What ``load_checkpoint`` returns.

    Attributes:
        params: parameter pytree (nested dicts of arrays).
        state: BatchNorm state pytree.
        config: the ``CoAtNetConfig`` the parameters belong to.
        opt_state: optimizer state pytree (arrays and Python ints), or None if not saved.
        step: training step at which the checkpoint was written.
        rng_state: ``np.random.Generator.bit_generator.state`` dict, or None;
            ``restore_rng(rng_state)`` rebuilds the generator.
        extra: the JSON-able dict given at save time (e.g. metrics, the run's arguments).
    """

    params: dict
    state: dict
    config: CoAtNetConfig
    opt_state: dict = None
    step: int = 0
    rng_state: dict = None
    extra: dict = None


# -- saving ------------------------------------------------------------------------------


def _json_default(obj):
    """JSON for the NumPy values in a bit generator's state (MT19937 keeps an array)."""
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def _section_arrays(section, tree, arrays, index):
    """Add ``tree``'s leaves to ``arrays`` under ``section/`` and describe them in ``index``."""
    for key, leaf in flatten(tree).items():
        name = f"{section}/{key}"
        is_int = isinstance(leaf, (int, np.integer)) and not isinstance(leaf, (bool, np.bool_))
        array = np.asarray(leaf, dtype=np.int64) if is_int else np.asarray(leaf)
        if array.dtype.hasobject:
            raise ValueError(f"{name} is an object array; checkpoints store numeric arrays only")
        arrays[name] = array
        index[name] = {
            "shape": list(array.shape),
            "dtype": array.dtype.str,
            "kind": "int" if is_int else "array",
        }


def save_checkpoint(path, params, state, config, opt_state=None, step=0, rng_state=None,
                    extra=None):
    """Write a checkpoint to ``path`` (exactly that name: no ".npz" is appended), atomically.

    Args:
        path: target file; its directory must exist. An existing file is replaced.
        params, state: parameter and BatchNorm-state pytrees.
        config: the ``CoAtNetConfig`` (or its ``to_dict()``).
        opt_state: optimizer state pytree of arrays and ints (``optim``), or None.
        step: training step (an int).
        rng_state: a ``np.random.Generator`` or its ``bit_generator.state`` dict, or None.
        extra: a JSON-able dict, or None.
    """
    path = os.fspath(path)
    if isinstance(config, dict):
        config = CoAtNetConfig.from_dict(config)
    if not isinstance(config, CoAtNetConfig):
        raise TypeError(f"config must be a CoAtNetConfig, got {type(config).__name__}")
    if isinstance(rng_state, np.random.Generator):
        rng_state = rng_state.bit_generator.state

    arrays, index = {}, {}
    _section_arrays("params", params, arrays, index)
    _section_arrays("state", state, arrays, index)
    if opt_state is not None:
        _section_arrays("opt", opt_state, arrays, index)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "config": config.to_dict(),
        "step": int(step),
        "rng_state": rng_state,
        "extra": extra,
        "has_opt_state": opt_state is not None,
        "arrays": index,
    }
    try:
        meta_json = json.dumps(meta, default=_json_default, sort_keys=True)
    except (TypeError, ValueError) as err:
        raise ValueError(f"checkpoint metadata for {path} is not JSON-serialisable "
                         f"(check extra and rng_state): {err}") from err
    arrays["meta"] = np.array(meta_json)  # a 0-d unicode array, not an object array

    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"cannot write checkpoint {path}: directory {directory} "
                                f"does not exist")
    # A temporary file in the same directory, so os.replace is a rename within one
    # filesystem (atomic); a hidden name keeps it out of the way if a crash leaves it behind.
    # O_EXCL with a random name avoids clashing with a concurrent writer; mode 0o666 lets the
    # umask decide the permissions, as for any new file (mkstemp would force 0o600).
    tmp_path = os.path.join(
        directory, f".{os.path.basename(path)}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            # A file object, so np.savez does not append ".npz" to the temporary name.
            np.savez(f, allow_pickle=False, **arrays)
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the rename makes it visible
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise
    _fsync_directory(directory)


def _fsync_directory(directory):
    """Persist the rename itself (POSIX); not possible (nor needed) on some platforms."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# -- loading -----------------------------------------------------------------------------


def _read_arrays(path):
    """Every array in the archive at ``path``, without unpickling anything."""
    with open(path, "rb") as f:
        magic = f.read(len(_ZIP_MAGIC))
    if magic != _ZIP_MAGIC:
        raise ValueError(f"{path} is not a valid minicoat checkpoint (truncated or corrupt?): "
                         f"expected an .npz (zip) archive, the file starts with {magic!r}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except ValueError as err:
        if "pickle" in str(err):
            raise ValueError(
                f"{path} contains pickled (object) arrays; minicoat refuses to load pickled "
                f"checkpoints for safety (unpickling can run arbitrary code)") from err
        raise ValueError(
            f"{path} is not a valid minicoat checkpoint (truncated or corrupt?): {err}") from err
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, KeyError) as err:
        raise ValueError(
            f"{path} is not a valid minicoat checkpoint (truncated or corrupt?): "
            f"{type(err).__name__}: {err}") from err


def _read_meta(path, arrays):
    """The JSON metadata, checked for the format and version."""
    meta = arrays.pop("meta", None)
    if meta is None or meta.dtype.kind != "U" or meta.shape != ():
        raise ValueError(f"{path} is not a minicoat checkpoint: expected a 'meta' entry "
                         f"(a JSON string); found entries {sorted(arrays)[:5]}...")
    try:
        meta = json.loads(str(meta[()]))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: the 'meta' entry is not valid JSON: {err}") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"{path} is not a minicoat checkpoint: expected format {FORMAT!r}, "
                         f"found {found!r}")
    if meta.get("version") != VERSION:
        raise ValueError(f"{path} has checkpoint format version {meta.get('version')!r}; "
                         f"this minicoat reads version {VERSION}")
    return meta


def _check_index(path, arrays, index):
    """The arrays must be exactly those listed in the metadata, with its shapes and dtypes."""
    missing = sorted(index.keys() - arrays.keys())
    unexpected = sorted(arrays.keys() - index.keys())
    if missing or unexpected:
        raise ValueError(f"{path}: the arrays do not match the checkpoint's metadata: "
                         f"missing {missing}, unexpected {unexpected}")
    for name, entry in index.items():
        array = arrays[name]
        if entry.get("kind") == "int" and (array.shape != () or array.dtype.kind != "i"):
            raise ValueError(f"{path}: {name} should be a 0-d integer array, got "
                             f"shape {array.shape} and dtype {array.dtype}")
        if list(array.shape) != entry["shape"] or array.dtype != np.dtype(entry["dtype"]):
            raise ValueError(f"{path}: {name} has shape {array.shape} and dtype {array.dtype}; "
                             f"the metadata expects {tuple(entry['shape'])} and "
                             f"{np.dtype(entry['dtype'])}")


def config_differences(stored, expected):
    """The fields in which two configs differ, as ``["field: a != b", ...]``."""
    return [
        f"{f.name}: {getattr(stored, f.name)!r} != {getattr(expected, f.name)!r}"
        for f in dataclasses.fields(CoAtNetConfig)
        if getattr(stored, f.name) != getattr(expected, f.name)
    ]


def load_checkpoint(path, expected_config=None):
    """Read a checkpoint written by ``save_checkpoint``.

    Args:
        path: the checkpoint file.
        expected_config: if given, the stored config must equal it (a ``ValueError`` lists
            the fields that differ) - e.g. to resume a run with the same architecture.

    Returns:
        a ``Checkpoint``; arrays are bit-exact copies of what was saved.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is truncated or corrupt, needs pickle, is not a minicoat
            checkpoint, disagrees with its own metadata, or has another config.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint {path} is not a file (a directory?)")
    arrays = _read_arrays(path)
    meta = _read_meta(path, arrays)
    index = meta.get("arrays")
    if not isinstance(index, dict):
        raise ValueError(f"{path}: the metadata has no 'arrays' index")
    _check_index(path, arrays, index)

    try:
        config = CoAtNetConfig.from_dict(meta["config"])
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: the stored config is not a valid CoAtNetConfig: {err}") from err
    if expected_config is not None:
        differences = config_differences(config, expected_config)
        if differences:
            raise ValueError(f"{path} was saved with another config (stored != expected): "
                             + "; ".join(differences))

    sections = {section: {} for section in SECTIONS}
    for name, array in arrays.items():
        section, _, key = name.partition("/")
        if section not in sections or not key:
            raise ValueError(f"{path}: unexpected entry {name!r}; expected one under "
                             f"{'/, '.join(SECTIONS)}/")
        sections[section][key] = int(array) if index[name]["kind"] == "int" else array
    return Checkpoint(
        params=unflatten(sections["params"]),
        state=unflatten(sections["state"]),
        config=config,
        opt_state=unflatten(sections["opt"]) if meta.get("has_opt_state") else None,
        step=int(meta.get("step", 0)),
        rng_state=meta.get("rng_state"),
        extra=meta.get("extra"),
    )


def restore_rng(rng_state):
    """A ``np.random.Generator`` continuing exactly where the saved one stopped.

    ``rng_state`` is ``generator.bit_generator.state`` (e.g. ``Checkpoint.rng_state``).
    """
    name = rng_state.get("bit_generator") if isinstance(rng_state, dict) else None
    if name not in _BIT_GENERATORS:
        raise ValueError(f"rng_state must be a bit_generator.state dict of one of "
                         f"{_BIT_GENERATORS}, got bit_generator {name!r}")
    bit_generator = getattr(np.random, name)()
    bit_generator.state = rng_state
    return np.random.Generator(bit_generator)
