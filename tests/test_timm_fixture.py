"""minicoat against a tiny CoAtNet that timm built, without timm: a committed fixture.

``fixtures/timm_tiny.safetensors`` holds the state dict of a ``MaxxVit`` with the paper-style
``coatnet_N_224`` settings, narrower and shallower (made by ``fixtures/make_timm_tiny.py``:
random float32 weights, BatchNorm statistics and relative-bias tables), and
``timm_tiny_logits.npz`` timm's float64 logits for one 32x64 image. Reading it needs only
``safetensors`` (the ``interop`` extra). ``minicoat convert`` is checked on it both ways.
"""

import pathlib

import numpy as np
import pytest

import minicoat as mc
from minicoat.cli import main
from minicoat.interop import files, resize_rel_bias
from minicoat.interop import timm as mt

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
SAFETENSORS = FIXTURES / "timm_tiny.safetensors"
TOL = 1e-12


def tiny_config(**overrides):
    """The minicoat config of the fixture's model (make_timm_tiny.CFG)."""
    return mt.config("coatnet_0_224", depths=(2, 1, 1, 1, 1), channels=(16, 16, 32, 32, 64),
                     head_hidden=64, image_size=(32, 64), num_classes=10,
                     **overrides).replace(name="timm-tiny")


def test_fixture_logits_match_timm():
    reference = np.load(FIXTURES / "timm_tiny_logits.npz")
    state_dict = files.read_state_dict(SAFETENSORS)
    params, state = mt.load_state_dict(state_dict, tiny_config(), dtype=np.float64)
    assert mc.count_params(params) == 80433  # timm's count (make_timm_tiny.py prints it)
    logits, _ = mc.forward(params, state, reference["x"], tiny_config())
    error = mc.rel_error(logits, reference["logits"])
    assert error <= TOL, f"logits rel_error(minicoat, timm) = {error:.2e}"
    # the options matter: timm's width basis of SE alone is a different network
    with pytest.raises(ValueError, match="wrong shapes"):
        mt.load_state_dict(state_dict, tiny_config(se_basis="input"))
    params_gelu, _ = mt.load_state_dict(state_dict, tiny_config(se_act="gelu"), dtype=np.float64)
    other, _ = mc.forward(params_gelu, state, reference["x"], tiny_config(se_act="gelu"))
    assert mc.rel_error(other, reference["logits"]) > 1e-4


def test_convert_both_ways_is_exact(tmp_path, capsys):
    npz, back = tmp_path / "tiny.npz", tmp_path / "back.safetensors"
    assert main(["convert", str(SAFETENSORS), str(npz), "--model", "coatnet_0_224",
                 "--image-size", "32", "64"]) == 2  # the tiny model is not coatnet_0_224
    assert "does not fit timm's 'coatnet_0_224'" in capsys.readouterr().err
    # the stock model at 64x64: random weights written as timm would, converted both ways
    config = mt.config("coatnet_0_224", image_size=64, num_classes=10)
    params, state = mc.init_params(config, seed=0)
    original = tmp_path / "timm.safetensors"
    files.save_timm_file(original, params, state, config)
    assert main(["convert", str(original), str(npz), "--model", "coatnet_0_224",
                 "--image-size", "64"]) == 0
    assert main(["convert", str(npz), str(back)]) == 0
    a, b = files.read_state_dict(original), files.read_state_dict(back)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    ckpt = mc.load_checkpoint(npz)
    assert ckpt.config == config
    # bad input: a clear message and exit status 2
    assert main(["convert", str(original), str(tmp_path / "x.npz")]) == 2
    assert "--model is required" in capsys.readouterr().err
    assert main(["convert", str(npz), str(tmp_path / "x.txt")]) == 2
    assert "one .safetensors file and one .npz" in capsys.readouterr().err


def test_resize_keeps_everything_but_the_tables():
    config = tiny_config()
    params, state = mt.load_state_dict(files.read_state_dict(SAFETENSORS), config,
                                       dtype=np.float64)
    resized, new_config = resize_rel_bias(params, config, (64, 64))
    assert new_config.image_size == (64, 64)
    assert resized["s3"]["block0"]["attn"]["rel_bias"].shape == (1, 7 * 7)  # 4x4 grid
    assert resized["s1"] is not params["s1"] or resized["s1"] == params["s1"]
    assert params["s3"]["block0"]["attn"]["rel_bias"].shape == (1, 3 * 7)  # untouched: 2x4
    logits, _ = mc.forward(resized, state, np.zeros((1, 64, 64, 3)), new_config)
    assert logits.shape == (1, 10)
    # back to the same grid: unchanged, bit for bit
    same, _ = resize_rel_bias(params, config, (32, 64))
    assert np.array_equal(same["s4"]["block0"]["attn"]["rel_bias"],
                          params["s4"]["block0"]["attn"]["rel_bias"])


def test_timm_options_are_checked_and_the_paper_presets_keep_their_defaults():
    paper = mc.config("coatnet-0")
    assert (paper.se_basis, paper.se_act, paper.ln_eps, paper.shortcut_proj, paper.stem_bias) == (
        "input", "gelu", 1e-5, "always", True)
    assert mc.count_params(paper) == 24_993_844
    blocks = {b.name: b for b in mc.plan(mt.config("coatnet_2_224"))}
    assert blocks["s1.block0"].se == 32 and not blocks["s1.block0"].proj  # 128 -> 128: pool only
    assert blocks["s2.block0"].se == 64 and blocks["s2.block0"].proj  # 0.25 of the output 256
    for field, value, message in [("se_basis", "middle", "se_basis must be one of"),
                                  ("se_act", "relu", "se_act must be one of"),
                                  ("ln_eps", 0.0, "ln_eps must be a positive number"),
                                  ("ln_eps", True, "ln_eps must be a positive number"),
                                  ("shortcut_proj", "never", "shortcut_proj must be one of"),
                                  ("stem_bias", 1, "stem_bias must be True or False")]:
        with pytest.raises(ValueError, match=message):
            paper.replace(**{field: value})
    with pytest.raises(ValueError, match="act must be 'gelu' or 'silu'"):
        mc.squeeze_excitation(np.ones((1, 2, 2, 4)), {}, act="relu")
