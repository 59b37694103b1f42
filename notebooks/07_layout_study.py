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
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 07 · The layout study: where should convolution end and attention begin?
#
# Paper, section 2.2 and figure 1. With a stem S0 and four stages S1-S4, each stage either
# MBConv ("C") or Transformer ("T"), the candidates are C-C-C-C, C-C-C-T, C-C-T-T, C-T-T-T,
# and ViT_REL (a patchifying stem and only Transformer blocks). The paper compares
#
# - **generalization**: the gap between training loss and test accuracy. Plot the final
#   training loss against test accuracy: for the same training loss, higher is better;
# - **capacity**: how well a model fits a large dataset, i.e. how low the training loss goes.
#
# and finds generalization C-C-C-C ≈ C-C-C-T ≥ C-C-T-T > C-T-T-T ≫ ViT_REL, capacity
# C-C-T-T ≈ C-T-T-T > ViT_REL > C-C-C-T > C-C-C-C, hence CoAtNet = C-C-T-T.
#
# `minicoat study layouts` runs the study on the digits (all five layouts, 15 epochs each,
# a few minutes per layout on a laptop) and writes a table and the figure. Here CI runs a quick
# version; set `MINICOAT_FULL=1` to run the real one in the notebook, and the results of the
# full run are loaded from `docs/layout_study/` below.
#
# **Learning objectives.** After this notebook you can
#
# 1. state the paper's layout study: what generalization and capacity mean and how each is
#    measured;
# 2. run it at small scale and read its table and figure;
# 3. judge when a run is long enough to rank anything (and say so when it is not).
#
# **Prerequisites.** Notebooks 05 (layouts) and 06 (training).
#
# **Time.** About 20 minutes to read and run (the full study takes a few minutes per layout),
# plus 30 minutes for the exercises at the end.

# %%
import json
import os
import tempfile
from pathlib import Path

from IPython.display import Image, display

import minicoat as mc
from minicoat.study import markdown_table, plot_study, run_layout_study

FULL = os.environ.get("MINICOAT_FULL", "0") == "1"

# %% [markdown]
# ## The five networks
# The same stem and widths for every layout (the `coatnet-digits` preset); only the block type
# of each stage changes. Sizes are comparable, not equal: a Transformer block has more
# parameters than an MBConv block of the same width, so each stage turned from C to T adds
# parameters (asserted), and ViT_REL, with every block a Transformer, has the most.

# %%
sizes = {}
for layout in ("CCCC", "CCCT", "CCTT", "CTTT", "VIT_REL"):
    config = mc.config("coatnet-digits", layout=layout)
    sizes[layout] = mc.count_params(config)
    print(f"{layout:8s} {sizes[layout]:>8,} parameters, "
          f"{mc.count_flops(config) / 1e6:6.1f} M multiply-adds per image")
counts = list(sizes.values())
assert counts == sorted(counts) and len(set(counts)) == 5, f"not increasing: {sizes}"
assert max(counts) / min(counts) < 1.5, "comparable sizes: within 50% of each other"

# %% [markdown]
# ## A quick run
# One epoch on 256 training images per layout: enough to see the machinery work, **far too
# little to rank the layouts**. The differences between layouts here are noise (one seed, a
# few dozen steps, accuracies far below what every layout reaches when trained), so the quick
# run prints its table without any ordering; the full study below has the orderings.

# %%
settings = dict(epochs=15) if FULL else dict(epochs=1, train_subset=256, test_subset=256)
rows = run_layout_study("digits", **settings)
print(markdown_table(rows, "digits", settings["epochs"], rank=FULL))
if not FULL:
    print("Too short to rank: no ordering is computed from this run.")
assert len(rows) == 5 and all(0 <= r["test_accuracy"] <= 1 for r in rows)


# %% [markdown]
# Each layout is one point: its final training loss (evaluation mode, no label smoothing)
# against its test accuracy. Further left means a better fit of the training data (capacity);
# higher means better on unseen data (generalization). For the quick run the figure shows how
# the study is read, not a result: its points are noise.

# %%
figure = os.path.join(tempfile.mkdtemp(), "layout_study.png")
plot_study(rows, figure, "quick run" if not FULL else "full run")
display(Image(figure))


# %% [markdown]
# ## The full study (saved)
# The results of `minicoat study layouts --dataset digits --epochs 15 --seeds 0 1 2`, kept in
# `docs/layout_study/`; [docs/layout_study.md](../docs/layout_study.md) discusses them next to
# the paper's ordering. Every layout's accuracy there is far above every layout's in the quick
# run (asserted when the quick run is the one above), which is why the quick run ranks nothing.

# %%
saved = Path("../docs/layout_study/layout_study.json")
if not saved.exists():  # when the notebook runs from the repository root
    saved = Path("docs/layout_study/layout_study.json")
full = json.loads(saved.read_text())
print(markdown_table(full["rows"], full["dataset"], full["epochs"]))
display(Image(saved.with_suffix(".png")))
if not FULL:
    quick_best = max(r["test_accuracy"] for r in rows)
    full_worst = min(r["test_accuracy"] for r in full["rows"])
    print(f"best quick-run accuracy {quick_best:.3f}; worst full-study accuracy {full_worst:.3f}")
    assert quick_best < full_worst, "the quick run is not far from the trained accuracies"


# %% [markdown]
# ## Exercises
#
# Solutions are hidden below each exercise (click to open); try first.
#
# **1. Seeds.** Run the quick study for seeds 0, 1 and 2 (`run_layout_study(..., seeds=(0,))`
# three times) and compare each layout's test accuracy across the seeds with the differences
# between layouts.
#
# <details><summary>Solution (hidden)</summary>
#
# In a one-epoch run on 256 images the spread between seeds is as large as the differences
# between layouts: the ordering changes from seed to seed, which is why it is not printed.
#
# </details>
#
# **2. Where the parameters are.** For each layout, split the parameter count into S1-S4
# (`mc.plan` and the block specs) and explain why C-T-T-T has more than C-C-C-T.
#
# <details><summary>Solution (hidden)</summary>
#
# Each stage turned from MBConv into Transformer blocks grows: at the same width a
# Transformer block (attention $4C^2$, FFN $8C^2$) outweighs an MBConv block here.
#
# </details>
#
# ## Written questions
#
# Answer in a few sentences each (in a markdown cell below each question).
#
# 1. How many seeds and epochs would you want before ranking two layouts whose test
#    accuracies differ by 0.3%, with 359 test images? (One image is 0.28%.)
# 2. Why does the paper measure capacity on JFT-300M rather than on ImageNet, and what stands
#    in for it here?
