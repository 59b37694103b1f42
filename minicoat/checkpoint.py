"""Checkpoints: parameters, BatchNorm state, optimizer state and metadata in one ``.npz``.

Layout of the archive (written by ``numpy.savez``, readable by any NumPy without minicoat)::

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

Writes are atomic (``files.atomic_write``): the archive goes to a temporary file in the
target's directory, is flushed to disk, then renamed over the target, so a crash mid-write
leaves the previous checkpoint intact rather than half a file.

Loading trusts nothing in the file and reads in bounded memory (``npz.NpzArchive``): the
``meta`` entry (at most ``META_MAX_BYTES``) first, parsed defensively; then the array index
is checked against the stored config with ``model.check_params`` (keys, shapes, one float
dtype; placeholders that allocate nothing) and the optimizer state against the parameters;
only then is each array read, into an array of the size the config implies, refused at the
first byte beyond it. A checkpoint takes at most what its own validated config's arrays take.
"""

import dataclasses
import json
import math
import os
from dataclasses import dataclass

import numpy as onp

from .configs import CoAtNetConfig
from .files import atomic_write
from .model import check_params
from .npz import NpzArchive, NpzError
from .tree import flatten, unflatten

FORMAT = "minicoat-checkpoint"
VERSION = 1
SECTIONS = ("params", "state", "opt")
_ZIP_MAGIC = b"PK\x03\x04"  # every non-empty .npz (a zip archive) starts with this
_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")
META_MAX_BYTES = 16 << 20  # the JSON metadata (a 1000-epoch history is ~0.3 MB)
MAX_INFLATION = 1100  # no deflated archive inflates more than 1032:1


@dataclass
class Checkpoint:
    """What ``load_checkpoint`` returns.

    Attributes:
        params: parameter pytree (nested dicts of arrays).
        state: BatchNorm state pytree.
        config: the ``CoAtNetConfig`` the parameters belong to.
        opt_state: optimizer state pytree (arrays and Python ints), or None if not saved.
        step: training step at which the checkpoint was written.
        rng_state: ``numpy.random.Generator.bit_generator.state`` dict, or None;
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
    if isinstance(obj, onp.ndarray):
        return obj.tolist()
    if isinstance(obj, onp.integer):
        return int(obj)
    if isinstance(obj, onp.floating):
        return float(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def _section_arrays(section, tree, arrays, index):
    """Add ``tree``'s leaves to ``arrays`` under ``section/`` and describe them in ``index``."""
    for key, leaf in flatten(tree).items():
        name = f"{section}/{key}"
        is_int = isinstance(leaf, (int, onp.integer)) and not isinstance(leaf, (bool, onp.bool_))
        array = onp.asarray(leaf, dtype=onp.int64) if is_int else onp.asarray(leaf)
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
        params, state: parameter and BatchNorm-state pytrees of ``config`` (checked with
            ``model.check_params``: a checkpoint that could not be loaded is never written).
        config: the ``CoAtNetConfig`` (or its ``to_dict()``).
        opt_state: optimizer state pytree of arrays and ints (``optim``), or None.
        step: training step (an int).
        rng_state: a ``numpy.random.Generator`` or its ``bit_generator.state`` dict, or None.
        extra: a JSON-able dict, or None.
    """
    path = os.fspath(path)
    if isinstance(config, dict):
        config = CoAtNetConfig.from_dict(config)
    if not isinstance(config, CoAtNetConfig):
        raise TypeError(f"config must be a CoAtNetConfig, got {type(config).__name__}")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"cannot write checkpoint {path}: directory {directory} "
                                f"does not exist")
    check_params(params, state, config)
    if isinstance(rng_state, onp.random.Generator):
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
        meta_json = json.dumps(meta, default=_json_default, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"checkpoint metadata for {path} is not JSON-serialisable "
                         f"(check extra and rng_state): {err}") from err
    if len(meta_json) * 4 > META_MAX_BYTES:
        raise ValueError(f"checkpoint metadata for {path} is {len(meta_json) * 4:,} bytes, "
                         f"more than load_checkpoint accepts ({META_MAX_BYTES:,})")
    arrays["meta"] = onp.array(meta_json)  # a 0-d unicode array, not an object array
    with atomic_write(path) as f:
        # A file object, so onp.savez does not append ".npz" to the temporary name.
        onp.savez(f, allow_pickle=False, **arrays)


# -- loading -----------------------------------------------------------------------------


def _fail(path, message):
    return ValueError(f"{path}: {message}")


def _parse_meta(path, text):
    """The metadata as a dict whose every field has the type the format says, or ValueError."""
    try:
        meta = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise _fail(path, f"the 'meta' entry is not valid JSON: {err}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"{path} is not a minicoat checkpoint: expected format {FORMAT!r}, "
                         f"found {found!r}")
    if meta.get("version") != VERSION:
        raise ValueError(f"{path} has checkpoint format version {meta.get('version')!r}; "
                         f"this minicoat reads version {VERSION}")
    expected = {"config": (dict, "an object"), "arrays": (dict, "an object"),
                "step": (int, "an integer"), "has_opt_state": (bool, "true or false"),
                "rng_state": ((dict, type(None)), "an object or null"),
                "extra": ((dict, type(None)), "an object or null")}
    for field, (kind, what) in expected.items():
        value = meta.get(field)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise _fail(path, f"the metadata field {field!r} is {value!r:.80}; expected {what}")
    if meta["step"] < 0:
        raise _fail(path, f"the metadata's step is {meta['step']}, expected >= 0")
    index = {}
    for name, entry in meta["arrays"].items():
        index[name] = _index_entry(path, name, entry)
    return meta, index


def _index_entry(path, name, entry):
    """``(shape, dtype, kind)`` of one entry of the metadata's array index."""
    shape = entry.get("shape") if isinstance(entry, dict) else None
    if not isinstance(shape, list) or len(shape) > 32 or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
        raise _fail(path, f"the index entry of {name!r} is {entry!r:.120}; expected "
                          f"{{'shape': [ints >= 0], 'dtype': '<f4', 'kind': 'array'}}")
    try:
        dtype = onp.dtype(entry.get("dtype"))
    except (TypeError, ValueError, SyntaxError):
        dtype = None
    if dtype is None or dtype.kind not in "fiu" or entry.get("kind") not in ("array", "int"):
        raise _fail(path, f"the index entry of {name!r} has dtype {entry.get('dtype')!r} and "
                          f"kind {entry.get('kind')!r}; expected a numeric dtype and 'array' "
                          f"or 'int'")
    if entry["kind"] == "int" and (shape or dtype.kind != "i"):
        raise _fail(path, f"{name} should be a 0-d integer array, got shape {tuple(shape)} "
                          f"and dtype {dtype}")
    return tuple(shape), dtype, entry["kind"]


def _placeholder(shape, dtype):
    """An array of that shape and dtype that allocates nothing (every element is one zero)."""
    return onp.broadcast_to(onp.zeros((), dtype), shape)


def _check_contents(path, config, index, has_opt_state):
    """Check the index against ``config`` before anything is read; returns the sections."""
    sections = {section: {} for section in SECTIONS}
    for name, (shape, dtype, _) in index.items():
        section, _, key = name.partition("/")
        if section not in sections or not key:
            raise _fail(path, f"unexpected entry {name!r}; expected one under "
                              f"{'/, '.join(SECTIONS)}/")
        sections[section][key] = _placeholder(shape, dtype)
    # Each block has at least one parameter: refuse a config of absurd depth before
    # building its parameter spec.
    if sum(config.depths) > len(sections["params"]):
        raise _fail(path, f"the stored config has {sum(config.depths)} layers and blocks but "
                          f"the file only {len(sections['params'])} parameter arrays")
    try:
        params, state = unflatten(sections["params"]), unflatten(sections["state"])
        check_params(params, state, config)
    except ValueError as err:
        raise _fail(path, str(err)) from None
    if has_opt_state != bool(sections["opt"]):
        raise _fail(path, f"has_opt_state is {has_opt_state} but the file holds "
                          f"{len(sections['opt'])} optimizer arrays")
    _check_opt_state(path, sections["params"], sections["opt"])
    total = sum(math.prod(shape) * dtype.itemsize for shape, dtype, _ in index.values())
    if total > MAX_INFLATION * os.path.getsize(path):
        raise _fail(path, f"its index claims {total:,} bytes of arrays, more than a file of "
                          f"{os.path.getsize(path):,} bytes can hold even compressed")
    return sections


def _check_opt_state(path, params, opt):
    """Optimizer state: ints at the top ("step"), and slots ("m", "v", "momentum") each
    mirroring the parameters exactly (keys, shapes, dtypes)."""
    slots = {}
    for key, leaf in opt.items():
        slot, _, rest = key.partition(".")
        if not rest:
            if leaf.shape != () or leaf.dtype.kind != "i":
                raise _fail(path, f"opt/{key} should be an integer (e.g. the step count)")
            continue
        slots.setdefault(slot, {})[rest] = leaf
    for slot, leaves in slots.items():
        missing, unexpected = sorted(params.keys() - leaves.keys()), sorted(
            leaves.keys() - params.keys())
        wrong = [k for k in sorted(params.keys() & leaves.keys())
                 if (leaves[k].shape, leaves[k].dtype) != (params[k].shape, params[k].dtype)]
        if missing or unexpected or wrong:
            raise _fail(path, f"optimizer state {slot!r} does not mirror the parameters: "
                              f"missing {missing[:3]}, unexpected {unexpected[:3]}, wrong shape "
                              f"or dtype {wrong[:3]}")


def config_differences(stored, expected):
    """The fields in which two configs differ, as ``["field: a != b", ...]``."""
    return [
        f"{f.name}: {getattr(stored, f.name)!r} != {getattr(expected, f.name)!r}"
        for f in dataclasses.fields(CoAtNetConfig)
        if getattr(stored, f.name) != getattr(expected, f.name)
    ]


def load_checkpoint(path, expected_config=None):
    """Read a checkpoint written by ``save_checkpoint``, in bounded memory (see above).

    Args:
        path: the checkpoint file.
        expected_config: if given, the stored config must equal it (a ``ValueError`` lists
            the fields that differ) - e.g. to resume a run with the same architecture.

    Returns:
        a ``Checkpoint``; arrays are bit-exact copies of what was saved.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is truncated or corrupt, needs pickle, is not a minicoat
            checkpoint, disagrees with its own metadata or its config, or has another config.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint {path} is not a file (a directory?)")
    with open(path, "rb") as f:
        magic = f.read(len(_ZIP_MAGIC))
    if magic != _ZIP_MAGIC:
        raise ValueError(f"{path} is not a valid minicoat checkpoint (truncated or corrupt?): "
                         f"expected an .npz (zip) archive, the file starts with {magic!r}")
    with NpzArchive(path) as archive:
        if "meta" not in archive.members:
            raise ValueError(f"{path} is not a minicoat checkpoint: expected a 'meta' entry "
                             f"(a JSON string); found entries {sorted(archive.members)[:5]}...")
        text = archive.read("meta", max_bytes=META_MAX_BYTES)
        if text.dtype.kind != "U" or text.shape != ():
            raise ValueError(f"{path} is not a minicoat checkpoint: its 'meta' entry is a "
                             f"{text.dtype} array of shape {text.shape}, not a JSON string")
        meta, index = _parse_meta(path, str(text[()]))
        try:
            config = CoAtNetConfig.from_dict(meta["config"])
        except (KeyError, TypeError, ValueError) as err:
            raise _fail(path, f"the stored config is not a valid CoAtNetConfig: {err}") from None
        if expected_config is not None:
            differences = config_differences(config, expected_config)
            if differences:
                raise ValueError(f"{path} was saved with another config (stored != expected): "
                                 + "; ".join(differences))
        stored = set(archive.members) - {"meta"}
        missing, unexpected = sorted(index.keys() - stored), sorted(stored - index.keys())
        if missing or unexpected:
            raise _fail(path, f"the arrays do not match the checkpoint's metadata: "
                              f"missing {missing}, unexpected {unexpected}")
        sections = _check_contents(path, config, index, meta["has_opt_state"])
        for section, leaves in sections.items():
            for key in leaves:
                shape, dtype, kind = index[f"{section}/{key}"]
                try:
                    array = archive.read(f"{section}/{key}", shape, dtype)
                except NpzError as err:
                    raise ValueError(str(err)) from None
                leaves[key] = int(array) if kind == "int" else array
    return Checkpoint(
        params=unflatten(sections["params"]),
        state=unflatten(sections["state"]),
        config=config,
        opt_state=unflatten(sections["opt"]) if meta["has_opt_state"] else None,
        step=meta["step"],
        rng_state=meta["rng_state"],
        extra=meta["extra"],
    )


def restore_rng(rng_state):
    """A ``onp.random.Generator`` continuing exactly where the saved one stopped.

    ``rng_state`` is ``generator.bit_generator.state`` (e.g. ``Checkpoint.rng_state``).
    """
    name = rng_state.get("bit_generator") if isinstance(rng_state, dict) else None
    if name not in _BIT_GENERATORS:
        raise ValueError(f"rng_state must be a bit_generator.state dict of one of "
                         f"{_BIT_GENERATORS}, got bit_generator {name!r}")
    bit_generator = getattr(onp.random, name)()
    try:
        bit_generator.state = rng_state
    except (TypeError, ValueError, KeyError, OverflowError) as err:
        raise ValueError(f"rng_state is not a valid {name} state: {err!r:.200}") from None
    return onp.random.Generator(bit_generator)
