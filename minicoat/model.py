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

Parameters are built from a *spec* (``param_spec``): a nested dict whose leaves say a shape
and how to initialise it. The spec also gives parameter counts without allocating anything
(CoAtNet-4 has 275M parameters) and tells ``forward`` whether a parameter tree fits a config.
"""

import math

import autograd.numpy as np
import numpy as onp
from autograd.tracer import getval

from . import blocks
from .config import CoAtNetConfig
from .conv import conv2d
from .layers import linear
from .norm import batch_norm_gelu, init_bn_state, layer_norm
from .pooling import global_avg_pool

# -- specs ----------------------------------------------------------------------------------


def _stages(config):
    """For S1..S4: (stage name, block type, number of blocks, c_in, c_out, stride, grid)."""
    stages = []
    c_in = config.channels[0]
    for i in range(1, 5):
        kind, depth, stride = config.stage_types[i - 1], config.depths[i], config.strides[i]
        if config.layout == "VIT_REL":
            if i < 3:
                continue  # the patch stem already stands in for S0-S2
            if i == 3:  # all the early blocks at S3's width, on S3's grid
                depth, stride = config.depths[1] + config.depths[2] + config.depths[3], 1
                c_in = config.channels[3]
        stages.append((f"s{i}", kind, depth, c_in, config.channels[i], stride, config.grid(i)))
        c_in = config.channels[i]
    return stages


def _stem_spec(config):
    c_in, width = config.in_channels, config.channels[0]
    if config.layout == "VIT_REL":
        patch = math.prod(config.strides[:4])
        return {"patch": blocks.dense(patch * patch * c_in, config.channels[3])}
    spec = {}
    for i in range(config.depths[0]):
        last = i == config.depths[0] - 1
        spec[f"conv{i}"] = {"w": ("normal", (3, 3, c_in, width), (9 * c_in) ** -0.5)}
        if last:
            spec[f"conv{i}"]["b"] = ("zeros", (width,))
        else:
            spec[f"norm{i}"] = blocks.norm_spec(width)
        c_in = width
    return spec


def param_spec(config):
    """The parameter tree of ``config`` with leaves ``("normal", shape, std)``,
    ``("zeros", shape)`` or ``("ones", shape)``: what ``init_params`` draws."""
    spec = {"stem": _stem_spec(config)}
    for name, kind, depth, c_in, c_out, stride, grid in _stages(config):
        spec[name] = {}
        for b in range(depth):
            first = b == 0
            block_in, block_stride = (c_in, stride) if first else (c_out, 1)
            if kind == "C":
                block = blocks.mbconv_spec(block_in, c_out, block_stride, config)
            else:
                block = blocks.transformer_spec(block_in, c_out, block_stride, grid, config)
            spec[name][f"block{b}"] = block
    width = config.channels[4]
    spec["head"] = {"norm": blocks.norm_spec(width)}
    if config.head_hidden:
        spec["head"]["pre_logits"] = blocks.dense(width, config.head_hidden)
        width = config.head_hidden
    spec["head"].update(blocks.dense(width, config.num_classes))
    return spec


def state_spec(config):
    """BatchNorm running statistics of ``config``: a tree whose leaves are channel counts."""
    tree = {"stem": {}}
    if config.layout != "VIT_REL":
        for i in range(config.depths[0] - 1):
            tree["stem"][f"norm{i}"] = config.channels[0]
    for name, kind, depth, c_in, c_out, _, _ in _stages(config):
        if kind == "C":
            tree[name] = {
                f"block{b}": blocks.mbconv_state(c_in if b == 0 else c_out, c_out, config)
                for b in range(depth)
            }
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


# -- forward --------------------------------------------------------------------------------


def _stem_forward(p, state, x, config, train):
    if config.layout == "VIT_REL":
        patch = math.prod(config.strides[:4])
        n, h, w, c = x.shape
        # (N, H, W, C) -> (N, H/P, P, W/P, P, C) -> (N, H/P, W/P, P*P*C): one token per patch
        patches = np.reshape(x, (n, h // patch, patch, w // patch, patch, c))
        patches = np.reshape(
            np.transpose(patches, (0, 1, 3, 2, 4, 5)),
            (n, h // patch, w // patch, patch * patch * c),
        )
        return linear(patches, p["patch"]["w"], p["patch"]["b"]), {}
    new_state = {}
    for i in range(config.depths[0]):
        conv = p[f"conv{i}"]
        x = conv2d(x, conv["w"], conv.get("b"), stride=config.strides[0] if i == 0 else 1)
        if f"norm{i}" in p:
            x, new_state[f"norm{i}"] = batch_norm_gelu(
                x, **p[f"norm{i}"], running=state[f"norm{i}"], train=train,
                approximate=config.gelu,
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
    # .get: a stem without BatchNorm has no state, and an empty dict does not survive a
    # round trip through a flat checkpoint
    h, new_state["stem"] = _stem_forward(params["stem"], state.get("stem", {}), x, config, train)
    for name, kind, depth, _, _, stride, _ in _stages(config):
        stage_state = {}
        for b in range(depth):
            block, block_stride = params[name][f"block{b}"], stride if b == 0 else 1
            if kind == "C":
                h, stage_state[f"block{b}"] = blocks.mbconv_forward(
                    block, state[name][f"block{b}"], h, block_stride, config, train
                )
            else:
                h = blocks.transformer_forward(block, h, block_stride, config)
        if stage_state:
            new_state[name] = stage_state
    head = params["head"]
    features = layer_norm(global_avg_pool(h), **head["norm"])  # (N, C4)
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
    h, w = config.image_size
    if config.layout == "VIT_REL":
        patch = math.prod(config.strides[:4])
        flops += (
            (h // patch) * (w // patch) * patch * patch * config.in_channels * config.channels[3]
        )
    else:
        h0, w0 = config.grid(0)
        c_in = config.in_channels
        for _ in range(config.depths[0]):
            flops += h0 * w0 * 9 * c_in * config.channels[0]
            c_in = config.channels[0]
    for _, kind, depth, c_in, c_out, stride, (gh, gw) in _stages(config):
        for b in range(depth):
            block_in, block_stride = (c_in, stride) if b == 0 else (c_out, 1)
            tokens = gh * gw
            if block_stride != 1 or block_in != c_out:
                flops += tokens * block_in * c_out  # shortcut projection
            if kind == "C":
                mid = c_out * config.mbconv_expand
                reduced = max(1, int(block_in * config.se_ratio))
                # with the stride in the depthwise conv, the expansion runs at the input grid
                expand_tokens = tokens
                if config.stride_at == "depthwise":
                    expand_tokens = tokens * block_stride**2
                flops += expand_tokens * block_in * mid
                flops += tokens * (9 * mid + mid * c_out) + 2 * mid * reduced
            else:
                hidden = c_out * config.ffn_expand
                flops += tokens * (3 * block_in * c_out + c_out * c_out)  # qkv and output
                flops += 2 * tokens * tokens * c_out  # q k^T and A v
                flops += 2 * tokens * c_out * hidden  # FFN
    if config.head_hidden:
        flops += config.channels[4] * config.head_hidden
    flops += (config.head_hidden or config.channels[4]) * config.num_classes
    return int(flops)
