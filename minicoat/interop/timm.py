"""timm's paper-style CoAtNets (``coatnet_0_224`` .. ``coatnet_4_224``), weights both ways.

timm (``timm/models/maxxvit.py``, version 1.0.31) builds these from ``MaxxVitCfg`` with its
default ``MaxxVitConvCfg`` and ``MaxxVitTransformerCfg``; each field of ``config`` below says
which of timm's settings it reproduces. With them, ``minicoat.forward`` computes what timm's
``MaxxVit`` computes (float64: logits within 1e-15, see ``docs/timm.md``)::

    from safetensors.numpy import load_file
    from minicoat.interop import timm
    config = timm.config("coatnet_0_224", image_size=64, num_classes=10)
    params, state = timm.load_state_dict(load_file("model.safetensors"), config)
    sd = timm.to_state_dict(params, state, config)  # what timm's load_state_dict takes

No torch is needed: a state dict here is a mapping of timm's names to NumPy arrays, as
``safetensors.numpy.load_file`` returns it (from a torch ``state_dict``:
``{k: v.numpy() for k, v in model.state_dict().items()}``).
"""

import numpy as onp

from ..configs import CoAtNetConfig
from ..model import check_params
from ..plans import plan
from ..tree import flatten, unflatten
from . import layouts, names
from .resize import resize_rel_bias_table

# timm's MaxxVitCfg of each model: (stem_width, embed_dim, depths, head_hidden_size)
MODELS = {
    "coatnet_0_224": (64, (96, 192, 384, 768), (2, 3, 5, 2), 768),
    "coatnet_1_224": (64, (96, 192, 384, 768), (2, 6, 14, 2), 768),
    "coatnet_2_224": (128, (128, 256, 512, 1024), (2, 6, 14, 2), 1024),
    "coatnet_3_224": (192, (192, 384, 768, 1536), (2, 6, 14, 2), 1536),
    "coatnet_4_224": (192, (192, 384, 768, 1536), (2, 12, 28, 2), 1536),
}


def config(name, **overrides):
    """The ``CoAtNetConfig`` of timm's ``name`` (``"coatnet_0_224"`` .. ``"coatnet_4_224"``).

    Overrides are fields such as ``image_size`` (timm's ``img_size``) or ``num_classes``.
    The options, with the timm setting each reproduces:

    * ``stem_bias=False``: ``MaxxVitCfg.stem_bias``; a stem of two 3x3 convolutions, the
      first with stride 2 (timm's ``Stem``);
    * ``pool="avg"``, ``stride_at="depthwise"``: ``pool_type='avg2'``, ``stride_mode='dw'``;
    * ``se_basis="output"``, ``se_ratio=0.25``: ``rd_channels = int(attn_ratio * out_chs)``
      (``expand_output=True``); ``se_act="silu"``: ``attn_act_layer='silu'``;
    * ``shortcut_proj="width"``: ``Downsample2d`` projects only when the width changes;
    * ``ln_eps=1e-6``: ``MaxxVitTransformerCfg.norm_eps``, also the head's norm;
    * ``head_hidden``: ``head_hidden_size``, a pre-logits linear + tanh
      (``NormMlpClassifierHead``);
    * exact GELU (``act_layer='gelu'``), BatchNorm eps 1e-5, head size 32, expansions 4,
      sum-then-softmax relative attention (``rel_pos_type='bias'``).
    """
    if name not in MODELS:
        raise ValueError(f"unknown timm model {name!r}; choose one of {sorted(MODELS)}")
    stem, widths, depths, hidden = MODELS[name]
    fields = dict(
        name=name, layout="CCTT", depths=(2, *depths), channels=(stem, *widths),
        strides=(2, 2, 2, 2, 2), image_size=224, in_channels=3, num_classes=1000,
        head_hidden=hidden, head_dim=32, mbconv_expand=4, ffn_expand=4, se_ratio=0.25,
        se_basis="output", se_act="silu", ln_eps=1e-6, shortcut_proj="width",
        stem_bias=False, variant="pre",
        pool="avg", stride_at="depthwise", gelu="none",
    )
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(f"unknown config fields {unknown}; expected some of {sorted(fields)}")
    return CoAtNetConfig(**{**fields, **overrides})


def _source_grid(table_rows, grid):
    """The ``(h, w)`` grid a timm table of ``table_rows`` offsets was made for: ``grid`` if it
    fits, else a square grid (as timm assumes for a checkpoint of another size)."""
    if table_rows == (2 * grid[0] - 1) * (2 * grid[1] - 1):
        return grid
    side = int(round(table_rows ** 0.5))
    if side * side != table_rows or side % 2 == 0:
        raise ValueError(f"a relative-bias table of {table_rows} offsets is not (2h-1)^2 for a "
                         "square grid; give source_size, the image size it was made for")
    return ((side + 1) // 2,) * 2


def load_state_dict(state_dict, config, source_size=None, dtype=None):
    """minicoat's ``(params, state)`` from a timm CoAtNet state dict.

    Args:
        state_dict: timm's parameter and buffer names -> NumPy arrays (every one the network
            of ``config`` has; ``num_batches_tracked`` counters are read and dropped).
        config: from ``config(name, ...)``; its ``image_size`` may differ from the
            checkpoint's, and the relative-bias tables are then resized to it.
        source_size: the image size the checkpoint was made for, when it is not square and
            not ``config.image_size`` (timm assumes square tables too).
        dtype: cast every array to it (e.g. ``numpy.float64``); default: keep the stored one.

    Returns:
        ``(params, state)`` trees that fit ``config`` (``minicoat.forward`` takes them).
    """
    rows = names.table(config)
    expected = {theirs for _, _, theirs, _, _ in rows}
    optional = set(names.counters(config))
    given = set(state_dict)
    missing, unexpected = sorted(expected - given), sorted(given - expected - optional)
    if missing or unexpected:
        raise ValueError(f"the state dict does not fit timm's {config.name!r} as minicoat "
                         f"builds it: missing {missing[:3]} ({len(missing)}), unexpected "
                         f"{unexpected[:3]} ({len(unexpected)}); is it another model?")
    grids = {block.name: block.grid_out for block in plan(config)}
    source_grids = {}
    if source_size is not None:
        source_grids = {block.name: block.grid_out
                        for block in plan(config.replace(image_size=source_size))}
    flat = {"params": {}, "state": {}}
    for section, ours, theirs, kind, heads in rows:
        value = onp.asarray(state_dict[theirs])
        if dtype is not None:
            value = value.astype(dtype)
        array = layouts.from_timm(kind, value, heads)
        if kind == "rel_bias":
            block = ours.rsplit(".", 2)[0]
            old = source_grids.get(block) or _source_grid(value.shape[0], grids[block])
            array = resize_rel_bias_table(array, old, grids[block])
        flat[section][ours] = array
    params, state = unflatten(flat["params"]), unflatten(flat["state"])
    check_params(params, state, config)
    return params, state


def to_state_dict(params, state, config, num_batches_tracked=0):
    """The timm state dict of minicoat's ``(params, state)``: timm's names -> NumPy arrays.

    What ``timm.create_model(config.name, img_size=config.image_size,
    num_classes=config.num_classes).load_state_dict(...)`` accepts with ``strict=True``
    (convert with ``torch.from_numpy``), or ``safetensors.numpy.save_file`` writes.
    BatchNorm's ``num_batches_tracked`` counters, which minicoat does not keep, are all
    ``num_batches_tracked`` (int64 scalars).
    """
    check_params(params, state, config)
    flat = {"params": flatten(params), "state": flatten(state)}
    out = {}
    for section, ours, theirs, kind, heads in names.table(config):
        out[theirs] = layouts.to_timm(kind, flat[section][ours], heads)
    for counter in names.counters(config):
        out[counter] = onp.array(num_batches_tracked, dtype=onp.int64)
    return out
