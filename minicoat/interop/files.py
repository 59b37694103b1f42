"""timm checkpoints as ``.safetensors`` files, read and written with NumPy only.

``safetensors`` (the ``interop`` extra, ``pip install "minicoat[interop]"``) stores named arrays
with no pickled code; ``safetensors.numpy`` reads and writes them without torch, and timm reads
the same files (``timm.create_model(name, pretrained_cfg_overlay=dict(file=path))`` or
``safetensors.torch.load_file``).
"""

import numpy as onp

from . import timm


def _safetensors():
    try:
        import safetensors.numpy
    except ImportError:
        raise ImportError("reading and writing .safetensors files needs the safetensors "
                          "package: pip install \"minicoat[interop]\" (or safetensors)") from None
    return safetensors.numpy


def read_state_dict(path):
    """The arrays of a ``.safetensors`` file: ``{name: numpy array}``."""
    return dict(_safetensors().load_file(str(path)))


def write_state_dict(path, state_dict):
    """Write ``{name: numpy array}`` to a ``.safetensors`` file."""
    _safetensors().save_file({k: onp.ascontiguousarray(v) for k, v in state_dict.items()},
                             str(path))


def num_classes_of(state_dict):
    """The classes of a timm CoAtNet state dict (the rows of ``head.fc.weight``)."""
    if "head.fc.weight" not in state_dict:
        raise ValueError("not a timm CoAtNet state dict: it has no head.fc.weight")
    return int(onp.shape(state_dict["head.fc.weight"])[0])


def load_timm_file(path, name, image_size=224, source_size=None, dtype=None):
    """``(params, state, config)`` from a timm ``.safetensors`` checkpoint of model ``name``.

    ``image_size`` is the size to run at (the relative-bias tables are resized to it);
    ``source_size`` the size the checkpoint was made for, if it is neither square nor
    ``image_size``. The number of classes is read from the file.
    """
    state_dict = read_state_dict(path)
    config = timm.config(name, image_size=image_size, num_classes=num_classes_of(state_dict))
    params, state = timm.load_state_dict(state_dict, config, source_size, dtype)
    return params, state, config


def save_timm_file(path, params, state, config):
    """Write minicoat's ``(params, state)`` of a timm-style ``config`` as timm's file."""
    write_state_dict(path, timm.to_state_dict(params, state, config))
