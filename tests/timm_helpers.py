"""Helpers for the tests against timm itself: importing it, random weights, NCHW <-> NHWC.

timm is installed without its dependencies (``pip install --no-deps timm==1.0.31``, see the
README); ``tests/conftest.py`` supplies the few torchvision names it imports when torchvision is
missing. Under ``CI=true`` a missing timm fails the tests instead of skipping them.
"""

import os

import numpy as np
import pytest
import torch

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def import_timm():
    """The ``timm`` module; skips the test outside CI when it is not installed, fails in CI."""
    try:
        import timm
    except ImportError as err:
        if IN_CI:
            pytest.fail(f"timm is required in CI (pip install --no-deps timm==1.0.31): {err}")
        pytest.skip(f"timm is not installed: {err}")
    return timm


def randomize(model, seed=0):
    """Give every weight, BatchNorm statistic and relative-bias table of a timm model a random
    value (the initialisation leaves biases, BN statistics and the tables at 0 or 1, where a
    transposed or misplaced one would go unnoticed). In place; returns the model."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, value in model.state_dict().items():
            if not value.dtype.is_floating_point:
                continue
            noise = torch.randn(value.shape, generator=generator, dtype=value.dtype)
            if name.endswith("running_var"):
                value.copy_(0.5 + noise.abs())
            elif name.endswith("relative_position_bias_table"):
                value.copy_(0.5 * noise)
            elif value.ndim == 1 and name.endswith("weight"):  # norm scales
                value.copy_(1.0 + 0.1 * noise)
            elif value.ndim == 1:  # biases, norm shifts, running means
                value.copy_(0.1 * noise)
            else:  # weights: variance-preserving, std 1 / sqrt(fan-in)
                value.copy_(noise * value[0].numel() ** -0.5)
    return model


def timm_model(timm, name, image_size, seed=0, dtype=torch.float64, **kwargs):
    """timm's ``name`` at ``image_size``, random weights (``randomize``), in ``dtype``."""
    model = timm.create_model(name, img_size=image_size, **kwargs).to(dtype)
    return randomize(model, seed)


def numpy_state_dict(model):
    """A torch ``state_dict`` as timm names -> NumPy arrays (sharing the model's memory)."""
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def to_nchw(x):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
