"""Running a model at another resolution: images resized as torch does, ``evaluate --image-size``.

The relative-bias tables' resize is checked against timm in ``test_timm.py`` and without timm in
``test_timm_fixture.py``.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import minicoat as mc
from minicoat.cli import main
from minicoat.interop import resize_images


@pytest.mark.parametrize("old, new", [((8, 8), (16, 16)), ((16, 12), (8, 20)), ((5, 7), (5, 7)),
                                      ((3, 3), (1, 2))])
def test_resize_images_matches_torch_bilinear(old, new):
    x = np.random.default_rng(0).standard_normal((2, *old, 3))
    theirs = F.interpolate(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), size=new,
                           mode="bilinear", align_corners=False).numpy().transpose(0, 2, 3, 1)
    ours = resize_images(x, new)
    assert ours.shape == (2, *new, 3) and ours.dtype == x.dtype
    assert mc.rel_error(ours, theirs) <= 1e-14
    assert resize_images(x.astype(np.float32), new).dtype == np.float32


def test_evaluate_at_another_image_size(tmp_path, capsys):
    config = mc.config("coatnet-shapes")  # 16x16, S3 and S4 attention on 4x4 and 2x2 grids
    params, state = mc.init_params(config, seed=0)
    path = tmp_path / "checkpoint.npz"
    mc.save_checkpoint(path, params, state, config, extra={"dataset": "shapes"})
    assert main(["evaluate", "--checkpoint", str(path), "--image-size", "32",
                 "--test-subset", "16"]) == 0
    assert "accuracy" in capsys.readouterr().out
    assert main(["evaluate", "--checkpoint", str(path), "--image-size", "30"]) == 2
    assert "divisible by the product of the strides" in capsys.readouterr().err
