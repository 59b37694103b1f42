"""The staged CoAtNet: stem S0, stages S1-S4 of MBConv ("C") or Transformer ("T") blocks, head.

Paper section 2.2 and table 3. An image ``(N, H, W, C)`` flows through

* S0, the stem: ``depths[0]`` 3x3 convolutions (the first with stride ``strides[0]``),
  BN + GELU between them;
* S1..S4: ``depths[i]`` blocks of the stage's type, the first one downsampling by
  ``strides[i]`` and widening to ``channels[i]``;
* the head: global average pooling, LayerNorm, optionally a pre-logits linear + tanh
  (``head_hidden``, on for the paper-size presets), a linear layer to the class logits.

``layout="VIT_REL"`` replaces S0-S3's downsampling by one patchifying linear layer (patch size
= ``strides[0] * .. * strides[3]``, landing on S3's grid) followed by Transformer blocks only.

Every layer's widths, stride and grid come from the network's plan (``plans.py``), computed once
from the config. Parameters are built from a *spec* (``param_spec``): a nested dict whose leaves
say a shape and how to initialise it. The spec also gives parameter counts without allocating
anything (CoAtNet-4 has 275M parameters) and tells ``forward`` whether parameters fit a config.
"""

import math
from collections import Counter

import autograd.numpy as np
import numpy as onp
from autograd.tracer import getval

from . import blocks
from .configs import CoAtNetConfig
from .ops import batch_norm_gelu, conv2d, global_avg_pool, layer_norm, linear
from .ops.norm import init_bn_state
from .plans import plan, stage_blocks
from .tree import flatten

# -- specs ----------------------------------------------------------------------------------


def _stem_spec(stem, bias=True):
    """S0's parameters: 3x3 convolutions with BN + GELU between them (the last one has a bias,
    unless ``bias`` is False as in timm, and no norm: the first block of S1 normalises its
    input), or VIT_REL's patchifying layer."""
    if stem[0].kind == "patch":
        return {"patch": blocks.dense(stem[0].stride ** 2 * stem[0].c_in, stem[0].c_out)}
    spec = {}
    for block in stem:
        fan_in = 9 * block.c_in
        conv = spec[f"conv{block.index}"] = {
            "w": ("normal", (3, 3, block.c_in, block.c_out), fan_in**-0.5)
        }
        if block is stem[-1]:
            if bias:
                conv["b"] = ("zeros", (block.c_out,))
        else:
            spec[f"norm{block.index}"] = blocks.norm_spec(block.c_out)
    return spec


def param_spec(config):
    """The parameter tree of ``config`` with leaves ``("normal", shape, std)``,
    ``("zeros", shape)`` or ``("ones", shape)``: what ``init_params`` draws."""
    layers = plan(config)
    spec = {"stem": _stem_spec(stage_blocks(layers, 0), config.stem_bias)}
    for block in layers:
        if block.stage > 0:
            stage, name = block.keys
            make = blocks.mbconv_spec if block.kind == "C" else blocks.transformer_spec
            spec.setdefault(stage, {})[name] = make(block)
    width = config.channels[4]
    spec["head"] = {"norm": blocks.norm_spec(width)}
    if config.head_hidden:
        spec["head"]["pre_logits"] = blocks.dense(width, config.head_hidden)
        width = config.head_hidden
    spec["head"].update(blocks.dense(width, config.num_classes))
    return spec


def state_spec(config):
    """BatchNorm running statistics of ``config``: a tree whose leaves are channel counts."""
    layers = plan(config)
    stem = stage_blocks(layers, 0)
    tree = {"stem": {f"norm{b.index}": b.c_out for b in stem[:-1] if b.kind == "stem"}}
    for block in layers:
        if block.kind == "C":
            stage, name = block.keys
            tree.setdefault(stage, {})[name] = blocks.mbconv_state(block)
    return tree


def _map_spec(f, tree):
    return {k: _map_spec(f, v) if isinstance(v, dict) else f(v) for k, v in tree.items()}


def _flat_shapes(tree, prefix=""):
    """Dotted key -> shape for a tree of arrays or of spec leaves."""
    out = {}
    for key in sorted(tree):
        value = tree[key]
        if isinstance(value, dict):
            out.update(_flat_shapes(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value[1] if isinstance(value, tuple) else onp.shape(getval(value))
    return out


# -- init -----------------------------------------------------------------------------------


def init_params(config, seed=0, dtype=onp.float32):
    """Fresh parameters and BatchNorm state for ``config``.

    Initialisation (variance-preserving, LeCun-style, as in minGPT / timm's defaults):
    convolution and linear weights ~ Normal(0, 1 / fan_in) (fan-in = k*k*C_in for 3x3
    convolutions, 9 for depthwise), relative-bias tables ~ Normal(0, 0.02^2), biases and
    norm shifts 0, norm scales 1; running means 0 and variances 1. Leaves are drawn in sorted
    key order from ``numpy.random.default_rng(seed)``, so the same seed gives the same network.

    Returns:
        ``(params, state)``: nested dicts of ``dtype`` arrays.
    """
    if not isinstance(config, CoAtNetConfig):
        raise TypeError(f"config must be a CoAtNetConfig (see minicoat.config), got {type(config)}")
    params = init_from_spec(param_spec(config), onp.random.default_rng(seed), dtype)
    state = init_state(state_spec(config), dtype)
    return params, state


def init_from_spec(spec, rng, dtype=onp.float32):
    """Draw a parameter tree from a spec tree (see ``param_spec``), in sorted key order."""
    out = {}
    for key in sorted(spec):
        leaf = spec[key]
        if isinstance(leaf, dict):
            out[key] = init_from_spec(leaf, rng, dtype)
        elif leaf[0] == "normal":
            out[key] = (rng.standard_normal(leaf[1]) * leaf[2]).astype(dtype)
        elif leaf[0] == "zeros":
            out[key] = onp.zeros(leaf[1], dtype)
        else:
            out[key] = onp.ones(leaf[1], dtype)
    return out


def init_state(spec, dtype=onp.float32):
    """Fresh BatchNorm running statistics for a state spec (leaves: channel counts)."""
    return _map_spec(lambda c: init_bn_state(c, dtype), spec)


def check_params(params, state, config):
    """Raise ``ValueError`` naming the first mismatches if the trees do not fit ``config``."""
    for what, got, spec in (
        ("params", params, param_spec(config)),
        ("state", state, _map_spec(lambda c: ("", (c,)), state_spec(config))),
    ):
        # getval: under autograd the whole tree arrives as one box around the plain dict
        expected, actual = _flat_shapes(spec), _flat_shapes(getval(got))
        if what == "state":  # state leaves are {"mean": (C,), "var": (C,)} pairs
            expected = {f"{k}.{s}": v for k, v in expected.items() for s in ("mean", "var")}
        if expected != actual:
            missing = sorted(set(expected) - set(actual))[:3]
            extra = sorted(set(actual) - set(expected))[:3]
            shape = [
                f"{k}: expected {expected[k]}, got {actual[k]}"
                for k in sorted(set(expected) & set(actual))
                if tuple(expected[k]) != tuple(actual[k])
            ][:3]
            raise ValueError(
                f"{what} do not fit config {config.name!r} (layout {config.layout}, "
                f"image {config.image_size}): missing {missing}, unexpected {extra}, "
                f"wrong shapes {shape}; were they made for another config?"
            )
    # One floating dtype throughout (float32 to train, float64 for checks): an int or
    # half-precision leaf, or a float64 leaf among float32 ones, would change dtypes silently.
    dtypes = {f"{what}.{key}": onp.asarray(getval(leaf)).dtype
              for what, tree in (("params", params), ("state", state))
              for key, leaf in flatten(getval(tree)).items()}
    usual = Counter(dtypes.values()).most_common(1)[0][0] if dtypes else None
    odd = [f"{key}: {dtype}" for key, dtype in dtypes.items()
           if dtype != usual or dtype not in (onp.float32, onp.float64)]
    if odd:
        raise ValueError(
            f"params and state for config {config.name!r} must be all float32 or all float64; "
            f"found {odd[:3]} (most leaves are {usual})"
        )


# -- forward --------------------------------------------------------------------------------


def _stem_forward(p, state, x, stem, config, train):
    if stem[0].kind == "patch":
        patch = stem[0].stride
        n, h, w, c = x.shape
        # (N, H, W, C) -> (N, H/P, P, W/P, P, C) -> (N, H/P, W/P, P*P*C): one token per patch
        patches = np.reshape(x, (n, h // patch, patch, w // patch, patch, c))
        patches = np.reshape(
            np.transpose(patches, (0, 1, 3, 2, 4, 5)),
            (n, h // patch, w // patch, patch * patch * c),
        )
        return linear(patches, p["patch"]["w"], p["patch"]["b"]), {}
    new_state = {}
    for block in stem:
        conv, norm = p[f"conv{block.index}"], f"norm{block.index}"
        x = conv2d(x, conv["w"], conv.get("b"), stride=block.stride)
        if norm in p:
            x, new_state[norm] = batch_norm_gelu(
                x, **p[norm], running=state[norm], train=train, approximate=config.gelu
            )
    return x, new_state


def _check_input(x, config):
    x_value = getval(x)
    h, w = config.image_size
    expected = (h, w, config.in_channels)
    if onp.ndim(x_value) != 4 or onp.shape(x_value)[1:] != expected:
        raise ValueError(
            f"x must have shape (N, {h}, {w}, {config.in_channels}) for config {config.name!r} "
            f"(channels-last), got {onp.shape(x_value)}"
        )
    if x_value.dtype not in (onp.float32, onp.float64):
        raise TypeError(f"x must be float32 or float64, got {x_value.dtype}")


def forward(params, state, x, config, train=False, check=True):
    """Run CoAtNet on a batch of images.

    Args:
        params, state: from ``init_params(config)`` (or a checkpoint).
        x: ``(N, H, W, C_in)`` images with ``(H, W) = config.image_size``, the params' dtype.
        config: the ``CoAtNetConfig`` the parameters were made for.
        train: BatchNorm uses batch statistics and updates the running ones when True.
        check: verify that params and state fit ``config`` (cheap; off inside hot loops).

    Returns:
        ``(logits, new_state)``: logits ``(N, num_classes)``; ``new_state`` is a new tree
        (equal to ``state`` in evaluation mode).
    """
    _check_input(x, config)
    if check:
        check_params(params, state, config)
    new_state = {}
    layers = plan(config)
    stem = stage_blocks(layers, 0)
    # .get: a stem without BatchNorm has no state, and an empty dict does not survive a
    # round trip through a flat checkpoint
    h, new_state["stem"] = _stem_forward(
        params["stem"], state.get("stem", {}), x, stem, config, train
    )
    for block in layers[len(stem) :]:
        stage, name = block.keys
        if block.kind == "C":
            h, new_state.setdefault(stage, {})[name] = blocks.mbconv_forward(
                params[stage][name], state[stage][name], h, block, config, train
            )
        else:
            h = blocks.transformer_forward(params[stage][name], h, block, config)
    head = params["head"]
    features = layer_norm(global_avg_pool(h), **head["norm"], eps=config.ln_eps)  # (N, C4)
    if "pre_logits" in head:  # (N, head_hidden)
        features = np.tanh(linear(features, head["pre_logits"]["w"], head["pre_logits"]["b"]))
    return linear(features, head["w"], head["b"]), new_state


# -- counting -------------------------------------------------------------------------------


def count_params(params_or_config):
    """Number of trainable parameters of a parameter tree, or of a config (from its spec)."""
    if isinstance(params_or_config, CoAtNetConfig):
        shapes = _flat_shapes(param_spec(params_or_config))
    else:
        shapes = _flat_shapes(params_or_config)
    return int(sum(math.prod(shape) for shape in shapes.values()))


def count_flops(config):
    """Analytic multiply-adds of one forward pass of one image (the paper's "FLOPs").

    Counted: every convolution, linear layer and 1x1 projection (``H' W' k^2 C_in C_out``,
    depthwise ``H' W' k^2 C``), squeeze-excitation's two linears, and attention's two
    matrix products ``q k^T`` and ``A v`` (``2 T^2 D`` per image). Not counted, as is
    customary: norms, activations, softmax, pooling, additions.
    """
    flops = 0
    for block in plan(config):
        tokens = block.grid_out[0] * block.grid_out[1]
        c_in, c_out = block.c_in, block.c_out
        if block.kind == "patch":  # a P x P convolution with stride P
            flops += tokens * block.stride**2 * c_in * c_out
            continue
        if block.kind == "stem":
            flops += tokens * 9 * c_in * c_out
            continue
        if block.proj:
            flops += tokens * c_in * c_out  # shortcut projection
        if block.kind == "C":
            mid = block.expanded
            # with the stride in the depthwise conv, the expansion runs at the input grid
            expand_grid = block.grid_in if config.stride_at == "depthwise" else block.grid_out
            flops += expand_grid[0] * expand_grid[1] * c_in * mid
            flops += tokens * (9 * mid + mid * c_out) + 2 * mid * block.se
        else:
            flops += tokens * (3 * c_in * c_out + c_out * c_out)  # qkv and output
            flops += 2 * tokens * tokens * c_out  # q k^T and A v
            flops += 2 * tokens * c_out * block.expanded  # FFN
    if config.head_hidden:
        flops += config.channels[4] * config.head_hidden
    flops += (config.head_hidden or config.channels[4]) * config.num_classes
    return int(flops)
