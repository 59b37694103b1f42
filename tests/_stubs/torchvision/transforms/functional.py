"""Stub of ``torchvision.transforms.functional``: ``InterpolationMode`` and placeholders."""

import enum

from .. import placeholder


class InterpolationMode(enum.Enum):
    """torchvision's interpolation names (timm maps its strings onto them)."""

    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return placeholder(__name__, name)
