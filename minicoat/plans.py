"""The plan of a network: one named record per layer of S0 and per block of S1-S4, from the config.

CoAtNet's shape is fixed by its config (paper, section 2.2 and table 3): S0, the stem, is
``depths[0]`` 3x3 convolutions (the first with stride ``strides[0]``); each of S1-S4 has
``depths[i]`` blocks of its type, the first one downsampling by ``strides[i]`` and widening to
``channels[i]``. ``plan(config)`` writes that out once, block by block, with every width a
block needs; the parameter specs, ``forward``, the counts, the PyTorch twin and the notebooks
read it and compute none of it again::

    >>> import minicoat as mc
    >>> for block in mc.plan(mc.config("coatnet-digits"))[:3]:
    ...     print(block.name, block.kind, block.c_in, block.c_out, block.grid_out)
    stem.conv0 stem 1 32 (8, 8)
    stem.conv1 stem 32 32 (8, 8)
    s1.block0 C 32 32 (8, 8)

``layout="VIT_REL"`` replaces S0-S2 by one patchifying linear layer (kind ``"patch"``, patch
size = stride = ``strides[0] * .. * strides[3]``, landing on S3's grid) and runs all the early
blocks, ``depths[1] + depths[2] + depths[3]`` of them, in S3 at S3's width.
"""

import functools
import math
from typing import NamedTuple


class Block(NamedTuple):
    """One layer of the stem or one block of S1-S4.

    Attributes:
        name: where its parameters live, ``"stem.conv0"``, ``"stem.patch"``, ``"s2.block1"``.
        stage: 0 (the stem) .. 4.
        index: its position within the stage.
        kind: ``"stem"`` (a 3x3 convolution), ``"patch"`` (VIT_REL's patchifying layer),
            ``"C"`` (MBConv) or ``"T"`` (Transformer).
        c_in, c_out: input and output widths.
        stride: 1, or 2 for a downsampling block (the patch size for ``"patch"``).
        grid_in, grid_out: ``(h, w)`` of its input and output feature maps.
        expanded: the inner width, ``c_out * mbconv_expand`` for MBConv (the expansion of the
            output width, as timm's CoAtNet), ``c_out * ffn_expand`` for the Transformer's FFN;
            0 for the stem.
        se: MBConv's squeeze-excitation width, ``max(1, int(c * se_ratio))`` with ``c`` the
            input width (``se_basis="input"``) or the output width (``"output"``); 0 otherwise.
        heads: the Transformer's attention heads, ``c_out // head_dim``; 0 otherwise.
        proj: whether its shortcut has a 1x1 projection (``Proj(Pool(x))``): when it
            downsamples or widens (``shortcut_proj="always"``), or only when it widens
            (``"width"``); False for the stem.
    """

    name: str
    stage: int
    index: int
    kind: str
    c_in: int
    c_out: int
    stride: int
    grid_in: tuple
    grid_out: tuple
    expanded: int = 0
    se: int = 0
    heads: int = 0
    proj: bool = False

    @property
    def keys(self):
        """The two keys of its parameters in the tree, e.g. ``("s2", "block1")``."""
        return tuple(self.name.split("."))


def make_block(config, kind, c_in, c_out, stride, grid_in, stage=1, index=0):
    """The record of one MBConv (``kind="C"``) or Transformer (``"T"``) block.

    ``plan`` calls it for every block of a network; tests, notebooks and the bench call it for a
    block used on its own. ``grid_in`` is its input's ``(h, w)``.
    """
    grid_out = (-(-grid_in[0] // stride), -(-grid_in[1] // stride))  # ceil(grid / stride)
    common = (f"s{stage}.block{index}", stage, index, kind, c_in, c_out, stride,
              tuple(grid_in), grid_out)
    widens = c_in != c_out
    proj = widens or (stride != 1 and config.shortcut_proj == "always")
    if kind == "C":
        basis = c_in if config.se_basis == "input" else c_out
        return Block(*common, expanded=c_out * config.mbconv_expand,
                     se=max(1, int(basis * config.se_ratio)), proj=proj)
    if kind == "T":
        return Block(*common, expanded=c_out * config.ffn_expand, heads=c_out // config.head_dim,
                     proj=proj)
    raise ValueError(f"a block's kind is 'C' (MBConv) or 'T' (Transformer), got {kind!r}")


def plan(config):
    """The blocks of ``config`` in the order they run: a tuple of ``Block`` records.

    Computed once per config (configs are frozen and hashable) and shared by every caller.
    """
    return _plan(config)


@functools.lru_cache(maxsize=64)
def _plan(config):
    blocks = []
    grid, c_in = tuple(config.image_size), config.in_channels
    if config.layout == "VIT_REL":
        patch = math.prod(config.strides[:4])
        blocks.append(Block("stem.patch", 0, 0, "patch", c_in, config.channels[3], patch, grid,
                            config.grid(3)))
        first_stage = 3
    else:
        for i in range(config.depths[0]):
            stride = config.strides[0] if i == 0 else 1
            blocks.append(Block(f"stem.conv{i}", 0, i, "stem", c_in, config.channels[0], stride,
                                grid, config.grid(0)))
            grid, c_in = config.grid(0), config.channels[0]
        first_stage = 1
    grid, c_in = blocks[-1].grid_out, blocks[-1].c_out
    for stage in range(first_stage, 5):
        kind = config.stage_types[stage - 1]
        depth, stride = config.depths[stage], config.strides[stage]
        if config.layout == "VIT_REL" and stage == 3:  # all the early blocks, on S3's grid
            depth, stride = config.depths[1] + config.depths[2] + config.depths[3], 1
        for index in range(depth):
            block = make_block(config, kind, c_in, config.channels[stage],
                               stride if index == 0 else 1, grid, stage, index)
            blocks.append(block)
            grid, c_in = block.grid_out, block.c_out
    return tuple(blocks)


def stage_blocks(blocks, stage):
    """The records of one stage (0 = the stem), in order."""
    return tuple(block for block in blocks if block.stage == stage)
