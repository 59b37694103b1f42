"""Stub of ``torchvision.transforms`` (see ``tests/_stubs/torchvision/__init__.py``)."""

from .. import placeholder
from . import functional  # noqa: F401
from .functional import InterpolationMode  # noqa: F401


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return placeholder(__name__, name)
