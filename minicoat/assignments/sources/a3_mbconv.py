# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # A3 · The MBConv block
#
# The "C" stages of CoAtNet are MBConv blocks (the inverted bottleneck of MobileNetV2 and
# EfficientNet), written pre-activation (arXiv 2106.04803, appendix A.1):
#
# $$x \leftarrow \mathrm{Proj}(\mathrm{Pool}(x)) + \mathrm{Conv1x1}(\mathrm{SE}(
#   \mathrm{DepthConv}(\mathrm{Conv1x1}(\mathrm{BN}(x)))))$$
#
# In detail, with GELU activations, BatchNorm (BN) after the expansion and after the
# depthwise convolution, and squeeze-excitation (SE) on the expanded features:
#
# 1. `h = BN(x)`, the pre-norm;
# 2. `h = GELU(BN(Conv1x1(h)))`, expanding the width 4x (`C_out * 4` channels);
# 3. `h = GELU(BN(DepthConv3x3(h)))`;
# 4. `h = SE(h)`, a per-channel gate computed from the mean over H and W;
# 5. `h = Conv1x1(h)`, projecting down to `C_out` (no activation);
# 6. `y = shortcut(x) + h`.
#
# The **shortcut** is the identity unless the block downsamples (stride 2) or changes the
# width; then it is `Proj(Pool(x))`: a 2x2 stride-2 pool (max in the paper, average in timm;
# only when stride 2) followed by a 1x1 convolution `p["proj"]`. The **stride** sits in the
# first 1x1 convolution (`cfg.stride_at == "expand"`, the paper) or in the depthwise
# convolution (`"depthwise"`, as timm does).
#
# BatchNorm has *state*, the running statistics. minicoat's functions never mutate it:
# `mc.batch_norm(x, gamma, beta, running, train)` returns `(y, new_running)`, and your block
# returns the new state of its three norms. Use the ops of minicoat: `mc.batch_norm`,
# `mc.conv1x1`, `mc.depthwise_conv2d`, `mc.gelu`, `mc.squeeze_excitation`, `mc.max_pool2d`,
# `mc.avg_pool2d`. The checks compare your block's output, state and gradients with PyTorch
# (`nn.Conv2d(groups=C)`, `nn.BatchNorm2d`, ...) and with `minicoat.blocks.mbconv_forward`.

# %%
import numpy as np

import minicoat as mc
from minicoat.assignments import checks
from minicoat.blocks import mbconv_spec, mbconv_state
from minicoat.model import init_from_spec, init_state
from minicoat.plans import make_block

# %% [markdown]
# The parameters are a nested dict (`mbconv_spec` lists the shapes of a block from 8 to 16
# channels with stride 2 on a 6x6 map; `make_block` gives its widths, as the network's plan does):

# %%
cfg = mc.config("coatnet-digits")  # GELU "none", pool "max", stride_at "expand" (the paper)
block = make_block(cfg, "C", c_in=8, c_out=16, stride=2, grid_in=(6, 6))
params = init_from_spec(mbconv_spec(block), np.random.default_rng(0), np.float64)
state = init_state(mbconv_state(block), np.float64)
for group, leaves in params.items():
    print(f"{group:9s}", {name: value.shape for name, value in leaves.items()})
print("state    ", {name: list(running) for name, running in state.items()})

# %% [markdown]
# ## 1. The shortcut

# %%
def shortcut(p, x, stride, pool):
    """Identity, or Proj(Pool(x)): (N, H, W, C_in) -> (N, H / stride, W / stride, C_out)."""
    ### BEGIN SOLUTION
    # HINT: pool only when stride == 2 (mc.max_pool2d or mc.avg_pool2d by `pool`), then
    # HINT: mc.conv1x1 with p["proj"]["w"] and p["proj"]["b"] if "proj" in p
    if stride == 2:
        x = mc.max_pool2d(x) if pool == "max" else mc.avg_pool2d(x)
    if "proj" in p:
        x = mc.conv1x1(x, p["proj"]["w"], p["proj"]["b"])
    return x
    ### END SOLUTION


# %% [markdown]
# ## 2. The block

# %%
def mbconv_forward(p, state, x, stride, cfg, train):
    """MBConv block: (N, H, W, C_in) -> ((N, H', W', C_out), new_state)."""
    expand_stride = stride if cfg.stride_at == "expand" else 1
    dw_stride = stride if cfg.stride_at == "depthwise" else 1
    new_state = {}
    ### BEGIN SOLUTION
    # HINT: steps 1-6 above; each mc.batch_norm(h, **p[name], running=state[name], train=train)
    # HINT: returns (h, new_state[name]); mc.gelu(h, cfg.gelu); finish with shortcut(...) + h
    h, new_state["pre_norm"] = mc.batch_norm(
        x, **p["pre_norm"], running=state["pre_norm"], train=train
    )
    h = mc.conv1x1(h, p["expand"]["w"], stride=expand_stride)  # (N, H', W', 4 C_out)
    h, new_state["norm1"] = mc.batch_norm(h, **p["norm1"], running=state["norm1"], train=train)
    h = mc.gelu(h, cfg.gelu)
    h = mc.depthwise_conv2d(h, p["dw"]["w"], stride=dw_stride)
    h, new_state["norm2"] = mc.batch_norm(h, **p["norm2"], running=state["norm2"], train=train)
    h = mc.gelu(h, cfg.gelu)
    h = mc.squeeze_excitation(h, p["se"], cfg.gelu)
    h = mc.conv1x1(h, p["project"]["w"], p["project"]["b"])  # (N, H', W', C_out)
    return shortcut(p, x, stride, cfg.pool) + h, new_state
    ### END SOLUTION


# %% mbconv tags=["check"]
# Expected: output, running statistics and every gradient within ~1e-15 of PyTorch.
print(checks.check_mbconv(mbconv_forward))
### BEGIN HIDDEN TESTS
print(checks.check_mbconv(mbconv_forward, train=False, seed=1))
### END HIDDEN TESTS

# %% mbconv downsampling tags=["check"]
# A downsampling block: stride 2 and a wider output, so the shortcut is Proj(Pool(x)).
print(checks.check_mbconv(mbconv_forward, stride=2, c_out=16))
### BEGIN HIDDEN TESTS
print(checks.check_mbconv(mbconv_forward, stride=2, c_out=16, stride_at="depthwise", pool="avg",
                          shape=(2, 5, 5), seed=2))
print(checks.check_mbconv(mbconv_forward, stride=2, c_in=4, c_out=8, train=False, pool="avg",
                          seed=3))
print(checks.check_mbconv(mbconv_forward, stride=1, c_in=4, c_out=8, seed=4))
### END HIDDEN TESTS
