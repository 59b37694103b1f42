# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 09 · timm interoperability: the same CoAtNet, weights both ways, any resolution
#
# [timm](https://github.com/huggingface/pytorch-image-models) is where CoAtNets are trained at
# scale. `minicoat.interop.timm` builds timm's paper-style `coatnet_N_224` exactly and moves
# weights between timm's state dicts and minicoat's trees, with NumPy alone. This notebook:
#
# 1. reads a checkpoint that timm wrote (a tiny CoAtNet, `tests/fixtures/timm_tiny.safetensors`)
#    and reproduces timm's logits to the last digits;
# 2. shows the options that make minicoat's network timm's, and what one of them is worth;
# 3. writes the weights back, bit for bit;
# 4. runs the model at another resolution by resizing its relative-bias tables;
# 5. sketches the way out to scale: export, train with timm's `train.py`, import, compare.
#
# Source: [`minicoat/interop/`](../minicoat/interop/__init__.py); the page
# [timm](../docs/timm.md) has the measurements on the full-size models.

# %%
import pathlib
import tempfile

import matplotlib.pyplot as plt
import numpy as np

import minicoat as mc
from minicoat.interop import files, resize_rel_bias
from minicoat.interop import timm as mt
from minicoat.interop.layouts import from_timm, to_timm

FIXTURES = pathlib.Path("..") / "tests" / "fixtures"

# %% [markdown]
# ## 1. A checkpoint timm wrote
#
# `timm_tiny.safetensors` is the state dict of timm's own `MaxxVit`, with the settings of the
# paper-style `coatnet_N_224` models but narrower (widths 16, 16, 32, 32, 64), random weights,
# BatchNorm statistics and relative-bias tables, and `timm_tiny_logits.npz` holds timm's float64
# logits for one 32x64 image (made by `tests/fixtures/make_timm_tiny.py`). `safetensors.numpy`
# reads it without torch.

# %%
state_dict = files.read_state_dict(FIXTURES / "timm_tiny.safetensors")
reference = np.load(FIXTURES / "timm_tiny_logits.npz")
for name in list(state_dict)[:4] + ["stages.2.blocks.0.attn.qkv.weight",
                                    "stages.2.blocks.0.attn.rel_pos.relative_position_bias_table"]:
    print(f"{name:62s} {state_dict[name].shape}")

# %% [markdown]
# The same network in minicoat is `timm.config(...)` with the tiny widths; the config says,
# field by field, which of timm's settings it reproduces (`help(mt.config)`).

# %%
config = mt.config("coatnet_0_224", depths=(2, 1, 1, 1, 1), channels=(16, 16, 32, 32, 64),
                   head_hidden=64, image_size=(32, 64), num_classes=10).replace(name="timm-tiny")
params, state = mt.load_state_dict(state_dict, config, dtype=np.float64)
logits, _ = mc.forward(params, state, reference["x"], config)
error = mc.rel_error(logits, reference["logits"])
print(f"{mc.count_params(params):,} parameters; logits rel_error(minicoat, timm) = {error:.1e}")
assert error <= 1e-12

# %% [markdown]
# ## 2. The options that make it timm's network
#
# Where timm's CoAtNets differ from minicoat's defaults: squeeze-excitation is 0.25 of the
# block's *output* width (`se_basis="output"`) and uses SiLU (`se_act="silu"`), LayerNorm eps
# is 1e-6, a downsampling shortcut projects only when the width changes, the stem has no bias.
# Each is a field of the config. SiLU is `x * sigmoid(x)`, a new op of the teaching tier with
# its hand-written derivative `s + x s (1 - s)`:

# %%
z = np.linspace(-5, 5, 201)
plt.figure(figsize=(5, 3))
plt.plot(z, mc.gelu(z), label="GELU (minicoat's SE)")
plt.plot(z, mc.silu(z), label="SiLU (timm's SE)")
plt.legend()
plt.title("the squeeze-excitation activation")
plt.show()

# %% [markdown]
# Keep GELU in squeeze-excitation, with every weight the same, and the logits move far more
# than any rounding error (the comparison sees such mistakes):

# %%
gelu_config = config.replace(se_act="gelu")
other, _ = mc.forward(params, state, reference["x"], gelu_config)
moved = mc.rel_error(other, reference["logits"])
print(f"SE with GELU instead of SiLU: logits move by {moved:.1e} (relative)")
assert moved > 1e-4

# %% [markdown]
# How the arrays differ: kernels are stored output-first in PyTorch, and timm's qkv projection
# is *head-interleaved*: its rows run over (head, q/k/v, d), minicoat's columns over
# (q/k/v, head, d). For two heads of size 2, the row of timm's weight that each minicoat column
# comes from:

# %%
columns = np.arange(12)[None, :]  # minicoat's 3D = 12 output columns, numbered
print("minicoat column:", columns[0])
print("timm row:       ", to_timm("qkv_bias", columns[0], heads=2))
assert np.array_equal(from_timm("qkv_bias", to_timm("qkv_bias", columns[0], 2), 2), columns[0])

# %% [markdown]
# ## 3. Back to timm, bit for bit
#
# `to_state_dict` writes timm's names and shapes; what comes back is what was read.

# %%
params32, state32 = mt.load_state_dict(state_dict, config)  # the file's float32
back = mt.to_state_dict(params32, state32, config)
assert back.keys() == state_dict.keys()
changed = [k for k in state_dict if not np.array_equal(back[k], state_dict[k])]
print(f"{len(back)} arrays written back, {len(changed)} changed")
assert changed == []

# %% [markdown]
# ## 4. Any resolution
#
# Only the relative-bias tables depend on the image size: a block on an H x W grid has one bias
# per head and offset, a (2H-1) x (2W-1) table. `resize_rel_bias` resizes each as timm does
# (BEiT's geometric interpolation); the paper fine-tunes at 384 from 224 this way. Here S3's
# table grows from the 2x4 grid of a 32x64 image to the 4x4 grid of a 64x64 one:

# %%
resized, config64 = resize_rel_bias(params, config, (64, 64))
old = params["s3"]["block0"]["attn"]["rel_bias"][0].reshape(3, 7)
new = resized["s3"]["block0"]["attn"]["rel_bias"][0].reshape(7, 7)
fig, axes = plt.subplots(1, 2, figsize=(7, 3))
titles = ("32x64: 3 x 7 offsets", "64x64: 7 x 7 offsets")
for ax, table, title in zip(axes, (old, new), titles, strict=True):
    ax.imshow(table, cmap="coolwarm", vmin=-1.5, vmax=1.5)
    ax.set_title(title)
plt.show()
logits64, _ = mc.forward(resized, state, np.zeros((1, 64, 64, 3)), config64)
print("logits at 64x64:", logits64.shape)
assert new.shape == (7, 7) and np.isclose(new[3, 3], old[1, 3])  # offset (0, 0) stays put

# %% [markdown]
# ## 5. The way out to scale
#
# timm's `train.py` trains the same network on many GPUs. Export minicoat's weights as timm's
# `.safetensors` (the command line does the same: `minicoat convert run/checkpoint.npz
# coatnet.safetensors`), then, on the GPU machine:
#
# ```bash
# torchrun --nproc_per_node=8 train.py --data-dir /data/imagenet --model coatnet_0_224 \
#     --initial-checkpoint coatnet.safetensors --img-size 224 ...
# ```
#
# and bring the result back: `safetensors.torch.save_file(torch.load("model_best.pth.tar")
# ["state_dict"], "trained.safetensors")`, then `minicoat convert trained.safetensors
# trained.npz --model coatnet_0_224`. The tests do this round trip on a CPU against timm itself
# (`tests/test_timm.py`: export, a training step in timm, import, logits within 1e-12). Here,
# the export and the import, through a file:

# %%
with tempfile.TemporaryDirectory() as folder:
    path = pathlib.Path(folder) / "coatnet.safetensors"
    files.save_timm_file(path, params, state, config)
    print(f"wrote {path.name}: {path.stat().st_size:,} bytes")
    again = files.read_state_dict(path)
imported, imported_state = mt.load_state_dict(again, config)
logits_again, _ = mc.forward(imported, imported_state, reference["x"], config)
assert np.array_equal(logits_again, logits)
print("imported logits equal the exported model's: True")
