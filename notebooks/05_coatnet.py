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
# # 05 · CoAtNet: stages, layouts, counts and the whole-network oracle
#
# Notebooks [02](02_mbconv.ipynb) and [04](04_transformer_block.ipynb) built the two blocks
# (with [03](03_relative_attention.ipynb)'s relative attention inside the second).
# CoAtNet (paper section 2.2, table 3) stacks them in five stages. This notebook:
#
# 1. prints the stages and blocks of every layout (C-C-C-C ... ViT_REL) of a small preset;
# 2. recomputes the paper's parameter and FLOP table for CoAtNet-0 to -4;
# 3. checks the whole network, logits and the gradient of every parameter, against a PyTorch
#    twin that receives the same weights;
# 4. moves weights back from PyTorch (`from_torch`) and round-trips them exactly.
#
# Source: [`minicoat/model.py`](../minicoat/model.py),
# [`minicoat/configs.py`](../minicoat/configs.py),
# [`minicoat/oracle/network.py`](../minicoat/oracle/network.py).
#
# **Learning objectives.** After this notebook you can
#
# 1. read a config as stages and blocks (the plan) for every layout;
# 2. recompute the paper's parameter and FLOP counts of CoAtNet-0 to -4;
# 3. check a whole network, logits and every gradient, against an independent PyTorch twin;
# 4. move weights between NumPy and PyTorch exactly, both ways.
#
# **Prerequisites.** Notebooks 02 (MBConv) and 04 (the Transformer block); counting the
# parameters and multiply-adds of a linear layer.
#
# **Time.** About 40 minutes to read and run, plus 30 minutes for the exercises at the end.

# %%
import math

import matplotlib.pyplot as plt
import numpy as np
import torch
from autograd import grad

import minicoat as mc
from minicoat.model import param_spec
from minicoat.oracle.network import from_torch, to_torch, torch_grads_as_params
from minicoat.tree import flatten

torch.set_num_threads(1)  # tiny tensors: one thread is fastest, and immune to a busy machine

# %% [markdown]
# ## 1. Stages and layouts
#
# Table 3 of the paper: an image of $224 \times 224$ goes through
#
# | stage | size | block | CoAtNet-0: blocks, width |
# |---|---|---|---|
# | S0 | 1/2 | two $3\times3$ convolutions (the first with stride 2) | 2, 64 |
# | S1 | 1/4 | MBConv | 2, 96 |
# | S2 | 1/8 | MBConv | 3, 192 |
# | S3 | 1/16 | Transformer (relative attention + FFN) | 5, 384 |
# | S4 | 1/32 | Transformer | 2, 768 |
#
# then global average pooling and a linear classifier. The first block of S1-S4 halves the
# resolution and sets the stage's width: MBConv's downsampling form is in notebook
# [02](02_mbconv.ipynb), the Transformer's, $x \leftarrow \mathrm{Proj}(\mathrm{Pool}(x)) +
# \mathrm{Attention}(\mathrm{Pool}(\mathrm{Norm}(x)))$, in notebook
# [04](04_transformer_block.ipynb).
#
# Which stages are convolutional ("C", MBConv) and which are attention ("T", Transformer) is
# the **layout**, one field of `mc.CoAtNetConfig`. Section 2.2 compares C-C-C-C, C-C-C-T,
# C-C-T-T (CoAtNet), C-T-T-T, and ViT_REL: a ViT-like network with a patchifying stem
# straight to S3's grid and Transformer blocks only (but with relative attention).
#
# The paper's models need $224 \times 224$ inputs; the small presets keep the stage structure
# at small sizes. `coatnet-cifar` is $32 \times 32 \times 3$ with strides $(1, 2, 2, 2, 2)$, so
# the grids are $32, 16, 8, 4, 2$:

# %%
small = mc.config("coatnet-cifar")
print(small)
print("grid after each stage:", [small.grid(stage) for stage in range(5)])

# %% [markdown]
# Everything a block needs to know (its kind, its widths, its stride, its grids, the expanded
# width of its MBConv or FFN, its squeeze-excitation width, its heads) is written out once, by
# `mc.plan(config)`: one named record per stem layer and per block, in the order they run.
# `init_params`, `forward`, the counts and the PyTorch twin all read this plan; nothing else
# computes a width. Here is the record of CoAtNet-0's first Transformer block:

# %%
print(next(block for block in mc.plan(mc.config("coatnet-0")) if block.kind == "T"))

# %% [markdown]
# The helper below prints the plan of a network, one line per record, with each block's
# shortcut (the identity, or `Proj(Pool(x))` when it downsamples) and its parameter count.


# %%
def block_list(config):
    """One line per stem layer / block of the network built from `config`, from its plan."""
    params, _ = mc.init_params(config)
    kinds = {"stem": "conv3x3", "patch": "patchify", "C": "MBConv", "T": "Transformer"}
    lines = []
    for block in mc.plan(config):
        stage, name = block.keys
        tree = params[stage] if block.stage else params["stem"]
        grid = "x".join(map(str, block.grid_out))
        line = f"  {block.name:10s} {kinds[block.kind]:11s} {block.c_in:3d} -> {block.c_out:3d}"
        line += f" on grid {grid:5s}"
        if block.kind in ("C", "T"):
            downsamples = block.stride == 2
            changes = downsamples or block.c_in != block.c_out
            shortcut = "Proj(Pool(x))" if downsamples else ("Proj(x)" if changes else "x")
            inner = f"SE {block.se:2d}" if block.kind == "C" else f"heads {block.heads}"
            line += f"  expanded {block.expanded:4d}, {inner:8s} shortcut {shortcut:13s}"
            line += f" {mc.count_params(tree[name]):9,d} params"
        lines.append(line)
    return lines


for layout in ("CCCC", "CCCT", "CCTT", "CTTT", "VIT_REL"):
    config = small.replace(layout=layout)
    params_total, flops = mc.count_params(config), mc.count_flops(config)
    print(f"{layout}: {params_total:,d} parameters, {flops / 1e6:.1f}M multiply-adds per image")
    print("\n".join(block_list(config)))

# the reading below, asserted: same widths and grids in every layout; more parameters as "T"
# moves earlier
shapes = {layout: [(b.c_in, b.c_out, b.grid_out) for b in mc.plan(small.replace(layout=layout))]
          for layout in ("CCCC", "CCCT", "CCTT", "CTTT")}
assert all(s == shapes["CCTT"] for s in shapes.values()), "a layout changed a width or a grid"
totals = [mc.count_params(small.replace(layout=layout)) for layout in shapes]
assert totals == sorted(totals), f"parameters do not grow as T moves earlier: {totals}"

# %% [markdown]
# A few things to read off:
#
# * Changing the layout changes the block type of whole stages, never the widths or the grids.
# * Transformer blocks are heavier than MBConv blocks of the same width (attention's four
#   $C \times C$ projections plus an FFN of expansion 4), so parameters grow as "T" moves
#   earlier, while the multiply-adds follow the grid size: attention on S2's $8 \times 8$ grid
#   costs $2 T^2 D$ with $T = 64$.
# * ViT_REL spends all its blocks (S1 + S2 + S3 of them) at S3's width and grid.
#
# ## 2. The paper's table, recomputed
#
# `mc.count_params(config)` adds up the shapes of the parameter spec (nothing is allocated:
# CoAtNet-4 has 275M parameters). `mc.count_flops(config)` counts the **multiply-adds** of one
# image analytically: every convolution and linear layer
# ($H' W' k^2 C_{\text{in}} C_{\text{out}}$, depthwise $H' W' k^2 C$), SE's two small
# linears, and attention's two matrix products $q k^\top$ and $A v$ ($2 T^2 D$); norms,
# activations, softmax, pooling and additions are not counted, as is customary. The paper's
# tables 4 and 5 report the same quantity ("FLOPs") for 1000 classes.

# %%
PAPER = {  # params (M), FLOPs (B) at 224, FLOPs (B) at 384; tables 4-5 of the paper
    "coatnet-0": (25, 4.2, 13.4),
    "coatnet-1": (42, 8.4, 27.4),
    "coatnet-2": (75, 15.7, 49.8),
    "coatnet-3": (168, 34.7, 107.4),
    "coatnet-4": (275, None, 189.5),
}


def percent(ours, paper):
    return "      -" if paper is None else f"{100 * (ours / paper - 1):+6.1f}%"


header = "ours  paper    diff"
print(f"{'model':10s} | {'params (M)':>20s} | {'FLOPs @224 (B)':>23s} | {'FLOPs @384 (B)':>23s}")
print(f"{'':10s} | {header:>20s} | {header:>23s} | {header:>23s}")
rows = {}
for name, (params_paper, flops224_paper, flops384_paper) in PAPER.items():
    config = mc.config(name)
    params_m = mc.count_params(config) / 1e6
    flops224 = mc.count_flops(config) / 1e9
    flops384 = mc.count_flops(config.replace(image_size=384)) / 1e9
    rows[name] = (params_m, flops224, flops384)
    paper224 = "    -" if flops224_paper is None else f"{flops224_paper:5.1f}"
    print(
        f"{name:10s} | {params_m:5.1f} {params_paper:5d} {percent(params_m, params_paper)} | "
        f"{flops224:6.1f} {paper224:>6s} {percent(flops224, flops224_paper)} | "
        f"{flops384:6.1f} {flops384_paper:6.1f} {percent(flops384, flops384_paper)}"
    )

# %% [markdown]
# The parameter counts land within 1% of the paper's (25.0M for CoAtNet-0, as timm's
# paper-style configuration). They include a pre-logits layer (linear + tanh, `head_hidden`)
# between the pooled features and the classifier, as timm's paper-style configs have; without
# it CoAtNet-0 would have 24.4M. The multiply-adds land 1-3% *below* the paper's: the paper
# does not say exactly what its counter includes (norms, the softmax and the SE's elementwise
# products are candidates), so we require 2% for parameters and 5% for FLOPs, as the tests do.
# At 384 the parameter count grows slightly because the relative-bias tables grow with the
# grid ($(2 \cdot 24 - 1)^2$ instead of $(2 \cdot 14 - 1)^2$ entries per head in S3).

# %%
for name, (params_paper, flops224_paper, flops384_paper) in PAPER.items():
    params_m, flops224, flops384 = rows[name]
    assert abs(params_m / params_paper - 1) <= 0.02, (
        f"{name}: {params_m:.2f}M vs paper {params_paper}M"
    )
    assert abs(flops384 / flops384_paper - 1) <= 0.05, (
        f"{name}@384: {flops384:.2f}B vs paper {flops384_paper}B"
    )
    if flops224_paper is not None:
        assert abs(flops224 / flops224_paper - 1) <= 0.05, (
            f"{name}@224: {flops224:.2f}B vs paper {flops224_paper}B"
        )

# %% [markdown]
# Where do CoAtNet-0's parameters live? Summing the spec stage by stage shows the usual
# picture: the early, high-resolution stages are cheap in parameters (but not in compute),
# the two Transformer stages hold most of the weights.

# %%
spec = param_spec(mc.config("coatnet-0"))
per_stage = {
    stage: sum(math.prod(leaf[1]) for leaf in flatten(spec[stage]).values()) / 1e6
    for stage in ("stem", "s1", "s2", "s3", "s4", "head")
}
plt.figure(figsize=(6, 3))
plt.bar(list(per_stage), list(per_stage.values()), color=["C0", "C0", "C0", "C1", "C1", "C2"])
plt.ylabel("parameters (M)")
plt.title("CoAtNet-0 parameters per stage\n(blue: convolution, orange: attention, green: head)")
plt.show()
print({stage: round(count, 2) for stage, count in per_stage.items()})
share = (per_stage["s3"] + per_stage["s4"]) / sum(per_stage.values())
print(f"S3 + S4 hold {share:.0%} of the parameters")
assert share > 0.5, "the Transformer stages hold most of the weights"

# %% [markdown]
# ## 3. The whole network against PyTorch
#
# `minicoat.oracle.network.TorchCoAtNet` is CoAtNet written as a PyTorch user would write it
# (NCHW, `nn.Conv2d`, `nn.BatchNorm2d`, `nn.LayerNorm`, `nn.MaxPool2d(ceil_mode=True)` and a
# relative attention module), with module names that mirror our parameter keys.
# `to_torch(params, state, config)` builds the twin and copies our weights into it, converting
# every kernel's layout. We then run the same images through both and compare:
#
# * the logits;
# * the gradient of the cross-entropy loss with respect to **every parameter**
#   (`torch_grads_as_params` reads the twin's `.grad`s back into our tree layout);
# * in training mode, the BatchNorm running statistics after the forward pass.
#
# A tiny configuration keeps it fast: every block type, every downsampling form and the head
# are present. Parameters are perturbed away from their initial values (zero biases and unit
# scales could hide mistakes). Float64 throughout: expected ~$10^{-15}$, required
# $\le 10^{-10}$, with the zero-gradient rule of notebook 02 for leaves whose true gradient is
# zero (`pre_norm.beta` of MBConv blocks in training mode).

# %%
tiny = mc.CoAtNetConfig(
    depths=(2, 2, 1, 2, 1),
    channels=(8, 16, 32, 32, 64),
    strides=(1, 2, 2, 1, 2),
    image_size=16,
    in_channels=2,
    num_classes=5,
    head_dim=16,
    head_hidden=6,
)
rng = np.random.default_rng(0)
images = rng.standard_normal((3, 16, 16, 2))  # (N, H, W, C), float64
labels = np.array([0, 3, 4])


def perturbed(tree, scale=0.1):
    return {
        key: perturbed(value, scale)
        if isinstance(value, dict)
        else value + scale * rng.standard_normal(value.shape)
        for key, value in tree.items()
    }


def grad_errors(ours, theirs):
    """Normwise relative error per leaf; absolute vs the total norm for true-zero leaves."""
    ours, theirs = flatten(ours), flatten(theirs)
    total = np.sqrt(sum(np.sum(v**2) for v in ours.values()))
    errors = {}
    for key in ours:
        if max(np.linalg.norm(ours[key]), np.linalg.norm(theirs[key])) < 1e-8 * total:
            errors[key] = np.linalg.norm(ours[key] - theirs[key]) / total
        else:
            errors[key] = mc.rel_error(ours[key], theirs[key])
    return errors


def check_network(config, train):
    params, state = mc.init_params(config, seed=0, dtype=np.float64)
    params = perturbed(params)

    # theirs: the twin holding the same weights, NCHW
    twin = to_torch(params, state, config).train(train)
    logits_torch = twin(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()))
    torch.nn.functional.cross_entropy(logits_torch, torch.from_numpy(labels)).backward()

    # ours
    def loss(p):
        logits, _ = mc.forward(p, state, images, config, train=train)
        return mc.cross_entropy(logits, labels)

    logits, new_state = mc.forward(params, state, images, config, train=train)
    errors = grad_errors(grad(loss)(params), torch_grads_as_params(twin, params))
    errors["logits"] = mc.rel_error(logits, logits_torch.detach().numpy())
    _, twin_state = from_torch(twin)  # the twin's running statistics after its forward pass
    for key, value in flatten(new_state).items():
        errors[f"state {key}"] = mc.rel_error(value, flatten(twin_state)[key])
    return errors


for layout in ("CCTT", "CCCC", "CTTT", "VIT_REL"):
    for train in (True, False):
        errors = check_network(tiny.replace(layout=layout), train)
        worst = max(errors, key=errors.get)
        print(
            f"{layout:7s} train={train!s:5s}: logits {errors['logits']:.1e}, "
            f"worst of {len(errors)} comparisons {errors[worst]:.1e} ({worst})"
        )
        assert errors[worst] <= 1e-10, (
            f"{layout}, train={train}: ours vs torch, worst {worst}: {errors[worst]:.2e}"
        )

# %% [markdown]
# Agreement to ~$10^{-15}$ on every one of the network's parameters, in both modes and for
# every kind of layout, is strong evidence that the NumPy code computes the same function
# (and the same gradient) as an independent implementation. The tests
# ([`tests/test_network.py`](../tests/test_network.py)) run the same check over every
# combination of layout, attention variant, pool and stride placement.
#
# ## 4. Weights back from PyTorch
#
# `from_torch(module)` reads `(params, state)` out of a twin. Layout conversions are pure
# transpositions and reshapes, so a round trip must be **bit-exact** (`np.array_equal`, not
# a tolerance):

# %%
params, state = mc.init_params(tiny, seed=1, dtype=np.float64)
params_back, state_back = from_torch(to_torch(params, state, tiny))
for ours, back in ((params, params_back), (state, state_back)):
    for key, value in flatten(ours).items():
        returned = flatten(back)[key]
        assert np.array_equal(value, returned), (
            f"{key}: round trip changed the values, {value.ravel()[:3]} -> {returned.ravel()[:3]}"
        )
print(
    f"round trip exact for {len(flatten(params))} parameter and {len(flatten(state))} state arrays"
)

# %% [markdown]
# The round trip is also the way *out*: prototype in NumPy, continue in PyTorch, come back.
# Here the twin takes three SGD steps in PyTorch (in training mode, so its BatchNorm
# statistics move as well); then the weights come back with `from_torch` and our forward pass
# must produce the twin's logits (evaluation mode, expected ~$10^{-15}$, required
# $\le 10^{-10}$).

# %%
twin = to_torch(params, state, tiny)
optimizer = torch.optim.SGD(twin.parameters(), lr=0.1)
images_torch = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
for step in range(3):
    optimizer.zero_grad()
    loss = torch.nn.functional.cross_entropy(twin(images_torch), torch.from_numpy(labels))
    loss.backward()
    optimizer.step()
    print(f"torch step {step}: loss {loss.item():.4f}")

twin.eval()
with torch.no_grad():
    logits_torch = twin(images_torch).numpy()
params_trained, state_trained = from_torch(twin)
logits, _ = mc.forward(params_trained, state_trained, images, tiny, train=False)
err = mc.rel_error(logits, logits_torch)
print(f"logits after training in torch: ours vs torch {err:.1e}")
assert err <= 1e-10, f"ours {logits[0]} vs torch {logits_torch[0]}: error {err:.2e}"

# %% [markdown]
# ## Summary
#
# | check | compared | expected | required |
# |---|---|---|---|
# | counts | params / FLOPs vs the paper's tables | within 1% / 3% | 2% / 5% |
# | network oracle | logits, every gradient, running statistics vs `TorchCoAtNet` | ~1e-15 | 1e-10 |
# | round trip | `from_torch(to_torch(params))` | bit-exact | bit-exact |
# | way out | logits after training in torch | ~1e-15 | 1e-10 |
#
# Further reading: [docs/oracle.md](../docs/oracle.md) for how the cross-checks work,
# [docs/math.md](../docs/math.md) for every equation with its function, and
# [docs/training.md](../docs/training.md) to train these networks.


# %% [markdown]
# ## Exercises
#
# Solutions are hidden below each exercise (click to open); try first.
#
# **1. The heaviest block.** Which block of CoAtNet-0 holds the most parameters? Use
# `mc.plan` and the block specs (`blocks.mbconv_spec`, `blocks.transformer_spec`).
#
# <details><summary>Solution (hidden)</summary>
#
# `s4.block1`, a Transformer block at width 768, with 7,091,928 parameters (attention
# $4 \cdot 768^2$, the FFN $8 \cdot 768^2$, plus biases, norms and the bias table).
#
# </details>
#
# **2. Changing the layout.** Count the parameters of CoAtNet-0 with `layout="CCCT"` and
# explain the difference from C-C-T-T.
#
# <details><summary>Solution (hidden)</summary>
#
# 23,343,112 instead of 24,993,844: S3's five blocks become MBConv blocks, which at the same
# width have fewer parameters than Transformer blocks.
#
# </details>
#
# **3. FLOPs and resolution.** CoAtNet-0 needs 4.14 B multiply-adds at 224 and 13.05 B at 384
# (`mc.count_flops`). The pixel count grows by $(384/224)^2 \approx 2.94$. Why is the ratio
# larger?
#
# <details><summary>Solution (hidden)</summary>
#
# 13.05 / 4.14 = 3.15: everything per pixel or per token scales by 2.94, but the attention
# matrices grow with the square of the token count, so their share grows by $2.94^2$.
#
# </details>
#
# ## Written questions
#
# Answer in a few sentences each (in a markdown cell below each question).
#
# 1. Why does ViT_REL need a patchifying stem, and what does it lose against the convolution
#    stages?
# 2. Why are the oracle checks run in float64 rather than in the float32 used for training?
