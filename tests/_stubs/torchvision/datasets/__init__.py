"""Stub of ``torchvision.datasets`` (see ``tests/_stubs/torchvision/__init__.py``)."""

from .. import placeholder


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return placeholder(__name__, name)
